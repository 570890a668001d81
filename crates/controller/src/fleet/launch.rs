//! Bringing one instance up: spawn it, register its target held while the
//! runtime watches for an immediate exit, then let it into service and
//! supervise it. A port lost to another process moves the instance.

use std::sync::Arc;
use std::time::Duration;

use handoff_proxy::{TargetId, TargetSpec};
use handoff_runtime::{InstanceSpec, RunningInstance, Runtime};

use super::Fleet;
use crate::ControllerError;

impl<R: Runtime> Fleet<R> {
    /// Starts instance `name` as its slot says and registers it (as
    /// `initial`: traffic only after its checks pass). `supervise` starts
    /// the watcher that restarts it if it dies.
    pub(super) async fn start_one(
        self: &Arc<Self>,
        name: &str,
        supervise: bool,
        hold: bool,
    ) -> Result<(), String> {
        let Some((port, revision)) = self.slots().get(name).map(|s| (s.port, s.revision.clone()))
        else {
            return Err(format!("no instance {name}"));
        };
        let dir = self
            .release_dir(&revision)
            .await
            .map_err(|e| e.to_string())?;
        // Persist the intent before the process exists.
        let _ = self.record(name, "starting", None);
        let spec = InstanceSpec {
            service: self.name().to_string(),
            instance: name.to_string(),
            revision: revision.clone(),
            port,
            command: self.managed.command.clone(),
            release_dir: dir,
        };
        let mut spec = spec;
        let mut started = self.launch(name, &spec, supervise, hold).await;
        if let Err(Launch::Runtime(handoff_runtime::RuntimeError::PortInUse { port, .. })) =
            &started
        {
            // Something else took the instance's port while it was down:
            // keeping the port is a convenience, serving is not optional.
            let old = *port;
            if let Ok(new) = self.port_for(0) {
                if let Some(s) = self.slots().get_mut(name) {
                    s.port = new;
                }
                self.event(
                    Some(name),
                    "port-moved",
                    &format!("port {old} was taken by another process; moving to {new}"),
                );
                spec.port = new;
                started = self.launch(name, &spec, supervise, hold).await;
            }
        }
        started.map_err(|e| {
            let _ = self.record(name, "failed", None);
            match e {
                Launch::Runtime(e) => e.to_string(),
                Launch::Other(e) => e,
            }
        })
    }

    /// Spawns, registers the target held (so its first health checks run
    /// while the runtime watches for an immediate exit, and a process that
    /// dies at once or lost its port never takes a request), then lets it
    /// into service unless the deployment holds it for hooks.
    async fn launch(
        self: &Arc<Self>,
        name: &str,
        spec: &InstanceSpec,
        supervise: bool,
        hold: bool,
    ) -> Result<(), Launch> {
        let run = self.runtime.spawn(spec).await.map_err(Launch::Runtime)?;
        let _ = self.record(name, "running", Some(&run));
        let target = self
            .register(name, run.clone(), true)
            .map_err(|e| Launch::Other(e.to_string()))?;
        if let Err(e) = self.runtime.confirm_start(spec, &run).await {
            if let Some(s) = self.slots().get_mut(name) {
                s.running = None;
                s.target = None;
            }
            let _ = self.proxy.remove(target, Duration::ZERO).await;
            return Err(Launch::Runtime(e));
        }
        self.event(
            Some(name),
            "started",
            &format!("pid {} on port {} ({})", run.pid, spec.port, spec.revision),
        );
        if !hold {
            if let Ok(t) = self.proxy.target(target) {
                t.release_into_service();
            }
        }
        if supervise {
            self.supervise(&[name.to_string()]);
        }
        Ok(())
    }

    pub(super) fn register(
        self: &Arc<Self>,
        name: &str,
        run: RunningInstance,
        hold: bool,
    ) -> Result<TargetId, ControllerError> {
        let group = self
            .slots()
            .get(name)
            .map(|s| s.group.clone())
            .unwrap_or_else(|| self.live_group());
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], run.port));
        let target = self.proxy.add_target(
            &group,
            TargetSpec {
                addr,
                revision: run.revision.clone(),
                name: name.to_string(),
                hold,
            },
        )?;
        if let Some(s) = self.slots().get_mut(name) {
            s.running = Some(run);
            s.target = Some(target.id);
        }
        Ok(target.id)
    }
}

enum Launch {
    Runtime(handoff_runtime::RuntimeError),
    Other(String),
}
