use super::*;

/// `secs` seconds of steady load: `rate` req/s, `in_flight`, `n` in service.
fn steady(
    from_s: u64,
    secs: u64,
    rate: u64,
    in_flight: u64,
    n: usize,
    total: &mut u64,
) -> Vec<Sample> {
    (0..secs)
        .map(|i| {
            if i > 0 {
                *total += rate;
            }
            Sample {
                at_ms: (from_s + i) * 1000,
                requests: *total,
                in_flight,
                in_service: n,
            }
        })
        .collect()
}

#[test]
fn no_samples_no_load() {
    assert_eq!(load_of(&[]), Load::default());
    let AutoChoice { batch: b, why, .. } = auto_batch(10, 2, &Load::default(), 30, None);
    assert_eq!(b, 8);
    assert_eq!(
        why,
        "auto: no load measured; min_healthy keeps 2 → batch 8 of 10"
    );
}

#[test]
fn the_load_now_and_the_busiest_instance() {
    let mut total = 0;
    // 5 minutes at 1,000 req/s on 10 instances, then 2 minutes at 300.
    let mut s = steady(0, 300, 1000, 20, 10, &mut total);
    s.extend(steady(300, 120, 300, 6, 10, &mut total));
    let l = load_of(&s);
    assert!((l.rate - 300.0).abs() < 1.0, "{l:?}");
    assert!((l.in_flight - 6.0).abs() < 0.01, "{l:?}");
    assert!((l.peak_rate_per_instance - 100.0).abs() < 1.0, "{l:?}");
    assert!((l.peak_in_flight_per_instance - 2.0).abs() < 0.01, "{l:?}");
    assert_eq!(l.window_ms, 419_000);
}

fn load(rate: f64, in_flight: f64, peak_rate: f64, peak_in_flight: f64) -> Load {
    Load {
        rate,
        in_flight,
        peak_rate_per_instance: peak_rate,
        peak_in_flight_per_instance: peak_in_flight,
        window_ms: 600_000,
    }
}

#[test]
fn auto_batches_under_synthetic_loads() {
    // 10 instances have carried 100 req/s each.
    // Quiet (100 req/s): 130 needs 2 → 8 may go, but min_healthy 5 keeps 5.
    assert_eq!(
        auto_batch(10, 5, &load(100.0, 1.0, 100.0, 2.0), 30, None).batch,
        5
    );
    // Same with no floor: 8.
    assert_eq!(
        auto_batch(10, 0, &load(100.0, 1.0, 100.0, 2.0), 30, None).batch,
        8
    );
    // Half load (500): 650 needs 7 → batch 3.
    let AutoChoice { batch: b, why, .. } =
        auto_batch(10, 0, &load(500.0, 5.0, 100.0, 2.0), 30, None);
    assert_eq!(b, 3);
    assert_eq!(
        why,
        "auto: 500 req/s and 5.0 in flight now (+30% = 650 req/s) need 7 instances at 100 req/s each (the most one has carried in the last 10 min) → batch 3 of 10"
    );
    // At its peak: needs more than 10 → never below one instance.
    let AutoChoice { batch: b, why, .. } =
        auto_batch(10, 0, &load(1000.0, 20.0, 100.0, 2.0), 30, None);
    assert_eq!(b, 1);
    assert!(
        why.ends_with("; never below one instance → batch 1 of 10"),
        "{why}"
    );
    // In flight can be the tighter bound: 10 in flight at 2 per instance.
    assert_eq!(
        auto_batch(10, 0, &load(100.0, 10.0, 100.0, 2.0), 30, None).batch,
        3
    );
    // An operator who knows an instance takes 400 req/s: 1,000 needs 4.
    let AutoChoice { batch: b, why, .. } =
        auto_batch(10, 0, &load(1000.0, 20.0, 100.0, 2.0), 30, Some(400));
    assert_eq!(b, 6);
    assert!(why.contains("(in_place.instance_capacity)"), "{why}");
    // Headroom 0 vs 100 %.
    assert_eq!(
        auto_batch(10, 0, &load(500.0, 0.0, 100.0, 0.0), 0, None).batch,
        5
    );
    assert_eq!(
        auto_batch(10, 0, &load(500.0, 0.0, 100.0, 0.0), 100, None).batch,
        1
    );
    // Never all of them, even idle: one stays in service.
    assert_eq!(auto_batch(3, 0, &Load::default(), 30, None).batch, 2);
    assert_eq!(auto_batch(1, 0, &Load::default(), 30, None).batch, 1);
}

#[test]
fn a_meter_keeps_ten_minutes() {
    let m = LoadMeter::default();
    let mut total = 0;
    for s in steady(0, 900, 10, 0, 1, &mut total) {
        m.record(s);
    }
    assert_eq!(m.load().window_ms, 600_000);
}
