//! The executor against a fake runtime that records every call, the real
//! proxy control handle (no listeners needed) and a real in-memory SQLite
//! store: the sequence of side effects, what the store holds after, and the
//! rollback paths, without processes or sockets.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::FakeRuntime;
use handoff_controller::executor::{DeployError, DeployRequest, Deployer};
use handoff_controller::plan::{Status, Strategy};
use handoff_controller::{Fleet, FleetOptions};
use handoff_proxy::Proxy;
use handoff_store::Store;

struct Rig {
    rt: Arc<FakeRuntime>,
    store: Arc<Store>,
    deployer: Arc<Deployer<FakeRuntime>>,
    _proxy: Proxy,
}

async fn rig(instances: u32, extra: &str) -> Rig {
    rig_with(instances, "0s", "0s", extra).await
}

async fn rig_bake(instances: u32, bake: &str, extra: &str) -> Rig {
    rig_with(instances, bake, "0s", extra).await
}

/// `stay`: each new instance's health window (`min_healthy_time`).
async fn rig_with(instances: u32, bake: &str, stay: &str, extra: &str) -> Rig {
    let text = format!(
        "[services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"v1\"\ninstances = {instances}\ncommand = \"fake {{port}}\"\n\
         [services.web.health]\nenabled = false\nmin_healthy_time = \"{stay}\"\n\
         [services.web.blue_green]\ntraffic_steps = [50]\nbake = \"{bake}\"\nretention = \"200ms\"\n{extra}"
    );
    let cfg = handoff_core::config::parse(Path::new("/tmp/handoff.toml"), &text).unwrap();
    let svc = cfg.services["web"].clone();
    let mut proxy = Proxy::new(1);
    let sp = proxy.add_service(&svc).unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let store = Arc::new(Store::memory().unwrap());
    let opts = FleetOptions {
        state_dir: std::env::temp_dir().join("handoff-fake"),
        base_dir: std::env::temp_dir(),
        port_range: None,
        releases_kept: 5,
    };
    let fleet = Fleet::new(
        svc,
        handoff_controller::balancer::builtin(sp),
        rt.clone(),
        store.clone(),
        opts,
    )
    .unwrap();
    fleet.boot().await.unwrap();
    let deployer = Deployer::new(fleet);
    rt.calls.lock().unwrap().clear();
    Rig {
        rt,
        store,
        deployer,
        _proxy: proxy,
    }
}

async fn settle(d: &Deployer<FakeRuntime>, until: impl Fn(Status) -> bool) -> Status {
    for _ in 0..500 {
        if let Some(s) = d.current().map(|x| x.status) {
            if until(s) {
                // The record is written just after the state is published.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("deployment did not settle: {:?}", d.current());
}

fn done(s: Status) -> bool {
    !s.is_active()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_batch_1_records_every_step_and_moves_the_current_revision() {
    let r = rig(3, "").await;
    let id = r
        .deployer
        .deploy(DeployRequest {
            revision: "v2".into(),
            strategy: Some(Strategy::InPlace),
            batch: Some(handoff_core::config::Amount::Count(1).into()),
            artifact: None,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(settle(&r.deployer, done).await, Status::Succeeded);
    assert_eq!(
        r.rt.calls(),
        [
            "stop web-1",
            "start web-1 v2",
            "stop web-2",
            "start web-2 v2",
            "stop web-3",
            "start web-3 v2"
        ]
    );
    let rec = r.store.deployment(&id).unwrap().unwrap();
    assert_eq!(rec.status, "succeeded");
    let events: Vec<String> = r
        .store
        .deployment_events(&id)
        .unwrap()
        .into_iter()
        .map(|e| e.2)
        .collect();
    assert!(
        events[0].contains("deploying v1 → v2 (in-place)"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e == "batch 3/3: drained; stopping web-3"),
        "{events:?}"
    );
    let report: serde_json::Value = serde_json::from_str(&rec.report.unwrap()).unwrap();
    assert_eq!(report["desired"], 3);
    assert_eq!(
        report["capacity_floor"], 2,
        "batch 1 of 3 keeps 2 in service"
    );
    assert_eq!(
        r.store.current_revision("web").unwrap().as_deref(),
        Some("v2")
    );
    let insts = r.store.instances("web").unwrap();
    assert!(
        insts
            .iter()
            .all(|i| i.revision == "v2" && i.status == "running"),
        "{insts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_rolls_back_exactly_what_was_touched() {
    let r = rig(3, "").await;
    let id = r
        .deployer
        .deploy(DeployRequest {
            revision: "bad-v2".into(),
            strategy: None,
            batch: Some(handoff_core::config::Amount::Count(1).into()),
            artifact: None,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(settle(&r.deployer, done).await, Status::RolledBack);
    // The failed start left no process, so the rollback has nothing to stop.
    assert_eq!(
        r.rt.calls(),
        ["stop web-1", "start web-1 bad-v2", "start web-1 v1"]
    );
    let rec = r.store.deployment(&id).unwrap().unwrap();
    assert_eq!(rec.status, "rolled-back");
    let events: Vec<String> = r
        .store
        .deployment_events(&id)
        .unwrap()
        .into_iter()
        .map(|e| e.2)
        .collect();
    assert!(
        events.iter().any(|e| e.contains("rolling back to v1")
            && e.contains("exited with status 1 while starting")),
        "{events:?}"
    );
    assert_eq!(
        r.store.current_revision("web").unwrap().as_deref(),
        Some("v1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_starts_green_then_terminates_blue_after_retention() {
    let r = rig(2, "").await;
    r.deployer
        .deploy(DeployRequest {
            revision: "v2".into(),
            strategy: Some(Strategy::BlueGreen),
            batch: None,
            artifact: None,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        settle(&r.deployer, |s| s == Status::Retained).await,
        Status::Retained
    );
    assert_eq!(
        r.rt.calls().len(),
        2,
        "blue is kept during retention: {:?}",
        r.rt.calls()
    );
    let weights: Vec<(String, u32)> = r
        .deployer
        .fleet
        .proxy
        .table()
        .groups
        .iter()
        .map(|g| (g.name.to_string(), g.weight))
        .collect();
    assert_eq!(
        weights,
        [("blue".to_string(), 0), ("green".to_string(), 100)]
    );
    assert_eq!(settle(&r.deployer, done).await, Status::Succeeded);
    let mut calls = r.rt.calls();
    calls[..2].sort();
    calls[2..].sort();
    assert_eq!(
        calls,
        [
            "start web-3 v2",
            "start web-4 v2",
            "stop web-1",
            "stop web-2"
        ]
    );
    let names: Vec<String> = r
        .deployer
        .fleet
        .instances()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["web-3", "web-4"]);
    assert_eq!(r.deployer.fleet.live_group(), "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deployment_per_service_and_a_flip_within_retention() {
    // A bake of an hour keeps it running for sure while we ask again.
    let r = rig_bake(
        2,
        "1h",
        "[services.web.in_place]\nbatch = 1\nmin_healthy = 1\n",
    )
    .await;
    r.deployer
        .deploy(DeployRequest {
            revision: "v2".into(),
            strategy: Some(Strategy::BlueGreen),
            batch: None,
            artifact: None,
            ..Default::default()
        })
        .await
        .unwrap();
    // While it runs, a second one is refused by name…
    match r
        .deployer
        .deploy(DeployRequest {
            revision: "v3".into(),
            ..Default::default()
        })
        .await
    {
        Err(DeployError::Conflict { id, .. }) => assert_eq!(id, "web@1"),
        other => panic!("{other:?}"),
    }
    r.deployer
        .control(handoff_controller::plan::Event::Promote)
        .unwrap();
    assert_eq!(
        settle(&r.deployer, |s| s == Status::Retained).await,
        Status::Retained
    );
    // …and within retention a rollback is one weight flip.
    r.deployer
        .control(handoff_controller::plan::Event::Rollback)
        .unwrap();
    assert_eq!(settle(&r.deployer, done).await, Status::RolledBack);
    let weights: Vec<(String, u32)> = r
        .deployer
        .fleet
        .proxy
        .table()
        .groups
        .iter()
        .map(|g| (g.name.to_string(), g.weight))
        .collect();
    assert_eq!(weights, [("blue".to_string(), 100)]);
    assert_eq!(
        r.store.current_revision("web").unwrap().as_deref(),
        Some("v1")
    );
    assert!(
        r.rt.calls()
            .ends_with(&["stop web-3".to_string(), "stop web-4".to_string()])
            || r.rt
                .calls()
                .ends_with(&["stop web-4".to_string(), "stop web-3".to_string()]),
        "{:?}",
        r.rt.calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_deployments_are_closed_at_boot() {
    let r = rig(2, "").await;
    // A record as a crash would leave it: running, mid-batch.
    let id = r
        .deployer
        .deploy(DeployRequest {
            revision: "v2".into(),
            strategy: Some(Strategy::InPlace),
            batch: Some(handoff_core::config::Amount::Count(1).into()),
            artifact: None,
            ..Default::default()
        })
        .await
        .unwrap();
    settle(&r.deployer, done).await;
    let mut rec = r.store.deployment(&id).unwrap().unwrap();
    let mut state: handoff_controller::plan::Deployment = serde_json::from_str(&rec.state).unwrap();
    state.status = Status::Running;
    rec.status = "running".into();
    rec.id = "web-9".into();
    state.id = "web-9".into();
    state.to = "v9".into();
    rec.state = serde_json::to_string(&state).unwrap();
    r.store
        .save_deployment(&rec, Some(("created", "deploying")))
        .unwrap();
    let closed = r.deployer.recover().unwrap();
    assert_eq!(closed, ["web-9"]);
    let after = r.store.deployment("web-9").unwrap().unwrap();
    assert_eq!(after.status, "rolled-back");
    let events = r.store.deployment_events("web-9").unwrap();
    assert!(
        events
            .last()
            .unwrap()
            .2
            .contains("interrupted by a restart of handoff"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_the_next_step_resume_continues_and_promote_skips_the_bake() {
    // Each batch holds a 300 ms health window: still running when the
    // pause arrives.
    let r = rig_with(2, "0s", "300ms", "").await;
    r.deployer
        .deploy(DeployRequest {
            revision: "v2".into(),
            strategy: Some(Strategy::InPlace),
            batch: Some(handoff_core::config::Amount::Count(1).into()),
            artifact: None,
            ..Default::default()
        })
        .await
        .unwrap();
    r.deployer
        .control(handoff_controller::plan::Event::Pause)
        .unwrap();
    // Paused: whatever step was running finishes, nothing more starts.
    settle(&r.deployer, |_| {
        r.deployer.current().is_some_and(|d| d.paused && d.held)
    })
    .await;
    let frozen = r.rt.calls();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.rt.calls(), frozen, "no step while paused");
    assert!(frozen.len() < 4, "{frozen:?}");
    r.deployer
        .control(handoff_controller::plan::Event::Resume)
        .unwrap();
    assert_eq!(settle(&r.deployer, done).await, Status::Succeeded);
    assert_eq!(r.rt.calls().len(), 4);

    // Blue/green with a long bake: promote cuts over at once.
    let r = rig_bake(2, "1h", "").await;
    r.deployer
        .deploy(DeployRequest {
            revision: "v2".into(),
            strategy: Some(Strategy::BlueGreen),
            batch: None,
            artifact: None,
            ..Default::default()
        })
        .await
        .unwrap();
    settle(&r.deployer, |_| {
        r.deployer
            .current()
            .is_some_and(|d| matches!(d.phase, handoff_controller::plan::Phase::Shifting { .. }))
    })
    .await;
    let t = std::time::Instant::now();
    r.deployer
        .control(handoff_controller::plan::Event::Promote)
        .unwrap();
    assert_eq!(
        settle(&r.deployer, |s| s == Status::Retained).await,
        Status::Retained
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "promote did not skip the 1h bake"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_at_once_is_a_warned_stop_everything_then_start_everything() {
    let r = rig(2, "").await;
    let id = r
        .deployer
        .deploy(DeployRequest {
            revision: "v2".into(),
            strategy: Some(Strategy::AllAtOnce),
            batch: None,
            artifact: None,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(settle(&r.deployer, done).await, Status::Succeeded);
    let calls = r.rt.calls();
    assert!(
        calls[..2].iter().all(|c| c.starts_with("stop"))
            && calls[2..].iter().all(|c| c.starts_with("start")),
        "{calls:?}"
    );
    let events = r.store.deployment_events(&id).unwrap();
    assert_eq!(events[1].1, "warning");
    assert!(events[1].2.contains("clients get 503"));
    let report: serde_json::Value =
        serde_json::from_str(&r.store.deployment(&id).unwrap().unwrap().report.unwrap()).unwrap();
    assert_eq!(
        report["capacity_floor"], 0,
        "the downtime is measured, not hidden"
    );
}

/// `secs` of synthetic load on the meter: `rate` req/s, `in_service`.
fn feed(
    d: &Deployer<FakeRuntime>,
    from_s: u64,
    secs: u64,
    rate: u64,
    in_service: usize,
    total: &mut u64,
) {
    for i in 0..=secs {
        if i > 0 {
            *total += rate;
        }
        d.meter.record(handoff_controller::load::Sample {
            at_ms: (from_s + i) * 1000,
            requests: *total,
            in_flight: 0,
            in_service,
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_batches_follow_the_load_and_wait_when_it_rises() {
    // 4 instances have carried 100 req/s each; 100 req/s now (+30 %) needs
    // 2, so the batch is 2. Each new instance stays 1 s (min_healthy_time).
    let r = rig_with(
        4,
        "0s",
        "1s",
        "[services.web.in_place]\nbatch = \"auto\"\nmin_healthy = 0\n",
    )
    .await;
    let mut total = 0;
    // A busy spell, then a minute and more of quiet: the load "now" is
    // the last minute's.
    feed(&r.deployer, 0, 10, 400, 4, &mut total);
    feed(&r.deployer, 100, 70, 100, 4, &mut total);
    let plans = r
        .deployer
        .plan(
            &DeployRequest {
                revision: "v2".into(),
                ..Default::default()
            },
            &[Strategy::InPlace],
        )
        .unwrap();
    assert_eq!(plans[0].batch_size, Some(2));
    let why = plans[0].batch_choice.clone().unwrap();
    assert!(why.starts_with("auto: 100 req/s"), "{why}");
    assert!(why.ends_with("→ batch 2 of 4"), "{why}");

    let id = r
        .deployer
        .deploy(DeployRequest {
            revision: "v2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The load triples: 2 out of 4 would leave too few for 300 req/s.
    feed(&r.deployer, 171, 70, 300, 4, &mut total);
    let events = |id: &str| -> Vec<(String, String)> {
        r.store
            .deployment_events(id)
            .unwrap()
            .into_iter()
            .map(|e| (e.1, e.2))
            .collect()
    };
    let mut waited = false;
    for _ in 0..300 {
        if events(&id).iter().any(|e| e.0 == "waiting") {
            waited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(waited, "{:?}", events(&id));
    let w = events(&id)
        .into_iter()
        .find(|e| e.0 == "waiting")
        .unwrap()
        .1;
    assert!(
        w.contains("300 req/s") && w.contains("would leave 2"),
        "{w}"
    );
    // While it waits, nothing more is stopped.
    let stops =
        r.rt.calls()
            .iter()
            .filter(|c| c.starts_with("stop"))
            .count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.deployer.current().unwrap().status, Status::Running);
    assert_eq!(
        r.rt.calls()
            .iter()
            .filter(|c| c.starts_with("stop"))
            .count(),
        stops
    );
    // The load falls back: the deployment goes on and finishes.
    feed(&r.deployer, 242, 70, 100, 4, &mut total);
    assert_eq!(settle(&r.deployer, done).await, Status::Succeeded);
    assert!(
        events(&id)
            .iter()
            .any(|e| e.0 == "load" && e.1.starts_with("load fell")),
        "{:?}",
        events(&id)
    );
    let rec = r.store.deployment(&id).unwrap().unwrap();
    let state: handoff_controller::plan::Deployment = serde_json::from_str(&rec.state).unwrap();
    assert_eq!(state.batches.len(), 2);
}
