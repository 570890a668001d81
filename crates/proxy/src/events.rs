//! Target lifecycle events, broadcast to whoever listens (controller, API/SSE).

use std::net::SocketAddr;

use handoff_core::TargetState;

use crate::target::TargetId;

/// A target changed state. Sent on the proxy's broadcast channel in the order
/// the transitions happened for that target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetEvent {
    pub service: String,
    pub target: TargetId,
    pub name: String,
    pub addr: SocketAddr,
    pub revision: String,
    pub from: TargetState,
    pub to: TargetState,
    /// Why, in words: "2 health checks passed", "ejected for 5s: ...".
    pub reason: String,
}
