//! A backend of the user's HAProxy as the balancer (issue #15).
//!
//! handoff owns the servers named `handoff-OWNER-INSTANCE` in the backend
//! (OWNER: the first 8 characters of the state dir's owner id) and nothing
//! else: a server the user wrote in the config or added by hand, or one of
//! a second handoff daemon, is never touched (the client is
//! [`Client::owned_by`] that prefix).
//!
//! One *sync pass* ([`pass`], every 100 ms and at once when asked) reads
//! the backend's `show stat` and makes HAProxy match the books:
//! - a target in the books without its server gets one (`add server …
//!   weight 0 check` → `enable health` → `state ready`): at weight 0 it
//!   is checked by HAProxy but takes no request. That is also how servers
//!   lost to a HAProxy reload come back;
//! - HAProxy's check results move the target's state in the books
//!   ([`Target::observe`]), which emits the same events as the built-in
//!   proxy's checker; its per-server counters become the target's;
//! - each server gets the weight its target should have: 0 unless the
//!   books say healthy and HAProxy has checked it, else its group's share
//!   split over the group's healthy servers (see [`server_weight`]);
//! - once the fleet has adopted what it had ([`Balancer::booted`]), an
//!   owned server that no target claims for [`STRAY_AFTER`] (a
//!   half-finished replacement of a killed daemon) is drained and deleted.
//!
//! Drains go through HAProxy's own sequence: `state drain` → current
//! sessions (`scur`) reach 0 or the drain timeout → `state maint` → `del
//! server`. Nothing in flight is cut unless the timeout passes first.

mod pass;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use handoff_core::config::Health;
use handoff_core::TargetState;
use handoff_haproxy::{AddOptions, Client, Error, Ownership, ServerStat, Socket, State};
use handoff_proxy::{ControlError, DrainOutcome, ServiceProxy, Target, TargetId, TargetSpec};
use tokio::sync::Notify;

use super::{Balancer, BalancerError};

/// How often the backend is read when nothing asks sooner.
const PASS_EVERY: Duration = Duration::from_millis(100);
/// An owned server no target claims is removed after this long.
pub const STRAY_AFTER: Duration = Duration::from_secs(10);
/// How much of the owner id goes into server names.
const OWNER_CHARS: usize = 8;

pub struct HaproxyBalancer {
    books: Arc<ServiceProxy>,
    client: Client,
    /// `handoff-OWNER-`: the names of this daemon's servers.
    prefix: String,
    backend: String,
    socket: String,
    add: AddOptions,
    drain_timeout: Duration,
    /// Held by a sync pass and around the commands that change a server's
    /// existence or admin state, so a pass acts on what it read.
    gate: tokio::sync::Mutex<()>,
    kick: Notify,
    known: Mutex<Known>,
    /// No sync passes while set (see [`Balancer::suspend`]).
    suspended: std::sync::atomic::AtomicBool,
}

/// What the balancer remembers between passes.
#[derive(Default)]
struct Known {
    /// Servers being drained or deleted, with how many operations hold
    /// them: no pass adds, readies or weighs them meanwhile.
    leaving: BTreeMap<String, usize>,
    /// Owned servers no target claims, since when (counted from boot).
    strays: BTreeMap<String, Instant>,
    /// Taken out by handoff (its process exited) while HAProxy may still
    /// say UP: HAProxy's UP does not put it back until HAProxy has seen
    /// it DOWN once.
    downed: BTreeSet<String>,
    /// Per server: counters carried over HAProxy's resets (a server added
    /// again starts from 0) and the last raw reading.
    counters: BTreeMap<String, Counter>,
    /// When the fleet finished adopting; no sweep before.
    booted: Option<Instant>,
    /// The last pass's failure, logged once until a pass succeeds.
    failing: Option<String>,
}

#[derive(Default, Clone, Copy)]
struct Counter {
    base: [u64; 5],
    last: [u64; 5],
}

impl Counter {
    /// The total so far, given HAProxy's raw counters now: any counter
    /// going down means HAProxy started the server afresh.
    fn total(&mut self, raw: [u64; 5]) -> [u64; 5] {
        if raw.iter().zip(self.last).any(|(r, l)| *r < l) {
            for (b, l) in self.base.iter_mut().zip(self.last) {
                *b += l;
            }
        }
        self.last = raw;
        std::array::from_fn(|i| self.base[i] + raw[i])
    }
}

impl HaproxyBalancer {
    /// Connects to HAProxy's runtime API at `socket` (checking version and
    /// level), checks that `backend` exists and allows servers added at run
    /// time, and starts the sync passes. `owner`: the state dir's owner id.
    pub async fn connect(
        books: Arc<ServiceProxy>,
        owner: &str,
        socket: &str,
        backend: &str,
        health: &Health,
        drain_timeout: Duration,
    ) -> Result<Arc<HaproxyBalancer>, BalancerError> {
        let err = |source| BalancerError::Haproxy {
            backend: backend.to_string(),
            socket: socket.to_string(),
            problem: Box::new(source),
        };
        let parsed: Socket = socket.parse().map_err(err)?;
        let owner: String = owner.chars().take(OWNER_CHARS).collect();
        let prefix = format!("handoff-{owner}-");
        let client = Client::connect_check(parsed)
            .await
            .map_err(err)?
            .owned_by(Ownership::new(&prefix).map_err(err)?);
        if !client.backend_exists(backend).await.map_err(err)? {
            return Err(err(Error::BackendUnknown {
                backend: backend.to_string(),
            }));
        }
        if client.backend_algo(backend).await.map_err(err)?.as_deref() == Some("static-rr") {
            return Err(err(Error::StaticBalance {
                backend: backend.to_string(),
            }));
        }
        let add = AddOptions {
            check: health.enabled,
            inter: Some(health.interval),
            rise: Some(health.healthy_threshold.max(1)),
            fall: Some(health.unhealthy_threshold.max(1)),
            weight: Some(0),
            extra: Vec::new(),
        };
        let b = Arc::new(HaproxyBalancer {
            books,
            client,
            prefix,
            backend: backend.to_string(),
            socket: socket.to_string(),
            add,
            drain_timeout,
            gate: tokio::sync::Mutex::new(()),
            kick: Notify::new(),
            known: Mutex::new(Known::default()),
            suspended: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(run(Arc::downgrade(&b)));
        Ok(b)
    }

    fn err(&self, source: Error) -> BalancerError {
        BalancerError::Haproxy {
            backend: self.backend.clone(),
            socket: self.socket.clone(),
            problem: Box::new(source),
        }
    }

    fn server_name(&self, t: &Target) -> String {
        format!("{}{}", self.prefix, t.name)
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `name` as leaving for one more operation.
    fn hold(&self, name: &str) {
        *self.known().leaving.entry(name.to_string()).or_insert(0) += 1;
    }

    /// One operation on `name` is over; the last one forgets the server.
    fn unhold(&self, name: &str) {
        let mut k = self.known();
        if let Some(n) = k.leaving.get_mut(name) {
            *n -= 1;
            if *n == 0 {
                k.leaving.remove(name);
                k.downed.remove(name);
                k.counters.remove(name);
            }
        }
    }

    /// The target's figures from a `show stat` row.
    fn count(&self, t: &Target, name: &str, row: &ServerStat) {
        let raw = [
            row.hrsp_1xx,
            row.hrsp_2xx,
            row.hrsp_3xx,
            row.hrsp_4xx,
            row.hrsp_5xx,
        ];
        let total = self
            .known()
            .counters
            .entry(name.to_string())
            .or_default()
            .total(raw);
        t.stats.observe(total, row.rtime);
    }

    /// Drains and deletes a server no target owns, in the background.
    fn retire(self: &Arc<Self>, name: String, addr: Option<String>) {
        if self.known().leaving.contains_key(&name) {
            return;
        }
        self.hold(&name);
        tracing::info!(backend = %self.backend, server = %name, addr = ?addr,
            "haproxy: removing a server of ours that no instance claims");
        let me = self.clone();
        tokio::spawn(async move {
            let r = async {
                me.client
                    .drain(&me.backend, &name, me.drain_timeout)
                    .await?;
                let _gate = me.gate.lock().await;
                me.client.delete(&me.backend, &name).await
            }
            .await;
            if let Err(e) = r {
                if !matches!(e, Error::ServerUnknown { .. }) {
                    tracing::warn!(backend = %me.backend, server = %name, error = %e,
                        "haproxy: could not remove the server; retried later");
                }
            }
            me.unhold(&name);
        });
    }

    /// The target leaves service in the books at once, then its server is
    /// drained in HAProxy. The caller holds `name` (see [`Self::hold`]).
    async fn drain_server(
        &self,
        t: &Arc<Target>,
        name: &str,
        timeout: Duration,
    ) -> Result<DrainOutcome, BalancerError> {
        // Nothing is in flight through the books: this only moves the
        // state (and says so).
        t.drain(Duration::ZERO).await;
        {
            // Under the gate: a pass never readies it after this.
            let _gate = self.gate.lock().await;
            match self
                .client
                .set_state(&self.backend, name, State::Drain)
                .await
            {
                Ok(()) => {}
                // Never added (removed before a pass got to it), or lost
                // with a reload: nothing to drain.
                Err(Error::ServerUnknown { .. }) => {
                    return Ok(DrainOutcome::Drained {
                        waited: Duration::ZERO,
                    })
                }
                Err(e) => return Err(self.err(e)),
            }
        }
        match self.client.drain(&self.backend, name, timeout).await {
            Ok(r) if r.timed_out => Ok(DrainOutcome::TimedOut { in_flight: r.cut }),
            Ok(r) => Ok(DrainOutcome::Drained { waited: r.waited }),
            Err(Error::ServerUnknown { .. }) => Ok(DrainOutcome::Drained {
                waited: Duration::ZERO,
            }),
            Err(e) => Err(self.err(e)),
        }
    }
}

/// The sync passes, for as long as the balancer lives.
async fn run(me: Weak<HaproxyBalancer>) {
    loop {
        let Some(b) = me.upgrade() else { return };
        if b.suspended.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = tokio::time::timeout(PASS_EVERY, b.kick.notified()).await;
            continue;
        }
        let r = b.pass().await;
        {
            let mut k = b.known();
            match r {
                Ok(()) => {
                    if k.failing.take().is_some() {
                        tracing::info!(backend = %b.backend, "haproxy: reachable again; in sync");
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    if k.failing.as_deref() != Some(text.as_str()) {
                        tracing::warn!(backend = %b.backend, error = %text,
                            "haproxy: cannot sync the backend; HAProxy keeps routing by its own checks meanwhile");
                        k.failing = Some(text);
                    }
                }
            }
        }
        let _ = tokio::time::timeout(PASS_EVERY, b.kick.notified()).await;
    }
}

impl Balancer for Arc<HaproxyBalancer> {
    fn books(&self) -> &Arc<ServiceProxy> {
        &self.books
    }

    fn describe(&self) -> String {
        format!("haproxy backend {} via {}", self.backend, self.socket)
    }

    fn add(&self, group: &str, spec: TargetSpec) -> Result<Arc<Target>, ControlError> {
        let t = self.books.add_target(group, spec)?;
        self.kick.notify_one();
        Ok(t)
    }

    fn drain(
        &self,
        id: TargetId,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<DrainOutcome, BalancerError>> {
        Box::pin(async move {
            let t = self.books.target(id)?;
            let name = self.server_name(&t);
            self.hold(&name);
            let out = self.drain_server(&t, &name, timeout).await;
            self.unhold(&name);
            out
        })
    }

    fn remove(
        &self,
        id: TargetId,
        drain_timeout: Duration,
    ) -> BoxFuture<'_, Result<DrainOutcome, BalancerError>> {
        Box::pin(async move {
            let t = self.books.target(id)?;
            let name = self.server_name(&t);
            self.hold(&name);
            let drained = if t.state() == TargetState::Unused {
                Ok(DrainOutcome::Drained {
                    waited: Duration::ZERO,
                })
            } else {
                self.drain_server(&t, &name, drain_timeout).await
            };
            // Whatever the drain did, the target leaves the books (so its
            // name and address are free for a start); a server left
            // behind is deleted by the sweep.
            let deleted = {
                let _gate = self.gate.lock().await;
                if let Ok(Some(row)) = self.client.server(&self.backend, &name).await {
                    self.count(&t, &name, &row);
                }
                let r = match drained {
                    Ok(_) => self.client.delete(&self.backend, &name).await,
                    Err(_) => Ok(()),
                };
                let _ = self.books.remove(id, Duration::ZERO).await;
                r
            };
            self.unhold(&name);
            if let Some(e) = deleted
                .as_ref()
                .err()
                .filter(|e| !matches!(e, Error::ServerUnknown { .. }))
            {
                tracing::warn!(backend = %self.backend, server = %name, error = %e,
                    "haproxy: could not delete the server; the sweep retries");
            }
            drained
        })
    }

    fn set_weights(&self, weights: &[(&str, u32)]) -> Result<(), ControlError> {
        self.books.set_weights(weights)?;
        self.kick.notify_one();
        Ok(())
    }

    fn settle(&self) -> BoxFuture<'_, Result<(), BalancerError>> {
        Box::pin(self.pass())
    }

    fn quiesce<'a>(&'a self, group: &'a str, timeout: Duration) -> BoxFuture<'a, u64> {
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            loop {
                let names: BTreeSet<String> = self
                    .books
                    .table()
                    .groups
                    .iter()
                    .filter(|g| &*g.name == group)
                    .flat_map(|g| g.targets.iter().map(|t| self.server_name(t)))
                    .collect();
                let open = match self.client.servers(&self.backend).await {
                    Ok(rows) => Some(
                        rows.iter()
                            .filter(|r| names.contains(&r.name))
                            .map(|r| r.scur + r.qcur)
                            .sum::<u64>(),
                    ),
                    // Unknown: wait it out rather than call it quiet.
                    Err(_) => None,
                };
                if open == Some(0) || Instant::now() >= deadline {
                    return open.unwrap_or(0);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    fn mark_unhealthy(&self, id: TargetId, reason: &str) {
        if let Ok(t) = self.books.target(id) {
            let name = self.server_name(&t);
            self.known().downed.insert(name);
        }
        self.books.mark_unhealthy(id, reason);
        self.kick.notify_one();
    }

    fn abandon(&self, id: TargetId, reason: &str) {
        self.books.abandon(id, reason);
        self.kick.notify_one();
    }

    fn restore(&self, id: TargetId) {
        self.books.restore(id);
        self.kick.notify_one();
    }

    fn booted(&self) {
        self.known().booted.get_or_insert_with(Instant::now);
        self.kick.notify_one();
    }

    fn suspend(&self, suspended: bool) {
        self.suspended
            .store(suspended, std::sync::atomic::Ordering::SeqCst);
        self.kick.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::Counter;

    #[test]
    fn counters_carry_over_a_reset_of_the_server() {
        let mut c = Counter::default();
        assert_eq!(c.total([0, 10, 0, 1, 2]), [0, 10, 0, 1, 2]);
        assert_eq!(c.total([0, 15, 0, 1, 3]), [0, 15, 0, 1, 3]);
        // HAProxy re-added it (after a reload): its counters start at 0,
        // the target's do not go back (a 5xx rate over a window would).
        assert_eq!(c.total([0, 2, 0, 0, 1]), [0, 17, 0, 1, 4]);
        assert_eq!(c.total([0, 4, 0, 0, 1]), [0, 19, 0, 1, 4]);
    }
}
