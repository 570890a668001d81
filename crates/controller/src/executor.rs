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
use std::time::Duration;

use handoff_core::config::Amount;
use handoff_runtime::Runtime;
use handoff_store::DeploymentRecord;
use tokio::sync::{mpsc, watch};

use crate::analysis::{self, Counts};
use crate::fleet::Fleet;
use crate::plan::{self, Action, BatchStep, Deployment, Event, Kind, Phase, Status};
use crate::report::{Report, Sampler};

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
    pub batch: Option<Amount>,
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

fn kind_str(k: Kind) -> &'static str {
    match k {
        Kind::InPlace => "in-place",
        Kind::BlueGreen => "blue-green",
        Kind::AllAtOnce => "all-at-once",
    }
}

impl<R: Runtime> Deployer<R> {
    pub fn new(fleet: Arc<Fleet<R>>) -> Arc<Self> {
        Arc::new(Deployer {
            fleet,
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
        if let Some(a) = &req.artifact {
            self.fleet.set_artifact(&req.revision, a.clone());
            // Installed (and verified) now, so a bad artifact fails the
            // request instead of the deployment.
            self.fleet.install_release(&req.revision).await?;
        }
        let cfg = &self.fleet.service;
        let strategy = req.strategy.unwrap_or_else(|| cfg.strategy.into());
        let from = self.fleet.current_revision();
        let fleet = self.fleet.serving();
        let n_prev = self.fleet.store.deployments(&svc, 1_000_000)?.len();
        let id = format!("{svc}-{}", n_prev + 1);
        let green = if strategy == Kind::BlueGreen {
            self.fleet.new_names(fleet.len())
        } else {
            Vec::new()
        };
        let d = plan::new(plan::Request {
            id: id.clone(),
            service: svc.clone(),
            from,
            to: req.revision.clone(),
            strategy,
            fleet,
            green,
            live_group: self.fleet.live_group(),
            batch: req.batch.unwrap_or(cfg.in_place.batch),
            min_healthy: cfg.in_place.min_healthy,
            traffic_steps: cfg.blue_green.traffic_steps.clone(),
            hooks: cfg.hooks.commands.keys().cloned().collect(),
        })?;
        self.save(
            &d,
            "created",
            &format!("deploying {} → {} ({})", d.from, d.to, kind_str(d.strategy)),
            None,
        )?;
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
        tokio::spawn(async move { me.run(d, ctl_rx, state_tx).await });
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
                strategy: kind_str(d.strategy).into(),
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
                strategy: kind_str(d.strategy).into(),
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

    async fn perform(
        &self,
        d: &Deployment,
        actions: &[Action],
        ctl: &mut mpsc::UnboundedReceiver<Event>,
        deferred: &mut Vec<Event>,
    ) -> Outcome {
        let f = &self.fleet;
        for a in actions {
            match a {
                Action::Drain { instances } => {
                    for (n, o) in f.drain(instances).await {
                        if let handoff_proxy::DrainOutcome::TimedOut { in_flight } = o {
                            let _ = self.fleet.store.save_deployment_event(
                                &d.id,
                                "drain-timeout",
                                &format!("{n}: drain timed out with {in_flight} in flight"),
                            );
                        }
                    }
                }
                Action::Stop { instances } => {
                    f.stop(instances, d.strategy == Kind::BlueGreen).await
                }
                Action::Start {
                    instances,
                    revision,
                    group,
                    hold,
                } => {
                    if let Err(e) = f.start(instances, revision, group, *hold).await {
                        return Outcome::Failed(e);
                    }
                }
                Action::AwaitHealthy { instances } => {
                    let before = (Counts::of(&f.proxy, &d.from), Counts::of(&f.proxy, &d.to));
                    if let Err(e) = f.await_healthy(instances).await {
                        return Outcome::Failed(e);
                    }
                    if d.status == Status::Running {
                        let old = Counts::of(&f.proxy, &d.from).since(&before.0);
                        let new = Counts::of(&f.proxy, &d.to).since(&before.1);
                        if let Err(e) =
                            analysis::verdict(&f.service.rollback, &d.from, &old, &d.to, &new)
                        {
                            return Outcome::Failed(e);
                        }
                    }
                }
                Action::SetWeights { weights } => {
                    let w: Vec<(&str, u32)> =
                        weights.iter().map(|(g, w)| (g.as_str(), *w)).collect();
                    if let Err(e) = f.proxy.set_weights(&w) {
                        return Outcome::Failed(e.to_string());
                    }
                }
                Action::Bake { .. } => {
                    let bake = f.service.blue_green.bake;
                    if let Some(o) = self.bake(d, bake, ctl, deferred).await {
                        return o;
                    }
                }
                Action::Quiesce { group } => {
                    let left = f.proxy.quiesce(group, f.service.drain.timeout).await;
                    if left > 0 {
                        let _ = f.store.save_deployment_event(
                            &d.id,
                            "drain-timeout",
                            &format!(
                                "{group}: {left} requests still in flight after the drain timeout"
                            ),
                        );
                    }
                }
                Action::Retain => {
                    let until = tokio::time::sleep(f.service.blue_green.retention);
                    tokio::pin!(until);
                    loop {
                        tokio::select! {
                            _ = &mut until => break,
                            Some(ev) = ctl.recv() => {
                                if let Some(o) = interrupt(ev, deferred) {
                                    return o;
                                }
                            }
                        }
                    }
                }
                Action::Supervise { instances } => f.supervise(instances),
                Action::Release { instances } => f.release(instances),
                Action::Hook { name, instances } => {
                    if let Err(e) = self.hook(d, name, instances).await {
                        return Outcome::Failed(e);
                    }
                }
                Action::MarkCurrent { revision } => {
                    let group = if *revision == d.to && d.strategy == Kind::BlueGreen {
                        &d.green_group
                    } else {
                        &d.blue_group
                    };
                    if let Err(e) = f.mark_current(revision, group) {
                        return Outcome::Failed(e.to_string());
                    }
                }
            }
        }
        Outcome::Done
    }

    /// Runs hook `name` once, or once per instance (concurrently); keeps
    /// each run's output with the deployment.
    async fn hook(&self, d: &Deployment, name: &str, instances: &[String]) -> Result<(), String> {
        let f = &self.fleet;
        let Some(cmd) = f.service.hooks.get(name).map(str::to_string) else {
            return Ok(());
        };
        let revision = if d.status == Status::RollingBack {
            d.from.clone()
        } else {
            d.to.clone()
        };
        let dir = f
            .install_release(&revision)
            .await
            .map_err(|e| e.to_string())?;
        let once = [String::new()];
        let targets: &[String] = if instances.is_empty() {
            &once
        } else {
            instances
        };
        let runs = targets.iter().map(|inst| {
            let (cmd, dir, revision) = (cmd.clone(), dir.clone(), revision.clone());
            let timeout = f.service.hooks.timeout;
            async move {
                let env = crate::hooks::HookEnv {
                    service: &d.service,
                    revision: &revision,
                    from: &d.from,
                    deployment: &d.id,
                    instance: inst,
                    phase: name,
                };
                (
                    inst.clone(),
                    crate::hooks::run(&cmd, &env, &dir, timeout).await,
                )
            }
        });
        let mut failed = Vec::new();
        for (inst, (result, output, took)) in futures_util::future::join_all(runs).await {
            let who = if inst.is_empty() {
                String::new()
            } else {
                format!(" {inst}")
            };
            let verdict = match &result {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("FAILED: {e}"),
            };
            let mut msg = format!("hook {name}{who}: {verdict} in {} ms", took.as_millis());
            if !output.is_empty() {
                msg.push('\n');
                msg.push_str(&output);
            }
            let _ = f.store.save_deployment_event(&d.id, "hook", &msg);
            if let Err(e) = result {
                failed.push(format!("hook {name}{who} {e}"));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    /// Holds a traffic step for `bake`, judging the new revision every
    /// 250 ms; promote/abort/rollback end it early.
    async fn bake(
        &self,
        d: &Deployment,
        bake: Duration,
        ctl: &mut mpsc::UnboundedReceiver<Event>,
        deferred: &mut Vec<Event>,
    ) -> Option<Outcome> {
        let p = &self.fleet.proxy;
        let before = (Counts::of(p, &d.from), Counts::of(p, &d.to));
        let end = tokio::time::Instant::now() + bake;
        loop {
            let now = tokio::time::Instant::now();
            if now >= end {
                break;
            }
            let tick = tokio::time::sleep_until(end.min(now + Duration::from_millis(250)));
            tokio::select! {
                _ = tick => {}
                Some(ev) = ctl.recv() => {
                    if let Some(o) = interrupt(ev, deferred) {
                        return Some(o);
                    }
                }
            }
            let old = Counts::of(p, &d.from).since(&before.0);
            let new = Counts::of(p, &d.to).since(&before.1);
            if let Err(e) =
                analysis::verdict(&self.fleet.service.rollback, &d.from, &old, &d.to, &new)
            {
                return Some(Outcome::Failed(e));
            }
        }
        None
    }
}

/// Promote/abort/rollback end a bake or the retention at once; pause and
/// resume wait for its end.
fn interrupt(ev: Event, deferred: &mut Vec<Event>) -> Option<Outcome> {
    match ev {
        Event::Promote | Event::Abort | Event::Rollback => Some(Outcome::Control(ev)),
        other => {
            deferred.push(other);
            None
        }
    }
}

/// The event recorded for a transition, in the seed's terms.
fn describe(before: &Deployment, d: &Deployment, actions: &[Action]) -> (String, String) {
    let list = |v: &[String]| v.join(", ");
    if d.paused && !before.paused {
        return (
            "paused".into(),
            "paused; the next step waits for resume".into(),
        );
    }
    if !d.paused && before.paused {
        return ("resumed".into(), "resumed".into());
    }
    if d.status == Status::RollingBack && before.status != Status::RollingBack {
        let why = d.reason.clone().unwrap_or_default();
        let how = if d.phase == Phase::FlippingBack {
            "traffic 100% blue, stopping green"
        } else {
            "redeploying the touched instances"
        };
        return (
            "rollback".into(),
            format!("rolling back to {} ({how}): {why}", d.from),
        );
    }
    let rb = if d.status == Status::RollingBack {
        "rollback "
    } else {
        ""
    };
    let _ = actions;
    let msg = match (&d.phase, ()) {
        (Phase::Batch { index, step }, _) => {
            let batch = list(&d.batches[*index]);
            let at = format!("{rb}batch {}/{}", index + 1, d.batches.len());
            let rev = if d.status == Status::RollingBack {
                &d.from
            } else {
                &d.to
            };
            match step {
                BatchStep::Draining => (
                    "drain".to_string(),
                    format!("{at}: deregistered {batch}, draining…"),
                ),
                BatchStep::Stopping => ("stop".into(), format!("{at}: drained; stopping {batch}")),
                BatchStep::Starting => ("start".into(), format!("{at}: starting {batch} on {rev}")),
                BatchStep::WaitingHealthy => (
                    "health".into(),
                    format!("{at}: waiting for {batch} to be healthy"),
                ),
            }
        }
        (Phase::StartingGreen, _) => (
            "start".into(),
            format!("starting green ({}) on {}", list(&d.green), d.to),
        ),
        (Phase::WaitingGreen, _) => (
            "health".into(),
            format!(
                "waiting for green {}/{} to be healthy",
                d.green.len(),
                d.green.len()
            ),
        ),
        (Phase::Shifting { index }, _) => (
            "traffic".into(),
            format!("traffic {}% green", d.traffic_steps[*index]),
        ),
        (Phase::CuttingOver, _) => (
            "cut-over".into(),
            "traffic 100% green; blue finishing its in-flight requests".into(),
        ),
        (Phase::Retaining, _) => (
            "retained".into(),
            format!(
                "{} serves; blue ({}) retained for an instant rollback",
                d.to,
                list(&d.fleet)
            ),
        ),
        (Phase::TerminatingBlue, _) => (
            "terminate".into(),
            format!("retention over; terminating blue ({})", list(&d.fleet)),
        ),
        (Phase::FlippingBack, _) => (
            "flip-back".into(),
            "traffic 100% blue; stopping green".into(),
        ),
        (Phase::Finished, _) => match d.status {
            Status::Succeeded => (
                "succeeded".into(),
                format!("{} serves service {}", d.to, d.service),
            ),
            Status::RolledBack => (
                "rolled-back".into(),
                format!(
                    "rolled back: {} serves; {}",
                    d.from,
                    d.reason.clone().unwrap_or_default()
                ),
            ),
            Status::Failed => (
                "failed".into(),
                format!("failed: {}", d.reason.clone().unwrap_or_default()),
            ),
            _ => ("finished".into(), "finished".into()),
        },
        _ => ("step".into(), format!("{:?}", d.phase)),
    };
    (msg.0, msg.1)
}
