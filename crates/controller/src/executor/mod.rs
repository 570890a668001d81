//! Carries deployments out: feeds the planner, persists every transition
//! (state and a human event, one transaction) *before* performing its
//! actions through the fleet and the proxy, and turns what happened into
//! the next event.
//!
//! One [`Deployer`] per managed service owns at most one active deployment
//! (invariant 6: a second request gets a conflict naming the running one).
//! Operator commands arrive on a channel: pause/resume are applied between
//! steps, promote/abort/rollback interrupt a bake or the retention at once
//! and otherwise apply as soon as the current step's actions finish.

use std::sync::{Arc, Mutex};

use handoff_core::config::Batch;
use handoff_runtime::Runtime;
use handoff_store::DeploymentRecord;
use tokio::sync::{mpsc, watch};

use crate::fleet::Fleet;
use crate::plan::{self, Action, Deployment, Event, Kind, Phase, Status};
use crate::report::{Report, Sampler};

pub(crate) mod describe;
mod perform;
mod predicted;

use describe::describe;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("service '{service}' is already being deployed by {id} ({status}); wait for it, or `handoff abort {service}`")]
    Conflict {
        service: String,
        id: String,
        status: String,
    },
    #[error("service '{service}' has no deployment in progress")]
    NoneActive { service: String },
    #[error(transparent)]
    Rejected(#[from] plan::Rejected),
    #[error(transparent)]
    Controller(#[from] crate::ControllerError),
}

impl From<handoff_store::StoreError> for DeployError {
    fn from(e: handoff_store::StoreError) -> Self {
        DeployError::Controller(e.into())
    }
}

/// What a user asks for.
#[derive(Debug, Clone, Default)]
pub struct DeployRequest {
    pub revision: String,
    pub strategy: Option<Kind>,
    pub batch: Option<Batch>,
    /// The revision's files (directory or `.tar.gz`), installed before start.
    pub artifact: Option<std::path::PathBuf>,
}

struct Active {
    id: String,
    control: mpsc::UnboundedSender<Event>,
    state: watch::Receiver<Deployment>,
}

pub struct Deployer<R: Runtime> {
    pub fleet: Arc<Fleet<R>>,
    /// The service's load, for `batch = "auto"` (sampling starts with
    /// [`crate::load::LoadMeter::start`]; tests feed it directly).
    pub meter: Arc<crate::load::LoadMeter>,
    active: Mutex<Option<Active>>,
    /// Every recorded step, for live subscribers (API server-sent events).
    steps: tokio::sync::broadcast::Sender<StepEvent>,
}

/// One recorded step of a deployment, as subscribers see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepEvent {
    pub deployment: String,
    pub service: String,
    pub at_ms: i64,
    pub kind: String,
    pub message: String,
    pub status: String,
}

enum Outcome {
    Done,
    Failed(String),
    Control(Event),
}

pub fn status_str(s: Status) -> &'static str {
    match s {
        Status::Running => "running",
        Status::RollingBack => "rolling-back",
        Status::Retained => "retained",
        Status::Succeeded => "succeeded",
        Status::RolledBack => "rolled-back",
        Status::Failed => "failed",
    }
}

impl<R: Runtime> Deployer<R> {
    pub fn new(fleet: Arc<Fleet<R>>) -> Arc<Self> {
        Arc::new(Deployer {
            fleet,
            meter: Arc::default(),
            active: Mutex::new(None),
            steps: tokio::sync::broadcast::channel(1024).0,
        })
    }

    fn active(&self) -> std::sync::MutexGuard<'_, Option<Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deployment steps as they are recorded, in order.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StepEvent> {
        self.steps.subscribe()
    }

    /// The active deployment's latest state.
    pub fn current(&self) -> Option<Deployment> {
        self.active().as_ref().map(|a| a.state.borrow().clone())
    }

    /// Starts a deployment; returns its id at once (it runs in the
    /// background). A blue/green deployment still retaining blue is ended
    /// first (blue terminated), since only one may hold the service.
    pub async fn deploy(self: &Arc<Self>, req: DeployRequest) -> Result<String, DeployError> {
        let svc = self.fleet.name().to_string();
        loop {
            let retained = {
                let a = self.active();
                match a.as_ref().map(|a| {
                    (
                        a.id.clone(),
                        a.state.borrow().status,
                        a.control.clone(),
                        a.state.clone(),
                    )
                }) {
                    Some((id, st, _, _)) if matches!(st, Status::Running | Status::RollingBack) => {
                        return Err(DeployError::Conflict {
                            service: svc,
                            id,
                            status: status_str(st).into(),
                        })
                    }
                    Some((_, Status::Retained, ctl, rx)) => Some((ctl, rx)),
                    _ => None,
                }
            };
            let Some((ctl, mut rx)) = retained else { break };
            self.fleet.event(
                None,
                "retention-ended",
                "a new deployment ends the previous one's retention: blue terminated",
            );
            let _ = ctl.send(Event::Promote);
            let _ = rx.wait_for(|d| !d.status.is_active()).await;
        }
        // Held until the run ends: the reconciler keeps off a fleet being deployed.
        let deploying = self.fleet.deployment_guard().await;
        if let Some(a) = &req.artifact {
            self.fleet.set_artifact(&req.revision, a.clone());
            // Installed (and verified) now, so a bad artifact fails the
            // request instead of the deployment.
            self.fleet.install_release(&req.revision).await?;
        }
        let strategy = req
            .strategy
            .unwrap_or_else(|| self.fleet.service.strategy.into());
        let n_prev = self.fleet.store.deployments(&svc, 1_000_000)?.len();
        let id = format!("{svc}-{}", n_prev + 1);
        let d = self.build(id.clone(), &req, strategy)?;
        let prediction = self.predict(&d);
        self.save(
            &d,
            "created",
            &format!("deploying {} → {} ({})", d.from, d.to, d.strategy.as_str()),
            None,
        )?;
        if let Ok(p) = serde_json::to_string(&prediction) {
            let _ = self.fleet.store.set_deployment_plan(&d.id, &p);
        }
        if d.strategy == Kind::AllAtOnce {
            self.save(
                &d,
                "warning",
                "all-at-once stops every instance before starting the new ones: clients get 503 until they are healthy (the downtime baseline, on purpose)",
                None,
            )?;
        }
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(d.clone());
        *self.active() = Some(Active {
            id: id.clone(),
            control: ctl,
            state: state_rx,
        });
        let me = self.clone();
        tokio::spawn(async move { me.run(d, ctl_rx, state_tx, deploying).await });
        Ok(id)
    }

    /// At boot: deployments a crash (or stop) of handoff interrupted are
    /// closed with a record of what happened. The fleet then boots on the
    /// current revision: `to` only if the deployment had already made it
    /// current (blue/green in retention), else `from` — a rollback by
    /// restart. Nothing half-done is resumed blindly.
    pub fn recover(&self) -> Result<Vec<String>, DeployError> {
        let mut closed = Vec::new();
        for rec in self.fleet.store.deployments(self.fleet.name(), 50)? {
            let Ok(mut d) = serde_json::from_str::<Deployment>(&rec.state) else {
                continue;
            };
            if !d.status.is_active() {
                continue;
            }
            let current = self.fleet.current_revision();
            let (status, msg) = if current == d.to {
                (
                    Status::Succeeded,
                    format!(
                        "handoff restarted while {} was retaining blue; {} serves, blue terminated",
                        d.id, d.to
                    ),
                )
            } else {
                (
                    Status::RolledBack,
                    format!(
                        "interrupted by a restart of handoff during {:?}; {} serves again",
                        d.phase, d.from
                    ),
                )
            };
            d.status = status;
            d.phase = Phase::Finished;
            d.reason.get_or_insert_with(|| msg.clone());
            self.save(&d, "interrupted", &msg, None)?;
            closed.push(d.id);
        }
        Ok(closed)
    }

    /// Sends an operator command to the active deployment.
    pub fn control(&self, ev: Event) -> Result<String, DeployError> {
        let a = self.active();
        match a.as_ref() {
            Some(a) if a.state.borrow().status.is_active() => {
                let _ = a.control.send(ev);
                Ok(a.id.clone())
            }
            _ => Err(DeployError::NoneActive {
                service: self.fleet.name().to_string(),
            }),
        }
    }

    fn save(
        &self,
        d: &Deployment,
        kind: &str,
        msg: &str,
        report: Option<&Report>,
    ) -> Result<(), DeployError> {
        tracing::info!(service = %d.service, deployment = %d.id, kind, "{msg}");
        self.fleet.store.save_deployment(
            &DeploymentRecord {
                id: d.id.clone(),
                service: d.service.clone(),
                from: d.from.clone(),
                to: d.to.clone(),
                strategy: d.strategy.as_str().into(),
                status: status_str(d.status).into(),
                state: serde_json::to_string(d).unwrap_or_default(),
                report: report.map(|r| serde_json::to_string(r).unwrap_or_default()),
                created_ms: 0,
                updated_ms: 0,
            },
            Some((kind, msg)),
        )?;
        let _ = self.steps.send(StepEvent {
            deployment: d.id.clone(),
            service: d.service.clone(),
            at_ms: handoff_store::now_ms(),
            kind: kind.to_string(),
            message: msg.to_string(),
            status: status_str(d.status).into(),
        });
        Ok(())
    }

    async fn run(
        self: Arc<Self>,
        mut d: Deployment,
        mut ctl: mpsc::UnboundedReceiver<Event>,
        state: watch::Sender<Deployment>,
        _deploying: crate::fleet::DeployGuard<R>,
    ) {
        let fleet = self.fleet.clone();
        let alive = {
            let f = fleet.clone();
            move || f.instances().iter().filter(|i| i.pid.is_some()).count()
        };
        let sampler = Sampler::start(fleet.proxy.clone(), &d.from, &d.to, alive.clone());
        let mut actions = self.apply(&mut d, Event::Start, &state, &sampler);
        // Commands read during an interruptible wait that do not interrupt
        // it (pause/resume), applied when it ends.
        let mut deferred: Vec<Event> = Vec::new();
        loop {
            let outcome = if actions.is_empty() {
                if d.phase == Phase::Finished {
                    break;
                }
                match ctl.recv().await {
                    Some(ev) => Outcome::Control(ev),
                    None => break,
                }
            } else {
                let o = self.perform(&d, &actions, &mut ctl, &mut deferred).await;
                // The last transition's actions (supervise, mark current)
                // are performed too; then there is nothing left to feed.
                if d.phase == Phase::Finished {
                    if let Outcome::Failed(e) = o {
                        tracing::error!(deployment = %d.id, error = %e, "final step failed");
                    }
                    break;
                }
                o
            };
            // Pause/resume that arrived meanwhile go first, so a pause
            // holds the step that just finished; other commands follow it.
            let mut later = Vec::new();
            let queued: Vec<Event> = deferred
                .drain(..)
                .chain(std::iter::from_fn(|| ctl.try_recv().ok()))
                .collect();
            for ev in queued {
                if matches!(ev, Event::Pause | Event::Resume) {
                    self.apply(&mut d, ev, &state, &sampler);
                } else {
                    later.push(ev);
                }
            }
            let ev = match outcome {
                Outcome::Done => Event::Done,
                Outcome::Failed(reason) => Event::Failed { reason },
                Outcome::Control(ev) => ev,
            };
            actions = self.apply(&mut d, ev, &state, &sampler);
            for ev in later {
                let a = self.apply(&mut d, ev, &state, &sampler);
                if !a.is_empty() {
                    actions = a;
                }
            }
        }
        let report = sampler.finish(
            Report {
                deployment: d.id.clone(),
                service: d.service.clone(),
                from: d.from.clone(),
                to: d.to.clone(),
                strategy: d.strategy.as_str().into(),
                outcome: status_str(d.status).into(),
                desired: d.fleet.len(),
                reason: d.reason.clone(),
                steps: self.steps(&d.id),
                ..Default::default()
            },
            alive(),
        );
        let msg = format!(
            "report: {} in {} ms, capacity floor {}/{}, mixed versions {} ms, peak {} instances",
            status_str(d.status),
            report.duration_ms,
            report.capacity_floor,
            report.desired,
            report.mixed_window_ms,
            report.peak_instances
        );
        if let Err(e) = self.save(&d, "report", &msg, Some(&report)) {
            tracing::error!(error = %e, "cannot save the deploy report");
        }
        let _ = state.send(d);
    }

    fn steps(&self, id: &str) -> Vec<(String, u64)> {
        let ev = self.fleet.store.deployment_events(id).unwrap_or_default();
        let t0 = ev.first().map_or(0, |e| e.0);
        ev.into_iter()
            .map(|(at, kind, _)| (kind, (at - t0).max(0) as u64))
            .collect()
    }

    /// Applies one event: on success the new state is persisted (with its
    /// description) before its actions are returned for execution.
    fn apply(
        &self,
        d: &mut Deployment,
        ev: Event,
        state: &watch::Sender<Deployment>,
        sampler: &Sampler,
    ) -> Vec<Action> {
        let label = format!("{ev:?}");
        match plan::step(d, ev) {
            Ok((n, actions)) => {
                if n.status == Status::RollingBack && d.status != Status::RollingBack {
                    sampler.rollback_started();
                }
                let (kind, msg) = describe(d, &n, &actions);
                if let Err(e) = self.save(&n, &kind, &msg, None) {
                    // Never act on a state that is not on disk.
                    tracing::error!(error = %e, "cannot persist deployment state; holding");
                    return Vec::new();
                }
                *d = n;
                let _ = state.send(d.clone());
                actions
            }
            Err(e) => {
                tracing::warn!(deployment = %d.id, event = %label, error = %e, "event ignored");
                Vec::new()
            }
        }
    }
}
