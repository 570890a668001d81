//! End to end: managed instances under the real daemon — start, replace a
//! killed instance under load, adopt after the daemon is killed, and leave
//! no orphan behind.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use handoff_runtime::procfs;

fn write_config(
    dir: &Path,
    instances: u32,
    extra_app_args: &str,
    extra: &str,
) -> std::path::PathBuf {
    let cfg = dir.join("handoff.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\n{extra}\n\
             [services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"v1\"\ninstances = {instances}\n\
             command = \"{bin} sample-app --port {{port}} --version {{revision}} {extra_app_args}\"\nstop_grace = \"3s\"\n\
             [services.web.health]\ninterval = \"100ms\"\nhealthy_deadline = \"5s\"\n",
            bin = bin()
        ),
    )
    .unwrap();
    cfg
}

/// Instance name → pid, as the instances themselves report through the proxy.
fn serving(addr: SocketAddr, tries: usize) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for _ in 0..tries {
        if let Ok((200, body)) = http_get(addr, "/") {
            let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
            m.insert(
                v["instance"].as_str().unwrap().to_string(),
                v["pid"].as_u64().unwrap(),
            );
        }
    }
    m
}

fn wait_serving(addr: SocketAddr, n: usize) -> BTreeMap<String, u64> {
    poll(
        &format!("{n} instances serving"),
        Duration::from_secs(20),
        || {
            let m = serving(addr, 40);
            (m.len() == n).then_some(m)
        },
    )
}

fn start_daemon(dir: &Path, cfg: &Path, args: &[&str]) -> (Proc, SocketAddr, SocketAddr) {
    let mut a = vec!["serve", "-c", cfg.to_str().unwrap()];
    a.extend_from_slice(args);
    let mut d = Proc::spawn(&a, dir);
    let web = addr_of(&d.wait_line("listening service=web", Duration::from_secs(20)));
    let admin = addr_of(&d.wait_line("admin", Duration::from_secs(20)));
    d.wait_line("ready", Duration::from_secs(20));
    (d, web, admin)
}

fn marked(dir: &Path) -> Vec<u32> {
    procfs::marked_processes(&dir.join("state"))
        .into_iter()
        .map(|(p, _, _)| p)
        .collect()
}

fn assert_no_orphans(dir: &Path) {
    poll("no instance process left", Duration::from_secs(10), || {
        marked(dir).is_empty().then_some(())
    });
}

/// Closed-loop load on fresh connections; returns (ok, failures).
fn load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut ok = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        for _ in 0..100_000 {
            if stop.load(Relaxed) || Instant::now() > deadline {
                break;
            }
            match http_get(addr, "/") {
                Ok((200, _)) => ok += 1,
                Ok((s, b)) => failures.lock().unwrap().push(format!("{s} {b}")),
                Err(e) => failures.lock().unwrap().push(e.to_string()),
            }
        }
        ok
    })
}

#[test]
fn sigkill_of_an_instance_under_load_fails_no_request_and_it_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 3, "", "");
    let (mut d, web, admin) = start_daemon(dir.path(), &cfg, &[]);
    let before = wait_serving(web, 3);
    for pid in before.values() {
        // Each instance leads its own session and process group.
        assert_eq!(unsafe { libc::getpgid(*pid as i32) }, *pid as i32);
        assert_eq!(unsafe { libc::getsid(*pid as i32) }, *pid as i32);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let loaders: Vec<_> = (0..3)
        .map(|_| load(web, stop.clone(), failures.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(300)); // let load build up before the kill
    let victim = before["web-2"];
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    // Replaced: a new web-2 process serves, on the same port.
    let after = poll("web-2 replaced", Duration::from_secs(20), || {
        let m = serving(web, 30);
        (m.get("web-2").is_some_and(|p| *p != victim) && m.len() == 3).then_some(m)
    });
    stop.store(true, Relaxed);
    let ok: u64 = loaders.into_iter().map(|l| l.join().unwrap()).sum();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok,
        &failures[..failures.len().min(5)]
    );
    assert!(ok >= 50, "load too small to mean anything: {ok}");
    assert_eq!(after["web-1"], before["web-1"], "other instances untouched");
    let (_, log) = admin_get(admin, dir.path(), "/logs/web/web-2?lines=5").unwrap();
    assert!(log.contains("listening"), "{log}");

    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        d.stderr()
    );
    assert!(
        d.stderr()
            .contains("instance exited unexpectedly (killed by signal 9)"),
        "{}",
        d.stderr()
    );
    assert_no_orphans(dir.path());
}

#[test]
fn a_killed_daemon_leaves_instances_running_and_the_next_one_adopts_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 2, "", "");
    let (mut d, web, _) = start_daemon(dir.path(), &cfg, &[]);
    let before = wait_serving(web, 2);
    d.signal(libc::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    // The instances live on in their own sessions.
    for pid in before.values() {
        assert!(
            procfs::start_time(*pid as u32).is_some(),
            "instance {pid} died with the daemon"
        );
    }
    let (mut d2, web2, _) = start_daemon(dir.path(), &cfg, &[]);
    let after = wait_serving(web2, 2);
    assert_eq!(before, after, "live instances are adopted, not restarted");
    assert!(
        d2.stderr().contains("adopted live instance"),
        "{}",
        d2.stderr()
    );
    d2.signal(libc::SIGTERM);
    assert!(d2.wait_exit(Duration::from_secs(20)).success());
    assert_no_orphans(dir.path());
}

#[test]
fn keep_instances_then_a_changed_revision_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 2, "", "");
    let (mut d, web, _) = start_daemon(dir.path(), &cfg, &["--keep-instances"]);
    let before = wait_serving(web, 2);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).success());
    assert_eq!(
        marked(dir.path()).len(),
        2,
        "--keep-instances leaves them running"
    );
    // Same config but revision v2: the live v1 instances are not adopted.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("revision = \"v1\"", "revision = \"v2\"");
    std::fs::write(&cfg, text).unwrap();
    let (mut d2, web2, _) = start_daemon(dir.path(), &cfg, &[]);
    poll("v2 serving", Duration::from_secs(20), || {
        let (_, b) = http_get(web2, "/").ok()?;
        b.contains("\"version\":\"v2\"").then_some(())
    });
    for pid in before.values() {
        assert!(
            procfs::start_time(*pid as u32).is_none(),
            "old v1 instance {pid} still running"
        );
    }
    d2.signal(libc::SIGTERM);
    assert!(d2.wait_exit(Duration::from_secs(20)).success());
    assert_no_orphans(dir.path());
}

#[test]
fn bad_command_and_crashing_app_give_clear_errors_and_no_stuck_state() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\n[services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"v1\"\ninstances = 1\ncommand = \"no-such-app-xyz --port {port}\"\n",
    )
    .unwrap();
    let (mut d, web, _) = start_daemon(dir.path(), &cfg, &[]);
    let (s, body) = http_get(web, "/").unwrap();
    assert_eq!(s, 503);
    assert!(body.contains("no healthy target"), "{body}");
    poll("start failure reported", Duration::from_secs(10), || {
        d.stderr()
            .contains("command not found: `no-such-app-xyz --port")
            .then_some(())
    });
    poll("retried with back-off", Duration::from_secs(10), || {
        d.stderr().contains("restart #2 in 2s").then_some(())
    });
    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(20)).success(),
        "a failing service must not block shutdown"
    );

    // An app that crashes after a moment is restarted, and keeps serving in between.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 1, "--crash-after 1500ms", "");
    let (mut d, web, _) = start_daemon(dir.path(), &cfg, &[]);
    let first = wait_serving(web, 1)["web-1"];
    let second = poll(
        "crashed instance restarted",
        Duration::from_secs(20),
        || {
            serving(web, 5)
                .get("web-1")
                .copied()
                .filter(|p| *p != first)
        },
    );
    assert_ne!(first, second);
    assert!(
        d.stderr().contains("exited with status 1"),
        "{}",
        d.stderr()
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).success());
    assert_no_orphans(dir.path());
}

#[test]
fn no_free_port_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = busy.local_addr().unwrap().port();
    let cfg = write_config(dir.path(), 1, "", &format!("port_range = \"{p}-{p}\""));
    let out = std::process::Command::new(bin())
        .args(["serve", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("no free port in {p}-{p}; widen server.port_range")),
        "{err}"
    );
    assert_no_orphans(dir.path());
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 1, "", "");
    let (mut d, _, _) = start_daemon(dir.path(), &cfg, &[]);
    let out = std::process::Command::new(bin())
        .args(["serve", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "another handoff (pid {}) is already running",
            d.child.id()
        )),
        "{err}"
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).success());
    assert_no_orphans(dir.path());
}

/// Waits until `web` serves exactly `n` instances and `name` runs as a
/// process other than `old`; returns what serves.
fn wait_replaced(web: SocketAddr, n: usize, name: &str, old: u64) -> BTreeMap<String, u64> {
    poll(
        &format!("{name} (pid {old}) replaced, {n} serving"),
        Duration::from_secs(20),
        || {
            let m = serving(web, 30);
            (m.len() == n && m.get(name).is_some_and(|p| *p != old)).then_some(m)
        },
    )
}

#[test]
fn an_instance_killed_twice_is_replaced_both_times_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 3, "", "");
    let (mut d, web, _) = start_daemon(dir.path(), &cfg, &[]);
    let before = wait_serving(web, 3);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let loaders: Vec<_> = (0..2)
        .map(|_| load(web, stop.clone(), failures.clone()))
        .collect();
    let first = before["web-2"];
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    let second = wait_replaced(web, 3, "web-2", first)["web-2"];
    // The replacement too: it is supervised like the first one was.
    unsafe { libc::kill(second as i32, libc::SIGKILL) };
    let after = wait_replaced(web, 3, "web-2", second);
    assert_ne!(after["web-2"], first);
    stop.store(true, Relaxed);
    let ok: u64 = loaders.into_iter().map(|l| l.join().unwrap()).sum();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok,
        &failures[..failures.len().min(5)]
    );
    assert_eq!(after["web-1"], before["web-1"], "other instances untouched");
    assert_eq!(after["web-3"], before["web-3"], "other instances untouched");
    let err = d.stderr();
    assert!(err.contains("restart #1 in 1s"), "{err}");
    assert!(err.contains("restart #2 in 2s"), "{err}");
    assert!(
        !err.contains("reconcile:"),
        "supervision alone did it: {err}"
    );

    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).success());
    assert_no_orphans(dir.path());
}

/// Live processes marked with the default state dir of a config in `dir`.
fn marked_default(dir: &Path) -> Vec<u32> {
    procfs::marked_processes(&dir.join(".handoff"))
        .into_iter()
        .map(|(p, _, _)| p)
        .collect()
}

/// Two unrelated configs, each in its own directory with the default
/// state dir (`.handoff`, relative) and a service `web`: starting the
/// second daemon must not touch a single instance of the first (it once
/// stopped them all as its own "strays"), nor may its reconciler later.
#[test]
fn a_second_daemon_elsewhere_leaves_the_first_ones_instances_alone() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [&a, &b] {
        std::fs::write(
            d.path().join("handoff.toml"),
            format!(
                "[server]\nadmin = \"127.0.0.1:0\"\n\
                 [services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"v1\"\ninstances = 2\n\
                 command = \"{bin} sample-app --port {{port}} --version {{revision}}\"\nstop_grace = \"3s\"\n\
                 [services.web.health]\ninterval = \"100ms\"\n",
                bin = bin()
            ),
        )
        .unwrap();
    }
    // Relative config paths, as a user in each directory would type them.
    let (mut da, web_a, _) = start_daemon(a.path(), Path::new("handoff.toml"), &[]);
    let before = wait_serving(web_a, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let loaders: Vec<_> = (0..2)
        .map(|_| load(web_a, stop.clone(), failures.clone()))
        .collect();

    let (mut db, web_b, _) = start_daemon(b.path(), Path::new("handoff.toml"), &[]);
    let b_serving = wait_serving(web_b, 2);
    // Past one reconciler period of the second daemon (5 s), under load.
    let until = Instant::now() + Duration::from_secs(6);
    // The first daemon's processes, by pid: a sample of answers through
    // its balancer could miss one that is only less loaded at the moment.
    while Instant::now() < until {
        let alive = marked_default(a.path());
        for pid in before.values() {
            assert!(
                alive.contains(&(*pid as u32)),
                "the first daemon lost instance pid {pid}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Relaxed);
    let ok: u64 = loaders.into_iter().map(|l| l.join().unwrap()).sum();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of the first service's requests failed (of {} ok): {:?}",
        failures.len(),
        ok,
        &failures[..failures.len().min(5)]
    );
    assert!(ok >= 50, "load too small to mean anything: {ok}");
    assert_eq!(
        wait_serving(web_a, 2),
        before,
        "the first daemon's instances were replaced"
    );
    for pid in before.values() {
        assert!(marked_default(a.path()).contains(&(*pid as u32)));
    }
    for pid in b_serving.values() {
        assert!(marked_default(b.path()).contains(&(*pid as u32)));
    }
    let err = db.stderr();
    assert!(
        !err.contains("stray") && !err.contains("reconcile:"),
        "{err}"
    );

    for d in [&mut db, &mut da] {
        d.signal(libc::SIGTERM);
        assert!(d.wait_exit(Duration::from_secs(20)).success());
    }
    for d in [&a, &b] {
        poll("no instance process left", Duration::from_secs(10), || {
            marked_default(d.path()).is_empty().then_some(())
        });
    }
}
