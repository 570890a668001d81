//! The reconciler: compares what should run (the configured `instances` ×
//! the current revision, in the live group) with what does, and mends the
//! drift supervision alone cannot see:
//!
//! - instances of another revision or group, or beyond the count: stopped;
//! - records no instance owns (a write that was lost): their process
//!   stopped, the record deleted;
//! - processes marked with this state dir's owner id that no instance owns
//!   (another process in a slot's name, or in none): stopped;
//! - fewer instances than configured: new ones started;
//! - an instance nobody watches (a path where supervision lapsed):
//!   supervised again, which restarts it if it is dead;
//! - group weights other than live 100, others 0: set back.
//!
//! Every mend is a fleet event (`reconcile`) and a WARN: a mend means some
//! other path has a bug or the world changed under handoff.
//!
//! It runs after boot, when a deployment ends and every few seconds, and
//! never fights a deployment: the executor holds a [`DeployGuard`] for the
//! whole deployment (retention included, when both groups rightly run), a
//! reconciliation started before waits to finish before the deployment
//! plans, and one that finds a guard held does nothing.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use handoff_runtime::Runtime;

use super::{index_of, running_of, slot, Fleet};

/// Held by a deployment from before it plans until it ends. While any is
/// held the reconciler leaves the fleet alone; the last one dropped starts
/// a reconciliation.
pub struct DeployGuard<R: Runtime> {
    fleet: Arc<Fleet<R>>,
}

impl<R: Runtime> Drop for DeployGuard<R> {
    fn drop(&mut self) {
        if self.fleet.deploying.fetch_sub(1, SeqCst) != 1 {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let f = self.fleet.clone();
            rt.spawn(async move {
                f.reconcile().await;
            });
        }
    }
}

impl<R: Runtime> Fleet<R> {
    /// Says a deployment is under way until the guard is dropped; first
    /// waits for a reconciliation in progress, so that the deployment
    /// plans from a fleet nobody else changes.
    pub async fn deployment_guard(self: &Arc<Self>) -> DeployGuard<R> {
        self.deploying.fetch_add(1, SeqCst);
        let guard = DeployGuard {
            fleet: self.clone(),
        };
        drop(self.mending.lock().await);
        guard
    }

    /// Whether a deployment holds the fleet (see [`DeployGuard`]).
    pub fn deploying(&self) -> bool {
        self.deploying.load(SeqCst) > 0
    }

    /// Stops reconciling (before a shutdown, or before leaving instances
    /// running on exit); waits for a reconciliation in progress.
    pub async fn close(&self) {
        {
            // Under the slots' lock, so that a start registering right now
            // either finishes first or sees the fleet closed.
            let _slots = self.slots();
            self.closing.store(true, SeqCst);
        }
        self.balancer.suspend(true);
        drop(self.mending.lock().await);
    }

    /// Undoes [`Self::close`] (a hand-over to a new daemon failed): the
    /// fleet is this daemon's again; start `reconcile_every` anew, and the
    /// reconciler mends whatever went unsupervised meanwhile.
    pub fn reopen(&self) {
        self.closing.store(false, SeqCst);
        self.balancer.suspend(false);
    }

    /// Reconciles every `every` until the fleet closes (or is dropped).
    pub fn reconcile_every(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let fleet = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(f) = fleet.upgrade() else { break };
                if f.closing.load(SeqCst) {
                    break;
                }
                f.reconcile().await;
            }
        })
    }

    /// Mends the drift between the desired fleet and what runs (see the
    /// module doc). Returns how many mends it made, or `None` when it did
    /// not look: a deployment holds the fleet, or it is closing.
    pub async fn reconcile(self: &Arc<Self>) -> Option<usize> {
        let _mending = self.mending.lock().await;
        if self.deploying() || self.closing.load(SeqCst) {
            return None;
        }
        // Read before the slots: a process that starts after this scan is
        // not in it, so it cannot be taken for a stray.
        let marked = self.runtime.marked().await;
        let revision = self.current_revision();
        let live = self.live_group();
        let want = self.desired();
        let desired = format!("{want} × {revision} in group {live}");
        let mut mends = 0;

        // Per host of the placement (this machine is one): the right
        // instances up to its share are kept. A host that does not answer
        // is left as it is until it does: nothing there can be stopped or
        // started, and what ran there is found again when it answers.
        let placement = self.placement();
        let lost: Vec<String> = self.lost_hosts().into_iter().map(|(h, _)| h).collect();
        let is_lost = |h: &Option<String>| h.as_ref().is_some_and(|h| lost.contains(h));
        let (kept, extras) = {
            let slots = self.slots();
            let mut kept: Vec<String> = Vec::new();
            for (host, room) in &placement {
                let mut right: Vec<&String> = slots
                    .iter()
                    .filter(|(_, s)| s.revision == revision && s.group == live && &s.host == host)
                    .map(|(n, _)| n)
                    .collect();
                right.sort_by_key(|n| index_of(n));
                kept.extend(right.into_iter().take(*room).cloned());
            }
            let extras: Vec<(String, String)> = slots
                .iter()
                .filter(|(n, s)| !kept.contains(n) && !is_lost(&s.host))
                .map(|(n, s)| {
                    let on = s
                        .host
                        .as_deref()
                        .map(|h| format!(" on {h}"))
                        .unwrap_or_default();
                    (
                        n.clone(),
                        format!("{} in group {}{on}", s.revision, s.group),
                    )
                })
                .collect();
            (kept, extras)
        };
        for (n, what) in &extras {
            self.mend(
                Some(n),
                &format!("{n} ({what}) is not part of the desired {desired}; stopping it"),
            );
        }
        if !extras.is_empty() {
            let names: Vec<String> = extras.into_iter().map(|(n, _)| n).collect();
            mends += names.len();
            self.stop(&names, true).await;
        }

        mends += self.mend_records().await;
        mends += self.mend_weights(&live);

        for run in marked.into_iter().filter(|r| r.service == self.name()) {
            let stray = match self.slots().get(&run.instance) {
                None => true,
                // A slot with no process yet may be starting this one.
                Some(s) => s
                    .running
                    .as_ref()
                    .is_some_and(|r| r.pid != run.pid || r.host != run.host),
            };
            if stray && self.runtime.is_alive(&run) {
                self.mend(
                    Some(&run.instance),
                    &format!(
                        "{} is marked as {} of this state dir, but no instance owns it; stopping it",
                        run.whose(),
                        run.instance
                    ),
                );
                mends += 1;
                self.runtime.stop(&run, self.managed.stop_grace).await;
            }
        }

        let mut fresh: Vec<Option<String>> = Vec::new();
        for (host, room) in &placement {
            if is_lost(host) {
                continue;
            }
            let have = self
                .slots()
                .iter()
                .filter(|(n, s)| kept.contains(n) && &s.host == host)
                .count();
            fresh.extend(std::iter::repeat_n(host.clone(), room.saturating_sub(have)));
        }
        let mut starts = Vec::new();
        for (n, host) in self.new_names(fresh.len()).into_iter().zip(fresh) {
            let port = match self.port_for(host.as_deref(), 0) {
                Ok(p) => p,
                Err(e) => {
                    self.mend(Some(&n), &format!("cannot start {n}: {e}"));
                    break;
                }
            };
            let on = host
                .as_deref()
                .map(|h| format!(" on {h}"))
                .unwrap_or_default();
            self.mend(
                Some(&n),
                &format!(
                    "{} of the desired {desired} run; starting {n}{on}",
                    kept.len() + starts.len()
                ),
            );
            mends += 1;
            self.slots()
                .insert(n.clone(), slot(host, port, &revision, &live, 0));
            starts.push(self.start_supervised(&n));
        }
        for s in starts {
            let _ = s.await;
        }

        for n in &kept {
            let on_lost = self.slots().get(n).is_some_and(|s| is_lost(&s.host));
            if !on_lost && !self.watched(n) {
                let pid = self
                    .slots()
                    .get(n)
                    .and_then(|s| s.running.as_ref().map(|r| r.pid));
                let state = match pid {
                    Some(p) => format!("pid {p}"),
                    None => "not running".to_string(),
                };
                self.mend(
                    Some(n),
                    &format!(
                        "{n} ({state}) was not supervised; supervising it (restarted if dead)"
                    ),
                );
                mends += 1;
                self.supervise(std::slice::from_ref(n));
            }
        }
        Some(mends)
    }

    /// Records no instance owns: the process stopped (if it is still that
    /// process), the record deleted.
    async fn mend_records(&self) -> usize {
        let records = match self.store.instances(self.name()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(service = %self.name(), error = %e, "reconcile: cannot read instance records");
                return 0;
            }
        };
        let mut mends = 0;
        for rec in records {
            if self.slots().contains_key(&rec.name) {
                continue;
            }
            let run = running_of(&rec);
            let alive = rec.pid != 0 && self.runtime.is_alive(&run);
            self.mend(
                Some(&rec.name),
                &format!(
                    "record of {} (pid {}, {}) names no instance; {}",
                    rec.name,
                    rec.pid,
                    rec.revision,
                    if alive {
                        "stopping its process and deleting it"
                    } else {
                        "deleting it"
                    }
                ),
            );
            mends += 1;
            if alive {
                self.runtime.stop(&run, self.managed.stop_grace).await;
            }
            if let Err(e) = self.store.delete_instance(self.name(), &rec.name) {
                tracing::error!(instance = %rec.name, error = %e, "reconcile: cannot delete record");
            }
        }
        mends
    }

    /// Outside a deployment the live group takes all the traffic and every
    /// other group none: a weight left over (a flip cut short by a crash
    /// that recovery did not see) is set back.
    fn mend_weights(&self, live: &str) -> usize {
        let table = self.proxy.table();
        let wrong: Vec<(String, u32)> = table
            .groups
            .iter()
            .filter(|g| g.weight != if &*g.name == live { 100 } else { 0 })
            .map(|g| (g.name.to_string(), g.weight))
            .collect();
        if wrong.is_empty() {
            return 0;
        }
        let list: Vec<String> = wrong.iter().map(|(g, w)| format!("{g} at {w}")).collect();
        self.mend(
            None,
            &format!(
                "group weights {} outside a deployment; setting {live} to 100 and the others to 0",
                list.join(", ")
            ),
        );
        let mut weights: Vec<(&str, u32)> = table
            .groups
            .iter()
            .map(|g| (&*g.name, if &*g.name == live { 100 } else { 0 }))
            .collect();
        if !weights.iter().any(|(g, _)| *g == live) {
            weights.push((live, 100));
        }
        if let Err(e) = self.balancer.set_weights(&weights) {
            tracing::error!(service = %self.name(), error = %e, "reconcile: cannot set weights");
        }
        1
    }

    /// One mend: a WARN and a fleet event.
    fn mend(&self, instance: Option<&str>, message: &str) {
        tracing::warn!(service = %self.name(), instance = instance.unwrap_or("-"), "reconcile: {message}");
        if let Err(e) = self
            .store
            .event(self.name(), instance, "reconcile", message)
        {
            tracing::error!(error = %e, "cannot record event");
        }
    }
}
