//! In-place (and all-at-once, which is in-place with one batch of
//! everything and no floor): batch by batch on the same instances.

use super::{Action, BatchStep, Deployment, Event, Phase, Status};

pub(super) fn on(d: &mut Deployment, ev: Event) -> Option<Vec<Action>> {
    match (d.status, d.phase.clone(), ev) {
        (Status::Running, Phase::Pending, Event::Start) => Some(begin_batch(d, 0)),
        (Status::Running | Status::RollingBack, Phase::Batch { index, step }, Event::Done) => {
            Some(advance(d, index, step))
        }
        (Status::Running, Phase::Batch { index, step }, Event::Failed { reason }) => {
            Some(roll_back(d, index, step, reason))
        }
        (Status::Running, Phase::Batch { index, step }, Event::Abort) => {
            Some(roll_back(d, index, step, "aborted by request".into()))
        }
        (Status::RollingBack, Phase::Batch { .. }, Event::Failed { reason }) => {
            d.status = Status::Failed;
            d.phase = Phase::Finished;
            let first = d.reason.take().unwrap_or_default();
            d.reason = Some(format!("{first}; then the rollback failed: {reason}"));
            Some(Vec::new())
        }
        _ => None,
    }
}

fn revision(d: &Deployment) -> String {
    if d.status == Status::RollingBack {
        d.from.clone()
    } else {
        d.to.clone()
    }
}

fn begin_batch(d: &mut Deployment, index: usize) -> Vec<Action> {
    d.phase = Phase::Batch {
        index,
        step: BatchStep::Draining,
    };
    vec![Action::Drain {
        instances: d.batches[index].clone(),
    }]
}

fn advance(d: &mut Deployment, index: usize, step: BatchStep) -> Vec<Action> {
    let batch = d.batches[index].clone();
    match step {
        BatchStep::Draining => {
            for i in &batch {
                if !d.drained.contains(i) {
                    d.drained.push(i.clone());
                }
            }
            d.phase = Phase::Batch {
                index,
                step: BatchStep::Stopping,
            };
            vec![Action::Stop { instances: batch }]
        }
        BatchStep::Stopping => {
            d.phase = Phase::Batch {
                index,
                step: BatchStep::Starting,
            };
            d.start_actions(&batch, &revision(d), &d.blue_group, index == 0)
        }
        BatchStep::Starting => {
            d.phase = Phase::Batch {
                index,
                step: BatchStep::WaitingHealthy,
            };
            d.health_actions(&batch, true)
        }
        BatchStep::WaitingHealthy => {
            d.drained.retain(|i| !batch.contains(i));
            if d.status == Status::Running {
                d.changed.extend(batch.iter().cloned());
            }
            let mut actions = vec![Action::Supervise { instances: batch }];
            if index + 1 < d.batches.len() {
                actions.extend(begin_batch(d, index + 1));
            } else {
                d.phase = Phase::Finished;
                if d.status == Status::Running {
                    d.status = Status::Succeeded;
                    actions.push(Action::MarkCurrent {
                        revision: d.to.clone(),
                    });
                    d.contract(&mut actions);
                } else {
                    d.status = Status::RolledBack;
                }
            }
            actions
        }
    }
}

/// Every instance this deployment touched goes back to `from`, batch by
/// batch with the same size, so the floor holds during the rollback too.
fn roll_back(d: &mut Deployment, index: usize, step: BatchStep, reason: String) -> Vec<Action> {
    let size = d.batches.first().map_or(1, |b| b.len()).max(1);
    let mut todo = d.changed.clone();
    // The failing batch was drained at least; restart it on `from` too.
    let _ = step;
    for i in &d.batches[index] {
        if !todo.contains(i) {
            todo.push(i.clone());
        }
    }
    d.status = Status::RollingBack;
    d.reason = Some(reason);
    d.changed.clear();
    // Keep the original order of the fleet so batches are predictable.
    let fleet = d.fleet.clone();
    todo.sort_by_key(|i| fleet.iter().position(|f| f == i));
    d.batches = todo.chunks(size).map(|c| c.to_vec()).collect();
    begin_batch(d, 0)
}
