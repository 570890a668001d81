use super::*;
use crate::plan::{new, Request};
use handoff_core::config::Amount;

fn deployment(kind: Strategy, n: usize, batch: u32, steps: Vec<u32>, hooks: &[&str]) -> Deployment {
    new(Request {
        id: "web-9".into(),
        service: "web".into(),
        from: "v1".into(),
        to: "v2".into(),
        strategy: kind,
        fleet: (1..=n).map(|i| format!("web-{i}")).collect(),
        green: (n + 1..=2 * n).map(|i| format!("web-{i}")).collect(),
        live_group: "blue".into(),
        batch: Amount::Count(batch),
        min_healthy: Amount::Count(0),
        traffic_steps: steps,
        hooks: hooks.iter().map(|h| h.to_string()).collect(),
    })
    .unwrap()
}

/// Round numbers: boot 50, 2 probes 1 s apart, stay 2 s, watch 250, drain
/// 300, stop 100, bake 5 s, retention 60 s.
fn timings() -> Timings {
    Timings {
        boot: Estimate::new(50, "measured"),
        more_probes_ms: 1000,
        min_healthy_ms: 2000,
        early_exit_ms: 250,
        drain: Estimate::new(300, "measured"),
        drain_timeout_ms: 30_000,
        stop: Estimate::new(100, "measured"),
        hooks: BTreeMap::from([("validate_service".into(), Estimate::new(400, "measured"))]),
        bake_ms: 5000,
        retention_ms: 60_000,
        flip_ms: 3,
    }
}

fn durations(p: &Prediction) -> Vec<(&str, u64)> {
    p.steps.iter().map(|s| (s.kind.as_str(), s.ms)).collect()
}

#[test]
fn in_place_steps_take_drain_stop_start_then_health_and_stay() {
    let p = predict(
        &deployment(Strategy::InPlace, 4, 2, vec![], &[]),
        &timings(),
    );
    // Per batch: drain 300, stop 100, start 250 (checks run meanwhile), then
    // the rest of 1,050 ms to healthy (800) + 2,000 ms stay.
    assert_eq!(
        durations(&p),
        vec![
            ("drain", 300),
            ("stop", 100),
            ("start", 250),
            ("health", 2800),
            ("drain", 300),
            ("stop", 100),
            ("start", 250),
            ("health", 2800),
            ("succeeded", 0),
        ]
    );
    assert_eq!(
        p.steps[0].message,
        "batch 1/2: deregistered web-1, web-2, draining…"
    );
    assert_eq!(p.steps[3].at_ms, 650);
    assert_eq!(p.duration_ms, 2 * 3450);
    assert_eq!(p.serving_ms, p.duration_ms);
    assert_eq!((p.batch_size, p.batches), (Some(2), 2));
    // Capacity: 2 from the first drain (at once) until batch 1 is healthy
    // at 400 + 1,050 ms, then 2 again for batch 2 and 4 at the end.
    assert_eq!(p.capacity, vec![(0, 2), (1450, 4), (3450, 2), (4900, 4)]);
    assert_eq!(p.capacity_floor, 2);
    assert_eq!(p.steps[0].in_service_min, 2);
    assert_eq!(p.steps[3].in_service_end, 4);
    // Mixed: from batch 1 serving (1,450) until batch 2 leaves (3,450).
    assert_eq!(p.mixed_window_ms, 2000);
    assert_eq!((p.peak_instances, p.extra_instances), (4, 0));
    assert!(p.rollback.summary.contains("2 batches"), "{:?}", p.rollback);
    assert_eq!(p.rollback.redeploy_ms, p.duration_ms);
}

#[test]
fn blue_green_keeps_capacity_doubles_instances_and_rolls_back_by_a_flip() {
    let p = predict(
        &deployment(Strategy::BlueGreen, 3, 1, vec![50], &[]),
        &timings(),
    );
    let kinds: Vec<&str> = p.steps.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "start",
            "health",
            "traffic",
            "cut-over",
            "retained",
            "terminate",
            "succeeded"
        ]
    );
    // Start 250, health 800 + 2,000, 50 % for the 5 s bake, quiesce 300,
    // retention 60 s, then blue drains (300) and stops (100).
    assert_eq!(
        durations(&p),
        vec![
            ("start", 250),
            ("health", 2800),
            ("traffic", 5000),
            ("cut-over", 300),
            ("retained", 60_000),
            ("terminate", 400),
            ("succeeded", 0),
        ]
    );
    assert_eq!(p.capacity_floor, 3);
    assert_eq!((p.peak_instances, p.extra_instances), (6, 3));
    // Both serve during the 50 % step only.
    assert_eq!(p.mixed_window_ms, 5000);
    assert_eq!(p.steps[2].in_service_end, 6);
    assert_eq!(p.serving_ms, 250 + 2800 + 5000);
    assert_eq!(p.rollback.flip_ms, Some(3));
    assert_eq!(p.rollback.retained_ms, Some(60_000));
    assert_eq!(p.rollback.redeploy_ms, p.duration_ms - 60_000);
}

#[test]
fn blue_green_without_steps_has_no_mixed_window() {
    let p = predict(
        &deployment(Strategy::BlueGreen, 2, 1, vec![], &[]),
        &timings(),
    );
    assert_eq!(p.mixed_window_ms, 0);
    assert_eq!(p.capacity_floor, 2);
}

#[test]
fn all_at_once_predicts_its_downtime() {
    let p = predict(
        &deployment(Strategy::AllAtOnce, 3, 3, vec![], &[]),
        &timings(),
    );
    assert_eq!(p.capacity_floor, 0);
    assert_eq!(p.mixed_window_ms, 0);
    assert!(p.capacity.contains(&(0, 0)), "{:?}", p.capacity);
}

#[test]
fn held_instances_serve_after_their_hooks_and_are_watched_again() {
    let p = predict(
        &deployment(Strategy::InPlace, 2, 1, vec![], &["validate_service"]),
        &timings(),
    );
    // Batch 1's health step: 800 to healthy, 2,000 stay, the 400 ms hook,
    // release, then the window again (2,000) now that it serves.
    assert_eq!(p.steps[3].kind, handoff_core::StepKind::Health);
    assert_eq!(p.steps[3].ms, 800 + 2000 + 400 + 2000);
    assert!(p.steps[3]
        .basis
        .iter()
        .any(|b| b.starts_with("hook validate_service 400 ms")));
    // web-1 serves from its release, not from when its checks passed.
    assert_eq!(p.capacity[..2], [(0, 1), (650 + 800 + 2000 + 400, 2)]);
}

#[test]
fn unmeasured_estimates_say_so() {
    let mut t = timings();
    t.hooks.clear();
    let p = predict(
        &deployment(Strategy::InPlace, 2, 1, vec![], &["validate_service"]),
        &t,
    );
    assert!(p.steps[3]
        .basis
        .iter()
        .any(|b| b == "hook validate_service 0 ms (not measured yet)"));
    let e = Estimate::from_measured("drains", &[], Estimate::new(0, "none yet"));
    assert_eq!(e.source, "none yet");
    let e = Estimate::from_measured("drains", &[30, 10, 20, 900], Estimate::new(0, ""));
    assert_eq!(
        (e.ms, e.source.as_str()),
        (30, "median of the last 4 drains measured")
    );
}

fn events(p: &Prediction, slower: &[(usize, u64)]) -> Vec<(i64, String, String)> {
    let mut t = 1_000_000i64;
    let mut v = vec![(t, "created".to_string(), "deploying".to_string())];
    for s in &p.steps {
        v.push((t, s.kind.as_str().to_string(), s.message.clone()));
        if s.kind == handoff_core::StepKind::Start {
            v.push((
                t + 1,
                "hook".into(),
                "hook after_install web-1: ok in 1 ms".into(),
            ));
        }
        let extra = slower.iter().find(|(n, _)| *n == s.n).map_or(0, |x| x.1);
        t += (s.ms + extra) as i64;
    }
    v
}

#[test]
fn the_report_lines_up_with_the_prediction_and_names_what_differed() {
    let p = predict(
        &deployment(Strategy::InPlace, 4, 2, vec![], &[]),
        &timings(),
    );
    let c = compare(&p, &events(&p, &[]));
    assert!(c.callouts.is_empty(), "{:?}", c.callouts);
    assert!(c
        .steps
        .iter()
        .all(|s| s.measured_ms == Some(s.predicted_ms)));
    assert_eq!(c.measured_ms, c.predicted_ms);

    // Batch 2's drain took 24 s more; batch 1's health 100 ms more (noise).
    let c = compare(&p, &events(&p, &[(5, 24_000), (4, 100)]));
    assert_eq!(c.steps[4].measured_ms, Some(24_300));
    assert_eq!(
        c.callouts,
        vec![
            "drain took 24.3 s of 30.0 s on batch 2/2 (predicted 300 ms): long requests in flight"
        ]
    );
    assert_eq!(c.measured_ms, c.predicted_ms + 24_100);
}

#[test]
fn a_rolled_back_deployment_compares_the_steps_it_reached() {
    let p = predict(
        &deployment(Strategy::InPlace, 4, 2, vec![], &[]),
        &timings(),
    );
    let mut ev = events(&p, &[]);
    // Batch 1's health failed after 900 ms: a rollback instead of batch 2.
    ev.truncate(6); // created, drain, stop, start, hook, health
    let t = ev[5].0 + 900;
    ev.push((t, "rollback".into(), "rolling back to v1".into()));
    let c = compare(&p, &ev);
    assert_eq!(c.steps[3].measured_ms, Some(900));
    assert_eq!(c.steps[4].measured_ms, None);
    assert_eq!(
        c.callouts,
        vec!["batch 1/2: waiting for web-1, web-2 to be healthy: took 900 ms, predicted 2.8 s"]
    );
}
