//! A target: one upstream address the proxy may route to, with everything
//! that must survive routing-table swaps (state, in-flight, counters, pools).
//!
//! Targets are shared as `Arc<Target>` between every table snapshot that
//! lists them, the health checker and the control handle, so a swap never
//! resets a counter or loses an in-flight request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handoff_core::TargetState;
use hyper::client::conn::http1::SendRequest;
use tokio::sync::{broadcast, Notify};

use crate::body::ReqBody;
use crate::events::TargetEvent;
use crate::health::LastCheck;
use crate::idle::IdlePool;
use crate::metrics::TargetStats;
use crate::upstream::Upstream;

/// Unique for the life of the process; never reused.
pub type TargetId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What the control plane says when it adds a target.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub addr: SocketAddr,
    /// Revision label for metrics and reports (`"static"` for fixed targets).
    pub revision: String,
    /// Human name, e.g. the instance id (`web-1`) or the address.
    pub name: String,
    /// Keep it out of service even once its checks pass, until
    /// [`Target::release`] (hooks run before it takes traffic).
    pub hold: bool,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// In-flight reached 0 after `waited`.
    Drained { waited: Duration },
    /// The timeout passed with `in_flight` requests or tunnels still open;
    /// tunnels were cut.
    TimedOut { in_flight: u64 },
}

pub struct Target {
    pub id: TargetId,
    pub addr: SocketAddr,
    pub service: Arc<str>,
    pub group: Arc<str>,
    pub revision: Arc<str>,
    pub name: Arc<str>,
    state: AtomicU8,
    in_flight: AtomicU64,
    /// Held out of service until released (see `TargetSpec::hold`).
    held: std::sync::atomic::AtomicBool,
    /// Held, and its checks pass: would be healthy if released.
    ready: std::sync::atomic::AtomicBool,
    /// Consecutive connect failures / 5xx seen on real traffic.
    passive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Ejected until this many ms after `epoch`; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// When its checks first passed, in ms after `epoch` (its registration);
    /// `u64::MAX` until then. The start-up time `handoff plan` learns from.
    passed_ms: AtomicU64,
    /// The last active health check's outcome: what `status`, `deploy` and
    /// a failed deployment show for a target that does not get healthy.
    last_check: Mutex<Option<LastCheck>>,
    epoch: Instant,
    /// Woken when in-flight drops to 0 while draining.
    drained: Notify,
    /// Woken when a drain times out: open tunnels close.
    cut: Notify,
    /// Set (and `gone` woken) when the target's host stopped answering:
    /// requests waiting on it give up at once and idempotent ones go
    /// elsewhere, instead of waiting for a response that cannot come.
    /// Cleared when the host answers again (`restore`), not by a passed
    /// check: with checks off an ejection's end would bring it back.
    lost: std::sync::atomic::AtomicBool,
    gone: Notify,
    /// Idle upstream connections, one shard per proxy worker so that a worker
    /// only touches connections whose tasks live on its own runtime.
    pools: Box<[Mutex<IdlePool<SendRequest<ReqBody>>>]>,
    /// The fast path's idle connections: bare sockets, no buffer held.
    raw_pools: Box<[Mutex<IdlePool<Upstream>>]>,
    pub stats: TargetStats,
    events: broadcast::Sender<TargetEvent>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("name", &self.name)
            .field("state", &self.state())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Target {
    pub(crate) fn new(
        spec: &TargetSpec,
        service: Arc<str>,
        group: Arc<str>,
        workers: usize,
        initial: TargetState,
        events: broadcast::Sender<TargetEvent>,
    ) -> Arc<Target> {
        Arc::new(Target {
            id: NEXT_ID.fetch_add(1, Relaxed),
            addr: spec.addr,
            service,
            group,
            revision: spec.revision.as_str().into(),
            name: spec.name.as_str().into(),
            state: AtomicU8::new(initial as u8),
            in_flight: AtomicU64::new(0),
            held: std::sync::atomic::AtomicBool::new(spec.hold),
            ready: std::sync::atomic::AtomicBool::new(false),
            passive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            passed_ms: AtomicU64::new(u64::MAX),
            last_check: Mutex::new(None),
            epoch: Instant::now(),
            drained: Notify::new(),
            cut: Notify::new(),
            lost: std::sync::atomic::AtomicBool::new(false),
            gone: Notify::new(),
            pools: (0..workers.max(1))
                .map(|_| Mutex::new(IdlePool::default()))
                .collect(),
            raw_pools: (0..workers.max(1))
                .map(|_| Mutex::new(IdlePool::default()))
                .collect(),
            stats: TargetStats::default(),
            events,
        })
    }

    pub fn state(&self) -> TargetState {
        TargetState::from_u8(self.state.load(SeqCst))
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(SeqCst)
    }

    pub fn is_held(&self) -> bool {
        self.held.load(SeqCst)
    }

    /// Held and passing its checks.
    pub fn is_ready(&self) -> bool {
        self.ready.load(SeqCst)
    }

    /// How long after registration its checks first passed (held or not).
    pub fn first_passed(&self) -> Option<Duration> {
        match self.passed_ms.load(SeqCst) {
            u64::MAX => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The last health check in words, e.g. `GET /healthz → 503 (4 in a
    /// row)`; `None` before the first one (or with active checks off).
    pub fn last_check(&self) -> Option<String> {
        self.last_check
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.to_string())
    }

    /// Whether the last health check passed; `None` before the first.
    pub fn last_check_ok(&self) -> Option<bool> {
        self.last_check
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.ok)
    }

    pub(crate) fn note_check(&self, outcome: String, ok: bool) {
        let mut last = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some(LastCheck::next(last.as_ref(), outcome, ok));
    }

    pub(crate) fn note_passed(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        let _ = self
            .passed_ms
            .compare_exchange(u64::MAX, ms, SeqCst, SeqCst);
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, SeqCst);
    }

    /// Held checks passed. A release may land between the checker's
    /// `is_held()` and this store; both sides take `ready` with a swap, so
    /// exactly one of them moves the target into service, without waiting
    /// for another probe.
    pub(crate) fn mark_ready(&self) {
        self.ready.store(true, SeqCst);
        if !self.is_held() && self.ready.swap(false, SeqCst) {
            self.transition(
                TargetState::Initial,
                TargetState::Healthy,
                "health checks passed; released into service",
            );
        }
    }

    /// Lets a held target into service: at once if its checks already pass,
    /// else as soon as they do.
    pub fn release_into_service(&self) {
        self.held.store(false, SeqCst);
        if self.ready.swap(false, SeqCst) {
            self.transition(
                TargetState::Initial,
                TargetState::Healthy,
                "health checks passed; released into service",
            );
        }
    }

    /// Moves `from → to` only if the target is still in `from`; returns whether
    /// it did and emits the event. Health checks and drains race on the same
    /// target, so every transition is a compare-exchange: a checker can never
    /// move a draining target back into service.
    pub(crate) fn transition(&self, from: TargetState, to: TargetState, reason: &str) -> bool {
        let ok = self
            .state
            .compare_exchange(from as u8, to as u8, SeqCst, SeqCst)
            .is_ok();
        if ok {
            self.emit(from, to, reason);
        }
        ok
    }

    /// What an outside balancer (HAProxy) says of the target after its own
    /// checks, for a service this proxy only keeps the books of: `up` once
    /// they pass (a held target becomes ready, else it enters service),
    /// down once they fail enough. `said` is the check in words.
    pub fn observe(&self, up: bool, said: &str) {
        let changed = {
            let last = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
            last.as_ref()
                .is_none_or(|c| c.ok != up || c.outcome != said)
        };
        if changed {
            self.note_check(said.to_string(), up);
        }
        match (self.state(), up) {
            (TargetState::Initial, true) => {
                self.note_passed();
                // Into service unless held; a release racing this sees
                // `ready` (see `mark_ready`).
                self.mark_ready();
            }
            (TargetState::Initial, false) => self.set_ready(false),
            (TargetState::Unhealthy, true) if !self.lost.load(SeqCst) => {
                self.transition(TargetState::Unhealthy, TargetState::Healthy, said);
            }
            (TargetState::Healthy, false) => {
                self.transition(TargetState::Healthy, TargetState::Unhealthy, said);
            }
            _ => {}
        }
    }

    /// Its host is gone: what waits on it stops waiting (see `abandoned`),
    /// and its idle connections are dropped.
    pub(crate) fn abandon(&self) {
        self.lost.store(true, SeqCst);
        self.gone.notify_waiters();
        for p in self.pools.iter() {
            p.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        for p in self.raw_pools.iter() {
            p.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// Whether its host is lost ([`Self::abandon`]).
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(SeqCst)
    }

    /// Its host answers again (see `abandon`).
    pub(crate) fn restore(&self) {
        self.lost.store(false, SeqCst);
    }

    /// Resolves once the target is abandoned (at once if it is).
    pub(crate) async fn abandoned(&self) {
        loop {
            let n = self.gone.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_lost() {
                return;
            }
            n.await;
        }
    }

    pub(crate) fn emit(&self, from: TargetState, to: TargetState, reason: &str) {
        tracing::info!(service = %self.service, target = %self.name, addr = %self.addr,
            from = %from, to = %to, reason, "target state");
        let _ = self.events.send(TargetEvent {
            service: self.service.to_string(),
            target: self.id,
            name: self.name.to_string(),
            addr: self.addr,
            revision: self.revision.to_string(),
            from,
            to,
            reason: reason.to_string(),
        });
    }

    /// Claims a request slot if the target is in service.
    ///
    /// The increment comes *before* the state check, both SeqCst, and drain
    /// stores `Draining` *before* reading in-flight: so either this request
    /// sees `Draining` and backs out, or drain sees the increment and waits
    /// for it. No request can slip in after a drain has read zero.
    pub(crate) fn acquire(self: &Arc<Self>) -> Option<InFlight> {
        self.in_flight.fetch_add(1, SeqCst);
        if self.state.load(SeqCst) == TargetState::Healthy as u8 {
            Some(InFlight(self.clone()))
        } else {
            self.release_slot();
            None
        }
    }

    fn release_slot(&self) {
        if self.in_flight.fetch_sub(1, SeqCst) == 1 && !self.state().is_registered() {
            self.drained.notify_waiters();
        }
    }

    /// Deregisters the target and waits for in-flight requests to finish.
    pub async fn drain(&self, timeout: Duration) -> DrainOutcome {
        let started = Instant::now();
        let prev = TargetState::from_u8(self.state.swap(TargetState::Draining as u8, SeqCst));
        if prev != TargetState::Draining {
            self.emit(prev, TargetState::Draining, "deregistered");
        }
        // Idle pooled connections carry no request; closing them now lets the
        // app shut down without waiting for our keep-alive to expire.
        self.close_idle();
        let deadline = tokio::time::Instant::now() + timeout;
        let outcome = loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let n = self.in_flight();
            if n == 0 {
                break DrainOutcome::Drained {
                    waited: started.elapsed(),
                };
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let n = self.in_flight();
                if n == 0 {
                    break DrainOutcome::Drained {
                        waited: started.elapsed(),
                    };
                }
                self.cut.notify_waiters();
                break DrainOutcome::TimedOut { in_flight: n };
            }
        };
        // Connections returned while draining were refused by `checkin`, but
        // one may have raced in between its state check and the push.
        self.close_idle();
        if self.state.swap(TargetState::Unused as u8, SeqCst) == TargetState::Draining as u8 {
            let why = match outcome {
                DrainOutcome::Drained { .. } => "drained",
                DrainOutcome::TimedOut { .. } => "drain timed out",
            };
            self.emit(TargetState::Draining, TargetState::Unused, why);
        }
        outcome
    }

    /// Resolves when a drain times out (tunnels select on this).
    pub(crate) async fn cut(&self) {
        self.cut.notified().await
    }

    pub(crate) fn close_idle(&self) {
        for shard in self.pools.iter() {
            let idle = std::mem::take(&mut *shard.lock().unwrap_or_else(|e| e.into_inner()));
            drop(idle);
        }
        for shard in self.raw_pools.iter() {
            let idle = std::mem::take(&mut *shard.lock().unwrap_or_else(|e| e.into_inner()));
            drop(idle);
        }
    }

    /// Takes a live idle connection made by this worker, oldest first
    /// (see [`crate::idle`]).
    pub(crate) fn checkout(&self, worker: usize) -> Option<SendRequest<ReqBody>> {
        let shard = self.pools.get(worker)?;
        let mut idle = shard.lock().unwrap_or_else(|e| e.into_inner());
        idle.take(Instant::now(), |c| !c.is_closed())
    }

    /// Returns a connection for reuse, unless the target left service: a
    /// draining target's connections must close, not linger in the pool.
    pub(crate) fn checkin(&self, worker: usize, conn: SendRequest<ReqBody>) {
        if !self.state().is_registered() || conn.is_closed() {
            return;
        }
        if let Some(shard) = self.pools.get(worker) {
            let mut idle = shard.lock().unwrap_or_else(|e| e.into_inner());
            idle.put(conn, Instant::now());
        }
    }

    /// Takes a live idle fast-path connection made by this worker, oldest
    /// first (see [`crate::idle`]). One the target closed meanwhile is
    /// dropped here, before a request is written into it.
    pub(crate) fn checkout_raw(&self, worker: usize) -> Option<Upstream> {
        let shard = self.raw_pools.get(worker)?;
        let mut idle = shard.lock().unwrap_or_else(|e| e.into_inner());
        idle.take(Instant::now(), |c| c.alive())
    }

    /// [`Self::checkin`] for the fast path.
    pub(crate) fn checkin_raw(&self, worker: usize, conn: Upstream) {
        if !self.state().is_registered() {
            return;
        }
        if let Some(shard) = self.raw_pools.get(worker) {
            let mut idle = shard.lock().unwrap_or_else(|e| e.into_inner());
            idle.put(conn, Instant::now());
        }
    }

    /// Idle pooled upstream connections to this target, across workers.
    pub fn idle_connections(&self) -> usize {
        fn count<T>(p: &[Mutex<IdlePool<T>>]) -> usize {
            p.iter()
                .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
                .sum()
        }
        count(&self.pools) + count(&self.raw_pools)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a passive ejection is still running.
    pub fn ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Relaxed);
        until != 0 && self.now_ms() < until
    }

    /// Real traffic succeeded: the failure streak ends.
    pub(crate) fn passive_ok(&self) {
        if self.passive_failures.load(Relaxed) != 0 {
            self.passive_failures.store(0, Relaxed);
        }
    }

    /// Real traffic failed (connect error or 5xx). After `limit` in a row the
    /// target is ejected for `base * 2^(ejections)`, capped at `max`.
    /// Returns the ejection length when this call ejected it.
    /// `may_eject` is asked only then (it reads the routing table).
    pub(crate) fn passive_failure(
        &self,
        limit: u32,
        base: Duration,
        max: Duration,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Duration> {
        let n = self.passive_failures.fetch_add(1, Relaxed) + 1;
        if n < limit || self.state() != TargetState::Healthy || !may_eject() {
            return None;
        }
        let k = self.ejections.fetch_add(1, Relaxed).min(16);
        let len = base.saturating_mul(1 << k).min(max);
        self.ejected_until_ms
            .store(self.now_ms() + len.as_millis() as u64, Relaxed);
        self.passive_failures.store(0, Relaxed);
        self.transition(
            TargetState::Healthy,
            TargetState::Unhealthy,
            &format!(
                "ejected for {}: {n} failures in a row",
                handoff_core::duration::format(len)
            ),
        )
        .then_some(len)
    }

    /// A target that stayed healthy after an ejection earns its back-off back.
    pub(crate) fn forgive_ejections(&self) {
        self.ejections.store(0, Relaxed);
    }
}

/// One claimed request slot; releasing it may complete a drain.
pub(crate) struct InFlight(pub(crate) Arc<Target>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.release_slot();
    }
}
