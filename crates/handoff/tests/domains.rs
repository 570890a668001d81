//! Several services on one listen address, chosen by host and path: each
//! keeps its own instances and deployments, and deploying one under load
//! disturbs none of the others.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::scenario::*;
use common::*;

/// GET `path` with `Host: host` on a fresh connection: (status, body).
fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((code, body))
}

fn version(body: &str) -> String {
    body.split("\"version\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("?")
        .to_string()
}

/// Requests to one host and path until stopped; every answer's version,
/// and any failure.
struct HostLoad {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

fn host_load(addr: SocketAddr, host: &'static str, path: &'static str) -> HostLoad {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let (st, se, fa) = (stop.clone(), seen.clone(), failures.clone());
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(90);
        for _ in 0..1_000_000 {
            if st.load(Relaxed) || Instant::now() > deadline {
                return;
            }
            match get(addr, host, path) {
                Ok((200, b)) => se.lock().unwrap().push(version(&b)),
                Ok((c, b)) => fa
                    .lock()
                    .unwrap()
                    .push(format!("{host}{path}: {c} {}", b.trim())),
                Err(e) => fa.lock().unwrap().push(format!("{host}{path}: {e}")),
            }
        }
    });
    HostLoad {
        stop,
        seen,
        failures,
        thread,
    }
}

impl HostLoad {
    fn finish(self) -> Vec<String> {
        self.stop.store(true, Relaxed);
        self.thread.join().unwrap();
        let f = self.failures.lock().unwrap();
        assert!(
            f.is_empty(),
            "{} failed: {:?}",
            f.len(),
            &f[..f.len().min(5)]
        );
        let seen = self.seen.lock().unwrap().clone();
        seen
    }
}

#[test]
fn three_services_on_one_address_routed_by_domain_and_path() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    write_app_script(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let service = |name: &str, rev: &str, extra: &str| {
        format!(
            "[services.{name}]\nlisten = \"127.0.0.1:{port}\"\nrevision = \"{rev}\"\ninstances = 2\n\
             command = \"./app.sh {{port}} {{revision}}\"\nstop_grace = \"5s\"\n{extra}\
             [services.{name}.health]\ninterval = \"100ms\"\nmin_healthy_time = \"300ms\"\n\
             [services.{name}.drain]\ntimeout = \"5s\"\n\
             [services.{name}.blue_green]\ntraffic_steps = []\nretention = \"0s\"\n"
        )
    };
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\n{}{}{}",
            service("app", "app1", "domains = [\"app.test\"]\n"),
            service(
                "api",
                "api1",
                "domains = [\"app.test\"]\npath_prefix = \"/api\"\n"
            ),
            service("tenants", "ten1", "domains = [\"*.tenants.test\"]\n"),
        ),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let env = start_daemon(_guard, dir, Some(addr), 6);
    // Routed by host (case and port aside) and by the longest path prefix.
    for (host, path, want) in [
        ("app.test", "/", "app1"),
        ("APP.test:443", "/x", "app1"),
        ("app.test", "/api", "api1"),
        ("app.test", "/api/v1/users", "api1"),
        ("app.test", "/apix", "app1"),
        ("acme.tenants.test", "/", "ten1"),
    ] {
        let (code, body) = get(addr, host, path).unwrap();
        assert_eq!(
            (code, version(&body)),
            (200, want.to_string()),
            "{host}{path}: {body}"
        );
    }
    // No service for that host: a 404 that says so.
    let (code, body) = get(addr, "nobody.test", "/").unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains("no service here for host nobody.test"),
        "{body}"
    );
    // Deploying api (blue/green) under load on app and api: neither fails a
    // request, app keeps its instances.
    let app_pids = |env: &Env| -> Vec<u64> {
        let s = env.get("/services");
        s.as_array()
            .unwrap()
            .iter()
            .filter(|x| x["name"] == "app")
            .flat_map(|x| x["instances"].as_array().cloned().unwrap_or_default())
            .filter_map(|i| i["pid"].as_u64())
            .collect()
    };
    let before = app_pids(&env);
    assert_eq!(before.len(), 2, "{before:?}");
    let la = host_load(addr, "app.test", "/");
    let lb = host_load(addr, "app.test", "/api/items");
    poll("load running", Duration::from_secs(10), || {
        (la.seen.lock().unwrap().len() > 20 && lb.seen.lock().unwrap().len() > 20).then_some(())
    });
    let (ok, out) = env.cli(&["deploy", "api", "api2", "--strategy", "blue-green"]);
    assert!(
        ok && out.contains("deployed: api2 serves service api"),
        "{out}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let app_seen = la.finish();
    let api_seen = lb.finish();
    assert!(
        app_seen.iter().all(|v| v == "app1"),
        "app answered only app1"
    );
    assert!(
        api_seen.iter().any(|v| v == "api1") && api_seen.last().map(String::as_str) == Some("api2")
    );
    assert_eq!(app_pids(&env), before, "app's instances untouched");
    stop(env);
}
