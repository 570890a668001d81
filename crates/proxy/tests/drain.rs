//! Draining under load: no failed request, no request after the drain, idle
//! upstream connections closed, timeouts reported and tunnels cut.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use handoff_core::config::Balance;
use handoff_core::TargetState;
use handoff_proxy::DrainOutcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_concurrent_load_fails_no_request() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let p = TestProxy::start(service_cfg(Balance::LeastOutstanding, health(50))).await;
    let aid = p.add_default(&a);
    p.add_default(&b);
    p.wait_healthy(2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (stop, ok, errors, addr) = (stop.clone(), ok.clone(), errors.clone(), p.addr);
        clients.push(tokio::spawn(async move {
            // One keep-alive connection per client for the whole run: a
            // drain must never cut a client connection.
            let mut c = Client::connect(addr).await;
            let deadline = Instant::now() + Duration::from_secs(20);
            for _ in 0..2000 {
                if stop.load(Relaxed) || Instant::now() > deadline {
                    break;
                }
                match c.get("/sleep?ms=5").await {
                    Ok((s, _)) if s == 200 => {
                        ok.fetch_add(1, Relaxed);
                    }
                    Ok((s, body)) => errors.lock().unwrap().push(format!("{s}: {body}")),
                    Err(e) => errors.lock().unwrap().push(e),
                }
            }
        }));
    }
    wait_for("load on a", Duration::from_secs(10), || {
        a.hits.load(Relaxed) >= 50
    })
    .await;
    let t = p.svc.target(aid).unwrap();
    let started = Instant::now();
    let out = p.svc.drain(aid, Duration::from_secs(5)).await.unwrap();
    let drain_took = started.elapsed();
    let a_after_drain = a.hits.load(Relaxed);
    assert!(matches!(out, DrainOutcome::Drained { .. }), "{out:?}");
    assert_eq!(t.state(), TargetState::Unused);
    assert_eq!(t.in_flight(), 0);
    assert_eq!(
        t.idle_connections(),
        0,
        "drain must close idle pooled connections"
    );
    // Keep the load on b for a while after the drain.
    let b_at_drain = b.hits.load(Relaxed);
    wait_for("load on b after drain", Duration::from_secs(10), || {
        b.hits.load(Relaxed) >= b_at_drain + 200
    })
    .await;
    stop.store(true, Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} failed requests: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(
        a.hits.load(Relaxed),
        a_after_drain,
        "a got requests after its drain finished"
    );
    eprintln!(
        "drain waited {drain_took:?}; {} ok requests, 0 failed",
        ok.load(Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_in_flight_and_reports_a_timeout() {
    let a = upstream("a").await;
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, health(50))).await;
    let aid = p.add_default(&a);
    p.wait_healthy(1).await;
    let addr = p.addr;
    let slow = tokio::spawn(async move { get(addr, "/sleep?ms=600").await });
    let t = p.svc.target(aid).unwrap();
    wait_for("request in flight", Duration::from_secs(5), || {
        t.in_flight() == 1
    })
    .await;
    // Short timeout: reported as timed out with 1 in flight.
    let out = p.svc.drain(aid, Duration::from_millis(100)).await.unwrap();
    assert_eq!(out, DrainOutcome::TimedOut { in_flight: 1 });
    // The request itself still completes: a drain timeout never cuts a
    // plain request, only upgraded tunnels.
    let (s, body) = slow.await.unwrap().unwrap();
    assert_eq!((s.as_u16(), body.as_str()), (200, "a"));
    // New requests get a 503, not the drained target.
    assert_eq!(get(addr, "/").await.unwrap().0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_a_request_that_finishes_in_time() {
    let a = upstream("a").await;
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, health(50))).await;
    let aid = p.add_default(&a);
    p.wait_healthy(1).await;
    let addr = p.addr;
    let slow = tokio::spawn(async move { get(addr, "/sleep?ms=300").await });
    let t = p.svc.target(aid).unwrap();
    wait_for("request in flight", Duration::from_secs(5), || {
        t.in_flight() == 1
    })
    .await;
    let out = p.svc.drain(aid, Duration::from_secs(5)).await.unwrap();
    match out {
        DrainOutcome::Drained { waited } => {
            assert!(waited >= Duration::from_millis(100), "{waited:?}")
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(slow.await.unwrap().unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cuts_upgraded_tunnels() {
    let a = upstream("a").await;
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, health(50))).await;
    let aid = p.add_default(&a);
    p.wait_healthy(1).await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    let t = p.svc.target(aid).unwrap();
    assert_eq!(t.in_flight(), 1, "an open tunnel counts as in flight");
    let out = p.svc.drain(aid, Duration::from_millis(100)).await.unwrap();
    assert_eq!(out, DrainOutcome::TimedOut { in_flight: 1 });
    // The tunnel was cut: the client sees EOF.
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    wait_for("tunnel released", Duration::from_secs(5), || {
        t.in_flight() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_drains_first_and_keeps_others_serving() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, health(50))).await;
    let aid = p.add_default(&a);
    p.add_default(&b);
    p.wait_healthy(2).await;
    let out = p.svc.remove(aid, Duration::from_secs(1)).await.unwrap();
    assert!(matches!(out, DrainOutcome::Drained { .. }));
    assert!(p.svc.target(aid).is_err());
    let mut c = Client::connect(p.addr).await;
    for _ in 0..10 {
        assert_eq!(c.get("/").await.unwrap().1, "b");
    }
}
