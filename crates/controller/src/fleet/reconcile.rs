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
//!   supervised again, which restarts it if it is dead.
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
        self.closing.store(true, SeqCst);
        drop(self.mending.lock().await);
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
        let marked = self.runtime.marked();
        let revision = self.current_revision();
        let live = self.live_group();
        let want = self.managed.instances as usize;
        let desired = format!("{want} × {revision} in group {live}");
        let mut mends = 0;

        let (kept, extras) = {
            let slots = self.slots();
            let mut right: Vec<&String> = slots
                .iter()
                .filter(|(_, s)| s.revision == revision && s.group == live)
                .map(|(n, _)| n)
                .collect();
            right.sort_by_key(|n| index_of(n));
            let kept: Vec<String> = right.into_iter().take(want).cloned().collect();
            let extras: Vec<(String, String)> = slots
                .iter()
                .filter(|(n, _)| !kept.contains(n))
                .map(|(n, s)| (n.clone(), format!("{} in group {}", s.revision, s.group)))
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

        for run in marked.into_iter().filter(|r| r.service == self.name()) {
            let stray = match self.slots().get(&run.instance) {
                None => true,
                // A slot with no process yet may be starting this one.
                Some(s) => s.running.as_ref().is_some_and(|r| r.pid != run.pid),
            };
            if stray && self.runtime.is_alive(&run) {
                self.mend(
                    Some(&run.instance),
                    &format!(
                        "pid {} is marked as {} of this state dir, but no instance owns it; stopping it",
                        run.pid, run.instance
                    ),
                );
                mends += 1;
                self.runtime.stop(&run, self.managed.stop_grace).await;
            }
        }

        let missing = want.saturating_sub(kept.len());
        let mut starts = Vec::new();
        for n in self.new_names(missing) {
            let port = match self.port_for(0) {
                Ok(p) => p,
                Err(e) => {
                    self.mend(Some(&n), &format!("cannot start {n}: {e}"));
                    break;
                }
            };
            self.mend(
                Some(&n),
                &format!(
                    "{} of the desired {desired} run; starting {n}",
                    kept.len() + starts.len()
                ),
            );
            mends += 1;
            self.slots()
                .insert(n.clone(), slot(port, &revision, &live, 0));
            starts.push(self.start_supervised(&n));
        }
        for s in starts {
            let _ = s.await;
        }

        for n in &kept {
            if !self.watched(n) {
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
