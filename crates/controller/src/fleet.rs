//! A managed service's fleet: N instances of one revision, kept running.
//!
//! ```text
//! boot:   store records ──► alive (pid + start time) & right revision? ──► adopt
//!                       └─► otherwise stop what is left, start again on the same port
//!         /proc marks of this state dir that no record names ──► strays, stopped
//! run:    instance exits ──► target unhealthy at once ──► event ──► restart with
//!         back-off (1 s doubling to 30 s) on the same port
//!         not healthy within healthy_deadline ──► replaced the same way
//! stop:   (after the proxy stopped) SIGTERM → grace → SIGKILL each instance
//! ```
//!
//! Every change is written to the store *before* its side effect (a record
//! with status `starting` exists before the process does), so a crash at any
//! point leaves either a record to check or a marked process to find.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handoff_core::config::{Managed, Service};
use handoff_core::TargetState;
use handoff_proxy::{ServiceProxy, TargetId, TargetSpec, DEFAULT_GROUP};
use handoff_runtime::{ports, procfs, InstanceSpec, RunningInstance, Runtime};
use handoff_store::{InstanceRecord, Store};
use tokio::task::JoinHandle;

use crate::ControllerError;

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An instance up this long has its restart back-off forgiven.
const STABLE_AFTER: Duration = Duration::from_secs(60);

struct Slot {
    port: u16,
    running: Option<RunningInstance>,
    target: Option<TargetId>,
    restarts: u32,
    /// Watches the process and its health; aborted before deliberate stops.
    watcher: Option<JoinHandle<()>>,
}

pub struct Fleet<R: Runtime> {
    pub service: Service,
    managed: Managed,
    proxy: Arc<ServiceProxy>,
    runtime: Arc<R>,
    store: Arc<Store>,
    state_dir: PathBuf,
    /// Working directory of instances whose revision has no artifact.
    base_dir: PathBuf,
    /// The revision's release directory once installed (else `base_dir`).
    release_dir: Mutex<PathBuf>,
    releases_kept: usize,
    port_range: Option<(u16, u16)>,
    slots: Mutex<BTreeMap<String, Slot>>,
}

pub struct FleetOptions {
    pub state_dir: PathBuf,
    pub base_dir: PathBuf,
    pub port_range: Option<(u16, u16)>,
    pub releases_kept: usize,
}

impl<R: Runtime> Fleet<R> {
    pub fn new(
        service: Service,
        proxy: Arc<ServiceProxy>,
        runtime: Arc<R>,
        store: Arc<Store>,
        opts: FleetOptions,
    ) -> Result<Arc<Self>, ControllerError> {
        let managed = match &service.backend {
            handoff_core::config::Backend::Managed(m) => m.clone(),
            _ => return Err(ControllerError::NotManaged(service.name.clone())),
        };
        proxy.set_weights(&[(DEFAULT_GROUP, 100)])?;
        Ok(Arc::new(Fleet {
            service,
            managed,
            proxy,
            runtime,
            store,
            state_dir: opts.state_dir,
            release_dir: Mutex::new(opts.base_dir.clone()),
            base_dir: opts.base_dir,
            releases_kept: opts.releases_kept,
            port_range: opts.port_range,
            slots: Mutex::new(BTreeMap::new()),
        }))
    }

    fn name(&self) -> &str {
        &self.service.name
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event(&self, instance: Option<&str>, kind: &str, message: &str) {
        tracing::info!(service = %self.name(), instance = instance.unwrap_or("-"), kind, "{message}");
        if let Err(e) = self.store.event(self.name(), instance, kind, message) {
            tracing::error!(error = %e, "cannot record event");
        }
    }

    fn instance_name(&self, i: u32) -> String {
        format!("{}-{i}", self.name())
    }

    /// Brings the fleet to `instances` × `revision`: adopts what is alive and
    /// right, stops what is not, starts the rest. Returns once every instance
    /// was started (not necessarily healthy yet).
    pub async fn boot(self: &Arc<Self>) -> Result<(), ControllerError> {
        let revision = self.managed.revision.clone();
        self.install_release().await?;
        let records = self.store.instances(self.name())?;
        self.stop_strays(&records).await;
        let wanted: Vec<String> = (1..=self.managed.instances)
            .map(|i| self.instance_name(i))
            .collect();
        let mut to_start = Vec::new();
        for rec in records {
            let run = RunningInstance {
                service: rec.service.clone(),
                instance: rec.name.clone(),
                revision: rec.revision.clone(),
                port: rec.port,
                pid: rec.pid,
                start_time: rec.start_time,
            };
            let alive = rec.pid != 0 && self.runtime.is_alive(&run);
            let keep = wanted.contains(&rec.name);
            if alive && keep && rec.revision == revision {
                self.event(
                    Some(&rec.name),
                    "adopted",
                    &format!(
                        "adopted live instance pid {} on port {} ({})",
                        rec.pid, rec.port, rec.revision
                    ),
                );
                self.slots().insert(
                    rec.name.clone(),
                    Slot {
                        port: rec.port,
                        running: None,
                        target: None,
                        restarts: rec.restarts,
                        watcher: None,
                    },
                );
                self.register(&rec.name, run)?;
                continue;
            }
            if alive {
                let why = if keep {
                    format!("runs revision {}, not {revision}", rec.revision)
                } else {
                    "is beyond the configured instance count".into()
                };
                self.event(
                    Some(&rec.name),
                    "replaced",
                    &format!("stopping pid {}: {why}", rec.pid),
                );
                self.runtime.stop(&run, self.managed.stop_grace).await;
            }
            if keep {
                to_start.push((rec.name.clone(), rec.port, rec.restarts));
            } else {
                self.store.delete_instance(self.name(), &rec.name)?;
            }
        }
        for name in &wanted {
            if !self.slots().contains_key(name) && !to_start.iter().any(|(n, _, _)| n == name) {
                to_start.push((name.clone(), 0, 0));
            }
        }
        let mut taken: Vec<u16> = self.slots().values().map(|s| s.port).collect();
        taken.extend(to_start.iter().map(|(_, p, _)| *p).filter(|p| *p != 0));
        let mut starts = Vec::new();
        for (name, port, restarts) in to_start {
            let port = if port != 0 && ports::is_free(port) {
                port
            } else {
                let p = ports::allocate(self.port_range, &taken)?;
                taken.push(p);
                p
            };
            self.slots().insert(
                name.clone(),
                Slot {
                    port,
                    running: None,
                    target: None,
                    restarts,
                    watcher: None,
                },
            );
            let me = self.clone();
            starts.push(tokio::spawn(async move { me.start(&name).await }));
        }
        for s in starts {
            // A failed start is already recorded and scheduled for retry.
            let _ = s.await;
        }
        Ok(())
    }

    /// Installs the revision's artifact (once; verified by sha256 against
    /// both the release and the store) and prunes old releases.
    async fn install_release(&self) -> Result<(), ControllerError> {
        let revision = self.managed.revision.clone();
        let (dir, sha) = match self.managed.artifact.clone() {
            Some(a) => {
                let releases = handoff_runtime::artifact::Releases::new(&self.state_dir);
                let (svc, rev) = (self.name().to_string(), revision.clone());
                let rel = tokio::task::spawn_blocking(move || releases.install(&svc, &rev, &a))
                    .await
                    .map_err(|e| ControllerError::Internal(e.to_string()))??;
                (rel.dir, Some(rel.sha256))
            }
            None => (self.base_dir.clone(), None),
        };
        let stored = self.store.put_revision(&handoff_store::RevisionRecord {
            service: self.name().to_string(),
            id: revision.clone(),
            artifact: self
                .managed
                .artifact
                .as_ref()
                .map(|a| a.display().to_string()),
            sha256: sha.clone(),
            created_ms: handoff_store::now_ms(),
        })?;
        if let (Some(old), Some(new)) = (&stored.sha256, &sha) {
            if old != new {
                return Err(handoff_runtime::RuntimeError::RevisionChanged {
                    service: self.name().to_string(),
                    revision,
                    existing: old.clone(),
                    new: new.clone(),
                }
                .into());
            }
        }
        if sha.is_some() {
            let releases = handoff_runtime::artifact::Releases::new(&self.state_dir);
            let removed = releases.prune(self.name(), self.releases_kept, &[&revision])?;
            if !removed.is_empty() {
                self.event(
                    None,
                    "releases-pruned",
                    &format!("removed old releases {}", removed.join(", ")),
                );
            }
        }
        *self.release_dir.lock().unwrap_or_else(|e| e.into_inner()) = dir;
        Ok(())
    }

    /// Processes marked with our state dir and service that no record names
    /// (handoff died between spawning them and writing their pid).
    async fn stop_strays(&self, records: &[InstanceRecord]) {
        for (pid, service, instance) in procfs::marked_processes(&self.state_dir) {
            if service != self.name() || records.iter().any(|r| r.pid == pid) {
                continue;
            }
            let Some(start_time) = procfs::start_time(pid) else {
                continue;
            };
            self.event(
                Some(&instance),
                "stray",
                &format!("stopping unrecorded process pid {pid}"),
            );
            let run = RunningInstance {
                service,
                instance,
                revision: String::new(),
                port: 0,
                pid,
                start_time,
            };
            self.runtime.stop(&run, self.managed.stop_grace).await;
        }
    }

    fn spec(&self, name: &str, port: u16) -> InstanceSpec {
        InstanceSpec {
            service: self.name().to_string(),
            instance: name.to_string(),
            revision: self.managed.revision.clone(),
            port,
            command: self.managed.command.clone(),
            release_dir: self
                .release_dir
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn record(
        &self,
        name: &str,
        port: u16,
        run: Option<&RunningInstance>,
        status: &str,
        restarts: u32,
    ) -> Result<(), ControllerError> {
        self.store.put_instance(&InstanceRecord {
            service: self.name().to_string(),
            name: name.to_string(),
            revision: run.map_or(self.managed.revision.clone(), |r| r.revision.clone()),
            port,
            pid: run.map_or(0, |r| r.pid),
            start_time: run.map_or(0, |r| r.start_time),
            status: status.to_string(),
            restarts,
        })?;
        Ok(())
    }

    /// Starts (or restarts) instance `name` on its port; on failure records
    /// it and schedules a retry with back-off.
    async fn start(self: &Arc<Self>, name: &str) {
        let Some((port, restarts)) = self.slots().get(name).map(|s| (s.port, s.restarts)) else {
            return;
        };
        // Persist the intent before the process exists.
        if let Err(e) = self.record(name, port, None, "starting", restarts) {
            tracing::error!(error = %e, "cannot record instance start");
        }
        match self.runtime.start(&self.spec(name, port)).await {
            Ok(run) => {
                if let Err(e) = self.record(name, port, Some(&run), "running", restarts) {
                    tracing::error!(error = %e, "cannot record started instance");
                }
                self.event(
                    Some(name),
                    "started",
                    &format!("pid {} on port {port} ({})", run.pid, run.revision),
                );
                if let Err(e) = self.register(name, run) {
                    tracing::error!(service = %self.name(), instance = name, error = %e, "cannot register target");
                }
            }
            Err(e) => {
                let _ = self.record(name, port, None, "failed", restarts);
                self.event(Some(name), "start-failed", &e.to_string());
                self.retry_later(name);
            }
        }
    }

    /// Puts a running instance behind the proxy (as `initial`: no traffic
    /// until its health checks pass) and starts watching it.
    fn register(self: &Arc<Self>, name: &str, run: RunningInstance) -> Result<(), ControllerError> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], run.port));
        let target = self.proxy.add_target(
            DEFAULT_GROUP,
            TargetSpec {
                addr,
                revision: run.revision.clone(),
                name: name.to_string(),
            },
        )?;
        let me = self.clone();
        let (n, r, t) = (name.to_string(), run.clone(), target.id);
        let watcher = tokio::spawn(async move { me.watch(n, r, t).await });
        if let Some(s) = self.slots().get_mut(name) {
            s.running = Some(run);
            s.target = Some(target.id);
            if let Some(old) = s.watcher.replace(watcher) {
                // The old handle may be the restart task running this very
                // call; it ends by itself.
                if tokio::task::try_id() != Some(old.id()) {
                    old.abort();
                }
            }
        }
        Ok(())
    }

    /// Waits for the instance to die or to miss its health deadline; then
    /// takes it out of service and restarts it.
    async fn watch(self: Arc<Self>, name: String, run: RunningInstance, target: TargetId) {
        let started = Instant::now();
        let deadline = self.service.health.healthy_deadline;
        let healthy = async {
            loop {
                match self.proxy.target(target).map(|t| t.state()) {
                    Ok(TargetState::Healthy) => return true,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(_) => return false,
                }
            }
        };
        let reason = tokio::select! {
            exit = self.runtime.exited(&run) => format!("instance exited unexpectedly ({exit})"),
            ok = tokio::time::timeout(deadline, healthy) => match ok {
                Ok(true) => {
                    let exit = self.runtime.exited(&run).await;
                    format!("instance exited unexpectedly ({exit})")
                }
                _ => format!("not healthy within healthy_deadline {}", handoff_core::duration::format(deadline)),
            },
        };
        self.proxy.mark_unhealthy(target, &reason);
        self.event(Some(&name), "failed", &format!("{reason}; restarting"));
        let _ = self.proxy.remove(target, Duration::ZERO).await;
        if self.runtime.is_alive(&run) {
            self.runtime.stop(&run, self.managed.stop_grace).await;
        }
        if let Some(s) = self.slots().get_mut(&name) {
            s.running = None;
            s.target = None;
            s.watcher = None;
            if started.elapsed() >= STABLE_AFTER {
                s.restarts = 0;
            }
        }
        self.retry_later(&name);
    }

    fn retry_later(self: &Arc<Self>, name: &str) {
        let restarts = {
            let mut slots = self.slots();
            let Some(s) = slots.get_mut(name) else { return };
            s.restarts += 1;
            s.restarts
        };
        let delay = BACKOFF_MIN
            .saturating_mul(1 << (restarts - 1).min(5))
            .min(BACKOFF_MAX);
        self.event(
            Some(name),
            "restart-scheduled",
            &format!(
                "restart #{restarts} in {}",
                handoff_core::duration::format(delay)
            ),
        );
        let me = self.clone();
        let n = name.to_string();
        let h = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.start(&n).await;
        });
        // Kept as the slot's watcher so that shutdown cancels the restart.
        if let Some(s) = self.slots().get_mut(name) {
            if let Some(old) = s.watcher.replace(h) {
                old.abort();
            }
        }
    }

    /// Instances as they stand now: name, port, pid, target state.
    pub fn instances(&self) -> Vec<(String, u16, Option<RunningInstance>, Option<TargetId>)> {
        self.slots()
            .iter()
            .map(|(n, s)| (n.clone(), s.port, s.running.clone(), s.target))
            .collect()
    }

    /// Stops every instance (after the proxy has stopped taking requests).
    pub async fn shutdown(&self) {
        let all: Vec<(String, u16, u32, Option<RunningInstance>)> = {
            let mut slots = self.slots();
            slots
                .iter_mut()
                .map(|(n, s)| {
                    if let Some(w) = s.watcher.take() {
                        w.abort();
                    }
                    (n.clone(), s.port, s.restarts, s.running.take())
                })
                .collect()
        };
        let mut stops = Vec::new();
        for (name, port, restarts, run) in all {
            let _ = self.record(&name, port, run.as_ref(), "stopping", restarts);
            if let Some(run) = run {
                let rt = self.runtime.clone();
                let grace = self.managed.stop_grace;
                stops.push(tokio::spawn(async move { rt.stop(&run, grace).await }));
            }
            let _ = self.record(&name, port, None, "stopped", restarts);
        }
        for s in stops {
            let _ = s.await;
        }
        self.event(None, "stopped", "all instances stopped");
    }
}
