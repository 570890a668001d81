//! handoff-controller: decides what the fleet of each service should be and
//! makes the proxy and the runtime agree with it.
//!
//! - Fixed targets (`targets = [...]`) are attached to their service's
//!   `default` group ([`attach_static`]).
//! - Managed services get a [`fleet::Fleet`]: N instances of a revision,
//!   started through the `Runtime`, registered in the proxy when healthy,
//!   restarted with back-off when they die, adopted after a restart of
//!   handoff, all recorded in the store before each side effect.
//!
//! The controller talks to the rest only through narrow interfaces: the
//! [`balancer::Balancer`] (handoff's own proxy, or a backend of the user's
//! HAProxy), the `Runtime` trait and the `Store`. Deployment strategies build on the same three.

pub mod fleet;

use std::net::SocketAddr;
use std::sync::Arc;

use handoff_proxy::{ControlError, ServiceProxy, TargetSpec, DEFAULT_GROUP};

pub use fleet::{Fleet, FleetOptions};
pub use handoff_runtime::RuntimeError;

/// Revision label of targets handoff does not run itself.
pub const STATIC_REVISION: &str = "static";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Proxy(#[from] ControlError),
    #[error(transparent)]
    Balancer(#[from] balancer::BalancerError),
    #[error(transparent)]
    Store(#[from] handoff_store::StoreError),
    #[error(transparent)]
    Runtime(#[from] handoff_runtime::RuntimeError),
    #[error("service '{0}' has fixed targets, not managed instances")]
    NotManaged(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Registers a service's fixed targets; each enters service once its health
/// checks pass.
pub fn attach_static(svc: &Arc<ServiceProxy>, targets: &[SocketAddr]) -> Result<(), ControlError> {
    svc.set_weights(&[(DEFAULT_GROUP, 100)])?;
    for addr in targets {
        svc.add_target(
            DEFAULT_GROUP,
            TargetSpec {
                addr: *addr,
                revision: STATIC_REVISION.into(),
                name: addr.to_string(),
                hold: false,
            },
        )?;
    }
    Ok(())
}
pub mod analysis;
pub mod balancer;
pub mod executor;
pub mod hooks;
pub mod load;
pub mod plan;
pub mod predict;
pub mod report;
pub mod service;
