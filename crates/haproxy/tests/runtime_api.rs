//! The runtime-API client against a real HAProxy: version and level checks,
//! the typed refusals, and ownership. Traffic, weights and draining are in
//! `traffic.rs`.

mod common;

use std::time::Duration;

use common::{Haproxy, Upstream};
use handoff_haproxy::{AddOptions, Client, Error, Ownership, Socket, State, Status};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_admin_level_are_checked() {
    let Some(ha) = Haproxy::start("", "") else {
        return;
    };
    let client = ha.client().await;
    let v = client.version();
    assert!(v.at_least(2, 4), "{v}");
    let installed = std::process::Command::new("haproxy").arg("-v").output();
    if let Ok(out) = installed {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&v.to_string()), "{text} vs {v}");
    }

    // The same over the TCP socket, given as host:port.
    let tcp: Socket = ha.tcp_admin.parse().unwrap();
    assert!(matches!(tcp, Socket::Tcp(_)));
    let over_tcp = Client::connect_check(tcp).await.unwrap();
    assert_eq!(over_tcp.version(), client.version());

    // A socket at level operator cannot change servers.
    let err = Client::connect_check(ha.operator()).await.unwrap_err();
    match &err {
        Error::NotAdmin { level, .. } => assert_eq!(level, "operator"),
        other => panic!("expected NotAdmin, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("level `operator`"), "{text}");
    assert!(
        text.contains(&format!(
            "stats socket {} mode 600 level admin",
            ha.operator()
        )),
        "{text}"
    );

    // No socket at all.
    let missing = Socket::Unix(ha.dir.path().join("nope.sock"));
    let err = Client::connect_check(missing).await.unwrap_err();
    assert!(matches!(err, Error::SocketMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("level admin"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_backend_and_server() {
    let Some(ha) = Haproxy::start("", "") else {
        return;
    };
    let client = ha.client().await;
    assert!(client.backend_exists("web").await.unwrap());
    assert!(!client.backend_exists("nope").await.unwrap());
    assert_eq!(client.servers("web").await.unwrap(), vec![]);

    let err = client.servers("nope").await.unwrap_err();
    assert!(
        matches!(&err, Error::BackendUnknown { backend } if backend == "nope"),
        "{err:?}"
    );
    assert!(err.to_string().contains("show backend"), "{err}");
    let up = Upstream::start("a", SECOND).await;
    let err = client
        .add_server("nope", "handoff-a", up.addr, &AddOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BackendUnknown { .. }), "{err:?}");
    let err = client
        .set_state("web", "handoff-x", State::Ready)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ServerUnknown { backend, server } if backend == "web" && server == "handoff-x"),
        "{err:?}"
    );
    let err = client.del_server("web", "handoff-x").await.unwrap_err();
    assert!(matches!(err, Error::ServerUnknown { .. }), "{err:?}");
    assert_eq!(client.server("web", "handoff-x").await.unwrap(), None);

    // Names that could split a command line never reach HAProxy.
    let err = client.set_weight("web", "a;del", 1).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_balance_refuses_dynamic_servers() {
    let extra = "backend fixed\n    balance static-rr\n\nbackend hashed\n    balance source\n";
    let Some(ha) = Haproxy::start("", extra) else {
        return;
    };
    let client = ha.client().await;
    let up = Upstream::start("a", SECOND).await;
    for backend in ["fixed", "hashed"] {
        let err = client
            .add_server(backend, "handoff-a", up.addr, &AddOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::StaticBalance { backend: b } if b == backend),
            "{backend}: {err:?}"
        );
        assert!(err.to_string().contains("balance roundrobin"), "{err}");
        assert_eq!(client.servers(backend).await.unwrap(), vec![]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_refused_outside_maintenance_and_with_connections() {
    let Some(ha) = Haproxy::start("", "") else {
        return;
    };
    let client = ha.client().await;
    let up = Upstream::start("a", Duration::from_millis(1500)).await;
    let opts = AddOptions {
        check: true,
        inter: Some(Duration::from_millis(100)),
        rise: Some(1),
        ..AddOptions::default()
    };
    client
        .add_server("web", "handoff-a", up.addr, &opts)
        .await
        .unwrap();
    client
        .wait_up("web", "handoff-a", 5 * SECOND)
        .await
        .unwrap();

    let err = client
        .add_server("web", "handoff-a", up.addr, &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ServerExists { .. }), "{err:?}");

    let err = client.del_server("web", "handoff-a").await.unwrap_err();
    assert!(
        matches!(&err, Error::NotInMaintenance { server, .. } if server == "handoff-a"),
        "{err:?}"
    );
    assert!(err.to_string().contains("state maint"), "{err}");

    // In maintenance, but a request is in flight: still refused.
    let slow = {
        let port = ha.port;
        tokio::task::spawn_blocking(move || common::http_get(port, "/slow"))
    };
    wait_for(&client, "handoff-a", |s| s.scur >= 1).await;
    client
        .set_state("web", "handoff-a", State::Maint)
        .await
        .unwrap();
    let err = client.del_server("web", "handoff-a").await.unwrap_err();
    assert!(matches!(err, Error::StillHasConnections { .. }), "{err:?}");

    // Maintenance does not cut it; once it is answered the delete works.
    let (status, body) = slow.await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (200, "a"));
    wait_for(&client, "handoff-a", |s| s.scur == 0).await;
    client.del_server("web", "handoff-a").await.unwrap();
    assert_eq!(client.server("web", "handoff-a").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_not_ours_are_left_alone() {
    let by_config = Upstream::start("config", SECOND).await;
    let web = format!("    server manual {}", by_config.addr);
    let Some(ha) = Haproxy::start(&web, "") else {
        return;
    };
    let own = Ownership::default();
    let client = ha.client().await.owned_by(own.clone());

    // One more added by hand at run time, outside handoff's names.
    let by_hand = Upstream::start("hand", SECOND).await;
    for line in [
        format!("add server web/by-hand {}", by_hand.addr),
        "set server web/by-hand state ready".to_string(),
    ] {
        client.command(&line).await.unwrap();
    }
    let ours = Upstream::start("ours", SECOND).await;
    client
        .add_server("web", &own.name("web-1"), ours.addr, &AddOptions::default())
        .await
        .unwrap();

    let all = client.servers("web").await.unwrap();
    let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for name in ["manual", "by-hand", "handoff-web-1"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let owned = client.owned_servers("web", &own).await.unwrap();
    let owned: Vec<&str> = owned.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(owned, vec!["handoff-web-1"]);

    // The guard refuses every change to the user's servers.
    let not_ours = |r: Result<(), Error>| matches!(r, Err(Error::NotOurs { .. }));
    assert!(not_ours(client.set_weight("web", "manual", 0).await));
    assert!(not_ours(
        client.set_state("web", "by-hand", State::Maint).await
    ));
    assert!(not_ours(client.del_server("web", "by-hand").await));
    assert!(matches!(
        client.drain_and_delete("web", "manual", SECOND).await,
        Err(Error::NotOurs { .. })
    ));
    assert!(not_ours(
        client
            .add_server("web", "web-2", ours.addr, &AddOptions::default())
            .await
    ));

    // handoff's own server comes and goes; the user's are as they were.
    let before: Vec<_> = all
        .iter()
        .filter(|s| !own.is_ours(&s.name))
        .map(|s| (s.name.clone(), s.status.clone(), s.weight, s.addr.clone()))
        .collect();
    let report = client
        .drain_and_delete("web", "handoff-web-1", 5 * SECOND)
        .await
        .unwrap();
    assert!(!report.timed_out);
    let after: Vec<_> = client
        .servers("web")
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.status, s.weight, s.addr))
        .collect();
    assert_eq!(after, before);
    assert!(after
        .iter()
        .all(|(_, status, _, _)| *status == Status::NoCheck));
    let counts = ha.split(4).await;
    assert_eq!(counts.get("config"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("hand"), Some(&2), "{counts:?}");
}

/// Polls `show stat` (5 s deadline) until the server matches.
async fn wait_for(client: &Client, name: &str, ok: impl Fn(&handoff_haproxy::ServerStat) -> bool) {
    let deadline = std::time::Instant::now() + 5 * SECOND;
    loop {
        let server = client.server("web", name).await.unwrap();
        if server.as_ref().is_some_and(&ok) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never got there: {server:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
