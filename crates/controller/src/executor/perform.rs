//! Performing a step's actions through the fleet and the proxy, running
//! hooks, and holding bakes and retention (which promote/abort/rollback can
//! end early).

use std::time::Duration;

use handoff_core::StepKind;
use handoff_runtime::Runtime;
use tokio::sync::mpsc;

use super::{Deployer, Outcome};
use crate::analysis::{self, Counts};
use crate::load::instances_needed;
use crate::plan::{Action, AutoBatch, Deployment, Event, Status, Strategy};

/// How many more starts an instance that exits during a rollback gets.
const ROLLBACK_RETRIES: u32 = 2;

impl<R: Runtime> Deployer<R> {
    pub(super) async fn perform(
        &self,
        d: &Deployment,
        actions: &[Action],
        ctl: &mut mpsc::UnboundedReceiver<Event>,
        deferred: &mut Vec<Event>,
    ) -> Outcome {
        let f = &self.fleet;
        for a in actions {
            let a = &self.without_lost_hosts(d, a);
            if d.status != Status::Running || f.placement().iter().all(|(h, _)| h.is_none()) {
                if let Some(o) = self.act(d, a, ctl, deferred).await {
                    return o;
                }
                continue;
            }
            // On hosts: a deployment does not go on over a partial fleet.
            // With `on_host_failure = "rollback"` a lost host fails it (the
            // action under way is cut short); with `"pause"` it holds where
            // it is until the host answers, then does the action again.
            let mut retry = false;
            loop {
                if let Some(why) = f.lost_host_reason() {
                    if self.fails_on_host_loss() {
                        return Outcome::Failed(why);
                    }
                    if let Some(o) = self.hold_for_hosts(d, &why, ctl, deferred).await {
                        return o;
                    }
                    retry = true;
                }
                let a = if retry { self.again(a) } else { a.clone() };
                // Only pure waits are cut short by a lost host: a start or
                // a hook runs on (its spawned work would go on regardless,
                // and doing it again beside itself would double it); on a
                // lost host it fails fast by itself.
                let wait = matches!(
                    a,
                    Action::AwaitHealthy { .. }
                        | Action::Bake { .. }
                        | Action::Retain
                        | Action::Quiesce { .. }
                );
                let lost = async {
                    if wait {
                        f.host_lost_wait().await
                    } else {
                        std::future::pending().await
                    }
                };
                tokio::pin!(lost);
                tokio::select! {
                    o = self.act(d, &a, ctl, deferred) => match o {
                        // A failure because the host went away is the
                        // host's, not the revision's: held like one.
                        Some(Outcome::Failed(e))
                            if !self.fails_on_host_loss() && f.lost_host_reason().is_some() =>
                        {
                            tracing::warn!(deployment = %d.id, "{e}: a host is lost; holding");
                            continue;
                        }
                        Some(o) => return o,
                        None => break,
                    },
                    why = &mut lost => {
                        if self.fails_on_host_loss() {
                            return Outcome::Failed(why);
                        }
                        continue;
                    }
                }
            }
        }
        Outcome::Done
    }

    /// Whether a lost host fails the deployment (`on_host_failure =
    /// "rollback"`, the default) rather than holding it.
    fn fails_on_host_loss(&self) -> bool {
        self.fleet.on_host_failure() == handoff_core::config::OnHostFailure::Rollback
    }

    /// `on_host_failure = "pause"`: waits, saying why, until every host of
    /// the service answers again (`None`: the step goes on) or an operator
    /// ends the wait (abort/rollback; promote does not skip it). Pause and
    /// resume are kept for after the step.
    async fn hold_for_hosts(
        &self,
        d: &Deployment,
        why: &str,
        ctl: &mut mpsc::UnboundedReceiver<Event>,
        deferred: &mut Vec<Event>,
    ) -> Option<Outcome> {
        let f = &self.fleet;
        let _ = f.store.save_deployment_event(
            &d.id,
            StepKind::Waiting.as_str(),
            &format!(
                "{why}: holding (on_host_failure = \"pause\") until it answers; `handoff rollback {s}` or `handoff abort {s}` end the wait",
                s = d.service
            ),
        );
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if f.lost_host_reason().is_none() {
                        let _ = f.store.save_deployment_event(
                            &d.id,
                            StepKind::Load.as_str(),
                            "every host answers again; the step goes on",
                        );
                        return None;
                    }
                }
                Some(ev) = ctl.recv() => match ev {
                    Event::Abort | Event::Rollback => return Some(Outcome::Control(ev)),
                    Event::Promote => {}
                    other => deferred.push(other),
                },
            }
        }
    }

    /// An action done again after a hold: instances already started are
    /// left alone (a second start would replace a healthy process).
    fn again(&self, a: &Action) -> Action {
        match a {
            Action::Start {
                instances,
                revision,
                group,
                hold,
            } => Action::Start {
                instances: self.fleet.exited(instances),
                revision: revision.clone(),
                group: group.clone(),
                hold: *hold,
            },
            other => other.clone(),
        }
    }

    /// A rollback does not wait for what cannot answer: instances on lost
    /// hosts are left out of its actions (with a note), and the reconciler
    /// converges them when their host answers again.
    fn without_lost_hosts(&self, d: &Deployment, a: &Action) -> Action {
        if d.status != Status::RollingBack {
            return a.clone();
        }
        let f = &self.fleet;
        let keep = |names: &Vec<String>| -> Vec<String> {
            let ok = f.reachable(names);
            if ok.len() < names.len() {
                let left: Vec<&String> = names.iter().filter(|n| !ok.contains(n)).collect();
                let msg = format!(
                    "rollback: leaving {} to the reconciler: {}",
                    left.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    f.lost_host_reason()
                        .unwrap_or_else(|| "host unreachable".into())
                );
                let _ = f
                    .store
                    .save_deployment_event(&d.id, StepKind::Warning.as_str(), &msg);
            }
            ok
        };
        match a {
            Action::Start {
                instances,
                revision,
                group,
                hold,
            } => Action::Start {
                instances: keep(instances),
                revision: revision.clone(),
                group: group.clone(),
                hold: *hold,
            },
            Action::AwaitHealthy { instances } => Action::AwaitHealthy {
                instances: keep(instances),
            },
            Action::Drain { instances } => Action::Drain {
                instances: keep(instances),
            },
            // Per-instance hooks of a lost host's instances cannot run;
            // once-per-deployment ones (no instances) run where they run.
            Action::Hook { name, instances } if !instances.is_empty() => Action::Hook {
                name: name.clone(),
                instances: keep(instances),
            },
            other => other.clone(),
        }
    }

    /// One action; `Some` ends the step (failed, or interrupted by a
    /// command).
    async fn act(
        &self,
        d: &Deployment,
        a: &Action,
        ctl: &mut mpsc::UnboundedReceiver<Event>,
        deferred: &mut Vec<Event>,
    ) -> Option<Outcome> {
        let f = &self.fleet;
        match a {
            Action::Drain { instances } => {
                if let (Some(auto), Status::Running) = (&d.auto, d.status) {
                    if let Some(o) = self
                        .await_capacity(d, auto, instances.len(), ctl, deferred)
                        .await
                    {
                        return Some(o);
                    }
                }
                for (n, o) in f.drain(instances).await {
                    if let handoff_proxy::DrainOutcome::TimedOut { in_flight } = o {
                        let _ = self.fleet.store.save_deployment_event(
                            &d.id,
                            StepKind::DrainTimeout.as_str(),
                            &format!("{n}: drain timed out with {in_flight} in flight"),
                        );
                    }
                }
            }
            Action::Stop { instances } => {
                f.stop(instances, d.strategy == Strategy::BlueGreen).await
            }
            Action::Start {
                instances,
                revision,
                group,
                hold,
            } => {
                let mut r = f.start(instances, revision, group, *hold).await;
                if d.status == Status::RollingBack {
                    for attempt in 1..=ROLLBACK_RETRIES {
                        let Err(e) = &r else { break };
                        let dead = f.exited(instances);
                        self.retrying(d, attempt, &dead, e);
                        f.stop(&dead, false).await;
                        r = f.start(&dead, revision, group, *hold).await;
                    }
                }
                if let Err(e) = r {
                    return Some(Outcome::Failed(e));
                }
            }
            Action::AwaitHealthy { instances } => {
                let before = (Counts::of(&f.proxy, &d.from), Counts::of(&f.proxy, &d.to));
                let mut r = f.await_healthy(instances).await;
                if d.status == Status::RollingBack {
                    // Going back to the revision that served: an exit
                    // now is most likely a crash or a kill of the
                    // moment, not the revision, so the instance gets
                    // another start before the rollback is given up.
                    for attempt in 1..=ROLLBACK_RETRIES {
                        let Err(e) = &r else { break };
                        let dead = f.exited(instances);
                        if dead.is_empty() {
                            break;
                        }
                        self.retrying(d, attempt, &dead, e);
                        f.stop(&dead, false).await;
                        if let Err(e) = f.start(&dead, &d.from, &d.blue_group, false).await {
                            r = Err(e);
                            continue;
                        }
                        r = f.await_healthy(instances).await;
                    }
                }
                if let Err(e) = r {
                    return Some(Outcome::Failed(e));
                }
                if d.status == Status::Running {
                    let old = Counts::of(&f.proxy, &d.from).since(&before.0);
                    let new = Counts::of(&f.proxy, &d.to).since(&before.1);
                    if let Err(e) =
                        analysis::verdict(&f.service.rollback, &d.from, &old, &d.to, &new)
                    {
                        return Some(Outcome::Failed(e));
                    }
                }
            }
            Action::SetWeights { weights } => {
                let w: Vec<(&str, u32)> = weights.iter().map(|(g, w)| (g.as_str(), *w)).collect();
                if let Err(e) = f.balancer.set_weights(&w) {
                    return Some(Outcome::Failed(e.to_string()));
                }
                // An outside balancer routes as the books say once it has
                // been told: a flip counts from then.
                if let Err(e) = f.balancer.settle().await {
                    return Some(Outcome::Failed(e.to_string()));
                }
                if d.status == Status::RollingBack {
                    // The flip back: the report tells it apart from
                    // the stop of green that follows.
                    *self.flipped.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(std::time::Instant::now());
                }
            }
            Action::Bake { .. } => {
                let bake = f.service.blue_green.bake;
                if let Some(o) = self.bake(d, bake, ctl, deferred).await {
                    return Some(o);
                }
            }
            Action::Quiesce { group } => {
                let left = f.balancer.quiesce(group, f.service.drain.timeout).await;
                if left > 0 {
                    let _ = f.store.save_deployment_event(
                        &d.id,
                        StepKind::DrainTimeout.as_str(),
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
                                return Some(o);
                            }
                        }
                    }
                }
            }
            Action::Supervise { instances } => f.supervise(instances),
            Action::Release { instances } => f.release(instances),
            Action::Hook { name, instances } => {
                if let Err(e) = self.hook(d, name, instances).await {
                    return Some(Outcome::Failed(e));
                }
            }
            Action::MarkCurrent { revision } => {
                let group = if *revision == d.to && d.strategy == Strategy::BlueGreen {
                    &d.green_group
                } else {
                    &d.blue_group
                };
                if let Err(e) = f.mark_current(revision, group) {
                    return Some(Outcome::Failed(e.to_string()));
                }
            }
        }
        None
    }

    /// Records a second chance given to instances of a rollback.
    fn retrying(&self, d: &Deployment, attempt: u32, dead: &[String], error: &str) {
        let msg = format!(
            "rollback: {} exited ({error}); starting {} again on {} (attempt {attempt} of {ROLLBACK_RETRIES})",
            dead.join(", "),
            if dead.len() == 1 { "it" } else { "them" },
            d.from
        );
        tracing::warn!(deployment = %d.id, "{msg}");
        let _ =
            self.fleet
                .store
                .save_deployment_event(&d.id, StepKind::RollbackRetry.as_str(), &msg);
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
        let dir = f.release_dir(&revision).await.map_err(|e| e.to_string())?;
        let once = [String::new()];
        let targets: &[String] = if instances.is_empty() {
            &once
        } else {
            instances
        };
        let runs = targets.iter().map(|inst| {
            let (cmd, dir, revision) = (cmd.clone(), dir.clone(), revision.clone());
            let timeout = f.service.hooks.timeout;
            // Per-instance hooks run where the instance lives; once-per-
            // deployment hooks here, or on `hooks.once_host`.
            let host = if inst.is_empty() {
                f.once_host()
            } else {
                f.host_of(inst)
            };
            async move {
                let env = crate::hooks::HookEnv {
                    service: &d.service,
                    revision: &revision,
                    from: &d.from,
                    deployment: &d.id,
                    instance: inst,
                    phase: name,
                };
                let result = match host {
                    Some(h) => {
                        let run = handoff_runtime::HookRun {
                            service: d.service.clone(),
                            revision: revision.clone(),
                            command: cmd.clone(),
                            env: env.vars(),
                            timeout,
                        };
                        f.exec_on(&h, &run).await
                    }
                    None => crate::hooks::run(&cmd, &env, &dir, timeout).await,
                };
                (inst.clone(), result)
            }
        });
        let mut failed = Vec::new();
        let results = futures_util::future::join_all(runs).await;
        if let Some(longest) = results.iter().map(|(_, (_, _, took))| *took).max() {
            f.observe(&format!("hook:{name}"), longest);
        }
        for (inst, (result, output, took)) in results {
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
            let _ = f
                .store
                .save_deployment_event(&d.id, StepKind::Hook.as_str(), &msg);
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

    /// `batch = "auto"`: before a batch leaves, the rest must carry the load
    /// the batch was sized for. If the load rose past that, wait (saying so)
    /// until it falls back; abort/rollback end the wait, promote overrides it.
    async fn await_capacity(
        &self,
        d: &Deployment,
        auto: &AutoBatch,
        batch: usize,
        ctl: &mut mpsc::UnboundedReceiver<Event>,
        deferred: &mut Vec<Event>,
    ) -> Option<Outcome> {
        let mut waiting = false;
        loop {
            let (needed, why) =
                instances_needed(&self.meter.load(), auto.headroom, auto.instance_capacity);
            let in_service = self.fleet.in_service();
            let left = in_service.saturating_sub(batch);
            if needed <= left || needed <= auto.needed {
                if waiting {
                    let _ = self.fleet.store.save_deployment_event(
                        &d.id,
                        StepKind::Load.as_str(),
                        &format!("load fell: {why}; the next batch goes"),
                    );
                }
                return None;
            }
            if !waiting {
                waiting = true;
                let _ = self.fleet.store.save_deployment_event(
                    &d.id,
                    StepKind::Waiting.as_str(),
                    &format!(
                        "waiting: {why}; taking {batch} out would leave {left} (`handoff promote` goes anyway)"
                    ),
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                Some(ev) = ctl.recv() => match ev {
                    Event::Abort | Event::Rollback => return Some(Outcome::Control(ev)),
                    Event::Promote => {
                        let _ = self.fleet.store.save_deployment_event(
                            &d.id,
                            StepKind::Load.as_str(),
                            "promoted: the next batch goes despite the load",
                        );
                        return None;
                    }
                    other => deferred.push(other),
                },
            }
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
