//! `handoff plan`: what a deployment will do and how long each step will
//! take, before anything changes. Pure: no I/O, no clock.
//!
//! [`predict`] drives the real planner ([`crate::plan::step`]) from `Start`
//! to the end, feeding `Done` after every step, so the steps it predicts are
//! exactly the ones the executor will take, with the same words
//! ([`crate::executor::describe`]). Each action gets a duration from
//! [`Timings`]: health settings from the config, and start-up, drain, stop
//! and hook times measured on this service's earlier deploys (or a stated
//! guess before there are any). Along the way it keeps, per instance, when
//! it is in service and when it runs, from which come the capacity over
//! time, its floor, the mixed-version window and the extra instances.
//! [`compare`] reads a finished deployment's events beside its prediction.

mod compare;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::{self, Action, Deployment, Event, Phase, Strategy};

pub use compare::{compare, Comparison, StepComparison};

/// One predicted duration and where it comes from, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Estimate {
    pub ms: u64,
    pub source: String,
}

impl Estimate {
    pub fn new(ms: u64, source: impl Into<String>) -> Estimate {
        Estimate {
            ms,
            source: source.into(),
        }
    }

    /// The median of recent measurements (newest first), or `fallback`.
    pub fn from_measured(what: &str, recent: &[u64], fallback: Estimate) -> Estimate {
        if recent.is_empty() {
            return fallback;
        }
        let mut v = recent.to_vec();
        v.sort_unstable();
        let median = v[v.len() / 2];
        Estimate::new(
            median,
            format!("median of the last {} {what} measured", v.len()),
        )
    }
}

/// What a prediction knows about time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// From spawn to the app answering its first probe.
    pub boot: Estimate,
    /// `(healthy_threshold - 1) × interval`: the probes after the first.
    pub more_probes_ms: u64,
    pub min_healthy_ms: u64,
    /// The runtime's watch for an immediate exit, which `Start` waits out.
    pub early_exit_ms: u64,
    pub drain: Estimate,
    pub drain_timeout_ms: u64,
    pub stop: Estimate,
    pub hooks: BTreeMap<String, Estimate>,
    pub bake_ms: u64,
    pub retention_ms: u64,
    /// A blue/green flip back (measured by `bench`: a few ms end to end).
    pub flip_ms: u64,
}

impl Timings {
    /// From registration to passing checks.
    pub fn ready_ms(&self) -> u64 {
        self.boot.ms + self.more_probes_ms
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PredictedStep {
    pub n: usize,
    pub kind: handoff_core::StepKind,
    pub message: String,
    /// From the start of the deployment.
    pub at_ms: u64,
    pub ms: u64,
    /// Healthy targets taking traffic: the fewest during the step and at
    /// its end.
    pub in_service_min: usize,
    pub in_service_end: usize,
    /// Instances running at the step's end.
    pub running: usize,
    /// How its duration was estimated, one line per part.
    pub basis: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackCost {
    /// Blue/green: a flip back, while blue is retained.
    pub flip_ms: Option<u64>,
    /// How long blue stays retained (the flip's window).
    pub retained_ms: Option<u64>,
    /// A rollback by redeploying: in-place, the batches again; blue/green
    /// after retention, a whole deployment.
    pub redeploy_ms: u64,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prediction {
    pub strategy: String,
    /// In-place: instances per batch and the batches.
    pub batch_size: Option<usize>,
    pub batches: usize,
    /// One line on how the batch size was chosen (`batch = "auto"`).
    pub batch_choice: Option<String>,
    pub desired: usize,
    pub steps: Vec<PredictedStep>,
    /// `(ms, healthy targets in service)` at every change.
    pub capacity: Vec<(u64, usize)>,
    pub duration_ms: u64,
    /// When the new revision alone serves (in-place: the end; blue/green:
    /// the cut-over, before retention).
    pub serving_ms: u64,
    pub capacity_floor: usize,
    pub mixed_window_ms: u64,
    pub peak_instances: usize,
    pub extra_instances: usize,
    pub rollback: RollbackCost,
    pub timings: Timings,
}

/// An instance's life on one revision: when it runs and when it serves.
#[derive(Debug, Clone)]
struct Life {
    name: String,
    new: bool,
    group: String,
    run_from: u64,
    run_until: Option<u64>,
    /// When its checks pass.
    ready_at: u64,
    held: bool,
    released: bool,
    serve_from: Option<u64>,
    serve_until: Option<u64>,
}

struct Sim<'a> {
    t: u64,
    lives: Vec<Life>,
    /// `(at, group, weight)` in order.
    weights: Vec<(u64, String, u32)>,
    timings: &'a Timings,
}

impl Sim<'_> {
    fn latest(&mut self, name: &str) -> Option<&mut Life> {
        self.lives.iter_mut().rev().find(|l| l.name == name)
    }

    fn weight(&self, group: &str, at: u64) -> u32 {
        self.weights
            .iter()
            .rev()
            .find(|(t, g, _)| *t <= at && g == group)
            .map_or(0, |w| w.2)
    }

    /// Healthy targets in service at `at`: (old, new).
    fn serving(&self, at: u64) -> (usize, usize) {
        let mut n = (0, 0);
        for l in &self.lives {
            let on = l.serve_from.is_some_and(|f| f <= at)
                && l.serve_until.is_none_or(|u| at < u)
                && self.weight(&l.group, at) > 0;
            if on {
                if l.new {
                    n.1 += 1;
                } else {
                    n.0 += 1;
                }
            }
        }
        n
    }

    fn running(&self, at: u64) -> usize {
        self.lives
            .iter()
            .filter(|l| l.run_from <= at && l.run_until.is_none_or(|u| at < u))
            .count()
    }

    /// Every moment something changes, sorted.
    fn changes(&self, end: u64) -> Vec<u64> {
        let mut v = vec![0, end];
        for l in &self.lives {
            v.extend(
                [Some(l.run_from), l.run_until, l.serve_from, l.serve_until]
                    .into_iter()
                    .flatten(),
            );
        }
        v.extend(self.weights.iter().map(|w| w.0));
        v.retain(|t| *t <= end);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Performs one action at `self.t`; returns its duration and basis.
    fn act(&mut self, a: &Action, revision_new: &str) -> (u64, Option<String>) {
        let tm = self.timings;
        let t = self.t;
        match a {
            Action::Drain { instances } => {
                for n in instances {
                    if let Some(l) = self.latest(n) {
                        if l.serve_until.is_none() {
                            l.serve_until = Some(t);
                        }
                    }
                }
                (
                    tm.drain.ms,
                    Some(format!(
                        "drain {} ({})",
                        fmt_ms(tm.drain.ms),
                        tm.drain.source
                    )),
                )
            }
            Action::Stop { instances } => {
                let end = t + tm.stop.ms;
                for n in instances {
                    if let Some(l) = self.latest(n) {
                        l.run_until.get_or_insert(end);
                        l.serve_until.get_or_insert(t);
                    }
                }
                (
                    tm.stop.ms,
                    Some(format!("stop {} ({})", fmt_ms(tm.stop.ms), tm.stop.source)),
                )
            }
            Action::Start {
                instances,
                revision,
                group,
                hold,
            } => {
                let ready_at = t + tm.ready_ms();
                for n in instances {
                    self.lives.push(Life {
                        name: n.clone(),
                        new: revision == revision_new,
                        group: group.clone(),
                        run_from: t,
                        run_until: None,
                        ready_at,
                        held: *hold,
                        released: false,
                        serve_from: (!hold).then_some(ready_at),
                        serve_until: None,
                    });
                }
                (
                    tm.early_exit_ms,
                    Some(format!(
                        "start {} (the runtime's watch for an immediate exit; health checks already run)",
                        fmt_ms(tm.early_exit_ms)
                    )),
                )
            }
            Action::AwaitHealthy { instances } => {
                let ready = instances
                    .iter()
                    .filter_map(|n| self.lives.iter().rev().find(|l| &l.name == n))
                    .map(|l| l.ready_at)
                    .max()
                    .unwrap_or(t);
                let wait = ready.saturating_sub(t);
                let again = instances.iter().all(|n| {
                    self.lives
                        .iter()
                        .rev()
                        .find(|l| &l.name == n)
                        .is_some_and(|l| l.released)
                });
                let basis = if again {
                    format!(
                        "min_healthy_time {} again, now that they serve",
                        fmt_ms(tm.min_healthy_ms)
                    )
                } else {
                    format!(
                        "healthy {} after start ({} to answer, {}; then {} more probes){} + min_healthy_time {}",
                        fmt_ms(tm.ready_ms()),
                        fmt_ms(tm.boot.ms),
                        tm.boot.source,
                        fmt_ms(tm.more_probes_ms),
                        if wait == 0 { ", within the start" } else { "" },
                        fmt_ms(tm.min_healthy_ms)
                    )
                };
                (wait + tm.min_healthy_ms, Some(basis))
            }
            Action::Release { instances } => {
                for n in instances {
                    if let Some(l) = self.latest(n) {
                        l.held = false;
                        l.released = true;
                        l.serve_from = Some(t.max(l.ready_at));
                    }
                }
                (0, None)
            }
            Action::SetWeights { weights } => {
                for (g, w) in weights {
                    self.weights.push((t, g.clone(), *w));
                }
                (0, None)
            }
            Action::Bake { .. } => (tm.bake_ms, Some(format!("bake {}", fmt_ms(tm.bake_ms)))),
            Action::Quiesce { .. } => (
                tm.drain.ms,
                Some(format!(
                    "in-flight requests finish {} ({})",
                    fmt_ms(tm.drain.ms),
                    tm.drain.source
                )),
            ),
            Action::Retain => (
                tm.retention_ms,
                Some(format!("retention {}", fmt_ms(tm.retention_ms))),
            ),
            Action::Hook { name, .. } => {
                let e = tm
                    .hooks
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| Estimate::new(0, "not measured yet"));
                (
                    e.ms,
                    Some(format!("hook {name} {} ({})", fmt_ms(e.ms), e.source)),
                )
            }
            Action::Supervise { .. } | Action::MarkCurrent { .. } => (0, None),
        }
    }
}

/// Predicts deployment `d` (as `plan::new` built it, not started).
pub fn predict(d: &Deployment, timings: &Timings) -> Prediction {
    let mut sim = Sim {
        t: 0,
        lives: d
            .fleet
            .iter()
            .map(|n| Life {
                name: n.clone(),
                new: false,
                group: d.blue_group.clone(),
                run_from: 0,
                run_until: None,
                ready_at: 0,
                held: false,
                released: false,
                serve_from: Some(0),
                serve_until: None,
            })
            .collect(),
        weights: vec![(0, d.blue_group.clone(), 100)],
        timings,
    };
    let mut steps = Vec::new();
    let mut serving_ms = None;
    let mut cur = d.clone();
    let mut ev = Event::Start;
    // A planner bug must not hang `plan`: no deployment has this many steps.
    for _ in 0..10_000 {
        let Ok((next, actions)) = plan::step(&cur, ev) else {
            break;
        };
        let (kind, message) = crate::executor::describe::describe(&cur, &next, &actions);
        let at = sim.t;
        let mut basis = Vec::new();
        for a in &actions {
            let (ms, why) = sim.act(a, &d.to);
            sim.t += ms;
            basis.extend(why);
            if let Action::SetWeights { weights } = a {
                let green_only = weights
                    .iter()
                    .all(|(g, w)| (*g == d.green_group) == (*w > 0));
                if serving_ms.is_none() && d.strategy == Strategy::BlueGreen && green_only {
                    serving_ms = Some(at);
                }
            }
        }
        let end = sim.t;
        let during: Vec<usize> = sim
            .changes(end)
            .into_iter()
            .filter(|t| *t >= at && *t <= end)
            .chain([at])
            .map(|t| {
                let (o, n) = sim.serving(t);
                o + n
            })
            .collect();
        let (o, n) = sim.serving(end);
        steps.push(PredictedStep {
            n: steps.len() + 1,
            kind,
            message,
            at_ms: at,
            ms: end - at,
            in_service_min: during.iter().copied().min().unwrap_or(o + n),
            in_service_end: o + n,
            running: sim.running(end),
            basis,
        });
        cur = next;
        if cur.phase == Phase::Finished {
            break;
        }
        ev = Event::Done;
    }
    let end = sim.t;
    let points = sim.changes(end);
    let mut capacity: Vec<(u64, usize)> = Vec::new();
    let mut mixed = 0;
    let mut peak = 0;
    for (i, t) in points.iter().enumerate() {
        let (o, n) = sim.serving(*t);
        if capacity.last().is_none_or(|c| c.1 != o + n) {
            capacity.push((*t, o + n));
        }
        peak = peak.max(sim.running(*t));
        if o > 0 && n > 0 {
            mixed += points.get(i + 1).map_or(0, |next| next - t);
        }
    }
    let floor = points
        .iter()
        .map(|t| {
            let (o, n) = sim.serving(*t);
            o + n
        })
        .min()
        .unwrap_or(0);
    let desired = d.fleet.len();
    let strategy = d.strategy.as_str().to_string();
    let without_retention = end.saturating_sub(match d.strategy {
        Strategy::BlueGreen => timings.retention_ms,
        _ => 0,
    });
    let rollback = match d.strategy {
        Strategy::BlueGreen => RollbackCost {
            flip_ms: Some(timings.flip_ms),
            retained_ms: Some(timings.retention_ms),
            redeploy_ms: without_retention,
            summary: format!(
                "a flip back to blue (~{}) while blue is retained ({}); after that, a whole blue/green deployment (~{})",
                fmt_ms(timings.flip_ms),
                fmt_ms(timings.retention_ms),
                fmt_ms(without_retention)
            ),
        },
        _ => RollbackCost {
            flip_ms: None,
            retained_ms: None,
            redeploy_ms: end,
            summary: format!(
                "redeploy the old revision: {} batch{} ≈ {}",
                d.batches.len(),
                if d.batches.len() == 1 { "" } else { "es" },
                fmt_ms(end)
            ),
        },
    };
    Prediction {
        strategy,
        batch_size: d.batches.first().map(|b| b.len()),
        batches: d.batches.len(),
        batch_choice: None,
        desired,
        steps,
        capacity,
        duration_ms: end,
        serving_ms: serving_ms.unwrap_or(end),
        capacity_floor: floor,
        mixed_window_ms: mixed,
        peak_instances: peak,
        extra_instances: peak.saturating_sub(desired),
        rollback,
        timings: timings.clone(),
    }
}

/// `850 ms`, `2.4 s`, `3 min 10 s`.
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms % 60_000 < 1000 {
        format!("{} min", ms / 60_000)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}
