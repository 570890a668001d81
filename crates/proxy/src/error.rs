//! Errors of the proxy crate.
//!
//! [`ControlError`] is what the control handle returns to its callers.
//! [`Failure`] classifies what went wrong with one forwarded request: where
//! it came from decides the status (502/503/504/400) and whether a retry on
//! another target is safe.

use std::net::SocketAddr;

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("service '{service}': {source}")]
    Tls {
        service: String,
        #[source]
        source: crate::tls::TlsError,
    },
    #[error("service '{service}' has no target {target}; it may have been removed already")]
    UnknownTarget { service: String, target: u64 },
    #[error("service '{service}' has no target group '{group}'; add a target to create it")]
    UnknownGroup { service: String, group: String },
    #[error("service '{service}' already has target {addr} in group '{group}'")]
    DuplicateTarget {
        service: String,
        addr: SocketAddr,
        group: String,
    },
    #[error(
        "cannot listen on {addr} for service '{service}': {source}; is another process using it?"
    )]
    Bind {
        service: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start proxy worker thread: {0}")]
    Worker(std::io::Error),
}

/// Why a request could not be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No target in service (503). Safe: nothing was sent.
    NoHealthyTarget,
    /// TCP connect refused or timed out (502). Safe to retry elsewhere.
    Connect,
    /// The connection failed after the request was (maybe) sent and before
    /// any response byte (502). Retry only if idempotent and replayable.
    Upstream,
    /// No response head within `response_timeout` (504). Never retried.
    Timeout,
    /// The client's own request was malformed, e.g. bad chunking (400).
    BadRequest,
}

impl Failure {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Failure::NoHealthyTarget => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Connect | Failure::Upstream => StatusCode::BAD_GATEWAY,
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::BadRequest => StatusCode::BAD_REQUEST,
        }
    }

    pub(crate) fn code(self) -> &'static str {
        match self {
            Failure::NoHealthyTarget => "no_healthy_target",
            Failure::Connect => "connect_failed",
            Failure::Upstream => "upstream_error",
            Failure::Timeout => "upstream_timeout",
            Failure::BadRequest => "bad_request",
        }
    }
}
