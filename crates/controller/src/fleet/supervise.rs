//! Supervision: an instance that dies, misses its health deadline, or,
//! once healthy, fails its checks for as long as that deadline, is taken
//! out of service at once and restarted with back-off on its port, however
//! often that happens.
//!
//! ```text
//! supervise ─► watch ── exit / deadline ──► retry_later ── back-off ──► restart
//!                ▲                                                         │
//!                └──────────────── started (same epoch) ◄──────────────────┘
//!                                  start failed ──► retry_later
//! ```
//!
//! Each step hands over to the next, so a supervised instance always has a
//! task on it. A deliberate drain or stop clears `supervised` and bumps the
//! slot's `epoch` under the slot lock; every step checks both before it
//! acts, so the deliberate stop wins over a restart already under way.
//! Back-off grows with consecutive failures (1 s doubling to 30 s) and is
//! forgiven once an instance has stayed healthy for `STABLE_AFTER`.

use std::sync::Arc;
use std::time::Duration;

use handoff_core::TargetState;
use handoff_proxy::TargetId;
use handoff_runtime::{Exit, RunningInstance, Runtime};
use tokio::task::JoinHandle;

use super::{Fleet, BACKOFF_MAX, BACKOFF_MIN, STABLE_AFTER};

/// The delay before restart number `n` (1-based) in a row.
pub(super) fn backoff(n: u32) -> Duration {
    BACKOFF_MIN
        .saturating_mul(1 << n.saturating_sub(1).min(5))
        .min(BACKOFF_MAX)
}

impl<R: Runtime> Fleet<R> {
    /// Hands instances to the supervisor: from now on a death or a missed
    /// health deadline restarts them. One that is not running (it died
    /// before it was handed over) is restarted.
    pub fn supervise(self: &Arc<Self>, names: &[String]) {
        for name in names {
            let epoch = {
                let mut slots = self.slots();
                let Some(s) = slots.get_mut(name) else {
                    continue;
                };
                s.supervised = true;
                s.epoch
            };
            self.watch_in(name, epoch, false);
        }
    }

    /// Ends supervision of `name` before a deliberate drain or stop: work
    /// already under way sees the new epoch and gives way.
    pub(super) fn unsupervise(&self, name: &str) {
        let w = {
            let mut slots = self.slots();
            let Some(s) = slots.get_mut(name) else { return };
            s.supervised = false;
            s.epoch += 1;
            s.watcher.take()
        };
        // Aborting is only a shortcut (the epoch already stops the task at
        // its next check); a start in progress runs detached, so it is
        // never cut between its spawn and its registration.
        if let Some(w) = w {
            if tokio::task::try_id() != Some(w.id()) {
                w.abort();
            }
        }
    }

    /// Whether `name` is still supervised in `epoch`.
    pub(super) fn supervises(&self, name: &str, epoch: u64) -> bool {
        // A closed fleet (stopping, or handed to a new daemon) restarts
        // nothing: the next daemon supervises these instances.
        !self.closing.load(std::sync::atomic::Ordering::SeqCst)
            && self
                .slots()
                .get(name)
                .is_some_and(|s| s.supervised && s.epoch == epoch)
    }

    /// Whether `name` is supervised with a task on it (watching or waiting
    /// to restart); for the reconciler, which mends those that are not.
    pub(super) fn watched(&self, name: &str) -> bool {
        self.slots()
            .get(name)
            .is_some_and(|s| s.supervised && s.watcher.as_ref().is_some_and(|w| !w.is_finished()))
    }

    /// Marks a new slot supervised and starts it (a first start at boot or
    /// by the reconciler); a failure schedules a restart. Runs detached,
    /// so the returned handle only tells when the first attempt is over.
    pub(super) fn start_supervised(self: &Arc<Self>, name: &str) -> JoinHandle<()> {
        let epoch = {
            let mut slots = self.slots();
            let s = slots.get_mut(name);
            s.map(|s| {
                s.supervised = true;
                s.epoch
            })
        };
        let me = self.clone();
        let n = name.to_string();
        tokio::spawn(async move {
            if let Some(epoch) = epoch {
                me.restart(n, epoch).await;
            }
        })
    }

    /// Puts a watcher on `name` if it is supervised in `epoch`; one that is
    /// not running gets a restart scheduled. `replace`: the caller is the
    /// start that supervision itself scheduled, whose handle is the
    /// slot's watcher until now; otherwise a live watcher is left alone.
    pub(super) fn watch_in(self: &Arc<Self>, name: &str, epoch: u64, replace: bool) {
        let mut slots = self.slots();
        let Some(s) = slots.get_mut(name) else { return };
        if !s.supervised || s.epoch != epoch {
            return;
        }
        if !replace && s.watcher.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        match (s.running.clone(), s.target) {
            (Some(run), Some(t)) => {
                let me = self.clone();
                let n = name.to_string();
                let h = tokio::spawn(async move { me.watch(n, epoch, run, t).await });
                if let Some(old) = s.watcher.replace(h) {
                    // The restart task that called us, or nothing that
                    // should go on watching beside the new watcher.
                    if tokio::task::try_id() != Some(old.id()) {
                        old.abort();
                    }
                }
            }
            _ => {
                drop(slots);
                self.retry_later(name, epoch);
            }
        }
    }

    /// Waits for the instance to die or to miss its health deadline; then
    /// takes it out of service and restarts it.
    async fn watch(
        self: Arc<Self>,
        name: String,
        epoch: u64,
        run: RunningInstance,
        target: TargetId,
    ) {
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
        let died = |exit: Exit| format!("instance exited unexpectedly ({exit})");
        let reason = tokio::select! {
            exit = self.runtime.exited(&run) => died(exit),
            ok = tokio::time::timeout(deadline, healthy) => match ok {
                Ok(true) => {
                    let stable = tokio::time::sleep(STABLE_AFTER);
                    tokio::pin!(stable);
                    let mut forgiven = false;
                    loop {
                        tokio::select! {
                            exit = self.runtime.exited(&run) => break died(exit),
                            why = self.stays_unhealthy(&run, target) => break why,
                            _ = &mut stable, if !forgiven => {
                                self.forgive(&name, epoch, &run);
                                forgiven = true;
                            }
                        }
                    }
                }
                _ => format!(
                    "not healthy within healthy_deadline {}: {}",
                    handoff_core::duration::format(deadline),
                    self.why_not_healthy(&name)
                ),
            },
        };
        if !self.supervises(&name, epoch) {
            return; // a deliberate stop took over; the exit was its doing
        }
        self.balancer.mark_unhealthy(target, &reason);
        self.event(Some(&name), "failed", &format!("{reason}; restarting"));
        let _ = self.balancer.remove(target, Duration::ZERO).await;
        if self.runtime.is_alive(&run) {
            self.runtime.stop(&run, self.managed.stop_grace).await;
        }
        if let Some(s) = self.slots().get_mut(&name) {
            if s.epoch == epoch && s.running.as_ref().is_some_and(|r| r.pid == run.pid) {
                s.running = None;
                s.target = None;
            }
        }
        self.retry_later(&name, epoch);
    }

    /// Resolves (with why) once an instance that was healthy has failed
    /// its checks without a break for `healthy_deadline`: alive but of no
    /// use (a deadlock, a lost dependency), it is replaced as one that
    /// never got healthy is. Not while its host is unreachable: that says
    /// nothing of the instance, and nothing could be done there.
    async fn stays_unhealthy(&self, run: &RunningInstance, target: TargetId) -> String {
        let deadline = self.service.health.healthy_deadline;
        let mut since: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let reachable = run
                .host
                .as_deref()
                .is_none_or(|h| self.host_lost(h).is_none());
            // Failing its own health checks; a passive ejection (answers to
            // real traffic) has its own timer and, often, a cause shared
            // by every instance, which a restart would not cure.
            let sick = self
                .proxy
                .target(target)
                .is_ok_and(|t| t.state() == TargetState::Unhealthy && !t.ejected());
            if !(sick && reachable) {
                since = None;
                continue;
            }
            let start = *since.get_or_insert_with(tokio::time::Instant::now);
            if start.elapsed() >= deadline {
                let check = self
                    .proxy
                    .target(target)
                    .ok()
                    .and_then(|t| t.last_check())
                    .map(|c| format!("; last check {c}"))
                    .unwrap_or_default();
                return format!(
                    "unhealthy for healthy_deadline {} after it had been healthy{check}",
                    handoff_core::duration::format(deadline)
                );
            }
        }
    }

    /// An instance healthy for `STABLE_AFTER`: its next failure restarts it
    /// after the shortest back-off again.
    fn forgive(&self, name: &str, epoch: u64, run: &RunningInstance) {
        let forgiven = match self.slots().get_mut(name) {
            Some(s) if s.epoch == epoch && (s.restarts > 0 || s.last_error.is_some()) => {
                s.restarts = 0;
                s.last_error = None;
                true
            }
            _ => false,
        };
        if forgiven {
            let _ = self.record(name, "running", Some(run));
        }
    }

    /// Schedules restart number `restarts + 1` of `name` after its
    /// back-off, unless it is no longer supervised in `epoch`.
    pub(super) fn retry_later(self: &Arc<Self>, name: &str, epoch: u64) {
        let restarts = {
            let mut slots = self.slots();
            let Some(s) = slots.get_mut(name) else { return };
            if !s.supervised || s.epoch != epoch {
                return;
            }
            s.restarts += 1;
            s.restarts
        };
        let delay = backoff(restarts);
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
            // Detached: a deliberate stop aborts the wait, never the start
            // (which then gives way by itself, see `register`).
            let _ = tokio::spawn(me.restart(n, epoch)).await;
        });
        // Kept as the slot's watcher so that a deliberate stop cancels it.
        let mut slots = self.slots();
        match slots.get_mut(name) {
            Some(s) if s.supervised && s.epoch == epoch => {
                if let Some(old) = s.watcher.replace(h) {
                    if tokio::task::try_id() != Some(old.id()) {
                        old.abort();
                    }
                }
            }
            _ => h.abort(),
        }
    }

    /// Starts `name` again for supervision in `epoch`; on failure, tries
    /// again later. A process already there is watched, not doubled.
    async fn restart(self: Arc<Self>, name: String, epoch: u64) {
        let (running, target) = {
            let closing = self.closing.load(std::sync::atomic::Ordering::SeqCst);
            let slots = self.slots();
            match slots.get(&name) {
                Some(s) if s.supervised && s.epoch == epoch && !closing => {
                    (s.running.clone(), s.target)
                }
                _ => return,
            }
        };
        if let Some(run) = running.filter(|r| self.runtime.is_alive(r)) {
            if target.is_some() {
                self.watch_in(&name, epoch, true);
                return;
            }
            // Alive but never registered: it can serve no one; replaced.
            self.runtime.stop(&run, self.managed.stop_grace).await;
        }
        if let Err(e) = self.start_one(&name, Some(epoch), false).await {
            if self.supervises(&name, epoch) {
                self.event(Some(&name), "start-failed", &e);
                self.retry_later(&name, epoch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_thirty() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
