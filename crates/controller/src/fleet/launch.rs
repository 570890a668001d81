//! Bringing one instance up: spawn it, register its target held while the
//! runtime watches for an immediate exit, then let it into service and
//! supervise it. A port lost to another process moves the instance.
//!
//! A slot holds at most one process: registering a second one while the
//! first is alive is refused (and the newcomer stopped), and so is a start
//! by supervision that a deliberate stop overtook. Duplicates cannot arise.

use std::sync::Arc;
use std::time::Duration;

use handoff_proxy::{TargetId, TargetSpec};
use handoff_runtime::{InstanceSpec, RunningInstance, Runtime};

use super::Fleet;
use crate::ControllerError;

impl<R: Runtime> Fleet<R> {
    /// Starts instance `name` as its slot says and registers it (as
    /// `initial`: traffic only after its checks pass). `supervise`: the
    /// supervision epoch this start belongs to (the watcher starts with
    /// it, and a deliberate stop since then cancels the start); `None` for
    /// a deployment's start, supervised once the deployment accepts it.
    pub(super) async fn start_one(
        self: &Arc<Self>,
        name: &str,
        supervise: Option<u64>,
        hold: bool,
    ) -> Result<(), String> {
        let Some((host, port, revision)) = self
            .slots()
            .get(name)
            .map(|s| (s.host.clone(), s.port, s.revision.clone()))
        else {
            return Err(format!("no instance {name}"));
        };
        let dir = self
            .release_dir(&revision)
            .await
            .map_err(|e| e.to_string())?;
        // Persist the intent before the process exists.
        let _ = self.record(name, "starting", None);
        let mut spec = InstanceSpec {
            service: self.name().to_string(),
            instance: name.to_string(),
            revision: revision.clone(),
            host: host.clone(),
            port,
            command: self.managed.command.clone(),
            release_dir: dir,
        };
        let mut started = self.launch(name, &spec, supervise, hold).await;
        if let Err(Launch::Runtime(handoff_runtime::RuntimeError::PortInUse { port, .. })) =
            &started
        {
            // Something else took the instance's port while it was down:
            // keeping the port is a convenience, serving is not optional.
            let old = *port;
            if let Ok(new) = self.port_for(host.as_deref(), 0) {
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
        started.map_err(|e| match e {
            Launch::Runtime(e) => {
                let _ = self.record(name, "failed", None);
                e.to_string()
            }
            Launch::Other(e) => {
                let _ = self.record(name, "failed", None);
                e
            }
            // The slot is someone else's now (a deliberate stop, or the
            // process already there): its record is theirs to write.
            Launch::Refused(e) => e,
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
        supervise: Option<u64>,
        hold: bool,
    ) -> Result<(), Launch> {
        let run = self.runtime.spawn(spec).await.map_err(Launch::Runtime)?;
        let target = match self.register(name, run.clone(), true, supervise) {
            Ok(t) => t,
            Err(e) => {
                // Never recorded nor registered: nobody else would stop it.
                self.runtime.stop(&run, self.managed.stop_grace).await;
                return Err(match e {
                    Register::Refused(why) => Launch::Refused(why),
                    Register::Failed(e) => Launch::Other(e.to_string()),
                });
            }
        };
        let _ = self.record(name, "running", Some(&run));
        if let Err(e) = self.runtime.confirm_start(spec, &run).await {
            if let Some(s) = self.slots().get_mut(name) {
                if s.running.as_ref().is_some_and(|r| r.pid == run.pid) {
                    s.running = None;
                    s.target = None;
                }
            }
            let _ = self.balancer.remove(target, Duration::ZERO).await;
            return Err(Launch::Runtime(e));
        }
        self.event(
            Some(name),
            "started",
            &format!("{} at {} ({})", run.whose(), run.addr, spec.revision),
        );
        if !hold {
            if let Ok(t) = self.proxy.target(target) {
                t.release_into_service();
            }
        }
        if let Some(epoch) = supervise {
            self.watch_in(name, epoch, true);
        }
        Ok(())
    }

    /// Makes `run` the slot's process and adds its target, in one critical
    /// section with the checks: the slot has no other live process, and
    /// (for a start by supervision) is still supervised in `epoch`.
    pub(super) fn register(
        self: &Arc<Self>,
        name: &str,
        run: RunningInstance,
        hold: bool,
        epoch: Option<u64>,
    ) -> Result<TargetId, Register> {
        let live = self.live_group();
        let mut slots = self.slots();
        // Checked under the slots' lock, as `close` sets it before anything
        // else: a closed fleet (handed to a new daemon) registers nothing.
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Register::Refused(format!(
                "{name}: not started: the fleet is closed (stopping, or handed to a new daemon)"
            )));
        }
        let s = slots.get_mut(name);
        if let Some(s) = &s {
            if let Some(e) = epoch.filter(|e| !s.supervised || s.epoch != *e) {
                return Err(Register::Refused(format!(
                    "{name}: not started: stopped deliberately meanwhile (epoch {e})"
                )));
            }
            if let Some(old) = s.running.as_ref().filter(|o| o.pid != run.pid) {
                if self.runtime.is_alive(old) {
                    return Err(Register::Refused(format!(
                        "{name}: not started: it already runs as {}",
                        old.whose()
                    )));
                }
            }
        }
        let group = s.as_ref().map(|s| s.group.clone()).unwrap_or(live);
        let addr = run.addr;
        let target = self
            .balancer
            .add(
                &group,
                TargetSpec {
                    addr,
                    revision: run.revision.clone(),
                    name: name.to_string(),
                    hold,
                },
            )
            .map_err(|e| Register::Failed(e.into()))?;
        if let Some(s) = s {
            s.running = Some(run);
            s.target = Some(target.id);
        }
        Ok(target.id)
    }
}

enum Launch {
    Runtime(handoff_runtime::RuntimeError),
    Other(String),
    /// The slot refused the process (see `register`); it was stopped.
    Refused(String),
}

pub(super) enum Register {
    Refused(String),
    Failed(ControllerError),
}

impl From<Register> for ControllerError {
    fn from(e: Register) -> Self {
        match e {
            Register::Refused(why) => ControllerError::Internal(why),
            Register::Failed(e) => e,
        }
    }
}
