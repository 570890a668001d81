use super::*;
use handoff_core::config::Amount;

fn names(p: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{p}-{i}")).collect()
}

fn req(kind: Strategy, n: usize, batch: Amount, floor: Amount) -> Request {
    Request {
        id: "d1".into(),
        service: "web".into(),
        from: "v1".into(),
        to: "v2".into(),
        strategy: kind,
        fleet: names("web", n),
        green: (n + 1..=2 * n).map(|i| format!("web-{i}")).collect(),
        live_group: "blue".into(),
        batch,
        min_healthy: floor,
        traffic_steps: vec![10, 50],
        hooks: Vec::new(),
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Drives a deployment with `Done` until it finishes; returns every action.
fn run(mut d: Deployment) -> (Deployment, Vec<Action>) {
    let mut all = Vec::new();
    let (n, a) = step(&d, Event::Start).unwrap();
    d = n;
    all.extend(a);
    for _ in 0..100 {
        if d.phase == Phase::Finished {
            break;
        }
        let (n, a) = step(&d, Event::Done).unwrap();
        d = n;
        all.extend(a);
    }
    (d, all)
}

#[test]
fn in_place_batch_1_goes_instance_by_instance() {
    let d = new(req(
        Strategy::InPlace,
        3,
        Amount::Count(1),
        Amount::Count(2),
    ))
    .unwrap();
    assert_eq!(d.batches, vec![s(&["web-1"]), s(&["web-2"]), s(&["web-3"])]);
    let (d1, a) = step(&d, Event::Start).unwrap();
    assert_eq!(
        a,
        vec![Action::Drain {
            instances: s(&["web-1"])
        }]
    );
    let (d2, a) = step(&d1, Event::Done).unwrap();
    assert_eq!(
        a,
        vec![Action::Stop {
            instances: s(&["web-1"])
        }]
    );
    let (d3, a) = step(&d2, Event::Done).unwrap();
    assert_eq!(
        a,
        vec![Action::Start {
            instances: s(&["web-1"]),
            revision: "v2".into(),
            group: "blue".into(),
            hold: false
        }]
    );
    let (d4, a) = step(&d3, Event::Done).unwrap();
    assert_eq!(
        a,
        vec![Action::AwaitHealthy {
            instances: s(&["web-1"])
        }]
    );
    let (d5, a) = step(&d4, Event::Done).unwrap();
    assert_eq!(
        a,
        vec![
            Action::Supervise {
                instances: s(&["web-1"])
            },
            Action::Drain {
                instances: s(&["web-2"])
            }
        ]
    );
    assert_eq!(d5.changed, s(&["web-1"]));
    let (end, all) = run(d);
    assert_eq!(end.status, Status::Succeeded);
    assert_eq!(end.changed, names("web", 3));
    assert_eq!(
        all.last(),
        Some(&Action::MarkCurrent {
            revision: "v2".into()
        })
    );
    assert_eq!(
        all.iter()
            .filter(|a| matches!(a, Action::Stop { .. }))
            .count(),
        3
    );
}

#[test]
fn in_place_50_percent_makes_two_batches_of_two() {
    let d = new(req(
        Strategy::InPlace,
        4,
        Amount::Percent(50),
        Amount::Percent(50),
    ))
    .unwrap();
    assert_eq!(
        d.batches,
        vec![s(&["web-1", "web-2"]), s(&["web-3", "web-4"])]
    );
    assert_eq!(d.min_healthy, 2);
    let (end, _) = run(d);
    assert_eq!(end.status, Status::Succeeded);
}

#[test]
fn a_batch_that_breaks_the_floor_is_refused_up_front() {
    let e = new(req(
        Strategy::InPlace,
        4,
        Amount::Count(3),
        Amount::Percent(50),
    ))
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("would leave 1 in service, below min_healthy 50% (2)"),
        "{e}"
    );
    let e = new(req(
        Strategy::InPlace,
        2,
        Amount::Count(3),
        Amount::Count(0),
    ))
    .unwrap_err();
    assert!(e.to_string().contains("larger than the 2 instances"), "{e}");
    let mut r = req(Strategy::InPlace, 2, Amount::Count(1), Amount::Count(1));
    r.to = "v1".into();
    assert!(new(r).unwrap_err().to_string().contains("already serves"));
}

#[test]
fn in_place_failure_at_every_step_rolls_back_what_was_touched() {
    let base = new(req(
        Strategy::InPlace,
        4,
        Amount::Count(2),
        Amount::Count(2),
    ))
    .unwrap();
    // Walk to each step of each batch, fail there, and check the rollback.
    for fail_at in 0..8 {
        let (mut d, _) = step(&base, Event::Start).unwrap();
        for _ in 0..fail_at {
            d = step(&d, Event::Done).unwrap().0;
        }
        let batch_index = fail_at / 4;
        let (rb, a) = step(
            &d,
            Event::Failed {
                reason: "boom".into(),
            },
        )
        .unwrap();
        assert_eq!(rb.status, Status::RollingBack, "fail_at {fail_at}");
        assert_eq!(rb.reason.as_deref(), Some("boom"));
        // Batch 0 done (4 steps) + failing batch 1 → all four roll back.
        let expect: Vec<String> = if batch_index == 0 {
            s(&["web-1", "web-2"])
        } else {
            names("web", 4)
        };
        assert_eq!(rb.batches.concat(), expect, "fail_at {fail_at}");
        assert_eq!(
            a,
            vec![Action::Drain {
                instances: rb.batches[0].clone()
            }]
        );
        // The rollback starts `from` and ends rolled back.
        let (rb2, _) = step(&rb, Event::Done).unwrap();
        let (_, a) = step(&rb2, Event::Done).unwrap();
        assert_eq!(
            a,
            vec![Action::Start {
                instances: rb.batches[0].clone(),
                revision: "v1".into(),
                group: "blue".into(),
                hold: false
            }]
        );
        let mut end = rb;
        for _ in 0..40 {
            if end.phase == Phase::Finished {
                break;
            }
            end = step(&end, Event::Done).unwrap().0;
        }
        assert_eq!(end.status, Status::RolledBack, "fail_at {fail_at}");
    }
}

#[test]
fn a_failing_rollback_ends_failed_with_both_reasons() {
    let d = new(req(
        Strategy::InPlace,
        2,
        Amount::Count(1),
        Amount::Count(1),
    ))
    .unwrap();
    let (d, _) = step(&d, Event::Start).unwrap();
    let (d, _) = step(
        &d,
        Event::Failed {
            reason: "not healthy".into(),
        },
    )
    .unwrap();
    let (d, a) = step(
        &d,
        Event::Failed {
            reason: "old revision gone".into(),
        },
    )
    .unwrap();
    assert!(a.is_empty());
    assert_eq!(d.status, Status::Failed);
    assert_eq!(
        d.reason.as_deref(),
        Some("not healthy; then the rollback failed: old revision gone")
    );
    assert!(
        step(&d, Event::Done).is_err(),
        "a finished deployment takes no more events"
    );
}

#[test]
fn pause_holds_the_next_step_until_resume() {
    let d = new(req(
        Strategy::InPlace,
        2,
        Amount::Count(1),
        Amount::Count(1),
    ))
    .unwrap();
    let (d, _) = step(&d, Event::Start).unwrap();
    let (p, a) = step(&d, Event::Pause).unwrap();
    assert!(a.is_empty() && p.paused);
    assert!(step(&p, Event::Pause).is_err());
    let (h, a) = step(&p, Event::Done).unwrap();
    assert!(a.is_empty() && h.held);
    assert_eq!(h.phase, d.phase, "nothing moves while paused");
    let (r, a) = step(&h, Event::Resume).unwrap();
    assert_eq!(
        a,
        vec![Action::Stop {
            instances: s(&["web-1"])
        }]
    );
    assert!(!r.paused && !r.held);
}

#[test]
fn abort_rolls_back_and_rejected_events_change_nothing() {
    let d = new(req(
        Strategy::InPlace,
        2,
        Amount::Count(1),
        Amount::Count(1),
    ))
    .unwrap();
    assert!(step(&d, Event::Done).is_err());
    assert!(step(&d, Event::Promote).is_err());
    let (d, _) = step(&d, Event::Start).unwrap();
    let before = d.clone();
    assert!(step(&d, Event::Rollback).is_err());
    assert_eq!(d, before);
    let (a, _) = step(&d, Event::Abort).unwrap();
    assert_eq!(a.status, Status::RollingBack);
    assert_eq!(a.reason.as_deref(), Some("aborted by request"));
}

#[test]
fn blue_green_full_sequence() {
    let d = new(req(
        Strategy::BlueGreen,
        2,
        Amount::Count(1),
        Amount::Count(1),
    ))
    .unwrap();
    assert_eq!(
        (d.blue_group.as_str(), d.green_group.as_str()),
        ("blue", "green")
    );
    let green = s(&["web-3", "web-4"]);
    let w = |b: u32, g: u32| Action::SetWeights {
        weights: vec![("blue".into(), b), ("green".into(), g)],
    };
    let (d, a) = step(&d, Event::Start).unwrap();
    assert_eq!(
        a,
        vec![Action::Start {
            instances: green.clone(),
            revision: "v2".into(),
            group: "green".into(),
            hold: false
        }]
    );
    let (d, a) = step(&d, Event::Done).unwrap();
    assert_eq!(
        a,
        vec![Action::AwaitHealthy {
            instances: green.clone()
        }]
    );
    let (d, a) = step(&d, Event::Done).unwrap();
    assert_eq!(a, vec![w(90, 10), Action::Bake { index: 0 }]);
    let (d, a) = step(&d, Event::Done).unwrap();
    assert_eq!(a, vec![w(50, 50), Action::Bake { index: 1 }]);
    let (d, a) = step(&d, Event::Done).unwrap();
    assert_eq!(
        a,
        vec![
            w(0, 100),
            Action::Quiesce {
                group: "blue".into()
            }
        ]
    );
    let (d, a) = step(&d, Event::Done).unwrap();
    assert_eq!(d.status, Status::Retained);
    assert_eq!(
        a,
        vec![
            Action::Supervise {
                instances: green.clone()
            },
            Action::MarkCurrent {
                revision: "v2".into()
            },
            Action::Retain
        ]
    );
    let (d, a) = step(&d, Event::Done).unwrap();
    assert_eq!(
        a,
        vec![
            Action::Drain {
                instances: names("web", 2)
            },
            Action::Stop {
                instances: names("web", 2)
            }
        ]
    );
    let (d, a) = step(&d, Event::Done).unwrap();
    assert!(a.is_empty());
    assert_eq!((d.status, d.phase), (Status::Succeeded, Phase::Finished));
}

#[test]
fn blue_green_failure_before_cut_over_flips_back_at_every_step() {
    let base = new(req(
        Strategy::BlueGreen,
        2,
        Amount::Count(1),
        Amount::Count(1),
    ))
    .unwrap();
    for fail_at in 0..5 {
        let (mut d, _) = step(&base, Event::Start).unwrap();
        for _ in 0..fail_at {
            d = step(&d, Event::Done).unwrap().0;
        }
        let (rb, a) = step(
            &d,
            Event::Failed {
                reason: "5xx".into(),
            },
        )
        .unwrap();
        assert_eq!(rb.status, Status::RollingBack, "fail_at {fail_at}");
        assert_eq!(
            a[0],
            Action::SetWeights {
                weights: vec![("blue".into(), 100), ("green".into(), 0)]
            }
        );
        assert_eq!(
            a[1..],
            [
                Action::Drain {
                    instances: s(&["web-3", "web-4"])
                },
                Action::Stop {
                    instances: s(&["web-3", "web-4"])
                }
            ]
        );
        let (end, _) = step(&rb, Event::Done).unwrap();
        assert_eq!(end.status, Status::RolledBack);
    }
}

#[test]
fn promote_skips_bake_and_rollback_within_retention_is_one_flip() {
    let d = new(req(
        Strategy::BlueGreen,
        2,
        Amount::Count(1),
        Amount::Count(1),
    ))
    .unwrap();
    let (mut d, _) = step(&d, Event::Start).unwrap();
    d = step(&d, Event::Done).unwrap().0;
    d = step(&d, Event::Done).unwrap().0; // shifting 10%
    let (d, a) = step(&d, Event::Promote).unwrap();
    assert_eq!(d.phase, Phase::CuttingOver);
    assert_eq!(
        a[0],
        Action::SetWeights {
            weights: vec![("blue".into(), 0), ("green".into(), 100)]
        }
    );
    let (d, _) = step(&d, Event::Done).unwrap();
    assert_eq!(d.status, Status::Retained);
    let (rb, a) = step(&d, Event::Rollback).unwrap();
    assert_eq!(
        a[0],
        Action::SetWeights {
            weights: vec![("blue".into(), 100), ("green".into(), 0)]
        }
    );
    assert_eq!(
        a.last(),
        Some(&Action::MarkCurrent {
            revision: "v1".into()
        })
    );
    let (end, a) = step(&rb, Event::Done).unwrap();
    assert_eq!(end.status, Status::RolledBack);
    assert_eq!(
        a,
        vec![Action::Supervise {
            instances: names("web", 2)
        }]
    );
}

#[test]
fn all_at_once_stops_everything_then_starts_everything() {
    let d = new(req(
        Strategy::AllAtOnce,
        3,
        Amount::Count(1),
        Amount::Count(2),
    ))
    .unwrap();
    assert_eq!(d.batches, vec![names("web", 3)]);
    let (end, all) = run(d);
    assert_eq!(end.status, Status::Succeeded);
    assert_eq!(
        all[0],
        Action::Drain {
            instances: names("web", 3)
        }
    );
    assert_eq!(
        all[1],
        Action::Stop {
            instances: names("web", 3)
        }
    );
}

#[test]
fn the_invariant_check_catches_a_stop_before_drain() {
    let d = new(req(
        Strategy::InPlace,
        2,
        Amount::Count(1),
        Amount::Count(1),
    ))
    .unwrap();
    let bad = [Action::Stop {
        instances: s(&["web-1"]),
    }];
    assert!(check(&d, &d, &bad)
        .unwrap_err()
        .contains("stopped before it was drained"));
    let mut bg = new(req(
        Strategy::BlueGreen,
        2,
        Amount::Count(1),
        Amount::Count(1),
    ))
    .unwrap();
    bg.phase = Phase::Shifting { index: 0 };
    let early = [Action::Drain {
        instances: s(&["web-1"]),
    }];
    assert!(check(&bg, &bg, &early)
        .unwrap_err()
        .contains("blue drained before cut-over"));
    let mut pending = bg.clone();
    pending.phase = Phase::StartingGreen;
    let w = [Action::SetWeights {
        weights: vec![("green".into(), 10)],
    }];
    assert!(check(&pending, &bg, &w)
        .unwrap_err()
        .contains("before its health checks"));
}

#[test]
fn deployments_round_trip_through_json() {
    let d = new(req(
        Strategy::BlueGreen,
        2,
        Amount::Count(1),
        Amount::Count(1),
    ))
    .unwrap();
    let (d, _) = step(&d, Event::Start).unwrap();
    let j = serde_json::to_string(&d).unwrap();
    assert_eq!(serde_json::from_str::<Deployment>(&j).unwrap(), d);
}

/// Feeds `Done` to a started deployment until it finishes.
fn finish(mut d: Deployment) -> (Deployment, Vec<Action>) {
    let mut all = Vec::new();
    for _ in 0..100 {
        if d.phase == Phase::Finished {
            break;
        }
        let (n, a) = step(&d, Event::Done).unwrap();
        d = n;
        all.extend(a);
    }
    (d, all)
}

fn with_hooks(kind: Strategy, hooks: &[&str]) -> Deployment {
    let mut r = req(kind, 2, Amount::Count(1), Amount::Count(1));
    r.hooks = hooks.iter().map(|h| h.to_string()).collect();
    new(r).unwrap()
}

fn hook(name: &str, inst: &[&str]) -> Action {
    Action::Hook {
        name: name.into(),
        instances: s(inst),
    }
}

#[test]
fn in_place_hooks_run_in_order_and_hold_traffic_until_released() {
    let all = [
        "migrate_expand",
        "before_install",
        "after_install",
        "application_start",
        "validate_service",
        "before_allow_traffic",
        "after_allow_traffic",
        "migrate_contract",
    ];
    let d = with_hooks(Strategy::InPlace, &all);
    let (d, _) = step(&d, Event::Start).unwrap(); // drain web-1
    let (d, _) = step(&d, Event::Done).unwrap(); // stop
    let (d, a) = step(&d, Event::Done).unwrap();
    assert_eq!(
        a,
        vec![
            hook("migrate_expand", &[]),
            hook("before_install", &["web-1"]),
            hook("after_install", &["web-1"]),
            Action::Start {
                instances: s(&["web-1"]),
                revision: "v2".into(),
                group: "blue".into(),
                hold: true
            },
            hook("application_start", &["web-1"]),
        ]
    );
    let (d, a) = step(&d, Event::Done).unwrap();
    assert_eq!(
        a,
        vec![
            Action::AwaitHealthy {
                instances: s(&["web-1"])
            },
            hook("validate_service", &["web-1"]),
            hook("before_allow_traffic", &["web-1"]),
            Action::Release {
                instances: s(&["web-1"])
            },
            // The analysis window again, now that web-1 serves.
            Action::AwaitHealthy {
                instances: s(&["web-1"])
            },
            hook("after_allow_traffic", &["web-1"]),
        ]
    );
    let (end, rest) = finish(d);
    assert_eq!(end.status, Status::Succeeded);
    // Expand ran once (batch 1 only); contract once, last.
    assert!(!rest.contains(&hook("migrate_expand", &[])));
    assert_eq!(rest.last(), Some(&hook("migrate_contract", &[])));
}

#[test]
fn blue_green_hooks_expand_before_green_and_contract_after_blue_is_gone() {
    let d = with_hooks(
        Strategy::BlueGreen,
        &[
            "migrate_expand",
            "before_allow_traffic",
            "after_allow_traffic",
            "migrate_contract",
        ],
    );
    let (end, all) = run(d);
    assert_eq!(end.status, Status::Succeeded);
    assert_eq!(all[0], hook("migrate_expand", &[]));
    let green = ["web-3", "web-4"];
    let release = all
        .iter()
        .position(|a| {
            *a == Action::Release {
                instances: s(&green),
            }
        })
        .unwrap();
    let first_weight = all
        .iter()
        .position(|a| matches!(a, Action::SetWeights { .. }))
        .unwrap();
    assert!(
        release < first_weight,
        "green released before it gets a weight"
    );
    let after = all
        .iter()
        .position(|a| *a == hook("after_allow_traffic", &green))
        .unwrap();
    let cut = all
        .iter()
        .position(|a| {
            *a == Action::Quiesce {
                group: "blue".into(),
            }
        })
        .unwrap();
    assert!(after > cut, "after_allow_traffic after the cut-over");
    let stop_blue = all
        .iter()
        .position(|a| {
            *a == Action::Stop {
                instances: names("web", 2),
            }
        })
        .unwrap();
    assert_eq!(all.last(), Some(&hook("migrate_contract", &[])));
    assert!(
        all.len() - 1 > stop_blue,
        "contract only after blue is terminated"
    );
}

#[test]
fn a_rollback_runs_install_hooks_for_the_old_revision_but_no_migration() {
    let d = with_hooks(
        Strategy::InPlace,
        &["migrate_expand", "before_install", "migrate_contract"],
    );
    let (d, _) = step(&d, Event::Start).unwrap();
    let (d, _) = step(&d, Event::Failed { reason: "x".into() }).unwrap();
    let (d, _) = step(&d, Event::Done).unwrap();
    let (d, a) = step(&d, Event::Done).unwrap();
    assert_eq!(a[0], hook("before_install", &["web-1"]));
    assert!(matches!(&a[1], Action::Start { revision, .. } if revision == "v1"));
    let (_, rest) = finish(d);
    assert!(!rest
        .iter()
        .any(|a| matches!(a, Action::Hook { name, .. } if name.starts_with("migrate"))));
}

#[test]
fn promote_before_the_traffic_steps_is_remembered() {
    let d = new(req(
        Strategy::BlueGreen,
        2,
        Amount::Count(1),
        Amount::Count(1),
    ))
    .unwrap();
    let (d, _) = step(&d, Event::Start).unwrap();
    let (d, a) = step(&d, Event::Promote).unwrap();
    assert!(a.is_empty() && d.promoted);
    assert!(step(&d, Event::Promote).is_err(), "once is enough");
    let (d, _) = step(&d, Event::Done).unwrap(); // green started
    let (d, a) = step(&d, Event::Done).unwrap(); // green healthy: no steps
    assert_eq!(d.phase, Phase::CuttingOver);
    assert_eq!(
        a[0],
        Action::SetWeights {
            weights: vec![("blue".into(), 0), ("green".into(), 100)]
        }
    );
}
