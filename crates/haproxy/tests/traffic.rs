//! Requests through a real HAProxy while the client changes its backend:
//! a server added and checked takes traffic, weights change the split, a
//! drain waits for the request in flight and loses nothing.

mod common;

use std::time::{Duration, Instant};

use common::{Haproxy, Upstream};
use handoff_haproxy::{AddOptions, Error, Status};

const SECOND: Duration = Duration::from_secs(1);

fn checked() -> AddOptions {
    AddOptions {
        check: true,
        inter: Some(Duration::from_millis(100)),
        rise: Some(1),
        fall: Some(2),
        ..AddOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_server_comes_up_and_takes_traffic() {
    let Some(ha) = Haproxy::start("", "") else {
        return;
    };
    let client = ha.client().await;
    let (status, _) = ha.get("/").await.unwrap();
    assert_eq!(status, 503, "no server yet");

    let up = Upstream::start("a", SECOND).await;
    client
        .add_server("web", "handoff-a", up.addr, &checked())
        .await
        .unwrap();
    let took = client
        .wait_up("web", "handoff-a", 5 * SECOND)
        .await
        .unwrap();
    eprintln!("handoff-a UP after {took:?}");
    let a = client.server("web", "handoff-a").await.unwrap().unwrap();
    assert_eq!(a.status, Status::Up);
    assert_eq!(a.check_status.as_deref(), Some("L4OK"));
    assert_eq!(a.addr, Some(up.addr.to_string()));
    assert_eq!(a.weight, 1);

    assert_eq!(ha.get("/").await.unwrap(), (200, "a".to_string()));
    let counts = ha.split(20).await;
    assert_eq!(counts.get("a"), Some(&20));
    let a = client.server("web", "handoff-a").await.unwrap().unwrap();
    assert!(a.stot >= 21 && a.hrsp_2xx >= 21, "{a:?}");
    assert_eq!(a.hrsp_5xx, 0);

    // A server nobody listens behind never comes up: the error says why.
    let dead = common::free_port();
    let addr = format!("127.0.0.1:{dead}").parse().unwrap();
    client
        .add_server("web", "handoff-dead", addr, &checked())
        .await
        .unwrap();
    let err = client
        .wait_up("web", "handoff-dead", SECOND)
        .await
        .unwrap_err();
    match &err {
        Error::NotUp { status, check, .. } => {
            assert!(
                status.starts_with("DOWN") || status.starts_with("UP "),
                "{status}"
            );
            assert!(check.contains("L4CON"), "{check}");
        }
        other => panic!("expected NotUp, got {other:?}"),
    }
    eprintln!("{err}");
    // HAProxy sends it nothing once DOWN; all traffic still reaches a.
    let counts = ha.split(10).await;
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
    client
        .drain_and_delete("web", "handoff-dead", SECOND)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_change_the_split() {
    let Some(ha) = Haproxy::start("", "") else {
        return;
    };
    let client = ha.client().await;
    let a = Upstream::start("a", SECOND).await;
    let b = Upstream::start("b", SECOND).await;
    for (name, up, weight) in [("handoff-a", &a, 10), ("handoff-b", &b, 30)] {
        let opts = AddOptions {
            weight: Some(weight),
            ..checked()
        };
        client
            .add_server("web", name, up.addr, &opts)
            .await
            .unwrap();
        client.wait_up("web", name, 5 * SECOND).await.unwrap();
    }
    let share_of_b = |counts: &std::collections::BTreeMap<String, usize>| {
        let b = *counts.get("b").unwrap_or(&0) as f64;
        b / counts.values().sum::<usize>() as f64
    };
    let counts = ha.split(200).await;
    eprintln!("weights a=10 b=30: {counts:?}");
    assert!((0.65..=0.85).contains(&share_of_b(&counts)), "{counts:?}");

    client.set_weight("web", "handoff-a", 30).await.unwrap();
    client.set_weight("web", "handoff-b", 10).await.unwrap();
    let stats = client.servers("web").await.unwrap();
    let weight = |n: &str| stats.iter().find(|s| s.name == n).unwrap().weight;
    assert_eq!((weight("handoff-a"), weight("handoff-b")), (30, 10));
    let counts = ha.split(200).await;
    eprintln!("weights a=30 b=10: {counts:?}");
    assert!((0.15..=0.35).contains(&share_of_b(&counts)), "{counts:?}");

    // Weight 0 takes a server out of the rotation (the blue/green flip).
    client.set_weight("web", "handoff-b", 0).await.unwrap();
    let counts = ha.split(50).await;
    assert_eq!(counts.get("a"), Some(&50), "{counts:?}");

    let err = client
        .set_weight("web", "handoff-a", 257)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_the_request_in_flight() {
    let Some(ha) = Haproxy::start("", "") else {
        return;
    };
    let client = ha.client().await;
    let slow = Duration::from_millis(1500);
    let a = Upstream::start("a", slow).await;
    let b = Upstream::start("b", slow).await;
    for (name, up) in [("handoff-a", &a), ("handoff-b", &b)] {
        client
            .add_server("web", name, up.addr, &checked())
            .await
            .unwrap();
        client.wait_up("web", name, 5 * SECOND).await.unwrap();
    }

    // A slow request goes to one of them; drain that one.
    let started = Instant::now();
    let in_flight = {
        let port = ha.port;
        tokio::task::spawn_blocking(move || common::http_get(port, "/slow"))
    };
    let busy = loop {
        let servers = client.servers("web").await.unwrap();
        if let Some(s) = servers.into_iter().find(|s| s.scur >= 1) {
            break s;
        }
        assert!(
            started.elapsed() < SECOND,
            "the slow request never showed in scur"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (drained, other) = if busy.name == "handoff-a" {
        ("handoff-a", "b")
    } else {
        ("handoff-b", "a")
    };
    assert_eq!(busy.scur, 1);

    let draining = {
        let client = client.clone();
        tokio::spawn(async move { client.drain_and_delete("web", drained, 10 * SECOND).await })
    };
    // While it drains: DRAIN, the session still counted, new requests go to
    // the other server and all succeed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = client.server("web", drained).await.unwrap().unwrap();
    assert_eq!((s.status.clone(), s.scur), (Status::Drain, 1), "{s:?}");
    let counts = ha.split(20).await;
    assert_eq!(counts.get(other), Some(&20), "{counts:?}");

    let report = draining.await.unwrap().unwrap();
    let answered = in_flight.await.unwrap().unwrap();
    eprintln!(
        "drain of {drained}: waited {:?} (request took {:?}), timed out: {}",
        report.waited,
        started.elapsed(),
        report.timed_out
    );
    assert_eq!(answered.0, 200, "{answered:?}");
    assert_eq!(answered.1, if drained == "handoff-a" { "a" } else { "b" });
    assert!(!report.timed_out && report.cut == 0, "{report:?}");
    assert!(report.waited >= Duration::from_millis(800), "{report:?}");
    assert!(report.waited < slow + SECOND, "{report:?}");
    let names: Vec<String> = client
        .servers("web")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec![format!("handoff-{other}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cuts_what_is_left() {
    let Some(ha) = Haproxy::start("", "") else {
        return;
    };
    let client = ha.client().await;
    let a = Upstream::start("a", 5 * SECOND).await;
    client
        .add_server("web", "handoff-a", a.addr, &checked())
        .await
        .unwrap();
    client
        .wait_up("web", "handoff-a", 5 * SECOND)
        .await
        .unwrap();
    let in_flight = {
        let port = ha.port;
        tokio::task::spawn_blocking(move || common::http_get(port, "/slow"))
    };
    let deadline = Instant::now() + SECOND;
    while client
        .server("web", "handoff-a")
        .await
        .unwrap()
        .unwrap()
        .scur
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the slow request never showed in scur"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    let report = client
        .drain_and_delete("web", "handoff-a", Duration::from_millis(300))
        .await
        .unwrap();
    eprintln!(
        "drain with a 300 ms timeout: {report:?} in {:?}",
        start.elapsed()
    );
    assert!(report.timed_out && report.cut == 1, "{report:?}");
    assert!(start.elapsed() < 3 * SECOND);
    assert_eq!(client.servers("web").await.unwrap(), vec![]);
    // The cut request does not get the upstream's answer.
    let cut = in_flight.await.unwrap();
    eprintln!("the cut request got: {cut:?}");
    // HAProxy answers it 502 (or, at worst, closes the connection).
    assert!(matches!(cut, Ok((502, _)) | Err(_)), "{cut:?}");
}
