//! The controller's one narrow surface for the outside (the admin API, and
//! through it the CLI and the dashboard): [`ManagedService`], object-safe,
//! so callers hold `Arc<dyn ManagedService>` and name neither the runtime
//! nor the store. Requests map onto it one to one; the policies (the
//! admission gate, which revision a rollback goes to, when retention ends)
//! stay in the controller.
//!
//! Also here: the views it answers with, shared with the CLI through the
//! API's types, so the two cannot drift.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use handoff_core::{DeploymentStatus, Origin, StepKind, Strategy};
use handoff_runtime::Runtime;
use handoff_store::DeploymentRecord;
use serde::{Deserialize, Serialize};

use crate::executor::rollback::RollbackKind;
use crate::executor::{DeployError, DeployRequest, Deployer, StepEvent};
use crate::plan::{Deployment, Event};
use crate::predict::{compare, Comparison, Prediction};
use crate::report::Report;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One managed service, as the API sees it.
pub trait ManagedService: Send + Sync {
    fn name(&self) -> &str;
    /// The revision that serves now.
    fn current_revision(&self) -> String;
    /// The service's default strategy (from its config).
    fn default_strategy(&self) -> Strategy;
    /// The latest deployment's live state (finished ones included).
    fn latest(&self) -> Option<Deployment>;
    /// Starts a deployment through the admission gate; its id.
    fn deploy(&self, req: DeployRequest) -> BoxFuture<'_, Result<String, DeployError>>;
    /// Pause, resume, abort or promote the active deployment.
    fn control(&self, ev: Event) -> Result<String, DeployError>;
    /// A flip within retention, an abort while running, else a deployment
    /// back to `to` or the revision that served before.
    fn rollback(
        &self,
        to: Option<String>,
    ) -> BoxFuture<'_, Result<(String, RollbackKind), DeployError>>;
    fn deployment(&self, id: &str) -> Result<Option<DeploymentView>, DeployError>;
    /// Newest first.
    fn history(&self, limit: usize) -> Result<Vec<DeploymentView>, DeployError>;
    fn revisions(&self) -> Result<Vec<RevisionView>, DeployError>;
    fn plan(
        &self,
        req: &DeployRequest,
        strategies: &[Strategy],
    ) -> Result<Vec<Prediction>, DeployError>;
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StepEvent>;
    /// The tail of an instance's log; `None`: no such instance log.
    fn logs(&self, instance: &str, lines: usize) -> BoxFuture<'_, Option<String>>;
    /// Deployments by (strategy, status), for `/metrics`.
    fn deployment_counts(&self) -> Vec<(String, String, u64)>;
    /// Every instance the fleet keeps, running or not, in index order.
    fn instances(&self) -> Vec<InstanceStatus>;
    /// How many instances the config asks for.
    fn desired(&self) -> usize;
    /// The hosts the service is placed on and whether each answers
    /// (empty for a service of local processes).
    fn hosts(&self) -> Vec<HostStatus>;
    /// What routes its clients (`builtin`, `haproxy backend … via …`).
    fn balancer(&self) -> String;
    /// Holds the service for a hand-over to a new daemon (see
    /// [`crate::executor::Deployer::hold`]); `unhold` gives it back.
    fn hold(&self, why: &str) -> Result<(), DeployError>;
    fn unhold(&self);
}

/// One host of a service's placement as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: String,
    /// `up` or `unreachable`.
    pub state: String,
    /// Why it is unreachable (`no answer for 3.2 s`).
    #[serde(default)]
    pub why: Option<String>,
    /// Since when it is unreachable (ms since the epoch).
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Instances placed on it, and how many of them run and are healthy.
    pub instances: usize,
    pub healthy: usize,
}

/// One instance of a managed service as `status` shows it: an instance
/// that cannot start has no target in the proxy, so this is where its
/// error is seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub name: String,
    pub revision: String,
    pub group: String,
    /// The host it runs on (absent: this machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub port: u16,
    pub pid: Option<u32>,
    /// `running` (its process is alive), `down` (no process; supervision
    /// restarts it after its back-off), `stopped` (deliberately) or
    /// `unreachable` (its host does not answer: out of service until it does).
    pub state: String,
    /// Its target's state in the proxy (`initial`, `healthy`, …), if it
    /// has one.
    #[serde(default)]
    pub target_state: Option<String>,
    /// The last health check, e.g. `GET /healthz → 503 (4 in a row)`.
    #[serde(default)]
    pub last_check: Option<String>,
    /// Restarts in a row.
    pub restarts: u32,
    /// Why it last failed (start, exit, missed health deadline).
    #[serde(default)]
    pub last_error: Option<String>,
}

impl InstanceStatus {
    /// Running and taking traffic (or ready to).
    pub fn is_well(&self) -> bool {
        self.state == "running" && self.target_state.as_deref() == Some("healthy")
    }
}

/// `instances` of a fleet as [`InstanceStatus`].
pub fn instance_status<R: Runtime>(f: &crate::fleet::Fleet<R>) -> Vec<InstanceStatus> {
    f.instances()
        .into_iter()
        .map(|i| {
            let alive = i.pid.is_some() && f.exited(std::slice::from_ref(&i.name)).is_empty();
            let target = i.target.and_then(|t| f.proxy.target(t).ok());
            let lost = i.host.as_deref().and_then(|h| f.host_lost(h));
            InstanceStatus {
                state: if lost.is_some() {
                    "unreachable"
                } else if alive {
                    "running"
                } else if i.supervised {
                    "down"
                } else {
                    "stopped"
                }
                .into(),
                target_state: target.as_ref().map(|t| t.state().to_string()),
                last_check: target.as_ref().and_then(|t| t.last_check()),
                name: i.name,
                revision: i.revision,
                group: i.group,
                host: i.host,
                port: i.port,
                pid: i.pid,
                restarts: i.restarts,
                last_error: i.last_error,
            }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventView {
    pub at_ms: i64,
    pub kind: StepKind,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentView {
    pub id: String,
    pub service: String,
    pub from: String,
    pub to: String,
    pub strategy: Strategy,
    pub status: DeploymentStatus,
    /// `deploy`, or `rollback` when `handoff rollback` started it.
    #[serde(default)]
    pub origin: Origin,
    pub paused: bool,
    pub reason: Option<String>,
    /// Blue/green: when blue will be terminated (unix ms), while retained.
    pub retained_until_ms: Option<i64>,
    pub events: Vec<EventView>,
    pub report: Option<Report>,
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
pub struct RevisionView {
    pub id: String,
    /// Completed a deployment (or the first boot) and was not rolled back
    /// or failed since: a rollback target.
    pub stable: bool,
    /// Serving now.
    pub current: bool,
    pub artifact: Option<String>,
    pub sha256: Option<String>,
    pub created_ms: i64,
}

impl<R: Runtime> Deployer<R> {
    fn view(&self, rec: DeploymentRecord) -> DeploymentView {
        let store = &self.fleet.store;
        let state: Option<Deployment> = serde_json::from_str(&rec.state).ok();
        let events: Vec<EventView> = store
            .deployment_events(&rec.id)
            .unwrap_or_default()
            .into_iter()
            .map(|(at_ms, kind, message)| EventView {
                at_ms,
                kind: StepKind::parse(&kind),
                message,
            })
            .collect();
        let status = DeploymentStatus::parse(&rec.status).unwrap_or(DeploymentStatus::Failed);
        let retained_until_ms = (status == DeploymentStatus::Retained)
            .then(|| {
                events
                    .iter()
                    .rev()
                    .find(|e| e.kind == StepKind::Retained)
                    .map(|e| e.at_ms + self.fleet.service.blue_green.retention.as_millis() as i64)
            })
            .flatten();
        let plan: Option<Prediction> = store
            .deployment_plan(&rec.id)
            .ok()
            .flatten()
            .and_then(|p| serde_json::from_str(&p).ok());
        let comparison = plan.as_ref().map(|p| {
            let ev: Vec<(i64, String, String)> = events
                .iter()
                .map(|e| (e.at_ms, e.kind.as_str().to_string(), e.message.clone()))
                .collect();
            compare(p, &ev)
        });
        DeploymentView {
            plan,
            comparison,
            strategy: Strategy::parse(&rec.strategy).unwrap_or(Strategy::InPlace),
            status,
            origin: Origin::parse(&rec.origin).unwrap_or_default(),
            id: rec.id,
            service: rec.service,
            from: rec.from,
            to: rec.to,
            paused: state.as_ref().is_some_and(|s| s.paused),
            reason: state.and_then(|s| s.reason),
            retained_until_ms,
            events,
            report: rec.report.and_then(|r| serde_json::from_str(&r).ok()),
            created_ms: rec.created_ms,
            updated_ms: rec.updated_ms,
        }
    }
}

impl<R: Runtime> ManagedService for Arc<Deployer<R>> {
    fn name(&self) -> &str {
        self.fleet.name()
    }

    fn current_revision(&self) -> String {
        self.fleet.current_revision()
    }

    fn default_strategy(&self) -> Strategy {
        self.fleet.service.strategy
    }

    fn latest(&self) -> Option<Deployment> {
        self.current()
    }

    fn deploy(&self, req: DeployRequest) -> BoxFuture<'_, Result<String, DeployError>> {
        Box::pin(Deployer::deploy(self, req))
    }

    fn control(&self, ev: Event) -> Result<String, DeployError> {
        Deployer::control(self, ev)
    }

    fn rollback(
        &self,
        to: Option<String>,
    ) -> BoxFuture<'_, Result<(String, RollbackKind), DeployError>> {
        Box::pin(Deployer::rollback(self, to))
    }

    fn deployment(&self, id: &str) -> Result<Option<DeploymentView>, DeployError> {
        Ok(self
            .fleet
            .store
            .deployment(id)?
            .filter(|r| r.service == self.fleet.name())
            .map(|r| self.view(r)))
    }

    fn history(&self, limit: usize) -> Result<Vec<DeploymentView>, DeployError> {
        Ok(self
            .fleet
            .store
            .deployments(self.fleet.name(), limit)?
            .into_iter()
            .map(|r| self.view(r))
            .collect())
    }

    fn revisions(&self) -> Result<Vec<RevisionView>, DeployError> {
        let svc = self.fleet.name();
        let current = self.fleet.current_revision();
        let history = self.fleet.store.deployments(svc, 10_000)?;
        let list = self.fleet.store.revisions(svc)?;
        let verdicts = crate::executor::rollback::verdicts(&history, &list);
        Ok(list
            .into_iter()
            .map(|(r, _)| RevisionView {
                current: r.id == current,
                stable: matches!(
                    verdicts.get(&r.id),
                    Some(crate::executor::rollback::Verdict::Good { .. })
                ),
                id: r.id,
                artifact: r.artifact,
                sha256: r.sha256,
                created_ms: r.created_ms,
            })
            .collect())
    }

    fn plan(
        &self,
        req: &DeployRequest,
        strategies: &[Strategy],
    ) -> Result<Vec<Prediction>, DeployError> {
        Deployer::plan(self, req, strategies)
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StepEvent> {
        Deployer::subscribe(self)
    }

    fn logs(&self, instance: &str, lines: usize) -> BoxFuture<'_, Option<String>> {
        let instance = instance.to_string();
        Box::pin(async move { self.fleet.log_tail(&instance, lines).await })
    }

    fn deployment_counts(&self) -> Vec<(String, String, u64)> {
        self.fleet
            .store
            .deployment_counts(self.fleet.name())
            .unwrap_or_default()
    }

    fn instances(&self) -> Vec<InstanceStatus> {
        instance_status(&self.fleet)
    }

    fn desired(&self) -> usize {
        self.fleet.desired()
    }

    fn balancer(&self) -> String {
        self.fleet.balancer.describe()
    }

    fn hold(&self, why: &str) -> Result<(), DeployError> {
        Deployer::hold(self, why)
    }

    fn unhold(&self) {
        Deployer::unhold(self)
    }

    fn hosts(&self) -> Vec<HostStatus> {
        let all = instance_status(&self.fleet);
        self.fleet
            .placement()
            .into_iter()
            .filter_map(|(h, _)| h)
            .map(|h| {
                let on: Vec<&InstanceStatus> = all
                    .iter()
                    .filter(|i| i.host.as_deref() == Some(&h))
                    .collect();
                let (state, why, since_ms) = match self.fleet.host_state(&h) {
                    handoff_runtime::HostState::Up => ("up", None, None),
                    handoff_runtime::HostState::Lost { since_ms, why } => {
                        ("unreachable", Some(why), Some(since_ms))
                    }
                };
                HostStatus {
                    state: state.into(),
                    why,
                    since_ms,
                    instances: on.len(),
                    healthy: on.iter().filter(|i| i.is_well()).count(),
                    name: h,
                }
            })
            .collect()
    }
}
