//! One proxied service: its routing table and the control handle that the
//! daemon (and later the controller) changes it through.
//!
//! Every change builds a new [`RoutingTable`] from the current one and swaps
//! it in whole; the `Arc<Target>`s carry over, so a swap keeps every target's
//! identity, counters, pool and in-flight requests.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use handoff_core::config::{Health, ProxySettings};
use handoff_core::TargetState;
use tokio::sync::broadcast;

use crate::error::ControlError;
use crate::events::TargetEvent;
use crate::metrics::ServiceStats;
use crate::table::{Group, RoutingTable};
use crate::target::{DrainOutcome, Target, TargetId, TargetSpec};

pub const DEFAULT_GROUP: &str = "default";

pub struct ServiceProxy {
    pub name: Arc<str>,
    /// The address from config (its port may be 0); see [`Self::bound`].
    /// `None`: an outside balancer (HAProxy) routes the service, and this
    /// one keeps its books only: the targets, their states (from that
    /// balancer's checks, see [`Target::observe`]), counters and events,
    /// with no listener and no health checker of its own.
    pub listen: Option<SocketAddr>,
    /// On a shared listen address: the hosts and path it takes (see
    /// [`crate::route`]).
    pub domains: Vec<String>,
    pub path_prefix: Option<String>,
    /// HTTPS on `listen`, with this certificate (see [`crate::tls`]).
    pub tls: Option<handoff_core::config::Tls>,
    /// TLS to the targets (`upstream_tls`), for requests and health checks.
    pub upstream: Option<Arc<crate::upstream::UpstreamTls>>,
    /// The certificate in use, once the listener runs (kept current).
    pub(crate) cert: std::sync::OnceLock<Arc<crate::tls::Cert>>,
    /// The address the listener got (port 0 resolved), once started.
    bound: std::sync::OnceLock<SocketAddr>,
    pub settings: ProxySettings,
    pub health: Health,
    table: ArcSwap<RoutingTable>,
    /// Serialises writers; readers never touch it.
    write: Mutex<()>,
    pub(crate) rr: AtomicUsize,
    pub stats: ServiceStats,
    pub(crate) workers: usize,
    events: broadcast::Sender<TargetEvent>,
    /// Under a failing dependency every request wants an ejection the
    /// limit refuses: one line per interval says so, not one per request.
    limited_log: LogLimit,
}

impl ServiceProxy {
    /// The address clients connect to: the bound one once the listener
    /// started (a configured port 0 resolved), else the configured one.
    pub fn bound(&self) -> Option<SocketAddr> {
        self.bound.get().copied()
    }

    /// The certificate it presents now (names, expiry), with TLS.
    pub fn certificate(&self) -> Option<Arc<crate::tls::Loaded>> {
        self.cert.get().map(|c| c.current())
    }

    /// Reads the certificate files again now if they changed (the ACME
    /// manager after writing them, instead of waiting for the watcher).
    pub fn reload_certificate(&self) -> Option<Result<(), crate::tls::TlsError>> {
        self.cert.get().and_then(|c| c.refresh())
    }

    /// Another balancer routes this service (see `listen`).
    pub fn external(&self) -> bool {
        self.listen.is_none()
    }

    pub(crate) fn set_bound(&self, addr: SocketAddr) {
        let _ = self.bound.set(addr);
    }
}

impl std::fmt::Debug for ServiceProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceProxy")
            .field("name", &self.name)
            .finish()
    }
}

impl ServiceProxy {
    pub(crate) fn new(
        name: &str,
        listen: Option<SocketAddr>,
        settings: ProxySettings,
        health: Health,
        workers: usize,
        events: broadcast::Sender<TargetEvent>,
    ) -> Arc<Self> {
        Arc::new(ServiceProxy {
            name: name.into(),
            listen,
            domains: Vec::new(),
            path_prefix: None,
            tls: None,
            upstream: None,
            cert: std::sync::OnceLock::new(),
            bound: std::sync::OnceLock::new(),
            settings,
            health,
            table: ArcSwap::from_pointee(RoutingTable {
                groups: vec![Group {
                    name: DEFAULT_GROUP.into(),
                    weight: 100,
                    targets: Vec::new(),
                }],
            }),
            write: Mutex::new(()),
            rr: AtomicUsize::new(0),
            stats: ServiceStats::default(),
            workers,
            events,
            limited_log: LogLimit::new(LIMITED_LOG_EVERY),
        })
    }

    /// The current routing table (a cheap snapshot).
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    pub(crate) fn table_guard(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.table.load()
    }

    fn update(
        &self,
        f: impl FnOnce(&mut RoutingTable) -> Result<(), ControlError>,
    ) -> Result<(), ControlError> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = RoutingTable::clone(&self.table.load());
        f(&mut next)?;
        self.table.store(Arc::new(next));
        Ok(())
    }

    /// Registers a new target in `group` (created with weight 0 if new).
    ///
    /// The target starts `initial` and gets traffic only after its health
    /// checks pass (`healthy` at once when active checks are disabled). Its
    /// health checker runs on the caller's tokio runtime.
    pub fn add_target(
        self: &Arc<Self>,
        group: &str,
        spec: TargetSpec,
    ) -> Result<Arc<Target>, ControlError> {
        let initial = if self.health.enabled || spec.hold || self.external() {
            TargetState::Initial
        } else {
            TargetState::Healthy
        };
        let target = Target::new(
            &spec,
            self.name.clone(),
            group.into(),
            self.workers,
            initial,
            self.events.clone(),
        );
        self.update(|t| {
            if let Some((g, _)) = t.targets().find(|(_, x)| x.addr == spec.addr) {
                return Err(ControlError::DuplicateTarget {
                    service: self.name.to_string(),
                    addr: spec.addr,
                    group: g.name.to_string(),
                });
            }
            match t.groups.iter_mut().find(|g| &*g.name == group) {
                Some(g) => g.targets.push(target.clone()),
                None => t.groups.push(Group {
                    name: group.into(),
                    weight: 0,
                    targets: vec![target.clone()],
                }),
            }
            Ok(())
        })?;
        if self.external() {
            // The outside balancer's checks decide (`Target::observe`).
            return Ok(target);
        }
        if !self.health.enabled {
            target.note_passed();
        }
        if spec.hold && !self.health.enabled {
            target.set_ready(true);
        }
        if initial == TargetState::Healthy {
            // Straight into service (active checks off): subscribers still
            // see it enter, as they would after passing its checks.
            target.emit(
                TargetState::Initial,
                TargetState::Healthy,
                "registered; active health checks are off",
            );
        }
        crate::health::spawn(self.clone(), target.clone());
        Ok(target)
    }

    /// Sets the weight of each named group (creating it if needed); groups
    /// not named keep theirs. Groups left empty with weight 0 are dropped.
    /// One swap: a blue/green flip takes effect for the next request.
    pub fn set_weights(&self, weights: &[(&str, u32)]) -> Result<(), ControlError> {
        self.update(|t| {
            for (name, w) in weights {
                match t.groups.iter_mut().find(|g| &*g.name == *name) {
                    Some(g) => g.weight = *w,
                    None => t.groups.push(Group {
                        name: (*name).into(),
                        weight: *w,
                        targets: Vec::new(),
                    }),
                }
            }
            t.groups.retain(|g| !g.targets.is_empty() || g.weight > 0);
            Ok(())
        })
    }

    /// Waits until no request is in flight on `group`'s targets (after its
    /// weight went to 0), or `timeout`; returns how many were still open.
    /// Unlike a drain, the targets stay registered and healthy, so putting
    /// the weight back is instant.
    pub async fn quiesce(&self, group: &str, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let open: u64 = self
                .table()
                .groups
                .iter()
                .filter(|g| &*g.name == group)
                .flat_map(|g| g.targets.iter())
                .map(|t| t.in_flight())
                .sum();
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn target(&self, id: TargetId) -> Result<Arc<Target>, ControlError> {
        self.table
            .load()
            .find(id)
            .cloned()
            .ok_or_else(|| ControlError::UnknownTarget {
                service: self.name.to_string(),
                target: id,
            })
    }

    /// Stops new requests to the target at once and waits until its in-flight
    /// requests finish or `timeout` passes. The target stays listed (state
    /// `unused`) until [`remove`](Self::remove), so its counters stay visible.
    pub async fn drain(
        &self,
        id: TargetId,
        timeout: Duration,
    ) -> Result<DrainOutcome, ControlError> {
        let t = self.target(id)?;
        let out = t.drain(timeout).await;
        tracing::info!(service = %self.name, target = %t.name, ?out, "drain finished");
        Ok(out)
    }

    /// Drops the target from the table. A target still in service is drained
    /// with the service's drain timeout first, so removal never cuts requests.
    pub async fn remove(
        &self,
        id: TargetId,
        drain_timeout: Duration,
    ) -> Result<DrainOutcome, ControlError> {
        let t = self.target(id)?;
        let out = if t.state() == TargetState::Unused {
            DrainOutcome::Drained {
                waited: Duration::ZERO,
            }
        } else {
            t.drain(drain_timeout).await
        };
        self.update(|tab| {
            for g in tab.groups.iter_mut() {
                g.targets.retain(|x| x.id != id);
            }
            // Groups that can no longer serve anything are dropped.
            tab.groups.retain(|g| !g.targets.is_empty() || g.weight > 0);
            Ok(())
        })?;
        // After the swap: a reader may see the total dip for a moment,
        // never count the target twice.
        self.stats
            .retired_requests
            .fetch_add(t.stats.requests(), std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    /// Requests answered so far by every target the service has had.
    /// Monotonic but for a moment during a removal (see `remove`).
    pub fn requests_total(&self) -> u64 {
        let live: u64 = self
            .table()
            .targets()
            .map(|(_, t)| t.stats.requests())
            .sum();
        live + self
            .stats
            .retired_requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes a target out of service at once because it is known dead (its
    /// process exited): no waiting for health checks to notice.
    pub fn mark_unhealthy(&self, id: TargetId, reason: &str) {
        if let Ok(t) = self.target(id) {
            for from in [TargetState::Healthy, TargetState::Initial] {
                if t.transition(from, TargetState::Unhealthy, reason) {
                    break;
                }
            }
        }
    }

    /// The target's host stopped answering: out of service at once, and
    /// requests in flight on it stop waiting (an idempotent one is sent
    /// to another target, as after a connection closed without answer).
    pub fn abandon(&self, id: TargetId, reason: &str) {
        self.mark_unhealthy(id, reason);
        if let Ok(t) = self.target(id) {
            t.abandon();
        }
    }

    /// Undoes [`Self::abandon`] once the target's host answers again; its
    /// health checks decide when it serves.
    pub fn restore(&self, id: TargetId) {
        if let Ok(t) = self.target(id) {
            t.restore();
        }
    }

    /// Target state changes of this proxy (all services), in order.
    /// Real traffic failed on `t` (connect error, timeout or 5xx): counts
    /// towards its passive ejection, which `health.max_ejection_percent`
    /// limits per group. One target may always go; beyond that, a failure
    /// that many targets share is more likely the app's dependency than the
    /// targets, and their own answers beat handoff's 503.
    pub(crate) fn passive_failure(&self, t: &Target) {
        let h = &self.health;
        t.passive_failure(h.passive_failures, h.ejection_time, h.max_ejection_time, || {
            let table = self.table();
            let Some(g) = table.groups.iter().find(|g| g.name == t.group) else {
                return true;
            };
            let registered = g.targets.iter().filter(|x| x.state().is_registered()).count();
            let ejected = g.targets.iter().filter(|x| x.ejected()).count();
            let ok = ejected == 0 || (ejected + 1) * 100 <= h.max_ejection_percent as usize * registered;
            if !ok {
                self.stats
                    .ejections_limited
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(skipped) = self.limited_log.allow(std::time::Instant::now()) {
                    let more = if skipped > 0 {
                        format!(
                            " ({skipped} more refused since the last such line; handoff_proxy_errors_total{{reason=\"ejection_limited\"}} counts them all)"
                        )
                    } else {
                        String::new()
                    };
                    tracing::warn!(service = %self.name, target = %t.name, ejected, of = registered,
                        "not ejected: max_ejection_percent {}% of the group is out already{more}",
                        h.max_ejection_percent);
                }
            }
            ok
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<TargetEvent> {
        self.events.subscribe()
    }
}

/// The shortest gap between two "not ejected" lines of one service.
const LIMITED_LOG_EVERY: Duration = Duration::from_secs(10);

/// At most one log line per `every`; counts the lines left out meanwhile.
pub(crate) struct LogLimit {
    every: Duration,
    last: Mutex<Option<std::time::Instant>>,
    skipped: std::sync::atomic::AtomicU64,
}

impl LogLimit {
    pub(crate) fn new(every: Duration) -> Self {
        LogLimit {
            every,
            last: Mutex::new(None),
            skipped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` if a line may be logged
    /// at `now`; `None` (and one more left out) otherwise.
    pub(crate) fn allow(&self, now: std::time::Instant) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(at) if now.saturating_duration_since(at) < self.every => {
                self.skipped.fetch_add(1, Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.skipped.swap(0, Relaxed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refused_ejections_logs_one_line_per_interval() {
        let l = LogLimit::new(Duration::from_secs(10));
        let t0 = std::time::Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        // 4,853 more within 15 s: one more line, at the 10 s mark, which
        // says how many it stands for.
        let mut lines = Vec::new();
        for i in 1..4854u64 {
            if let Some(n) = l.allow(t0 + Duration::from_micros(i * 3090)) {
                lines.push(n);
            }
        }
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0] > 3000, "{lines:?}");
    }
}
