//! Carries deployments out: feeds the planner, persists every transition
//! (state and a human event, one transaction) *before* performing its
//! actions through the fleet and the proxy, and turns what happened into
//! the next event.
//!
//! One [`Deployer`] per managed service owns at most one active deployment
//! (invariant 6). Every request that starts or steers one (deploy,
//! rollback, pause, resume, abort, promote) passes one gate, a mutex over
//! [`Gate`]: the check and the reservation happen under the same lock with
//! no await between, so of two requests sent at the same instant exactly
//! one is admitted and the other gets a conflict naming the holder. Ids
//! come from the store ([`handoff_store::Store::next_deployment_id`]),
//! never from a count.
//!
//! Operator commands arrive on a channel: pause/resume are applied between
//! steps, promote/abort/rollback interrupt a bake or the retention at once
//! and otherwise apply as soon as the current step's actions finish.

use std::sync::{Arc, Mutex};

use handoff_core::config::Batch;
use handoff_core::{Origin, StepKind};
use handoff_runtime::Runtime;
use handoff_store::DeploymentRecord;
use tokio::sync::{mpsc, watch};

use crate::fleet::Fleet;
use crate::plan::{self, Action, Deployment, Event, Phase, Status, Strategy};
use crate::report::{Report, Sampler};

pub(crate) mod describe;
mod perform;
mod predicted;
pub mod rollback;

use describe::describe;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("service '{service}' is already being deployed by {id} ({status}); wait for it, or `handoff abort {service}`")]
    Conflict {
        service: String,
        id: String,
        status: String,
    },
    #[error("service '{service}' is busy: {what} is being started; try again in a moment")]
    Busy { service: String, what: String },
    #[error("service '{service}' has no deployment in progress")]
    NoneActive { service: String },
    #[error("{id} is already rolling back service '{service}'; follow it with `handoff status {service}`")]
    AlreadyRollingBack { service: String, id: String },
    #[error("service '{service}' cannot be deployed now: {why}; its instances there are out of service and a deployment would not complete on a partial fleet: bring the host back (`handoff hosts check`) or remove it from `hosts`")]
    HostLost { service: String, why: String },
    #[error(transparent)]
    Rollback(#[from] rollback::Refused),
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
    pub strategy: Option<Strategy>,
    pub batch: Option<Batch>,
    /// The revision's files (directory or `.tar.gz`), installed before start.
    pub artifact: Option<std::path::PathBuf>,
    /// Who asked: a rollback is recorded as one, so that the revision it
    /// left is never the target of the next.
    pub origin: Origin,
}

struct Active {
    id: String,
    control: mpsc::UnboundedSender<Event>,
    state: watch::Receiver<Deployment>,
}

/// The one admission point of a service.
#[derive(Default)]
struct Gate {
    /// A deploy or rollback between its admission and its start (it may
    /// await an install, or the end of a retention): what it is, for the
    /// conflict message of anyone who comes meanwhile.
    admitting: Option<String>,
    /// The latest deployment started here (finished ones stay until the
    /// next, so status can show it).
    active: Option<Active>,
}

/// Held while a request is admitted; clears the reservation when dropped
/// (the deployment started, or an error on the way gave the gate back).
/// Owned, so the admitted work can run in its own task: a client that
/// hangs up mid-request cancels nothing half-way.
struct Reservation<R: Runtime> {
    deployer: Arc<Deployer<R>>,
}

impl<R: Runtime> Drop for Reservation<R> {
    fn drop(&mut self) {
        self.deployer.gate().admitting = None;
    }
}

pub struct Deployer<R: Runtime> {
    pub fleet: Arc<Fleet<R>>,
    /// The service's load, for `batch = "auto"` (sampling starts with
    /// [`crate::load::LoadMeter::start`]; tests feed it directly).
    pub meter: Arc<crate::load::LoadMeter>,
    gate: Mutex<Gate>,
    /// When the running deployment's rollback moved traffic back (a flip),
    /// for its report.
    flipped: Mutex<Option<std::time::Instant>>,
    /// Every recorded step, for live subscribers (API server-sent events).
    steps: tokio::sync::broadcast::Sender<StepEvent>,
}

/// One recorded step of a deployment, as subscribers see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepEvent {
    pub deployment: String,
    pub service: String,
    pub at_ms: i64,
    pub kind: StepKind,
    pub message: String,
    pub status: handoff_core::DeploymentStatus,
}

enum Outcome {
    Done,
    Failed(String),
    Control(Event),
}

impl<R: Runtime> Deployer<R> {
    pub fn new(fleet: Arc<Fleet<R>>) -> Arc<Self> {
        Arc::new(Deployer {
            fleet,
            meter: Arc::default(),
            gate: Mutex::new(Gate::default()),
            flipped: Mutex::new(None),
            steps: tokio::sync::broadcast::channel(1024).0,
        })
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deployment steps as they are recorded, in order.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StepEvent> {
        self.steps.subscribe()
    }

    /// The active deployment's latest state.
    pub fn current(&self) -> Option<Deployment> {
        self.gate()
            .active
            .as_ref()
            .map(|a| a.state.borrow().clone())
    }

    /// Starts a deployment; returns its id at once (it runs in the
    /// background). A blue/green deployment still retaining blue is ended
    /// first (blue terminated), since only one may hold the service; a
    /// deployment that has settled but is still finishing its last actions
    /// (marking the revision current, a contract hook, its report) is
    /// waited for.
    pub async fn deploy(self: &Arc<Self>, req: DeployRequest) -> Result<String, DeployError> {
        let what = format!("a {} to {}", req.origin.as_str(), req.revision);
        let (reservation, previous) = self.admit(&what)?;
        let me = self.clone();
        // In a task of its own: the admitted request runs to its end even if
        // the caller goes away (an HTTP client that hangs up).
        tokio::spawn(async move {
            if let Some((ctl, retained)) = previous {
                if retained {
                    me.fleet.event(
                        None,
                        "retention-ended",
                        "a new deployment ends the previous one's retention: blue terminated",
                    );
                    let _ = ctl.send(Event::Promote);
                }
                ctl.closed().await;
            }
            me.start(req, reservation).await
        })
        .await
        .map_err(|e| DeployError::Controller(crate::ControllerError::Internal(e.to_string())))?
    }

    /// Holds the gate for a hand-over to a new daemon: refused while a
    /// deployment runs or retains blue (it is handed over between
    /// deployments, never in the middle of one); every deploy or rollback
    /// meanwhile is refused as busy. [`Self::unhold`] gives it back (the
    /// hand-over failed).
    pub fn hold(&self, why: &str) -> Result<(), DeployError> {
        let svc = self.fleet.name().to_string();
        let mut g = self.gate();
        if let Some(holder) = &g.admitting {
            return Err(DeployError::Busy {
                service: svc,
                what: holder.clone(),
            });
        }
        // Until its run has ended: a settled deployment may still be
        // running its last actions (supervision, a contract hook).
        if let Some(a) = g.active.as_ref().filter(|a| !a.control.is_closed()) {
            let st = a.state.borrow().status;
            return Err(DeployError::Conflict {
                service: svc,
                id: a.id.clone(),
                status: if st.is_active() {
                    st.as_str().into()
                } else {
                    format!("{}, finishing its last steps", st.as_str())
                },
            });
        }
        g.admitting = Some(why.to_string());
        Ok(())
    }

    /// Gives back the gate [`Self::hold`] took.
    pub fn unhold(&self) {
        self.gate().admitting = None;
    }

    /// The gate: refuses while another request is being admitted or a
    /// deployment runs; otherwise reserves the service for this request.
    /// Returns the previous deployment's control channel when its run has
    /// not ended yet (and whether it is retaining blue), to end and await.
    #[allow(clippy::type_complexity)]
    fn admit(
        self: &Arc<Self>,
        what: &str,
    ) -> Result<(Reservation<R>, Option<(mpsc::UnboundedSender<Event>, bool)>), DeployError> {
        let svc = self.fleet.name().to_string();
        let mut g = self.gate();
        if let Some(holder) = &g.admitting {
            return Err(DeployError::Busy {
                service: svc,
                what: holder.clone(),
            });
        }
        let previous = match &g.active {
            // Its run ended (the receiver went with it): nothing to wait for.
            Some(a) if a.control.is_closed() => None,
            Some(a) => {
                let st = a.state.borrow().status;
                match st {
                    Status::Running | Status::RollingBack => {
                        return Err(DeployError::Conflict {
                            service: svc,
                            id: a.id.clone(),
                            status: st.as_str().into(),
                        })
                    }
                    Status::Retained => Some((a.control.clone(), true)),
                    // Settled, still finishing its last actions.
                    _ => Some((a.control.clone(), false)),
                }
            }
            None => None,
        };
        g.admitting = Some(what.to_string());
        Ok((
            Reservation {
                deployer: self.clone(),
            },
            previous,
        ))
    }

    /// The admitted request's deployment: installed, numbered, planned,
    /// recorded, then run in the background.
    async fn start(
        self: &Arc<Self>,
        req: DeployRequest,
        reservation: Reservation<R>,
    ) -> Result<String, DeployError> {
        // Held until the run ends: the reconciler keeps off a fleet being deployed.
        let deploying = self.fleet.deployment_guard().await;
        let svc = self.fleet.name().to_string();
        if req.origin == Origin::Rollback {
            // Checked again now that the service is ours: a deploy admitted
            // in between may have pruned the target's files.
            if let Some(dir) = self.fleet.release_missing(&req.revision) {
                return Err(rollback::Refused::FilesGone {
                    service: svc,
                    revision: req.revision.clone(),
                    dir: dir.display().to_string(),
                }
                .into());
            }
        }
        if req.origin == Origin::Deploy {
            // A deployment does not complete on a partial fleet, so it
            // does not start on one; a rollback goes without the lost host.
            if let Some(why) = self.fleet.lost_host_reason() {
                return Err(DeployError::HostLost { service: svc, why });
            }
            self.fleet
                .preflight()
                .await
                .map_err(crate::ControllerError::from)?;
        }
        if let Some(a) = &req.artifact {
            self.fleet.set_artifact(&req.revision, a.clone());
            // Installed (and verified) now, so a bad artifact fails the
            // request instead of the deployment.
            self.fleet.install_release(&req.revision).await?;
        }
        let strategy = req.strategy.unwrap_or(self.fleet.service.strategy);
        let id = self.fleet.store.next_deployment_id(&svc)?;
        let mut d = self.build(id.clone(), &req, strategy)?;
        d.origin = req.origin;
        let prediction = self.predict(&d);
        let created = match req.origin {
            Origin::Deploy => format!("deploying {} → {} ({})", d.from, d.to, d.strategy.as_str()),
            Origin::Rollback => format!(
                "rollback: deploying {} → {} ({}), back to the revision that served before",
                d.from,
                d.to,
                d.strategy.as_str()
            ),
        };
        self.save(&d, StepKind::Created, &created, None)?;
        if let Ok(p) = serde_json::to_string(&prediction) {
            let _ = self.fleet.store.set_deployment_plan(&d.id, &p);
        }
        if d.strategy == Strategy::AllAtOnce {
            // A warning that cannot be written must not strand the record
            // just created: the deployment goes on either way.
            let _ = self.save(
                &d,
                StepKind::Warning,
                "all-at-once stops every instance before starting the new ones: clients get 503 until they are healthy (the downtime baseline, on purpose)",
                None,
            );
        }
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(d.clone());
        {
            let mut g = self.gate();
            g.active = Some(Active {
                id: id.clone(),
                control: ctl,
                state: state_rx,
            });
        }
        drop(reservation);
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
            // Only a blue/green deployment that was retaining blue had
            // finished its work; anything else (a flip back included, whose
            // last action marks `from` current) goes back to `from`.
            let (status, msg) = if d.status == Status::Retained && current == d.to {
                (
                    Status::Succeeded,
                    format!(
                        "handoff restarted while {} was retaining blue; {} serves, blue terminated",
                        d.id, d.to
                    ),
                )
            } else {
                if current != d.from {
                    self.fleet.mark_current(&d.from, &d.blue_group)?;
                }
                (
                    Status::RolledBack,
                    format!(
                        "interrupted by a restart of handoff during {:?}; {} serves again",
                        d.phase, d.from
                    ),
                )
            };
            // Not a judgement of either revision (see `rollback::verdicts`).
            d.interrupted = true;
            d.status = status;
            d.phase = Phase::Finished;
            d.reason.get_or_insert_with(|| msg.clone());
            self.save(&d, StepKind::Interrupted, &msg, None)?;
            closed.push(d.id);
        }
        Ok(closed)
    }

    /// Decides on the active deployment and sends it the event `decide`
    /// returns, under one lock: `None` when no deployment is active.
    pub(crate) fn control_with<T>(
        &self,
        decide: impl FnOnce(&Deployment) -> Result<(Event, T), DeployError>,
    ) -> Result<Option<(String, T)>, DeployError> {
        let g = self.gate();
        if let Some(holder) = &g.admitting {
            return Err(DeployError::Busy {
                service: self.fleet.name().to_string(),
                what: holder.clone(),
            });
        }
        let Some(a) = g.active.as_ref().filter(|a| !a.control.is_closed()) else {
            return Ok(None);
        };
        let cur = a.state.borrow().clone();
        if !cur.status.is_active() {
            return Ok(None);
        }
        let (ev, t) = decide(&cur)?;
        a.control.send(ev).map_err(|_| DeployError::NoneActive {
            service: self.fleet.name().to_string(),
        })?;
        Ok(Some((a.id.clone(), t)))
    }

    /// Sends an operator command to the active deployment.
    pub fn control(&self, ev: Event) -> Result<String, DeployError> {
        let g = self.gate();
        if let Some(holder) = &g.admitting {
            return Err(DeployError::Busy {
                service: self.fleet.name().to_string(),
                what: holder.clone(),
            });
        }
        match g.active.as_ref() {
            Some(a) if a.state.borrow().status.is_active() && a.control.send(ev).is_ok() => {
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
        kind: StepKind,
        msg: &str,
        report: Option<&Report>,
    ) -> Result<(), DeployError> {
        tracing::info!(service = %d.service, deployment = %d.id, kind = kind.as_str(), "{msg}");
        self.fleet.store.save_deployment(
            &DeploymentRecord {
                id: d.id.clone(),
                service: d.service.clone(),
                from: d.from.clone(),
                to: d.to.clone(),
                strategy: d.strategy.as_str().into(),
                status: d.status.as_str().into(),
                state: serde_json::to_string(d).unwrap_or_default(),
                report: report.map(|r| serde_json::to_string(r).unwrap_or_default()),
                origin: d.origin.as_str().into(),
                created_ms: 0,
                updated_ms: 0,
            },
            Some((kind.as_str(), msg)),
        )?;
        let _ = self.steps.send(StepEvent {
            deployment: d.id.clone(),
            service: d.service.clone(),
            at_ms: handoff_store::now_ms(),
            kind,
            message: msg.to_string(),
            status: d.status,
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
        self.flipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
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
            let mut ev = match outcome {
                Outcome::Done => Event::Done,
                Outcome::Failed(reason) => Event::Failed { reason },
                Outcome::Control(ev) => ev,
            };
            // An abort (or a flip back) that came while the step finished
            // wins over its completion: applied after it, Done could end
            // the deployment first and the abort, already answered as
            // accepted, would fall on a finished one.
            if ev == Event::Done {
                if let Some(i) = later.iter().position(|e| {
                    matches!(e, Event::Abort | Event::Rollback) && plan::step(&d, e.clone()).is_ok()
                }) {
                    ev = later.remove(i);
                }
            }
            actions = self.apply(&mut d, ev, &state, &sampler);
            for ev in later {
                let a = self.apply(&mut d, ev, &state, &sampler);
                if !a.is_empty() {
                    actions = a;
                }
            }
        }
        if let Some(t) = self
            .flipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            sampler.traffic_back(t);
        }
        let report = sampler.finish(
            Report {
                deployment: d.id.clone(),
                service: d.service.clone(),
                from: d.from.clone(),
                to: d.to.clone(),
                strategy: d.strategy.as_str().into(),
                outcome: d.status.as_str().into(),
                desired: d.fleet.len(),
                reason: d.reason.clone(),
                steps: self.steps(&d.id),
                ..Default::default()
            },
            alive(),
        );
        let msg = format!(
            "report: {} in {}, capacity floor {}/{}, mixed versions {}, peak {} instances",
            d.status.as_str(),
            crate::predict::fmt_ms(report.duration_ms),
            report.capacity_floor,
            report.desired,
            crate::predict::fmt_ms(report.mixed_window_ms),
            report.peak_instances
        );
        if let Err(e) = self.save(&d, StepKind::Report, &msg, Some(&report)) {
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
                if let Err(e) = self.save(&n, kind, &msg, None) {
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
