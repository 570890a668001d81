//! The deployment planner: a pure state machine, no I/O, no clock.
//!
//! `step(&Deployment, Event) -> Result<(Deployment, Vec<Action>), Rejected>`
//! takes the deployment as persisted and something that happened (the last
//! actions finished, one failed, the operator paused / resumed / aborted /
//! promoted / asked for a rollback) and returns the next state and the
//! actions to carry out. The executor persists the new state *before* it
//! performs the actions, so a crash always leaves a state to resume from.
//! A rejected event leaves the state unchanged.
//!
//! The strategies, as the seed describes them:
//!
//! - **in-place**: per batch, `Drain` (deregister + wait in-flight) →
//!   `Stop` → `Start` the new revision on the same instance (same port) →
//!   `AwaitHealthy` (passes checks, then *stays* healthy) → next batch. On a
//!   failure, every instance touched so far goes back to the old revision
//!   the same way, batch by batch.
//! - **blue/green**: `Start` green beside blue → `AwaitHealthy` → weights
//!   step by step (`SetWeights` + `Bake`) → cut over (blue weight 0) →
//!   `Quiesce` blue (its in-flight finishes; it stays registered, weight 0) →
//!   `Retain` → `Drain` + `Stop` blue. Before the end of retention a rollback
//!   is one `SetWeights` back to blue.
//! - **all-at-once**: drain and stop everything, start everything (downtime,
//!   on purpose: the baseline the others are measured against).
//!
//! Invariants are checked after every transition in debug builds
//! ([`check`]): the in-place floor, nothing stopped before it was drained,
//! green weighted only after its checks passed, blue never drained before
//! cut-over.

mod bluegreen;
mod inplace;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use handoff_core::deploy::{DeploymentStatus as Status, Strategy};

/// Where the deployment stands; each phase has one set of actions in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    /// Created, not started.
    Pending,
    /// In-place (and in-place rollback): batch `index` of `batches`, at `step`.
    Batch {
        index: usize,
        step: BatchStep,
    },
    /// Blue/green.
    StartingGreen,
    WaitingGreen,
    /// Green at `traffic_steps[index]` %, baking.
    Shifting {
        index: usize,
    },
    /// Blue at weight 0, its in-flight requests finishing.
    CuttingOver,
    Retaining,
    TerminatingBlue,
    /// Blue/green rollback: weights back to blue, green drained and stopped.
    FlippingBack,
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchStep {
    Draining,
    Stopping,
    Starting,
    WaitingHealthy,
}

/// One deployment of a service from revision `from` to `to`: the whole state
/// the executor persists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub service: String,
    pub from: String,
    pub to: String,
    pub strategy: Strategy,
    /// The instances serving when the deployment began (blue, for B/G).
    pub fleet: Vec<String>,
    /// Blue/green: the new instances' names.
    pub green: Vec<String>,
    pub blue_group: String,
    pub green_group: String,
    /// In-place: the batches, resolved up front.
    pub batches: Vec<Vec<String>>,
    /// In-place: the fewest instances that must stay in service.
    pub min_healthy: usize,
    pub traffic_steps: Vec<u32>,
    pub phase: Phase,
    pub status: Status,
    /// Instances already on `to` (in-place), to roll back on failure.
    pub changed: Vec<String>,
    /// Instances deregistered and drained, so they may be stopped.
    pub drained: Vec<String>,
    pub paused: bool,
    /// A `Done` that arrived while paused, applied on resume.
    pub held: bool,
    /// Why it rolled back or failed, in words.
    pub reason: Option<String>,
    /// The hooks the service has configured (names), fixed at creation.
    #[serde(default)]
    pub hooks: Vec<String>,
    /// Blue/green: promoted before the traffic steps began; they are
    /// skipped when green is ready.
    #[serde(default)]
    pub promoted: bool,
    /// In-place `batch = "auto"`: the batches were sized from the load, and
    /// each waits while taking it out would overload the rest.
    #[serde(default)]
    pub auto: Option<AutoBatch>,
    /// Started by `deploy` or by `rollback` (records before it: deploy).
    #[serde(default)]
    pub origin: handoff_core::Origin,
    /// Closed at boot after a restart of handoff cut it short: its outcome
    /// says nothing of its revisions.
    #[serde(default)]
    pub interrupted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoBatch {
    pub headroom: u32,
    /// Instances the load needed when the size was chosen.
    pub needed: usize,
    pub instance_capacity: Option<u32>,
    /// Why this size, in one line.
    pub choice: String,
}

/// Something the executor must do. Each names instances, not targets: the
/// executor maps them to the proxy and the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Deregister from the load balancer and wait for in-flight requests.
    Drain {
        instances: Vec<String>,
    },
    Stop {
        instances: Vec<String>,
    },
    /// `hold`: keep them out of service after their checks pass, until
    /// `Release` (hooks run in between).
    Start {
        instances: Vec<String>,
        revision: String,
        group: String,
        #[serde(default)]
        hold: bool,
    },
    /// Run lifecycle hook `name` for `instances` (once, if empty).
    Hook {
        name: String,
        instances: Vec<String>,
    },
    /// Let held instances into service.
    Release {
        instances: Vec<String>,
    },
    /// Health checks pass, then stay passing for `min_healthy_time`, and
    /// (once traffic arrives) the revision is not worse than the old one.
    AwaitHealthy {
        instances: Vec<String>,
    },
    SetWeights {
        weights: Vec<(String, u32)>,
    },
    /// Hold traffic step `index` for `bake`, watching the new revision.
    Bake {
        index: usize,
    },
    /// Wait until the group (weight 0) has no request in flight.
    Quiesce {
        group: String,
    },
    /// Keep blue for `retention`.
    Retain,
    /// Hand instances to the fleet's supervisor (restart if they die).
    Supervise {
        instances: Vec<String>,
    },
    /// Record that the revision now serves the service.
    MarkCurrent {
        revision: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Start,
    /// Every action of the current phase finished.
    Done,
    /// An action failed; the reason is recorded.
    Failed {
        reason: String,
    },
    Pause,
    Resume,
    /// Stop and roll back.
    Abort,
    /// Skip the remaining bake and traffic steps (B/G), or end retention now.
    Promote,
    /// Blue/green within retention: flip back to blue at once.
    Rollback,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("deployment {id} is {status:?}; {event} does not apply")]
    NotApplicable {
        id: String,
        status: Status,
        event: String,
    },
    #[error("deployment {id}: {what}")]
    Invalid { id: String, what: String },
}

/// What a deployment starts from.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: String,
    pub service: String,
    pub from: String,
    pub to: String,
    pub strategy: Strategy,
    /// Instances serving now, in order.
    pub fleet: Vec<String>,
    /// Blue/green: names for the new instances (as many as `fleet`).
    pub green: Vec<String>,
    pub live_group: String,
    pub batch: handoff_core::config::Amount,
    pub min_healthy: handoff_core::config::Amount,
    pub traffic_steps: Vec<u32>,
    /// Names of the configured hooks.
    pub hooks: Vec<String>,
}

/// The group a blue/green deployment starts green in.
pub fn other_group(g: &str) -> String {
    if g == "blue" {
        "green".into()
    } else {
        "blue".into()
    }
}

/// Validates a request and builds the pending deployment. Refuses a batch
/// that would break the floor before anything starts.
pub fn new(r: Request) -> Result<Deployment, Rejected> {
    let invalid = |what: String| Rejected::Invalid {
        id: r.id.clone(),
        what,
    };
    if r.from == r.to {
        return Err(invalid(format!(
            "revision {} already serves service {}",
            r.to, r.service
        )));
    }
    let n = r.fleet.len();
    if n == 0 {
        return Err(invalid(format!(
            "service {} has no instances to deploy to",
            r.service
        )));
    }
    let batch = (r.batch.of(n as u32, true) as usize).max(1);
    let min_healthy = r.min_healthy.of(n as u32, false) as usize;
    if r.strategy == Strategy::InPlace && batch > n {
        return Err(invalid(format!(
            "batch {} is larger than the {n} instances",
            r.batch
        )));
    }
    if r.strategy == Strategy::InPlace && n - batch < min_healthy {
        return Err(invalid(format!(
            "batch {} of {n} instances would leave {} in service, below min_healthy {} ({min_healthy}); lower the batch or the floor",
            r.batch,
            n - batch,
            r.min_healthy
        )));
    }
    if r.strategy == Strategy::BlueGreen && r.green.len() != n {
        return Err(invalid(format!(
            "green needs {n} instance names, got {}",
            r.green.len()
        )));
    }
    let batches = match r.strategy {
        Strategy::InPlace => r.fleet.chunks(batch).map(|c| c.to_vec()).collect(),
        Strategy::AllAtOnce => vec![r.fleet.clone()],
        Strategy::BlueGreen => Vec::new(),
    };
    Ok(Deployment {
        id: r.id,
        service: r.service,
        from: r.from,
        to: r.to,
        strategy: r.strategy,
        fleet: r.fleet,
        green: r.green,
        green_group: other_group(&r.live_group),
        blue_group: r.live_group,
        batches,
        min_healthy: if r.strategy == Strategy::AllAtOnce {
            0
        } else {
            min_healthy
        },
        traffic_steps: r.traffic_steps.into_iter().filter(|s| *s < 100).collect(),
        phase: Phase::Pending,
        status: Status::Running,
        changed: Vec::new(),
        drained: Vec::new(),
        paused: false,
        held: false,
        reason: None,
        hooks: r.hooks,
        promoted: false,
        auto: None,
        origin: handoff_core::Origin::Deploy,
        interrupted: false,
    })
}

impl Deployment {
    fn has(&self, hook: &str) -> bool {
        self.hooks.iter().any(|h| h == hook)
    }

    /// New instances are held out of service while hooks must run between
    /// "checks pass" and "takes traffic".
    pub fn holds(&self) -> bool {
        self.has("validate_service") || self.has("before_allow_traffic")
    }

    fn hook(&self, name: &str, instances: &[String], out: &mut Vec<Action>) {
        if self.has(name) {
            out.push(Action::Hook {
                name: name.into(),
                instances: instances.to_vec(),
            });
        }
    }

    /// Starting instances on a revision, with the install hooks around it;
    /// `migrate_expand` once, before the first new instance starts.
    pub(crate) fn start_actions(
        &self,
        instances: &[String],
        revision: &str,
        group: &str,
        first: bool,
    ) -> Vec<Action> {
        let mut a = Vec::new();
        if first && self.status == Status::Running {
            self.hook("migrate_expand", &[], &mut a);
        }
        self.hook("before_install", instances, &mut a);
        self.hook("after_install", instances, &mut a);
        a.push(Action::Start {
            instances: instances.to_vec(),
            revision: revision.into(),
            group: group.into(),
            hold: self.holds(),
        });
        self.hook("application_start", instances, &mut a);
        a
    }

    /// Waiting for health, then the traffic hooks; held instances are
    /// released into service (for blue/green the weights still decide).
    pub(crate) fn health_actions(&self, instances: &[String], after_allow: bool) -> Vec<Action> {
        let mut a = vec![Action::AwaitHealthy {
            instances: instances.to_vec(),
        }];
        self.hook("validate_service", instances, &mut a);
        self.hook("before_allow_traffic", instances, &mut a);
        if self.holds() {
            a.push(Action::Release {
                instances: instances.to_vec(),
            });
            if after_allow {
                // Held instances took no traffic while they were awaited, so
                // the batch's analysis window (min_healthy_time, judged on
                // the proxy's figures) is observed again once they serve.
                a.push(Action::AwaitHealthy {
                    instances: instances.to_vec(),
                });
            }
        }
        if after_allow {
            self.hook("after_allow_traffic", instances, &mut a);
        }
        a
    }

    pub(crate) fn hook_after_allow(&self, out: &mut Vec<Action>) {
        self.hook("after_allow_traffic", &self.green, out);
    }

    /// `migrate_contract`, once no old instance can serve again.
    pub(crate) fn contract(&self, out: &mut Vec<Action>) {
        self.hook("migrate_contract", &[], out);
    }
}

/// The transition function.
pub fn step(d: &Deployment, ev: Event) -> Result<(Deployment, Vec<Action>), Rejected> {
    let event_name = format!("{ev:?}");
    let reject = || Rejected::NotApplicable {
        id: d.id.clone(),
        status: d.status,
        event: event_name.clone(),
    };
    let mut n = d.clone();
    let actions = match ev {
        Event::Pause => {
            if !matches!(d.status, Status::Running | Status::RollingBack) || d.paused {
                return Err(reject());
            }
            n.paused = true;
            Vec::new()
        }
        Event::Resume => {
            if !d.paused {
                return Err(reject());
            }
            n.paused = false;
            if d.held {
                n.held = false;
                return step(&n, Event::Done);
            }
            Vec::new()
        }
        Event::Done if d.paused => {
            n.held = true;
            Vec::new()
        }
        _ => match d.strategy {
            Strategy::InPlace | Strategy::AllAtOnce => {
                inplace::on(&mut n, ev).ok_or_else(reject)?
            }
            Strategy::BlueGreen => bluegreen::on(&mut n, ev).ok_or_else(reject)?,
        },
    };
    if cfg!(debug_assertions) {
        if let Err(why) = check(d, &n, &actions) {
            panic!(
                "invariant broken by {}: {why}\nbefore: {d:?}\nafter: {n:?}\nactions: {actions:?}",
                d.id
            );
        }
    }
    Ok((n, actions))
}

/// The invariants, checked after every transition in debug builds.
pub fn check(before: &Deployment, after: &Deployment, actions: &[Action]) -> Result<(), String> {
    for a in actions {
        match a {
            Action::Stop { instances } => {
                if let Some(i) = instances.iter().find(|i| !after.drained.contains(i)) {
                    return Err(format!("{i} stopped before it was drained"));
                }
            }
            Action::Drain { instances } if after.strategy == Strategy::InPlace => {
                let out = instances.len();
                if after.fleet.len() - out < after.min_healthy {
                    return Err(format!(
                        "draining {out} of {} breaks the floor of {}",
                        after.fleet.len(),
                        after.min_healthy
                    ));
                }
            }
            Action::Drain { instances } if after.strategy == Strategy::BlueGreen => {
                let blue = instances.iter().any(|i| after.fleet.contains(i));
                if blue && after.status == Status::Running && after.phase != Phase::TerminatingBlue
                {
                    return Err("blue drained before cut-over".into());
                }
            }
            Action::SetWeights { weights } => {
                let green_up = weights
                    .iter()
                    .any(|(g, w)| *g == after.green_group && *w > 0);
                if green_up && matches!(before.phase, Phase::Pending | Phase::StartingGreen) {
                    return Err("green weighted before its health checks passed".into());
                }
            }
            _ => {}
        }
    }
    Ok(())
}
