//! How a transition reads in the deployment's record and live output, in
//! the seed's terms ("batch 1/2: deregistered web-1, web-2, draining…").

use handoff_core::StepKind;

use crate::plan::{Action, BatchStep, Deployment, Phase, Status};

/// The event recorded for a transition, in the seed's terms.
pub(crate) fn describe(
    before: &Deployment,
    d: &Deployment,
    actions: &[Action],
) -> (StepKind, String) {
    let list = |v: &[String]| v.join(", ");
    if d.paused && !before.paused {
        return (
            StepKind::Paused,
            "paused; the next step waits for resume".into(),
        );
    }
    if !d.paused && before.paused {
        return (StepKind::Resumed, "resumed".into());
    }
    if d.status == Status::RollingBack && before.status != Status::RollingBack {
        let why = d.reason.clone().unwrap_or_default();
        let how = if d.phase == Phase::FlippingBack {
            "traffic 100% blue, stopping green"
        } else {
            "redeploying the touched instances"
        };
        return (
            StepKind::Rollback,
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
                    StepKind::Drain,
                    format!("{at}: deregistered {batch}, draining…"),
                ),
                BatchStep::Stopping => (StepKind::Stop, format!("{at}: drained; stopping {batch}")),
                BatchStep::Starting => {
                    (StepKind::Start, format!("{at}: starting {batch} on {rev}"))
                }
                BatchStep::WaitingHealthy => (
                    StepKind::Health,
                    format!("{at}: waiting for {batch} to be healthy"),
                ),
            }
        }
        (Phase::StartingGreen, _) => (
            StepKind::Start,
            format!("starting green ({}) on {}", list(&d.green), d.to),
        ),
        (Phase::WaitingGreen, _) => (
            StepKind::Health,
            format!(
                "waiting for green {}/{} to be healthy",
                d.green.len(),
                d.green.len()
            ),
        ),
        (Phase::Shifting { index }, _) => (
            StepKind::Traffic,
            format!("traffic {}% green", d.traffic_steps[*index]),
        ),
        (Phase::CuttingOver, _) => (
            StepKind::CutOver,
            "traffic 100% green; blue finishing its in-flight requests".into(),
        ),
        (Phase::Retaining, _) => (
            StepKind::Retained,
            format!(
                "{} serves; blue ({}) retained for an instant rollback",
                d.to,
                list(&d.fleet)
            ),
        ),
        (Phase::TerminatingBlue, _) => (
            StepKind::Terminate,
            format!("retention over; terminating blue ({})", list(&d.fleet)),
        ),
        (Phase::FlippingBack, _) => (
            StepKind::FlipBack,
            "traffic 100% blue; stopping green".into(),
        ),
        (Phase::Finished, _) => match d.status {
            Status::Succeeded => (
                StepKind::Succeeded,
                format!("{} serves service {}", d.to, d.service),
            ),
            Status::RolledBack => (
                StepKind::RolledBack,
                format!(
                    "rolled back: {} serves; {}",
                    d.from,
                    d.reason.clone().unwrap_or_default()
                ),
            ),
            Status::Failed => (
                StepKind::Failed,
                format!("failed: {}", d.reason.clone().unwrap_or_default()),
            ),
            _ => (StepKind::Finished, "finished".into()),
        },
        _ => (StepKind::Step, format!("{:?}", d.phase)),
    };
    (msg.0, msg.1)
}
