//! Routing, balancing, health and retries through a real proxy.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use handoff_core::config::Balance;
use handoff_core::TargetState;
use tokio::io::AsyncReadExt;

async fn tally(addr: std::net::SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut c = Client::connect(addr).await;
    let mut m = HashMap::new();
    for _ in 0..n {
        let (s, body) = c.get("/").await.unwrap();
        assert_eq!(s, 200, "{body}");
        *m.entry(body).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let ups = [
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    ];
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, health(50))).await;
    for u in &ups {
        p.add_default(u);
    }
    p.wait_healthy(3).await;
    let m = tally(p.addr, 300).await;
    for u in &ups {
        assert_eq!(m[&u.name], 100, "{m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_uses_every_target() {
    let ups = [upstream("a").await, upstream("b").await];
    let p = TestProxy::start(service_cfg(Balance::LeastOutstanding, health(50))).await;
    for u in &ups {
        p.add_default(u);
    }
    p.wait_healthy(2).await;
    let m = tally(p.addr, 400).await;
    // Sequential requests tie on in-flight, so the pick is random: each
    // side gets 200 ± a wide margin (p < 1e-9 of falling outside).
    for u in &ups {
        assert!((130..=270).contains(&m[&u.name]), "{m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic_between_groups() {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, health(50))).await;
    p.add("blue", &blue);
    p.add("green", &green);
    p.svc
        .set_weights(&[("default", 0), ("blue", 80), ("green", 20)])
        .unwrap();
    p.wait_healthy(2).await;
    let m = tally(p.addr, 1000).await;
    // Binomial(1000, 0.2): sd ≈ 12.6; ±60 is > 4.7 sd.
    let g = m.get("green").copied().unwrap_or(0);
    assert!((140..=260).contains(&g), "{m:?}");
    p.svc.set_weights(&[("blue", 0), ("green", 100)]).unwrap();
    let m = tally(p.addr, 50).await;
    assert_eq!(m.get("green"), Some(&50), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_no_healthy_target_sheds_its_share() {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    green.healthy.store(false, Relaxed);
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, health(50))).await;
    p.add("blue", &blue);
    p.add("green", &green);
    p.svc
        .set_weights(&[("default", 0), ("blue", 50), ("green", 50)])
        .unwrap();
    p.wait_healthy(1).await;
    let m = tally(p.addr, 100).await;
    assert_eq!(m.get("blue"), Some(&100), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_thresholds_gate_traffic_both_ways() {
    let a = upstream("a").await;
    let mut cfg = service_cfg(Balance::RoundRobin, health(50));
    cfg.health.healthy_threshold = 3;
    cfg.health.unhealthy_threshold = 2;
    let p = TestProxy::start(cfg).await;
    let mut events = p.svc.subscribe();
    a.healthy.store(false, Relaxed);
    let id = p.add_default(&a);
    // Initial, failing checks: no traffic, a clear 503.
    let (s, body) = get(p.addr, "/").await.unwrap();
    assert_eq!(s, 503);
    assert!(body.contains("has no healthy target"), "{body}");
    assert_eq!(a.hits.load(Relaxed), 0);
    let t = p.svc.target(id).unwrap();
    wait_for("unhealthy", Duration::from_secs(5), || {
        t.state() == TargetState::Unhealthy
    })
    .await;
    a.healthy.store(true, Relaxed);
    p.wait_healthy(1).await;
    assert_eq!(get(p.addr, "/").await.unwrap().1, "a");
    a.healthy.store(false, Relaxed);
    wait_for("unhealthy again", Duration::from_secs(5), || {
        t.state() == TargetState::Unhealthy
    })
    .await;
    // The exact sequence of transitions, with thresholds in the reasons.
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push((e.from, e.to, e.reason));
    }
    use TargetState::*;
    assert_eq!(
        seen.iter().map(|(f, t, _)| (*f, *t)).collect::<Vec<_>>(),
        vec![
            (Initial, Unhealthy),
            (Unhealthy, Healthy),
            (Healthy, Unhealthy)
        ]
    );
    assert!(seen[1].2.contains("3 health checks passed"), "{seen:?}");
    assert!(seen[2].2.contains("2 health checks failed"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_on_another_target() {
    let a = upstream("a").await;
    // A port with nothing listening: bind, note, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut h = health(50);
    h.enabled = false; // both count as healthy: the retry must save us
    h.passive_failures = 1000;
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, h)).await;
    p.add_default(&a);
    p.svc
        .add_target(
            "default",
            handoff_proxy::TargetSpec {
                addr: dead,
                revision: "x".into(),
                name: "dead".into(),
                hold: false,
            },
        )
        .unwrap();
    let m = tally(p.addr, 50).await;
    assert_eq!(m.get("a"), Some(&50), "{m:?}");
    assert!(p.svc.stats.retries.load(Relaxed) >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_checks_eject_a_failing_target() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let mut h = health(50);
    h.ejection_time = Duration::from_secs(30);
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, h)).await;
    p.add_default(&a);
    let bid = p.add_default(&b);
    p.wait_healthy(2).await;
    b.fail.store(true, Relaxed);
    let mut c = Client::connect(p.addr).await;
    let mut fails = 0;
    for _ in 0..40 {
        if c.get("/").await.unwrap().0 == 500 {
            fails += 1;
        }
    }
    // 3 failures in a row eject b; /healthz still passes but the ejection
    // holds it out for its back-off.
    assert_eq!(fails, 3);
    assert_eq!(p.svc.target(bid).unwrap().state(), TargetState::Unhealthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeout_is_504_with_a_clear_body() {
    let a = upstream("a").await;
    let mut cfg = service_cfg(Balance::RoundRobin, health(50));
    cfg.proxy.response_timeout = Duration::from_millis(200);
    let p = TestProxy::start(cfg).await;
    p.add_default(&a);
    p.wait_healthy(1).await;
    let (s, body) = get(p.addr, "/sleep?ms=2000").await.unwrap();
    assert_eq!(s, 504);
    assert!(body.contains("did not answer within 200ms"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_are_set_and_hop_by_hop_removed() {
    let a = upstream("a").await;
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, health(50))).await;
    p.add_default(&a);
    p.wait_healthy(1).await;
    let mut c = Client::connect(p.addr).await;
    let req = http::Request::get("/headers?x=1")
        .header("host", "app.example")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .unwrap();
    let (_, h) = c.request(req).await.unwrap();
    assert!(h.contains("host: app.example\n"), "{h}");
    assert!(h.contains("x-forwarded-for: 10.1.2.3, 127.0.0.1\n"), "{h}");
    assert!(h.contains("x-forwarded-proto: http\n"), "{h}");
    assert!(h.contains("x-forwarded-host: app.example\n"), "{h}");
    assert!(h.contains("uri: /headers?x=1\n"), "{h}");
    assert!(!h.contains("x-secret"), "{h}");
    assert!(!h.contains("keep-alive"), "{h}");
}

/// A port nobody listens on (bound, then released).
fn closed_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_starts_listening_late_is_probed_at_once_not_after_an_interval() {
    // An app needs a moment to bind its port after its process starts. The
    // refused probes of that moment are not failures, and the next probe
    // comes soon: healthy long before one 3 s interval.
    let mut h = health(3000);
    h.healthy_threshold = 1;
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, h)).await;
    let mut events = p.svc.subscribe();
    let addr = closed_port();
    let id = p.add_at(addr, "late");
    let t = p.svc.target(id).unwrap();
    // The scenario, not a synchronisation: the app binds 200 ms late.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.state(), TargetState::Initial);
    let _app = upstream_on("late", addr).await;
    let listening = std::time::Instant::now();
    wait_for("healthy", Duration::from_secs(10), || {
        t.state() == TargetState::Healthy
    })
    .await;
    let took = listening.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "healthy {took:?} after listening"
    );
    let seen: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| (e.from, e.to))
        .collect();
    assert_eq!(seen, vec![(TargetState::Initial, TargetState::Healthy)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_listens_is_still_reported_unhealthy() {
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, health(50))).await;
    let id = p.add_at(closed_port(), "late");
    let t = p.svc.target(id).unwrap();
    wait_for("unhealthy", Duration::from_secs(5), || {
        t.state() == TargetState::Unhealthy
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_never_takes_out_more_than_max_ejection_percent() {
    // Every target fails (a shared dependency is down): ejecting them all
    // would turn the app's own answers into handoff's 503 for everyone.
    let ups = [
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
        upstream("d").await,
    ];
    let mut h = health(50);
    h.ejection_time = Duration::from_secs(30);
    h.max_ejection_time = Duration::from_secs(60);
    h.max_ejection_percent = 50;
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, h)).await;
    for u in &ups {
        p.add_default(u);
    }
    p.wait_healthy(4).await;
    for u in &ups {
        u.fail.store(true, Relaxed);
    }
    let mut c = Client::connect(p.addr).await;
    for _ in 0..100 {
        let _ = c.get("/").await;
    }
    let out = p
        .svc
        .table()
        .targets()
        .filter(|(_, t)| t.state() == TargetState::Unhealthy)
        .count();
    assert_eq!(out, 2, "half of 4 at the most");
    // The other two still answer: their 500s are relayed, no 503.
    for _ in 0..10 {
        assert_eq!(c.get("/").await.unwrap().0, 500);
    }
    assert!(p.svc.stats.ejections_limited.load(Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_request_total_keeps_what_removed_targets_answered() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, health(50))).await;
    let aid = p.add_default(&a);
    p.add_default(&b);
    p.wait_healthy(2).await;
    // An answer is counted once its last byte is written: the client may
    // have read it a moment before.
    let svc = p.svc.clone();
    tally(p.addr, 20).await;
    wait_for("20 counted", Duration::from_secs(5), || {
        svc.requests_total() == 20
    })
    .await;
    p.svc.remove(aid, Duration::from_secs(1)).await.unwrap();
    assert_eq!(p.svc.requests_total(), 20, "a's answers went with it");
    tally(p.addr, 5).await;
    wait_for("25 counted", Duration::from_secs(5), || {
        svc.requests_total() == 25
    })
    .await;
    assert_eq!(p.svc.requests_total(), 25);
}

/// A request waiting on a target whose host is lost stops waiting and,
/// being idempotent, goes to another target: on both paths (the fast path
/// sees the loss at its connection timer's next tick, within 250 ms; hyper's
/// at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_on_a_lost_host_goes_to_another_target() {
    for fast_path in [true, false] {
        let a = upstream("a").await;
        let b = upstream("b").await;
        let mut cfg = service_cfg(Balance::RoundRobin, health(50));
        cfg.proxy.fast_path = fast_path;
        cfg.proxy.response_timeout = Duration::from_secs(20);
        let p = TestProxy::start(cfg).await;
        let aid = p.add_default(&a);
        let bid = p.add_default(&b);
        p.wait_healthy(2).await;
        // The target it lands on would answer after 3 s: long after its
        // host is lost.
        let addr = p.addr;
        let started = std::time::Instant::now();
        let req = tokio::spawn(async move { get(addr, "/sleep?ms=3000").await });
        wait_for("the request on a target", Duration::from_secs(10), || {
            a.hits.load(Relaxed) + b.hits.load(Relaxed) == 1
        })
        .await;
        let (lost, other) = if a.hits.load(Relaxed) == 1 {
            (aid, "b")
        } else {
            (bid, "a")
        };
        p.svc.abandon(lost, "test: its host stopped answering");
        let (status, body) = req.await.unwrap().unwrap();
        assert_eq!(
            (
                status.as_u16(),
                body.as_str(),
                a.hits.load(Relaxed) + b.hits.load(Relaxed)
            ),
            (200, other, 2),
            "fast_path = {fast_path}: answered by {other}, after {:?}",
            started.elapsed()
        );
    }
}

/// The same with a `response_timeout` shorter than the fast path's timer
/// tick, on a target that never answers: the loss is seen when the wait
/// ends, and the request goes to another target instead of a 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_host_is_seen_even_when_response_timeout_is_shorter_than_a_tick() {
    for fast_path in [true, false] {
        // Takes requests and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let got = Arc::new(AtomicU64::new(0));
        let g = got.clone();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            loop {
                let (mut s, _) = silent.accept().await.unwrap();
                let g = g.clone();
                conns.push(tokio::spawn(async move {
                    let mut b = [0u8; 4096];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 {
                            break;
                        }
                        g.fetch_add(1, Relaxed);
                    }
                }));
            }
        });
        let b = upstream("b").await;
        let mut h = health(50);
        h.enabled = false; // the silent one counts as healthy
        h.passive_failures = 1000;
        let mut cfg = service_cfg(Balance::RoundRobin, h);
        cfg.proxy.fast_path = fast_path;
        cfg.proxy.response_timeout = Duration::from_millis(200);
        let p = TestProxy::start(cfg).await;
        let sid = p.add_at(silent_addr, "silent");
        p.add_default(&b);
        // Round robin: within two requests one lands on the silent target.
        let mut answer = None;
        for _ in 0..4 {
            let addr = p.addr;
            let req = tokio::spawn(async move { get(addr, "/sleep?ms=1").await });
            let before = b.hits.load(Relaxed);
            wait_for("the request on a target", Duration::from_secs(10), || {
                got.load(Relaxed) > 0 || b.hits.load(Relaxed) > before
            })
            .await;
            if got.load(Relaxed) > 0 {
                p.svc.abandon(sid, "test: its host stopped answering");
                answer = Some(req.await.unwrap().unwrap());
                break;
            }
            req.await.unwrap().unwrap();
        }
        let (status, body) = answer.expect("a request reached the silent target");
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "b"),
            "fast_path = {fast_path}"
        );
        held.abort();
    }
}
