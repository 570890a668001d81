//! A managed service's fleet: its instances, kept running, and the
//! operations a deployment performs on them.
//!
//! ```text
//! boot:   store records ──► alive (pid + start time) & current revision? ──► adopt
//!                       └─► otherwise stop what is left, start again (same name, same port)
//!         processes marked with this state dir's owner id that no record
//!         names ──► strays, stopped (another state dir's are never touched)
//! run:    instance exits ──► target unhealthy at once ──► event ──► restart with
//!         back-off (1 s doubling to 30 s) on the same port, every time
//!         not healthy within healthy_deadline ──► replaced the same way
//! mend:   after boot, after each deployment and every few seconds (never
//!         while a deployment runs): desired (instances × current revision,
//!         live group) against what runs ──► extras stopped, missing started,
//!         unwatched supervised (see `reconcile`)
//! deploy: start / await_healthy / drain / stop / supervise / weights / quiesce
//!         (see `executor`); instances a deploy starts are supervised only once
//!         the deploy accepts them
//! stop:   (after the proxy stopped) SIGTERM → grace → SIGKILL each instance
//! ```
//!
//! Every change is written to the store *before* its side effect (a record
//! with status `starting` exists before the process does), so a crash at any
//! point leaves either a record to check or a marked process to find.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use handoff_core::config::{Managed, Service};
use handoff_proxy::{ServiceProxy, TargetId};

use crate::balancer::Balancer;
use handoff_runtime::{ports, RunningInstance, Runtime};
use handoff_store::{InstanceRecord, Store};
use tokio::task::JoinHandle;

use crate::ControllerError;

mod files;
mod hosts;
mod launch;
mod ops;
mod reconcile;
mod supervise;

pub use reconcile::DeployGuard;

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An instance up this long has its restart back-off forgiven.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// The group instances start in on a first boot.
pub const FIRST_GROUP: &str = "blue";

struct Slot {
    /// The host it runs on (`None`: this machine); kept across restarts
    /// and in-place replacements, as a server keeps its address.
    host: Option<String>,
    port: u16,
    revision: String,
    group: String,
    running: Option<RunningInstance>,
    target: Option<TargetId>,
    restarts: u32,
    /// The target whose start-up time was recorded (once per start).
    noted: Option<TargetId>,
    /// Whether the supervisor keeps this instance running: set by
    /// `supervise`, cleared by every deliberate drain or stop, which so
    /// wins over a restart already under way.
    supervised: bool,
    /// Bumped by every deliberate drain or stop: supervision work begun
    /// before it (a watch, a pending restart, a start halfway) sees the
    /// change and gives way instead of bringing the instance back.
    epoch: u64,
    /// The task that watches the process and its health, or waits to
    /// restart it; aborted (when it is safe to) by a deliberate stop.
    watcher: Option<JoinHandle<()>>,
    /// Why it last failed (a start that did not take, an exit, a missed
    /// health deadline), for `status`; cleared once it is forgiven.
    last_error: Option<String>,
}

/// A snapshot of one instance, for status and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub name: String,
    pub revision: String,
    pub group: String,
    /// The host it runs on (`None`: this machine).
    pub host: Option<String>,
    pub port: u16,
    pub pid: Option<u32>,
    pub target: Option<TargetId>,
    /// Restarts in a row (back-off grows with them).
    pub restarts: u32,
    /// Why it last failed, until it has been healthy for a while.
    pub last_error: Option<String>,
    /// Supervision keeps it running (restarts it when it fails).
    pub supervised: bool,
}

pub struct Fleet<R: Runtime> {
    pub service: Service,
    managed: Managed,
    /// What routes the service (every routing change goes through it).
    pub balancer: Arc<dyn Balancer>,
    /// The balancer's books: targets, states, counters, events (reads).
    pub proxy: Arc<ServiceProxy>,
    runtime: Arc<R>,
    pub store: Arc<Store>,
    state_dir: PathBuf,
    /// Working directory of instances whose revision has no artifact.
    base_dir: PathBuf,
    /// Release directory per installed revision.
    release_dirs: Mutex<BTreeMap<String, PathBuf>>,
    /// Artifacts given with `deploy --artifact`, by revision.
    artifacts: Mutex<BTreeMap<String, PathBuf>>,
    releases_kept: usize,
    port_range: Option<(u16, u16)>,
    slots: Mutex<BTreeMap<String, Slot>>,
    /// The revision that serves (moves when a deployment succeeds).
    current: Mutex<String>,
    /// The group that carries traffic (`blue` or `green`).
    live_group: Mutex<String>,
    /// Deployments under way (see `deployment_guard`): while there is one,
    /// the reconciler leaves the fleet to it.
    deploying: AtomicUsize,
    /// Held while a reconciliation mends; a deployment waits for it before
    /// it plans from the fleet.
    mending: tokio::sync::Mutex<()>,
    /// Set when the fleet shuts down: nothing is mended any more.
    closing: AtomicBool,
}

pub struct FleetOptions {
    pub state_dir: PathBuf,
    pub base_dir: PathBuf,
    pub port_range: Option<(u16, u16)>,
    pub releases_kept: usize,
}

fn index_of(name: &str) -> u32 {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl<R: Runtime> Fleet<R> {
    pub fn new(
        service: Service,
        balancer: Arc<dyn Balancer>,
        runtime: Arc<R>,
        store: Arc<Store>,
        opts: FleetOptions,
    ) -> Result<Arc<Self>, ControllerError> {
        let managed = match &service.backend {
            handoff_core::config::Backend::Managed(m) => m.clone(),
            _ => return Err(ControllerError::NotManaged(service.name.clone())),
        };
        // The config's revision is what to bring up on a first start, and
        // whenever the user edits it; otherwise the last deployed one serves.
        let edited =
            store.config_revision(&service.name)?.as_deref() != Some(managed.revision.as_str());
        let current = match store.current_revision(&service.name)? {
            Some(r) if !edited => r,
            _ => managed.revision.clone(),
        };
        Ok(Arc::new(Fleet {
            service,
            managed,
            proxy: balancer.books().clone(),
            balancer,
            runtime,
            store,
            state_dir: opts.state_dir,
            base_dir: opts.base_dir,
            release_dirs: Mutex::new(BTreeMap::new()),
            artifacts: Mutex::new(BTreeMap::new()),
            releases_kept: opts.releases_kept,
            port_range: opts.port_range,
            slots: Mutex::new(BTreeMap::new()),
            current: Mutex::new(current),
            live_group: Mutex::new(FIRST_GROUP.into()),
            deploying: AtomicUsize::new(0),
            mending: tokio::sync::Mutex::new(()),
            closing: AtomicBool::new(false),
        }))
    }

    pub fn name(&self) -> &str {
        &self.service.name
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn current_revision(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn live_group(&self) -> String {
        self.live_group
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Healthy targets taking traffic now.
    pub fn in_service(&self) -> usize {
        self.proxy.table().in_service()
    }

    /// How many instances the config asks for.
    pub fn desired(&self) -> usize {
        self.managed.instances as usize
    }

    pub fn stop_grace(&self) -> Duration {
        self.managed.stop_grace
    }

    /// How long the runtime watches a new process before `start` returns.
    pub fn start_watch(&self) -> Duration {
        self.runtime.start_watch()
    }

    /// Keeps one measurement (`boot`, `drain`, `stop`, `hook:NAME`) that
    /// `handoff plan` predicts from; losing one only costs precision.
    pub fn observe(&self, kind: &str, took: Duration) {
        let _ = self
            .store
            .observe(self.name(), kind, took.as_millis() as u64);
    }

    /// Records an event of the fleet (or of a deployment) in the store.
    pub fn event(&self, instance: Option<&str>, kind: &str, message: &str) {
        let instance_name = instance.unwrap_or("-");
        match kind {
            // An instance that cannot start or keeps failing needs a human;
            // among the INFO lines of a busy daemon it would go unseen.
            "start-failed" | "failed" => {
                tracing::warn!(service = %self.name(), instance = instance_name, kind, "{message}")
            }
            _ => {
                tracing::info!(service = %self.name(), instance = instance_name, kind, "{message}")
            }
        }
        if let (Some(n), "start-failed" | "failed") = (instance, kind) {
            if let Some(s) = self.slots().get_mut(n) {
                s.last_error = Some(message.to_string());
            }
        }
        if let Err(e) = self.store.event(self.name(), instance, kind, message) {
            tracing::error!(error = %e, "cannot record event");
        }
    }

    /// Instances by name order of their index (`web-2` before `web-10`).
    pub fn instances(&self) -> Vec<InstanceView> {
        let mut v: Vec<InstanceView> = self
            .slots()
            .iter()
            .map(|(n, s)| InstanceView {
                name: n.clone(),
                revision: s.revision.clone(),
                group: s.group.clone(),
                host: s.host.clone(),
                port: s.port,
                pid: s.running.as_ref().map(|r| r.pid),
                target: s.target,
                restarts: s.restarts,
                last_error: s.last_error.clone(),
                supervised: s.supervised,
            })
            .collect();
        v.sort_by_key(|i| index_of(&i.name));
        v
    }

    /// The instances of the live group, in index order.
    pub fn serving(&self) -> Vec<String> {
        let live = self.live_group();
        self.instances()
            .into_iter()
            .filter(|i| i.group == live)
            .map(|i| i.name)
            .collect()
    }

    /// `n` fresh instance names, after every name in use.
    pub fn new_names(&self, n: usize) -> Vec<String> {
        let top = self.slots().keys().map(|k| index_of(k)).max().unwrap_or(0);
        (1..=n as u32)
            .map(|i| format!("{}-{}", self.name(), top + i))
            .collect()
    }

    /// Where instances go: each host of the placement (or this machine,
    /// `None`) with how many instances it carries.
    pub fn placement(&self) -> Vec<(Option<String>, usize)> {
        if self.managed.hosts.is_empty() {
            vec![(None, self.managed.instances as usize)]
        } else {
            self.managed
                .hosts
                .iter()
                .map(|h| (Some(h.clone()), self.managed.instances_per_host as usize))
                .collect()
        }
    }

    /// The host a new instance of `group` goes to: the placement's host
    /// with the fewest instances of that group (the first on a tie), so a
    /// blue/green group lands one instance per host beside the other.
    pub(super) fn place(&self, group: &str) -> Option<String> {
        let slots = self.slots();
        self.placement()
            .into_iter()
            .min_by_key(|(h, _)| {
                slots
                    .values()
                    .filter(|s| s.group == group && &s.host == h)
                    .count()
            })
            .and_then(|(h, _)| h)
    }

    /// Brings the fleet to the placement × the current revision: adopts
    /// what is alive and right, stops what is not, starts the rest.
    pub async fn boot(self: &Arc<Self>) -> Result<(), ControllerError> {
        let revision = self.current_revision();
        self.install_release(&revision).await?;
        let records = self.store.instances(self.name())?;
        self.stop_strays(&records).await;
        let placement = self.placement();
        let room = |host: &Option<String>| {
            placement
                .iter()
                .find(|(h, _)| h == host)
                .map_or(0, |(_, n)| *n)
        };
        let on = |v: &[InstanceRecord], host: &Option<String>| {
            v.iter().filter(|r| &host_of(r) == host).count()
        };
        let mut kept: Vec<InstanceRecord> = Vec::new();
        let mut restart: Vec<InstanceRecord> = Vec::new();
        for rec in records {
            let run = running_of(&rec);
            let host = host_of(&rec);
            let alive = rec.pid != 0 && self.runtime.is_alive(&run);
            let right = rec.revision == revision;
            if alive && right && on(&kept, &host) < room(&host) {
                kept.push(rec);
                continue;
            }
            if alive {
                let why = if !right {
                    format!("runs revision {}, not {revision}", rec.revision)
                } else if room(&host) == 0 {
                    "runs on a host the service no longer uses".to_string()
                } else {
                    "is beyond the configured instance count".to_string()
                };
                self.event(
                    Some(&rec.name),
                    "replaced",
                    &format!("stopping {}: {why}", run.whose()),
                );
                self.runtime.stop(&run, self.managed.stop_grace).await;
            }
            if right && on(&kept, &host) + on(&restart, &host) < room(&host) {
                restart.push(rec);
            } else {
                self.store.delete_instance(self.name(), &rec.name)?;
            }
        }
        let group = kept
            .first()
            .map(|r| r.group.clone())
            .unwrap_or_else(|| FIRST_GROUP.to_string());
        *self.live_group.lock().unwrap_or_else(|e| e.into_inner()) = group.clone();
        self.balancer
            .set_weights(&[(handoff_proxy::DEFAULT_GROUP, 0), (&group, 100)])?;
        for rec in &kept {
            let run = running_of(rec);
            self.event(
                Some(&rec.name),
                "adopted",
                &format!(
                    "adopted live instance {} at {} ({})",
                    run.whose(),
                    run.addr,
                    rec.revision
                ),
            );
            self.slots().insert(
                rec.name.clone(),
                slot(host_of(rec), rec.port, &rec.revision, &group, rec.restarts),
            );
            self.register(&rec.name, run, false, None)?;
            self.supervise(std::slice::from_ref(&rec.name));
        }
        let mut names: Vec<(String, Option<String>, u16, u32)> = restart
            .iter()
            .map(|r| (r.name.clone(), host_of(r), r.port, r.restarts))
            .collect();
        let mut fresh = Vec::new();
        for (host, n) in &placement {
            let have = on(&kept, host) + on(&restart, host);
            for _ in have..*n {
                fresh.push(host.clone());
            }
        }
        for (n, host) in self
            .new_names_after(&kept, &names, fresh.len())
            .into_iter()
            .zip(fresh)
        {
            names.push((n, host, 0, 0));
        }
        let mut starts = Vec::new();
        for (name, host, port, restarts) in names {
            let port = self.port_for(host.as_deref(), port)?;
            self.slots()
                .insert(name.clone(), slot(host, port, &revision, &group, restarts));
            starts.push(self.start_supervised(&name));
        }
        for s in starts {
            let _ = s.await;
        }
        self.balancer.booted();
        self.store.set_current_revision(self.name(), &revision)?;
        self.store
            .set_config_revision(self.name(), &self.managed.revision)?;
        Ok(())
    }

    fn new_names_after(
        &self,
        kept: &[InstanceRecord],
        restart: &[(String, Option<String>, u16, u32)],
        n: usize,
    ) -> Vec<String> {
        let top = kept
            .iter()
            .map(|r| index_of(&r.name))
            .chain(restart.iter().map(|(n, ..)| index_of(n)))
            .chain(self.slots().keys().map(|k| index_of(k)))
            .max()
            .unwrap_or(0);
        (1..=n as u32)
            .map(|i| format!("{}-{}", self.name(), top + i))
            .collect()
    }

    /// A port for an instance on `host`: its old one if still free, else
    /// a new one no other instance there has.
    pub(super) fn port_for(&self, host: Option<&str>, old: u16) -> Result<u16, ControllerError> {
        if old != 0 && self.runtime.port_free(host, old) {
            return Ok(old);
        }
        let taken: Vec<u16> = self
            .slots()
            .values()
            .filter(|s| s.host.as_deref() == host)
            .map(|s| s.port)
            .collect();
        Ok(ports::allocate(self.port_range, &taken)?)
    }

    /// Processes marked with our owner id and service that no record names
    /// (handoff died between spawning them and writing their pid). Adopting
    /// a recorded pid needs no mark: pid and start time are the identity,
    /// and instances started before marks carried an owner id are adopted
    /// too (an upgrade restarts nothing).
    async fn stop_strays(&self, records: &[InstanceRecord]) {
        for run in self.runtime.marked().await {
            if run.service != self.name()
                || records
                    .iter()
                    .any(|r| r.pid == run.pid && host_of(r) == run.host)
            {
                continue;
            }
            self.event(
                Some(&run.instance),
                "stray",
                &format!("stopping unrecorded process {}", run.whose()),
            );
            self.runtime.stop(&run, self.managed.stop_grace).await;
        }
    }

    fn record(
        &self,
        name: &str,
        status: &str,
        run: Option<&RunningInstance>,
    ) -> Result<(), ControllerError> {
        let (host, port, revision, group, restarts) = match self.slots().get(name) {
            Some(s) => (
                s.host.clone().unwrap_or_default(),
                s.port,
                s.revision.clone(),
                s.group.clone(),
                s.restarts,
            ),
            None => return Ok(()),
        };
        self.store.put_instance(&InstanceRecord {
            service: self.name().to_string(),
            name: name.to_string(),
            revision,
            port,
            pid: run.map_or(0, |r| r.pid),
            start_time: run.map_or(0, |r| r.start_time),
            status: status.to_string(),
            restarts,
            group,
            host,
            address: run.map(|r| r.addr.to_string()).unwrap_or_default(),
        })?;
        Ok(())
    }

    /// Stops every instance (after the proxy has stopped taking requests).
    pub async fn shutdown(&self) {
        self.close().await;
        let names: Vec<String> = self.slots().keys().cloned().collect();
        // An outside balancer outlives handoff: each server is drained
        // (its requests finish) before its instance stops. Handoff's own
        // proxy has finished its requests by now.
        if self.proxy.external() {
            self.drain(&names).await;
        }
        self.stop(&names, false).await;
        self.event(None, "stopped", "all instances stopped");
    }
}

fn slot(host: Option<String>, port: u16, revision: &str, group: &str, restarts: u32) -> Slot {
    Slot {
        host,
        port,
        revision: revision.to_string(),
        group: group.to_string(),
        running: None,
        target: None,
        restarts,
        noted: None,
        supervised: false,
        epoch: 0,
        watcher: None,
        last_error: None,
    }
}

/// The host of a record (`None`: this machine).
fn host_of(r: &InstanceRecord) -> Option<String> {
    (!r.host.is_empty()).then(|| r.host.clone())
}

fn running_of(r: &InstanceRecord) -> RunningInstance {
    // Records from before v6 have no address: they are local.
    let addr = r
        .address
        .parse()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], r.port)));
    RunningInstance {
        service: r.service.clone(),
        instance: r.name.clone(),
        revision: r.revision.clone(),
        host: host_of(r),
        addr,
        pid: r.pid,
        start_time: r.start_time,
    }
}
