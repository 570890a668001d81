//! Request and response bodies shared by the API and the CLI, so the two
//! cannot drift apart.

use handoff_controller::predict::Prediction;
pub use handoff_controller::service::{
    DeploymentView, EventView, HostStatus, InstanceStatus, RevisionView,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    pub service: String,
    pub revision: String,
    /// `in-place`, `blue-green` or `all-at-once`; default: the service's.
    #[serde(default)]
    pub strategy: Option<String>,
    /// In-place batch, a count (`"1"`) or a percentage (`"50%"`).
    #[serde(default)]
    pub batch: Option<String>,
    /// A directory or `.tar.gz` on the daemon's machine holding the
    /// revision's files (absolute path).
    #[serde(default)]
    pub artifact: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    pub revision: String,
    /// As for a deployment, or `all` for every strategy side by side.
    #[serde(default)]
    pub strategy: Option<String>,
    #[serde(default)]
    pub batch: Option<String>,
}

/// Bumped when a field of the plan's JSON changes meaning or goes away
/// (adding one does not); scripts can check it.
pub const PLAN_SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanView {
    pub schema: u32,
    pub service: String,
    pub from: String,
    pub to: String,
    pub plans: Vec<Prediction>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    #[serde(default)]
    pub to: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted {
    /// The deployment started or steered (`SERVICE@N`).
    pub id: String,
    /// For a rollback: how it is carried out (`flip`: traffic back to the
    /// retained blue; `abort`: the running deployment rolls back;
    /// `deploy`: a deployment back to an earlier revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<handoff_controller::executor::rollback::RollbackKind>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetView {
    pub name: String,
    pub addr: String,
    pub revision: String,
    pub state: String,
    pub in_flight: u64,
    /// Requests answered so far (a counter: rates are its differences).
    #[serde(default)]
    pub requests: u64,
    /// The last active health check, e.g. `GET /healthz → 503 (4 in a
    /// row)` or `connection refused on 127.0.0.1:25342: …`; `None` before
    /// the first (or with active checks off).
    #[serde(default)]
    pub last_check: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupView {
    pub name: String,
    pub weight: u32,
    pub targets: Vec<TargetView>,
}

/// The certificate a service presents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateView {
    /// Its DNS names.
    pub names: Vec<String>,
    /// When it expires (unix ms).
    pub not_after_ms: i64,
    /// Obtained by handoff over ACME: where that stands.
    #[serde(default)]
    pub acme: Option<AcmeView>,
}

/// An ACME service's certificate: `pending` (a self-signed stand-in is
/// served until the first issuance), `ordering`, `valid` or `failed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcmeView {
    pub state: String,
    /// When it will be renewed (unix ms).
    pub renew_at_ms: Option<i64>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// The next attempt after a failure (unix ms).
    pub next_attempt_ms: Option<i64>,
    /// Failures in a row.
    pub failures: u32,
    /// Certificates obtained since the daemon started.
    pub issued: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    /// The configured address, as written (`127.0.0.1:0` stays so); none
    /// when another balancer (HAProxy) takes the clients.
    pub listen: Option<String>,
    /// What routes the clients: `builtin`, or e.g. `haproxy backend web
    /// via /run/haproxy/admin.sock`.
    #[serde(default)]
    pub balancer: String,
    /// With TLS: the certificate presented now.
    #[serde(default)]
    pub certificate: Option<CertificateView>,
    /// The address the proxy is bound to (port 0 resolved), when known;
    /// `None` while the configured port is 0 and the proxy has not told
    /// the API which port it got.
    #[serde(default)]
    pub bound: Option<String>,
    pub revision: Option<String>,
    pub deployment: Option<String>,
    pub groups: Vec<GroupView>,
    /// `health.healthy_deadline` in ms: how long a new instance may take
    /// to pass its checks (the deploy output counts down to it).
    #[serde(default)]
    pub healthy_deadline_ms: u64,
    /// Managed services: how many instances the config asks for.
    #[serde(default)]
    pub desired: Option<usize>,
    /// Managed services: every instance, running or not, in index order
    /// (one that cannot start has no target; its error is here).
    #[serde(default)]
    pub instances: Vec<InstanceStatus>,
    /// Managed services on hosts: each host and whether it answers
    /// (absent for local instances).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable: `bad_request`, `not_found`, `conflict`, `internal`.
    pub code: String,
    pub message: String,
}
