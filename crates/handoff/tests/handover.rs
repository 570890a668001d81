//! handoff hands itself over to a new process (`handoff upgrade`, `handoff
//! reload`, SIGHUP) under load, on fresh and keep-alive connections, with
//! long requests and a tunnel open: no request fails, no connection is
//! reset, the instances keep their pids, and one daemon is left.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::scenario::*;
use common::*;

/// Orphaned daemons (each one's parent steps down) are re-parented to the
/// test, which reaps them.
fn become_subreaper() {
    // SAFETY: prctl with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Waits (with a deadline) for `pid` to exit and reaps it.
fn reap(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on a pid that is (or was) our child.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        if r == pid as i32 || (r < 0 && !Path::new(&format!("/proc/{pid}")).exists()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "daemon {pid} did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops whichever daemon is current if the test ends early (a panic):
/// nothing it started is left running.
struct StopOnDrop(Arc<std::sync::atomic::AtomicU32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let pid = self.0.load(SeqCst);
        if pid != 0 && std::thread::panicking() {
            // SAFETY: kill(2) on a daemon this test started.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            reap(pid, Duration::from_secs(30));
        }
    }
}

fn daemon_pid(env: &Env) -> u32 {
    env.get("/daemon")["pid"].as_u64().unwrap() as u32
}

fn daemons(cfg: &Path) -> Vec<u32> {
    let want = cfg.to_string_lossy().to_string();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(c) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let c = String::from_utf8_lossy(&c).replace('\0', " ");
        if c.contains(" serve ") && c.contains(&want) {
            v.push(pid);
        }
    }
    v
}

/// A client on one keep-alive connection: a new connection only when the
/// server said `Connection: close`. Any error (a reset, a close without an
/// answer) is a failure.
fn keep_alive_load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    reconnects: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut conn: Option<BufReader<TcpStream>> = None;
        for _ in 0..2_000_000 {
            if stop.load(Relaxed) || Instant::now() > deadline {
                return;
            }
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match TcpStream::connect(addr) {
                    Ok(s) => {
                        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        conn.insert(BufReader::new(s))
                    }
                    Err(e) => {
                        failures.lock().unwrap().push(format!("connect: {e}"));
                        continue;
                    }
                },
            };
            let r = (|| -> std::io::Result<(u16, bool)> {
                c.get_mut()
                    .write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")?;
                let mut line = String::new();
                if c.read_line(&mut line)? == 0 {
                    return Err(std::io::Error::other("closed without an answer"));
                }
                let code: u16 = line
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let (mut len, mut close) = (0usize, false);
                loop {
                    let mut h = String::new();
                    c.read_line(&mut h)?;
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap_or((h, ""));
                    match k.to_ascii_lowercase().as_str() {
                        "content-length" => len = v.trim().parse().unwrap_or(0),
                        "connection" => close = v.trim().eq_ignore_ascii_case("close"),
                        _ => {}
                    }
                }
                let mut body = vec![0; len];
                c.read_exact(&mut body)?;
                Ok((code, close))
            })();
            match r {
                Ok((200, close)) => {
                    ok.fetch_add(1, Relaxed);
                    if close {
                        reconnects.fetch_add(1, Relaxed);
                        conn = None;
                    }
                }
                Ok((code, _)) => {
                    failures.lock().unwrap().push(format!("keep-alive: {code}"));
                    conn = None;
                }
                Err(e) => {
                    failures.lock().unwrap().push(format!("keep-alive: {e}"));
                    conn = None;
                }
            }
        }
    })
}

/// Requests of 1.5 s each, one after another: each must complete even
/// when its daemon steps down meanwhile.
fn long_requests(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(240);
        while !stop.load(Relaxed) && Instant::now() < deadline {
            match http_get(addr, "/sleep?ms=1500") {
                Ok((200, b)) if b.contains("slept_ms") => {
                    done.fetch_add(1, Relaxed);
                }
                Ok((c, b)) => failures.lock().unwrap().push(format!("long: {c} {b}")),
                Err(e) => failures.lock().unwrap().push(format!("long: {e}")),
            }
        }
    })
}

/// An upgraded connection (the sample app echoes what it gets).
fn open_tunnel(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

fn echo(s: &mut TcpStream, what: &str) -> std::io::Result<String> {
    s.write_all(what.as_bytes())?;
    let mut buf = vec![0; what.len()];
    s.read_exact(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).to_string())
}

fn config(_dir: &Path, extra: &str) -> String {
    format!(
        "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\nshutdown_timeout = \"5s\"\n\
         [services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"v1\"\ninstances = 2\n\
         command = \"./app.sh {{port}} {{revision}}\"\nstop_grace = \"5s\"\n\
         [services.web.health]\ninterval = \"100ms\"\nmin_healthy_time = \"300ms\"\n{extra}",
    )
}

#[test]
fn ten_upgrades_and_ten_reloads_under_load_fail_no_request() {
    become_subreaper();
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    write_app_script(dir.path());
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(&cfg, config(dir.path(), "")).unwrap();
    let env = start_daemon(guard, dir, None, 2);
    let state = env.dir.path().join("state");
    let instances = || -> Vec<u32> {
        let mut v: Vec<u32> = handoff_runtime::procfs::marked_processes(&state)
            .into_iter()
            .map(|(pid, _, _)| pid)
            .collect();
        v.sort();
        v
    };
    let pids = instances();
    assert_eq!(pids.len(), 2, "{pids:?}");

    let fresh = load(env.web, 3);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, reconnects, failures) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let keep: Vec<_> = (0..2)
        .map(|_| {
            keep_alive_load(
                env.web,
                stop.clone(),
                ok.clone(),
                reconnects.clone(),
                failures.clone(),
            )
        })
        .collect();
    let long_done = Arc::new(AtomicUsize::new(0));
    let long = long_requests(env.web, stop.clone(), long_done.clone(), failures.clone());
    let mut tunnel = open_tunnel(env.web);
    assert_eq!(echo(&mut tunnel, "before").unwrap(), "before");
    fresh.wait_for_requests(50);

    let mut current = daemon_pid(&env);
    let first_pid = current;
    let live = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let _stop = StopOnDrop(live.clone());
    let mut env = env;
    for i in 0..20 {
        let before = ok.load(Relaxed);
        let (what, out) = if i < 10 {
            let (okc, out) = env.cli(&["upgrade"]);
            assert!(okc && out.contains("upgraded: pid"), "upgrade {i}: {out}");
            ("upgrade", out)
        } else if i % 2 == 0 {
            let (okc, out) = env.cli(&["reload"]);
            assert!(okc && out.contains("reloaded: pid"), "reload {i}: {out}");
            ("reload", out)
        } else {
            // SIGHUP: the same, without a client.
            // SAFETY: kill(2) with a pid we read from the daemon itself.
            unsafe { libc::kill(current as i32, libc::SIGHUP) };
            ("SIGHUP", String::new())
        };
        let next = poll("a new daemon", Duration::from_secs(60), || {
            let (c, b) = admin_get(env.admin, env.dir.path(), "/daemon").ok()?;
            let v: serde_json::Value = serde_json::from_str(&b).ok()?;
            let pid = v["pid"].as_u64()? as u32;
            (c == 200 && pid != current).then_some(pid)
        });
        eprintln!("{what} {i}: pid {current} → {next} {}", out.trim());
        if i == 0 {
            // The tunnel lives in the daemon that stepped down, which gives
            // it the shutdown timeout: it still echoes meanwhile.
            assert_eq!(echo(&mut tunnel, "after").unwrap(), "after");
        }
        if current == first_pid {
            assert!(env.daemon.wait_exit(Duration::from_secs(30)).success());
        } else {
            reap(current, Duration::from_secs(30));
        }
        current = next;
        live.store(current, SeqCst);
        // Keep-alive clients go on, on new connections.
        poll(
            "keep-alive requests after the hand-over",
            Duration::from_secs(10),
            || (ok.load(Relaxed) > before + 20).then_some(()),
        );
    }
    stop.store(true, Relaxed);
    for t in keep {
        t.join().unwrap();
    }
    long.join().unwrap();
    let seen = fresh.finish();
    let failed = failures.lock().unwrap().clone();
    eprintln!(
        "fresh {} ok, keep-alive {} ok ({} reconnects after Connection: close), long {} ok",
        seen.len(),
        ok.load(Relaxed),
        reconnects.load(Relaxed),
        long_done.load(Relaxed)
    );
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(long_done.load(Relaxed) >= 3);
    assert!(
        reconnects.load(Relaxed) >= 20,
        "each hand-over closes keep-alive connections cleanly"
    );
    assert_eq!(instances(), pids, "the instances kept their pids");
    assert_eq!(daemons(&cfg), vec![current], "one daemon at the end");
    // Stop the last one; the instances go with it.
    // SAFETY: kill(2) on the daemon's pid.
    unsafe { libc::kill(current as i32, libc::SIGTERM) };
    reap(current, Duration::from_secs(30));
    poll("no instance left", Duration::from_secs(10), || {
        instances().is_empty().then_some(())
    });
    drop(tunnel);
}

#[test]
fn a_bad_config_is_refused_and_a_good_one_applies_services_added_and_removed() {
    become_subreaper();
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    write_app_script(dir.path());
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(&cfg, config(dir.path(), "")).unwrap();
    let mut env = start_daemon(guard, dir, None, 2);
    let pid = daemon_pid(&env);
    // A mistake: refused with the located problem, the old config stays.
    std::fs::write(
        &cfg,
        config(env.dir.path(), "healthy_threshold = \"two\"\n"),
    )
    .unwrap();
    let (ok, out) = env.cli(&["reload"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("services.web.health.healthy_threshold") && out.contains("stays in force"),
        "{out}"
    );
    assert_eq!(daemon_pid(&env), pid);
    assert_eq!(http_get(env.web, "/").unwrap().0, 200);
    // A second service, and a deploy gate held meanwhile: after the reload
    // it serves on its own port.
    let api = "[services.api]\nlisten = \"127.0.0.1:0\"\nrevision = \"a1\"\ninstances = 1\n\
               command = \"./app.sh {port} {revision}\"\n[services.api.health]\ninterval = \"100ms\"\n";
    std::fs::write(&cfg, format!("{}{api}", config(env.dir.path(), ""))).unwrap();
    let l = load(env.web, 3);
    l.wait_for_requests(30);
    let (ok, out) = env.cli(&["reload"]);
    assert!(ok, "{out}");
    assert!(env.daemon.wait_exit(Duration::from_secs(30)).success());
    let second = daemon_pid(&env);
    let services = env.get("/services");
    let api_addr: SocketAddr = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "api")
        .and_then(|s| s["bound"].as_str())
        .expect("api listed")
        .parse()
        .unwrap();
    let body = poll("api serving", Duration::from_secs(20), || {
        http_get(api_addr, "/")
            .ok()
            .filter(|(c, _)| *c == 200)
            .map(|(_, b)| b)
    });
    assert!(body.contains("\"version\":\"a1\""), "{body}");
    // Removed again: its instance stops with the daemon that stepped down.
    std::fs::write(&cfg, config(env.dir.path(), "")).unwrap();
    let (ok, out) = env.cli(&["reload"]);
    assert!(ok, "{out}");
    reap(second, Duration::from_secs(30));
    poll("api's instance stopped", Duration::from_secs(15), || {
        let left = handoff_runtime::procfs::marked_processes(&env.dir.path().join("state"));
        (left.len() == 2).then_some(())
    });
    assert!(env.get("/services").as_array().unwrap().len() == 1);
    // The same command twice at once: each either hands over or says that
    // a hand-over just happened; one daemon is left, and no request fails.
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| env.cli(&["reload"]));
        let b = sc.spawn(|| env.cli(&["reload"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    for (ok, out) in [&a, &b] {
        assert!(
            (*ok && out.contains("reloaded: pid")) || out.contains("just handed over"),
            "{out}"
        );
    }
    assert!(a.0 || b.0, "at least one reload went through: {a:?} {b:?}");
    // Each reload that went through names the daemon that stepped down.
    for (ok, out) in [&a, &b] {
        if *ok {
            let old: u32 = out
                .split("; pid ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no old pid in {out}"));
            reap(old, Duration::from_secs(30));
        }
    }
    let last = poll("one daemon left", Duration::from_secs(30), || {
        let d = daemons(&cfg);
        (d.len() == 1).then(|| d[0])
    });
    let third = last;
    l.finish();
    // SAFETY: kill(2) on the daemon's pid.
    unsafe { libc::kill(third as i32, libc::SIGTERM) };
    reap(third, Duration::from_secs(30));
}

#[test]
fn systemd_socket_activation_keeps_a_connection_made_before_the_daemon_started() {
    use std::os::unix::process::CommandExt;
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    write_app_script(dir.path());
    // systemd's part: the listening socket exists before the daemon.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(
        &cfg,
        config(dir.path(), "").replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\"")),
    )
    .unwrap();
    // A client connects and sends its request while nothing runs: the
    // kernel queues it on the socket.
    let early = std::thread::spawn(move || http_get(addr, "/"));
    std::thread::sleep(Duration::from_millis(200)); // let it reach the queue (not a synchronisation: the assertion holds either way)
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let out = std::fs::File::create(dir.path().join("out.log")).unwrap();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args([
        "-c",
        "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" serve -c \"$1\"",
        bin(),
        cfg.to_str().unwrap(),
    ])
    .current_dir(dir.path())
    .stdout(out.try_clone().unwrap())
    .stderr(out);
    // SAFETY: only dup2 and fcntl, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it then.
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let live = Arc::new(std::sync::atomic::AtomicU32::new(child.id()));
    let _stop = StopOnDrop(live);
    drop(listener);
    let answer = early.join().unwrap();
    let log = std::fs::read_to_string(dir.path().join("out.log")).unwrap();
    let (code, body) = answer.unwrap_or_else(|e| panic!("the early request: {e}\n{log}"));
    assert!(
        code == 200 && body.contains("\"version\":\"v1\""),
        "{code} {body}"
    );
    assert!(
        log.contains(&format!("listening service=web addr={addr}")),
        "{log}"
    );
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn upgrade_onto_another_binary_and_the_refusals_that_keep_the_daemon() {
    become_subreaper();
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    write_app_script(dir.path());
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(
        &cfg,
        config(
            dir.path(),
            "[services.web.blue_green]\ntraffic_steps = []\nretention = \"60s\"\n",
        ),
    )
    .unwrap();
    let mut env = start_daemon(guard, dir, None, 2);
    let first = daemon_pid(&env);
    let l = load(env.web, 3);
    l.wait_for_requests(30);
    // A binary that is not there: refused before anything starts.
    let (ok, out) = env.cli(&["upgrade", "--binary", "/nonexistent/handoff"]);
    assert!(!ok, "{out}");
    assert!(out.contains("/nonexistent/handoff"), "{out}");
    assert_eq!(daemon_pid(&env), first);
    // While blue is retained, a hand-over waits for a time between
    // deployments: refused (409), saying what to do.
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--strategy", "blue-green"]);
    assert!(ok && out.contains("blue retained until"), "{out}");
    let (ok, out) = env.cli(&["reload"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("between deployments") && out.contains("promote or roll back"),
        "{out}"
    );
    assert_eq!(daemon_pid(&env), first);
    // Deploys are not left held by the refusal.
    let (ok, out) = env.cli(&["promote", "web"]);
    assert!(ok, "{out}");
    poll("blue released", Duration::from_secs(30), || {
        let (_, st) = env.cli(&["status", "web"]);
        (!st.contains("deploying")).then_some(())
    });
    // Onto a copy of the binary (an installed new version).
    let next = env.dir.path().join("handoff-next");
    std::fs::copy(bin(), &next).unwrap();
    let (ok, out) = env.cli(&["upgrade", "--binary", next.to_str().unwrap()]);
    assert!(ok && out.contains("upgraded: pid"), "{out}");
    let second = poll("the new daemon", Duration::from_secs(60), || {
        Some(daemon_pid(&env)).filter(|p| *p != first)
    });
    assert!(env.daemon.wait_exit(Duration::from_secs(30)).success());
    let exe = std::fs::read_link(format!("/proc/{second}/exe")).unwrap();
    assert_eq!(exe, next, "the new daemon runs the given binary");
    let seen = l.finish();
    assert!(seen.iter().any(|(v, _)| v == "v2"), "v2 served");
    // SAFETY: kill(2) on the daemon's pid.
    unsafe { libc::kill(second as i32, libc::SIGTERM) };
    reap(second, Duration::from_secs(30));
}
