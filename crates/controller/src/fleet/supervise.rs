//! Supervision: an instance that dies, or misses its health deadline, is
//! taken out of service at once and restarted with back-off on its port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_core::TargetState;
use handoff_proxy::TargetId;
use handoff_runtime::{RunningInstance, Runtime};

use super::{Fleet, BACKOFF_MAX, BACKOFF_MIN, STABLE_AFTER};

impl<R: Runtime> Fleet<R> {
    /// Hands instances to the supervisor: from now on a death or a missed
    /// health deadline restarts them.
    pub fn supervise(self: &Arc<Self>, names: &[String]) {
        for name in names {
            let mut slots = self.slots();
            let Some(s) = slots.get_mut(name) else {
                continue;
            };
            if s.watcher.as_ref().is_some_and(|w| !w.is_finished()) {
                continue;
            }
            let (Some(run), Some(t)) = (s.running.clone(), s.target) else {
                continue;
            };
            let me = self.clone();
            let n = name.clone();
            s.watcher = Some(tokio::spawn(async move { me.watch(n, run, t).await }));
        }
    }

    pub(super) fn unsupervise(&self, name: &str) {
        if let Some(w) = self.slots().get_mut(name).and_then(|s| s.watcher.take()) {
            if tokio::task::try_id() != Some(w.id()) {
                w.abort();
            }
        }
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

    pub(super) fn retry_later(self: &Arc<Self>, name: &str) {
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
            if let Err(e) = me.start_one(&n, true, false).await {
                me.event(Some(&n), "start-failed", &e);
                me.retry_later(&n);
            }
        });
        // Kept as the slot's watcher so that a deliberate stop cancels it.
        if let Some(s) = self.slots().get_mut(name) {
            if let Some(old) = s.watcher.replace(h) {
                if tokio::task::try_id() != Some(old.id()) {
                    old.abort();
                }
            }
        }
    }
}
