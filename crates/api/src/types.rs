//! Request and response bodies shared by the API and the CLI, so the two
//! cannot drift apart.

use handoff_controller::predict::{Comparison, Prediction};
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
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventView {
    pub at_ms: i64,
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentView {
    pub id: String,
    pub service: String,
    pub from: String,
    pub to: String,
    pub strategy: String,
    pub status: String,
    pub paused: bool,
    pub reason: Option<String>,
    /// Blue/green: when blue will be terminated (unix ms), while retained.
    pub retained_until_ms: Option<i64>,
    pub events: Vec<EventView>,
    pub report: Option<serde_json::Value>,
    /// What `plan` predicted for this deployment when it was created.
    #[serde(default)]
    pub plan: Option<Prediction>,
    /// Each predicted step beside its measured duration.
    #[serde(default)]
    pub comparison: Option<Comparison>,
    pub created_ms: i64,
    pub updated_ms: i64,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupView {
    pub name: String,
    pub weight: u32,
    pub targets: Vec<TargetView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub listen: String,
    pub revision: Option<String>,
    pub deployment: Option<String>,
    pub groups: Vec<GroupView>,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevisionView {
    pub id: String,
    /// Completed a deployment (or the first boot): a rollback target.
    pub stable: bool,
    /// Serving now.
    pub current: bool,
    pub artifact: Option<String>,
    pub sha256: Option<String>,
    pub created_ms: i64,
}
