//! A deployment's measured steps beside its prediction, with the
//! differences that matter said in words ("drain took 24 s of 30 s on
//! batch 2: long requests").

use serde::{Deserialize, Serialize};

use super::{fmt_ms, Prediction};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepComparison {
    pub n: usize,
    pub kind: handoff_core::StepKind,
    pub message: String,
    pub predicted_ms: u64,
    /// `None`: the deployment never reached this step (rolled back,
    /// aborted) or has not finished it.
    pub measured_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    pub steps: Vec<StepComparison>,
    pub predicted_ms: u64,
    /// From the first step to the last one reached.
    pub measured_ms: u64,
    pub callouts: Vec<String>,
}

/// A difference worth a line: 250 ms and a third of the prediction.
fn matters(predicted: u64, measured: u64) -> bool {
    let d = predicted.abs_diff(measured);
    d >= 250 && d * 3 >= predicted
}

/// Lines up `events` (`(at_ms, kind, message)` of the deployment, in order)
/// with the predicted steps by their words, which the planner and the
/// executor share.
pub fn compare(p: &Prediction, events: &[(i64, String, String)]) -> Comparison {
    let mut pos: Vec<Option<usize>> = vec![None; p.steps.len()];
    let mut from = 0;
    for (i, s) in p.steps.iter().enumerate() {
        if let Some(j) = events[from..].iter().position(|e| e.2 == s.message) {
            pos[i] = Some(from + j);
            from += j + 1;
        }
    }
    let matched: Vec<usize> = pos.iter().flatten().copied().collect();
    let mut steps = Vec::new();
    // Steps that a failure, rollback or pause cut short: they never
    // reached their end (a health step so cut never saw its instances
    // healthy).
    let mut cut = vec![false; p.steps.len()];
    for (i, s) in p.steps.iter().enumerate() {
        let measured = pos[i].and_then(|j| {
            let start = events[j].0;
            // The step ends at the next step's event, whichever it is.
            let end = events[j + 1..]
                .iter()
                .enumerate()
                .find(|(k, e)| {
                    matched.contains(&(j + 1 + k))
                        || handoff_core::StepKind::parse(&e.1).interrupts()
                })
                .map(|(k, e)| {
                    cut[i] = !matched.contains(&(j + 1 + k));
                    e.0
                });
            match end {
                Some(end) => Some((end - start).max(0) as u64),
                // The last step (succeeded) takes no time of its own.
                None if i + 1 == p.steps.len() => Some(0),
                None => None,
            }
        });
        steps.push(StepComparison {
            n: s.n,
            kind: s.kind,
            message: s.message.clone(),
            predicted_ms: s.ms,
            measured_ms: measured,
        });
    }
    let mut callouts = Vec::new();
    for (i, (s, c)) in p.steps.iter().zip(&steps).enumerate() {
        let Some(m) = c.measured_ms else { continue };
        if !matters(s.ms, m) {
            continue;
        }
        let (pm, mm) = (fmt_ms(s.ms), fmt_ms(m));
        let at = s.message.split(':').next().unwrap_or(&s.message);
        // `batch = "auto"` held this step back for the load.
        let waited = pos[i].is_some_and(|j| {
            events[j + 1..]
                .iter()
                .take_while(|e| e.0 <= events[j].0 + m as i64)
                .any(|e| e.1 == "waiting")
        });
        if waited {
            callouts.push(format!(
                "{at} waited for the load to fall before going: the step took {mm} (predicted {pm})"
            ));
            continue;
        }
        if cut[i] && s.kind == handoff_core::StepKind::Health && m > s.ms {
            callouts.push(format!(
                "{at}: never became healthy: given up after {mm} (predicted healthy in {pm}); the deployment's reason names the last health check"
            ));
            continue;
        }
        callouts.push(match s.kind.as_str() {
            "drain" if m > s.ms => format!(
                "drain took {mm} of {} on {at} (predicted {pm}): long requests in flight",
                fmt_ms(p.timings.drain_timeout_ms)
            ),
            "drain" => format!("drain took {mm} on {at} (predicted {pm}): fewer requests in flight than before"),
            "health" if m > s.ms => format!(
                "{at}: healthy after {mm} (predicted {pm}): the app started slower than measured before"
            ),
            "stop" if m > s.ms => format!(
                "{at}: stop took {mm} (predicted {pm}): the app is slow to exit on SIGTERM"
            ),
            "start" if m > s.ms => format!("{at}: start took {mm} (predicted {pm}): slow spawn or hooks"),
            "traffic" | "retained" if m < s.ms => format!(
                "{}: ended after {mm} of {pm} (promoted or rolled back)",
                s.message
            ),
            _ => format!("{}: took {mm}, predicted {pm}", s.message),
        });
    }
    let measured_ms = match (
        matched.first(),
        steps
            .iter()
            .rev()
            .find_map(|s| s.measured_ms.map(|m| (s, m))),
    ) {
        (Some(first), Some((last, m))) => {
            let last_at = pos[last.n - 1].map_or(events[*first].0, |j| events[j].0);
            (last_at - events[*first].0).max(0) as u64 + m
        }
        _ => 0,
    };
    Comparison {
        steps,
        predicted_ms: p.duration_ms,
        measured_ms,
        callouts,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{predict, Estimate, Timings};
    use super::*;
    use crate::plan::{new, Request};
    use handoff_core::config::Amount;
    use handoff_core::{StepKind, Strategy};

    fn prediction() -> Prediction {
        let d = new(Request {
            id: "web@2".into(),
            service: "web".into(),
            from: "v1".into(),
            to: "bad".into(),
            strategy: Strategy::InPlace,
            fleet: vec!["web-1".into(), "web-2".into()],
            green: vec!["web-3".into(), "web-4".into()],
            live_group: "blue".into(),
            batch: Amount::Count(2),
            min_healthy: Amount::Count(0),
            traffic_steps: vec![],
            hooks: vec![],
        })
        .unwrap();
        predict(
            &d,
            &Timings {
                boot: Estimate::new(50, "measured"),
                more_probes_ms: 1000,
                min_healthy_ms: 300,
                early_exit_ms: 250,
                drain: Estimate::new(300, "measured"),
                drain_timeout_ms: 30_000,
                stop: Estimate::new(100, "measured"),
                hooks: Default::default(),
                bake_ms: 0,
                retention_ms: 0,
                flip_ms: 3,
            },
        )
    }

    /// The deployment's events up to its health step, which ends after
    /// 60 s with `last` (`(kind, message)`).
    fn events(p: &Prediction, last: (&str, &str)) -> Vec<(i64, String, String)> {
        let mut t = 1_000_000i64;
        let mut v = Vec::new();
        for s in &p.steps {
            v.push((t, s.kind.as_str().to_string(), s.message.clone()));
            if s.kind == StepKind::Health {
                v.push((t + 60_000, last.0.into(), last.1.into()));
                break;
            }
            t += s.ms as i64;
        }
        v
    }

    #[test]
    fn a_health_step_that_failed_is_not_called_a_slow_start() {
        let p = prediction();
        let health = p.steps.iter().position(|s| s.kind == StepKind::Health);
        let health = health.expect("a health step");
        let failed = events(
            &p,
            (
                "rollback",
                "rolling back to v1: not healthy within healthy_deadline 1m",
            ),
        );
        let c = compare(&p, &failed);
        assert_eq!(c.steps[health].measured_ms, Some(60_000));
        let line = c
            .callouts
            .iter()
            .find(|l| l.contains("healthy"))
            .unwrap_or_else(|| panic!("no health callout: {:?}", c.callouts));
        assert!(line.contains("never became healthy"), "{line}");
        assert!(line.contains("given up after 1 min"), "{line}");
        assert!(!line.contains("healthy after"), "{line}");
        assert!(!line.contains("started slower"), "{line}");

        // The same 60 s ending in the next step is a slow start indeed.
        let next = &p.steps[health + 1];
        let slow = events(&p, (next.kind.as_str(), &next.message));
        let c = compare(&p, &slow);
        assert!(
            c.callouts
                .iter()
                .any(|l| l.contains("healthy after 1 min") && l.contains("started slower")),
            "{:?}",
            c.callouts
        );
    }
}
