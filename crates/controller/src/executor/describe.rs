//! How a transition reads in the deployment's record and live output, in
//! the seed's terms ("batch 1/2: deregistered web-1, web-2, draining…").

use crate::plan::{Action, BatchStep, Deployment, Phase, Status};

/// The event recorded for a transition, in the seed's terms.
pub(crate) fn describe(
    before: &Deployment,
    d: &Deployment,
    actions: &[Action],
) -> (String, String) {
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
