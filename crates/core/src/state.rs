//! Target states, named after AWS ELB target states on purpose (DESIGN.md).

use std::fmt;

/// Where a target stands in the load balancer.
///
/// `Initial → Healthy ⇄ Unhealthy`, and from any of those `Draining → Unused`.
/// Only `Healthy` targets receive new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TargetState {
    /// Registered, health checks have not yet passed `healthy_threshold` times.
    Initial = 0,
    /// In service.
    Healthy = 1,
    /// Failed `unhealthy_threshold` checks, or was ejected by passive checks.
    Unhealthy = 2,
    /// Deregistered: no new requests, in-flight ones finish.
    Draining = 3,
    /// Drained (or drain timed out); safe to stop.
    Unused = 4,
}

impl TargetState {
    pub const ALL: [TargetState; 5] = [
        TargetState::Initial,
        TargetState::Healthy,
        TargetState::Unhealthy,
        TargetState::Draining,
        TargetState::Unused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Initial => "initial",
            TargetState::Healthy => "healthy",
            TargetState::Unhealthy => "unhealthy",
            TargetState::Draining => "draining",
            TargetState::Unused => "unused",
        }
    }

    /// Inverse of `self as u8`; unknown values map to `Unused` (never routed).
    pub fn from_u8(v: u8) -> TargetState {
        match v {
            0 => TargetState::Initial,
            1 => TargetState::Healthy,
            2 => TargetState::Unhealthy,
            3 => TargetState::Draining,
            _ => TargetState::Unused,
        }
    }

    /// Health checks may move a target only while it is registered; once
    /// deregistered (draining/unused) its fate belongs to the drain.
    pub fn is_registered(self) -> bool {
        matches!(
            self,
            TargetState::Initial | TargetState::Healthy | TargetState::Unhealthy
        )
    }
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u8_round_trip() {
        for s in TargetState::ALL {
            assert_eq!(TargetState::from_u8(s as u8), s);
        }
        assert_eq!(TargetState::from_u8(200), TargetState::Unused);
    }

    #[test]
    fn only_live_states_are_registered() {
        assert!(TargetState::Initial.is_registered());
        assert!(TargetState::Unhealthy.is_registered());
        assert!(!TargetState::Draining.is_registered());
        assert!(!TargetState::Unused.is_registered());
    }
}
