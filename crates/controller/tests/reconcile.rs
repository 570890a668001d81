//! Supervision and the reconciler against a fake runtime that records every
//! call (its processes "die" when a test says so), the real proxy control
//! handle and a real in-memory store: an instance is replaced however
//! often it dies, a deliberate stop wins over a pending restart, and the
//! reconciler mends drift (with events) but never while a deployment runs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::FakeRuntime;
use handoff_controller::executor::{DeployRequest, Deployer};
use handoff_controller::plan::{Status, Strategy};
use handoff_controller::{Fleet, FleetOptions};
use handoff_proxy::Proxy;
use handoff_runtime::{InstanceSpec, Runtime};
use handoff_store::{InstanceRecord, Store};

struct Rig {
    rt: Arc<FakeRuntime>,
    store: Arc<Store>,
    fleet: Arc<Fleet<FakeRuntime>>,
    _proxy: Proxy,
}

/// Three instances of v1, booted; health checks off (an instance is
/// healthy once released), so only exits and the reconciler matter.
async fn rig() -> Rig {
    let text = "[services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"v1\"\ninstances = 3\ncommand = \"fake {port}\"\n\
                [services.web.health]\nenabled = false\nmin_healthy_time = \"0s\"\n\
                [services.web.blue_green]\ntraffic_steps = [50]\nbake = \"0s\"\nretention = \"100ms\"\n";
    let cfg = handoff_core::config::parse(Path::new("/tmp/handoff.toml"), text).unwrap();
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
    assert_eq!(
        fleet.reconcile().await,
        Some(0),
        "a fresh boot is as desired"
    );
    rt.calls.lock().unwrap().clear();
    Rig {
        rt,
        store,
        fleet,
        _proxy: proxy,
    }
}

impl Rig {
    fn pid(&self, name: &str) -> Option<u32> {
        self.fleet
            .instances()
            .into_iter()
            .find(|i| i.name == name)
            .and_then(|i| i.pid)
    }

    fn names(&self) -> Vec<String> {
        self.fleet.instances().into_iter().map(|i| i.name).collect()
    }

    /// Fleet events of `kind`, oldest first.
    fn events(&self, kind: &str) -> Vec<String> {
        let mut v: Vec<_> = self
            .store
            .events("web", 500)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect();
        v.sort_by_key(|e| e.id);
        v.into_iter().map(|e| e.message).collect()
    }

    /// Waits (up to `limit`) for `name` to run as a live process other
    /// than `old`, in service; returns its pid.
    async fn replaced(&self, name: &str, old: u32, limit: Duration) -> u32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(p) = self.pid(name).filter(|p| *p != old) {
                if self.rt.procs.lock().unwrap().contains_key(&p) && self.fleet.in_service() == 3 {
                    return p;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{name} (pid {old}) not replaced within {limit:?}; calls {:?}",
                self.rt.calls()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls `f` until true or the deadline passes.
async fn until(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_twice_is_replaced_both_times() {
    let r = rig().await;
    let first = r.pid("web-2").unwrap();
    r.rt.kill(first);
    let second = r.replaced("web-2", first, Duration::from_secs(5)).await;
    // The replacement, killed in turn: supervised like the first (it was
    // not, when the restart task kept itself as the slot's watcher).
    r.rt.kill(second);
    let third = r.replaced("web-2", second, Duration::from_secs(8)).await;
    assert_ne!(third, first);
    assert_eq!(
        r.events("restart-scheduled"),
        ["restart #1 in 1s", "restart #2 in 2s"],
        "back-off grows with consecutive failures"
    );
    assert_eq!(r.events("reconcile"), Vec::<String>::new());
    assert_eq!(r.fleet.reconcile().await, Some(0), "nothing left to mend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliberate_stop_wins_over_a_pending_restart() {
    let r = rig().await;
    let pid = r.pid("web-1").unwrap();
    r.rt.kill(pid);
    until("restart scheduled", Duration::from_secs(2), || {
        !r.events("restart-scheduled").is_empty()
    })
    .await;
    r.fleet.stop(&["web-1".to_string()], false).await;
    // The back-off (1 s) passes: the restart must not happen. (A negative
    // can only be watched for a while; twice the back-off is enough.)
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        assert!(
            !r.rt.calls().iter().any(|c| c.starts_with("start web-1")),
            "restarted after a deliberate stop: {:?}",
            r.rt.calls()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(r.pid("web-1"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_instances_are_stopped_with_events() {
    let r = rig().await;
    let live = r.fleet.live_group();
    // One more of the right revision, and one of another revision.
    r.fleet
        .start(&["web-4".to_string()], "v1", &live, false)
        .await
        .unwrap();
    r.fleet
        .start(&["web-5".to_string()], "v0", &live, false)
        .await
        .unwrap();
    r.rt.calls.lock().unwrap().clear();
    assert_eq!(r.fleet.reconcile().await, Some(2));
    let mut calls = r.rt.calls();
    calls.sort();
    assert_eq!(calls, ["stop web-4", "stop web-5"]);
    assert_eq!(r.names(), ["web-1", "web-2", "web-3"]);
    let ev = r.events("reconcile");
    assert!(
        ev.iter()
            .any(|m| m.contains("web-4 (v1 in group blue) is not part of the desired 3 × v1")),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|m| m.contains("web-5 (v0 in group blue)")),
        "{ev:?}"
    );
    let records: Vec<String> = r
        .store
        .instances("web")
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(records, ["web-1", "web-2", "web-3"]);
    assert_eq!(r.fleet.reconcile().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_instance_is_started_and_supervised() {
    let r = rig().await;
    r.fleet.stop(&["web-2".to_string()], true).await;
    r.rt.calls.lock().unwrap().clear();
    assert_eq!(r.fleet.reconcile().await, Some(1));
    assert_eq!(r.rt.calls(), ["start web-4 v1"]);
    assert_eq!(r.names(), ["web-1", "web-3", "web-4"]);
    assert!(
        r.events("reconcile")
            .iter()
            .any(|m| m == "2 of the desired 3 × v1 in group blue run; starting web-4"),
        "{:?}",
        r.events("reconcile")
    );
    // Supervised from the start: a kill is repaired without the reconciler.
    let pid = r.pid("web-4").unwrap();
    r.rt.kill(pid);
    r.replaced("web-4", pid, Duration::from_secs(5)).await;
    assert_eq!(r.events("reconcile").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_left_over_outside_a_deployment_are_set_back() {
    let r = rig().await;
    // As a flip cut short would leave them: green half in, blue half out.
    r.fleet
        .proxy
        .set_weights(&[("blue", 50), ("green", 50)])
        .unwrap();
    assert_eq!(r.fleet.reconcile().await, Some(1));
    let table = r.fleet.proxy.table();
    for g in table.groups.iter() {
        let want = if &*g.name == "blue" { 100 } else { 0 };
        assert_eq!(g.weight, want, "group {}", g.name);
    }
    assert!(table.groups.iter().any(|g| &*g.name == "blue"));
    assert!(
        r.events("reconcile")
            .iter()
            .any(|m| m.contains("blue at 50, green at 50")),
        "{:?}",
        r.events("reconcile")
    );
    assert_eq!(r.fleet.reconcile().await, Some(0), "nothing left to mend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_unwatched_instance_is_restarted() {
    let r = rig().await;
    // Drained (so unsupervised, as mid-deployment) and then dead: nothing
    // would ever bring it back but the reconciler.
    r.fleet.drain(&["web-3".to_string()]).await;
    let pid = r.pid("web-3").unwrap();
    r.rt.kill(pid);
    assert_eq!(r.fleet.reconcile().await, Some(1));
    let ev = r.events("reconcile");
    assert_eq!(
        ev,
        [format!(
            "web-3 (pid {pid}) was not supervised; supervising it (restarted if dead)"
        )]
    );
    r.replaced("web-3", pid, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unowned_processes_and_orphan_records_are_stopped() {
    let r = rig().await;
    // A process marked as ours that no instance owns (handoff died before
    // recording it), and a record whose instance the fleet does not have.
    let stray =
        r.rt.spawn(&InstanceSpec {
            host: None,
            service: "web".into(),
            instance: "web-8".into(),
            revision: "v1".into(),
            port: 1,
            command: "fake".into(),
            release_dir: PathBuf::from("/tmp"),
        })
        .await
        .unwrap();
    let orphan =
        r.rt.spawn(&InstanceSpec {
            host: None,
            service: "web".into(),
            instance: "web-7".into(),
            revision: "v1".into(),
            port: 2,
            command: "fake".into(),
            release_dir: PathBuf::from("/tmp"),
        })
        .await
        .unwrap();
    r.store
        .put_instance(&InstanceRecord {
            service: "web".into(),
            name: "web-7".into(),
            revision: "v1".into(),
            port: 2,
            pid: orphan.pid,
            start_time: orphan.start_time,
            status: "running".into(),
            restarts: 0,
            group: "blue".into(),
            host: String::new(),
            address: String::new(),
        })
        .unwrap();
    // Another service's processes are not this fleet's business.
    let other =
        r.rt.spawn(&InstanceSpec {
            host: None,
            service: "api".into(),
            instance: "api-1".into(),
            revision: "v1".into(),
            port: 3,
            command: "fake".into(),
            release_dir: PathBuf::from("/tmp"),
        })
        .await
        .unwrap();
    r.rt.calls.lock().unwrap().clear();
    assert_eq!(r.fleet.reconcile().await, Some(2));
    let mut calls = r.rt.calls();
    calls.sort();
    assert_eq!(calls, ["stop web-7", "stop web-8"]);
    assert!(!r.rt.is_alive(&stray) && !r.rt.is_alive(&orphan));
    assert!(r.rt.is_alive(&other));
    assert_eq!(r.store.instances("web").unwrap().len(), 3);
    let ev = r.events("reconcile");
    assert!(ev.iter().any(|m| m.contains("record of web-7")), "{ev:?}");
    assert!(
        ev.iter()
            .any(|m| m.contains(&format!("pid {} is marked as web-8", stray.pid))),
        "{ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_mended_while_a_deployment_holds_the_fleet() {
    let r = rig().await;
    let guard = r.fleet.deployment_guard().await;
    assert!(r.fleet.deploying());
    r.fleet.stop(&["web-2".to_string()], true).await;
    r.rt.calls.lock().unwrap().clear();
    assert_eq!(r.fleet.reconcile().await, None, "it did not even look");
    assert!(r.rt.calls().is_empty());
    assert!(r.events("reconcile").is_empty());
    // The deployment ends: the fleet is mended at once.
    drop(guard);
    until(
        "the missing instance started",
        Duration::from_secs(5),
        || r.names().len() == 3 && r.fleet.in_service() == 3,
    )
    .await;
    assert_eq!(r.rt.calls(), ["start web-4 v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_leave_nothing_to_mend_and_are_not_fought() {
    let r = rig().await;
    let deployer = Deployer::new(r.fleet.clone());
    for (revision, strategy) in [("v2", Strategy::InPlace), ("v3", Strategy::BlueGreen)] {
        deployer
            .deploy(DeployRequest {
                revision: revision.into(),
                strategy: Some(strategy),
                ..Default::default()
            })
            .await
            .unwrap();
        // Mid-deployment (both revisions run): the reconciler keeps off.
        assert_eq!(r.fleet.reconcile().await, None);
        until(
            &format!("the deployment to {revision} ends"),
            Duration::from_secs(10),
            || deployer.current().is_some_and(|d| !d.status.is_active()),
        )
        .await;
        assert_eq!(deployer.current().unwrap().status, Status::Succeeded);
        until(
            "the deployment's guard dropped",
            Duration::from_secs(5),
            || !r.fleet.deploying(),
        )
        .await;
        assert_eq!(r.fleet.reconcile().await, Some(0), "after {revision}");
        assert_eq!(r.fleet.current_revision(), revision);
    }
    assert_eq!(r.events("reconcile"), Vec::<String>::new());
    assert_eq!(r.fleet.in_service(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_fleet_restarts_nothing_and_reopened_mends() {
    let r = rig().await;
    let pid = r.pid("web-3").unwrap();
    r.rt.kill(pid);
    until("restart scheduled", Duration::from_secs(2), || {
        !r.events("restart-scheduled").is_empty()
    })
    .await;
    // Handed to another daemon while the restart waits its back-off
    // (1 s): it must not fire here, nor must the reconciler start one.
    r.fleet.close().await;
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        assert!(
            !r.rt.calls().iter().any(|c| c.starts_with("start web-3")),
            "a closed fleet started an instance: {:?}",
            r.rt.calls()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        r.fleet.reconcile().await,
        None,
        "a closed fleet does not look"
    );
    // The hand-over failed: the fleet is this daemon's again and mends.
    r.fleet.reopen();
    assert_eq!(r.fleet.reconcile().await, Some(1));
    until("web-3 back", Duration::from_secs(5), || {
        r.pid("web-3").is_some()
    })
    .await;
}
