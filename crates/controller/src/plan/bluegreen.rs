//! Blue/green: green beside blue, traffic shifted in steps, cut over, blue
//! retained for an instant rollback, then terminated.

use super::{Action, Deployment, Event, Phase, Status};

pub(super) fn on(d: &mut Deployment, ev: Event) -> Option<Vec<Action>> {
    use Phase::*;
    match (d.status, d.phase.clone(), ev) {
        (Status::Running, Pending, Event::Start) => {
            d.phase = StartingGreen;
            Some(d.start_actions(&d.green, &d.to, &d.green_group, true))
        }
        (Status::Running, StartingGreen, Event::Done) => {
            d.phase = WaitingGreen;
            Some(d.health_actions(&d.green, false))
        }
        (Status::Running, WaitingGreen, Event::Done) => Some(shift_or_cut(d, 0)),
        (Status::Running, Shifting { index }, Event::Done) => Some(shift_or_cut(d, index + 1)),
        (Status::Running, Shifting { .. }, Event::Promote) => Some(cut_over(d)),
        (Status::Running, StartingGreen | WaitingGreen, Event::Promote) if !d.promoted => {
            d.promoted = true;
            Some(Vec::new())
        }
        (Status::Running, CuttingOver, Event::Done) => {
            d.phase = Retaining;
            d.status = Status::Retained;
            let mut a = Vec::new();
            d.hook_after_allow(&mut a);
            a.extend([
                Action::Supervise {
                    instances: d.green.clone(),
                },
                Action::MarkCurrent {
                    revision: d.to.clone(),
                },
                Action::Retain,
            ]);
            Some(a)
        }
        (Status::Retained, Retaining, Event::Done | Event::Promote) => {
            d.phase = TerminatingBlue;
            d.drained = d.fleet.clone();
            Some(vec![
                Action::Drain {
                    instances: d.fleet.clone(),
                },
                Action::Stop {
                    instances: d.fleet.clone(),
                },
            ])
        }
        (Status::Retained, TerminatingBlue, Event::Done) => {
            d.phase = Finished;
            d.status = Status::Succeeded;
            let mut a = Vec::new();
            d.contract(&mut a);
            Some(a)
        }
        (
            Status::Running,
            StartingGreen | WaitingGreen | Shifting { .. } | CuttingOver,
            Event::Failed { reason },
        ) => Some(flip_back(d, reason)),
        (
            Status::Running,
            StartingGreen | WaitingGreen | Shifting { .. } | CuttingOver,
            Event::Abort,
        ) => Some(flip_back(d, "aborted by request".into())),
        (Status::Retained, Retaining, Event::Rollback | Event::Abort) => {
            let mut a = flip_back(d, "rolled back by request within retention".into());
            a.push(Action::MarkCurrent {
                revision: d.from.clone(),
            });
            Some(a)
        }
        (Status::RollingBack, FlippingBack, Event::Done) => {
            d.phase = Finished;
            d.status = Status::RolledBack;
            Some(vec![Action::Supervise {
                instances: d.fleet.clone(),
            }])
        }
        (Status::RollingBack, FlippingBack, Event::Failed { reason }) => {
            d.phase = Finished;
            d.status = Status::Failed;
            let first = d.reason.take().unwrap_or_default();
            d.reason = Some(format!("{first}; then the rollback failed: {reason}"));
            Some(Vec::new())
        }
        _ => None,
    }
}

fn weights(d: &Deployment, green: u32) -> Action {
    Action::SetWeights {
        weights: vec![
            (d.blue_group.clone(), 100 - green),
            (d.green_group.clone(), green),
        ],
    }
}

fn shift_or_cut(d: &mut Deployment, index: usize) -> Vec<Action> {
    if d.promoted {
        return cut_over(d);
    }
    match d.traffic_steps.get(index) {
        Some(w) => {
            d.phase = Phase::Shifting { index };
            vec![weights(d, *w), Action::Bake { index }]
        }
        None => cut_over(d),
    }
}

fn cut_over(d: &mut Deployment) -> Vec<Action> {
    d.phase = Phase::CuttingOver;
    vec![
        weights(d, 100),
        Action::Quiesce {
            group: d.blue_group.clone(),
        },
    ]
}

/// One routing swap back to blue (effective at once), then green goes.
fn flip_back(d: &mut Deployment, reason: String) -> Vec<Action> {
    d.status = Status::RollingBack;
    d.phase = Phase::FlippingBack;
    d.reason = Some(reason);
    d.drained = d.green.clone();
    vec![
        weights(d, 0),
        Action::Drain {
            instances: d.green.clone(),
        },
        Action::Stop {
            instances: d.green.clone(),
        },
    ]
}
