//! The balancer seam: what routes a service's clients to its targets.
//!
//! The fleet and the executor change routing through [`Balancer`] only:
//! add a target, drain it, remove it, set group weights, wait for a group
//! to go quiet, take a dead target out. Two implementations:
//! - [`ServiceProxy`] itself, handoff's built-in proxy (the calls the
//!   controller always made);
//! - [`haproxy::HaproxyBalancer`], which drives a backend of the user's
//!   HAProxy through its runtime API.
//!
//! Both keep the same *books*, a [`ServiceProxy`]: the targets with their
//! groups, states, counters and events. The built-in proxy routes by them;
//! HAProxy routes by its own servers, and the HAProxy balancer keeps the
//! two alike (books → servers for what handoff decides: which servers
//! exist, their weights, drains; servers → books for what HAProxy sees:
//! its check results and per-server counters). So reads (state, health
//! events, the report's counts, `status`, metrics) work the same way for
//! both, and the planner does not change.

pub mod haproxy;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use handoff_proxy::{ControlError, DrainOutcome, ServiceProxy, Target, TargetId, TargetSpec};

/// What went wrong changing routing.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Says what HAProxy's error says (not as a `source`, so that error
    /// chains do not print it twice).
    #[error("HAProxy backend '{backend}' ({socket}): {problem}")]
    Haproxy {
        backend: String,
        socket: String,
        problem: Box<handoff_haproxy::Error>,
    },
}

/// Routing, as the controller changes it. Calls that only touch the
/// books are synchronous (the fleet makes them under its own locks); the
/// outside balancer follows them within one sync pass, and [`settle`]
/// waits for that pass where timing matters (a blue/green flip).
///
/// [`settle`]: Balancer::settle
pub trait Balancer: Send + Sync + 'static {
    /// The books: targets, states, counters and events.
    fn books(&self) -> &Arc<ServiceProxy>;

    /// For `status` and the API, e.g. `builtin` or `haproxy backend web
    /// via /run/haproxy/admin.sock`.
    fn describe(&self) -> String;

    /// Registers a target in `group`; it enters service once its checks
    /// pass (and, with `spec.hold`, once released).
    fn add(&self, group: &str, spec: TargetSpec) -> Result<Arc<Target>, ControlError>;

    /// Stops new requests to the target and waits for those in flight, up
    /// to `timeout`. It stays listed until [`Balancer::remove`].
    fn drain(
        &self,
        id: TargetId,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<DrainOutcome, BalancerError>>;

    /// Drops the target, draining it first if it is still in service.
    fn remove(
        &self,
        id: TargetId,
        drain_timeout: Duration,
    ) -> BoxFuture<'_, Result<DrainOutcome, BalancerError>>;

    /// Sets group weights (see [`ServiceProxy::set_weights`]).
    fn set_weights(&self, weights: &[(&str, u32)]) -> Result<(), ControlError>;

    /// Returns once the balancer routes as the books say (at once for the
    /// built-in proxy, which routes by them).
    fn settle(&self) -> BoxFuture<'_, Result<(), BalancerError>>;

    /// Waits until `group` (weight 0 now) has nothing in flight, or
    /// `timeout`; returns how many were still open.
    fn quiesce<'a>(&'a self, group: &'a str, timeout: Duration) -> BoxFuture<'a, u64>;

    /// Its process is gone: out of service now, without waiting for checks.
    fn mark_unhealthy(&self, id: TargetId, reason: &str);

    /// Its host stopped answering (see [`ServiceProxy::abandon`]).
    fn abandon(&self, id: TargetId, reason: &str);

    /// Its host answers again; checks decide when it serves.
    fn restore(&self, id: TargetId);

    /// The fleet has adopted what it had after a start: whatever the
    /// balancer holds that no target claims now is left over.
    fn booted(&self) {}

    /// Stops (or resumes) changing the outside balancer on its own: the
    /// fleet is closed, and another daemon may drive it now.
    fn suspend(&self, _suspended: bool) {}
}

/// handoff's own proxy: the books are the routing table.
pub struct Builtin(pub Arc<ServiceProxy>);

/// The built-in proxy as a [`Balancer`].
pub fn builtin(proxy: Arc<ServiceProxy>) -> Arc<dyn Balancer> {
    Arc::new(Builtin(proxy))
}

impl Balancer for Builtin {
    fn books(&self) -> &Arc<ServiceProxy> {
        &self.0
    }

    fn describe(&self) -> String {
        "builtin".into()
    }

    fn add(&self, group: &str, spec: TargetSpec) -> Result<Arc<Target>, ControlError> {
        self.0.add_target(group, spec)
    }

    fn drain(
        &self,
        id: TargetId,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<DrainOutcome, BalancerError>> {
        Box::pin(async move { Ok(self.0.drain(id, timeout).await?) })
    }

    fn remove(
        &self,
        id: TargetId,
        drain_timeout: Duration,
    ) -> BoxFuture<'_, Result<DrainOutcome, BalancerError>> {
        Box::pin(async move { Ok(self.0.remove(id, drain_timeout).await?) })
    }

    fn set_weights(&self, weights: &[(&str, u32)]) -> Result<(), ControlError> {
        self.0.set_weights(weights)
    }

    fn settle(&self) -> BoxFuture<'_, Result<(), BalancerError>> {
        Box::pin(async { Ok(()) })
    }

    fn quiesce<'a>(&'a self, group: &'a str, timeout: Duration) -> BoxFuture<'a, u64> {
        Box::pin(self.0.quiesce(group, timeout))
    }

    fn mark_unhealthy(&self, id: TargetId, reason: &str) {
        self.0.mark_unhealthy(id, reason)
    }

    fn abandon(&self, id: TargetId, reason: &str) {
        self.0.abandon(id, reason)
    }

    fn restore(&self, id: TargetId) {
        self.0.restore(id)
    }
}

/// HAProxy server weights (0–256) for a group of `serving` targets whose
/// group weight is `group_weight` (0–100): the group's share split evenly,
/// so the groups' shares of traffic stay as the weights say whatever their
/// sizes. Never 0 for a group that should serve.
pub fn server_weight(group_weight: u32, serving: usize) -> u32 {
    if group_weight == 0 || serving == 0 {
        return 0;
    }
    let w = (group_weight as f64 * 2.56 / serving as f64).round() as u32;
    w.clamp(1, 256)
}

#[cfg(test)]
mod tests {
    use super::server_weight;

    #[test]
    fn server_weights_keep_the_groups_shares() {
        assert_eq!(server_weight(0, 3), 0);
        assert_eq!(server_weight(100, 0), 0);
        assert_eq!(server_weight(100, 1), 256);
        // 50/50 between 2 blue and 2 green: 64 each.
        assert_eq!(server_weight(50, 2), 64);
        // 10% to 1 green, 90% to 4 blue: 26 vs 58 each (26 / (26 + 4·58) ≈ 10%).
        let (g, b) = (server_weight(10, 1), server_weight(90, 4));
        let share = g as f64 / (g as f64 + 4.0 * b as f64);
        assert!((share - 0.10).abs() < 0.01, "{share}");
        // Many targets never round down to 0.
        assert_eq!(server_weight(1, 100), 1);
    }
}
