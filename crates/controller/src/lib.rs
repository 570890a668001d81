//! handoff-controller: decides what the fleet of each service should be and
//! makes the proxy and the runtime agree with it.
//!
//! Today it attaches fixed targets (`targets = [...]`) to their service's
//! `default` group. Managed instances and the deployment strategies build on
//! the same narrow interfaces: the proxy's control handle (`ServiceProxy`)
//! and, later, the `Runtime` trait and the store.

use std::net::SocketAddr;
use std::sync::Arc;

use handoff_proxy::{ControlError, ServiceProxy, TargetSpec, DEFAULT_GROUP};

/// Revision label of targets handoff does not run itself.
pub const STATIC_REVISION: &str = "static";

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
            },
        )?;
    }
    Ok(())
}
