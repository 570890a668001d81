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
                .map(|(_, e)| e.0);
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
