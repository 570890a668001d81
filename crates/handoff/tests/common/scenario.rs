//! Deployment scenarios through the real daemon: a config whose revision
//! names pick the sample app's behaviour, a closed-loop load generator that
//! records every answer, and a clean stop that leaves no instance behind.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// Load-generating deploy tests run one at a time: several at once on two
/// cores would starve new instances of CPU and test the machine instead.
/// (`healthy_deadline` is 8 s for the same reason: under a parallel
/// compile, 4 s once failed a green start before its bake.)
pub static SERIAL: Mutex<()> = Mutex::new(());

pub struct Env {
    pub _guard: std::sync::MutexGuard<'static, ()>,
    pub dir: tempfile::TempDir,
    pub daemon: Proc,
    pub web: SocketAddr,
    pub admin: SocketAddr,
}

pub fn setup(instances: u32, extra: &str) -> Env {
    setup_with(instances, "300ms", "[50]", extra)
}

/// `stay`: `health.min_healthy_time`; `steps`: `blue_green.traffic_steps`.
pub fn setup_with(instances: u32, stay: &str, steps: &str, extra: &str) -> Env {
    setup_sections(
        instances,
        &format!(
            "[services.web.health]\ninterval = \"100ms\"\nmin_healthy_time = \"{stay}\"\nhealthy_deadline = \"8s\"\n\
             [services.web.drain]\ntimeout = \"5s\"\n\
             [services.web.blue_green]\ntraffic_steps = {steps}\nbake = \"1s\"\nretention = \"30s\"\n{extra}"
        ),
    )
}

/// `app.sh PORT REVISION` in `dir`: the revision's name picks the sample
/// app's behaviour (`crash*`, `bad*`, `sick*`, `err*`, else healthy).
pub fn write_app_script(dir: &std::path::Path) {
    // The revision's name picks its behaviour.
    std::fs::write(
        dir.join("app.sh"),
        format!(
            "#!/bin/sh\ncase \"$2\" in\n  crash*) exec {b} sample-app --port \"$1\" --version \"$2\" --crash-after 2s ;;\n  bad*) exec {b} sample-app --port \"$1\" --version \"$2\" --fail-health ;;\n  sick*) exec {b} sample-app --port \"$1\" --version \"$2\" --fail-health-after 5s ;;\n  err*) exec {b} sample-app --port \"$1\" --version \"$2\" --error-rate 0.5 ;;\n  *) exec {b} sample-app --port \"$1\" --version \"$2\" ;;\nesac\n",
            b = bin()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("app.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A daemon with `instances` of `web` (the revision's name picks the
/// sample app's behaviour: `crash*`, `bad*`, `err*`, else healthy) and
/// `sections` (the service's sub-tables) as given.
pub fn setup_sections(instances: u32, sections: &str) -> Env {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    write_app_script(dir.path());
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\
             [services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"v1\"\ninstances = {instances}\n\
             command = \"./app.sh {{port}} {{revision}}\"\nstop_grace = \"5s\"\n{sections}"
        ),
    )
    .unwrap();
    let mut daemon = Proc::spawn(&["serve", "-c", cfg.to_str().unwrap()], dir.path());
    let web = addr_of(&daemon.wait_line("listening service=web", Duration::from_secs(20)));
    let admin = addr_of(&daemon.wait_line("admin", Duration::from_secs(20)));
    daemon.wait_line("ready", Duration::from_secs(20));
    poll("all v1 instances serving", Duration::from_secs(20), || {
        let (_, body) = admin_get(admin, dir.path(), "/services").ok()?;
        (body.matches("\"state\":\"healthy\"").count() == instances as usize).then_some(())
    });
    Env {
        _guard: guard,
        dir,
        daemon,
        web,
        admin,
    }
}

/// Starts the daemon of `dir/handoff.toml` and waits until `healthy`
/// targets are healthy. `web`: where clients connect, or `None` to take it
/// from the daemon's `listening service=web` line.
pub fn start_daemon(
    guard: std::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    web: Option<SocketAddr>,
    healthy: usize,
) -> Env {
    let cfg = dir.path().join("handoff.toml");
    let mut daemon = Proc::spawn(&["serve", "-c", cfg.to_str().unwrap()], dir.path());
    let web = web.unwrap_or_else(|| {
        addr_of(&daemon.wait_line("listening service=web", Duration::from_secs(30)))
    });
    let admin = addr_of(&daemon.wait_line("admin", Duration::from_secs(30)));
    daemon.wait_line("ready", Duration::from_secs(30));
    poll("every instance healthy", Duration::from_secs(30), || {
        let (_, body) = admin_get(admin, dir.path(), "/services").ok()?;
        (body.matches("\"state\":\"healthy\"").count() == healthy).then_some(())
    });
    Env {
        _guard: guard,
        dir,
        daemon,
        web,
        admin,
    }
}

impl Env {
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        cli(self.admin, self.dir.path(), args)
    }

    /// POST on the admin API with the daemon's token; (status, body).
    pub fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        post(self.admin, &token(self.dir.path()), path, body)
    }

    /// GET on the admin API as JSON.
    pub fn get(&self, path: &str) -> serde_json::Value {
        let (code, body) = admin_get(self.admin, self.dir.path(), path).unwrap();
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }
}

/// POST on the admin API at `admin` with `token`; (status, body).
pub fn post(admin: SocketAddr, token: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            token,
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        let json = out
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_default();
        (status, json)
    }
}

/// Keep-alive-free closed-loop load: (version served, at) per response.
pub struct Load {
    pub stop: Arc<AtomicBool>,
    pub seen: Arc<Mutex<Vec<(String, Instant)>>>,
    pub failures: Arc<Mutex<Vec<String>>>,
    pub threads: Vec<std::thread::JoinHandle<()>>,
}

pub fn load(addr: SocketAddr, clients: usize) -> Load {
    load_for(addr, clients, Duration::from_secs(90))
}

/// [`load`] that gives up by itself after `limit`.
pub fn load_for(addr: SocketAddr, clients: usize, limit: Duration) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let threads = (0..clients)
        .map(|_| {
            let (stop, seen, failures) = (stop.clone(), seen.clone(), failures.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + limit;
                for _ in 0..1_000_000 {
                    if stop.load(Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    match http_get(addr, "/") {
                        Ok((200, body)) => {
                            let v = body
                                .split("\"version\":\"")
                                .nth(1)
                                .and_then(|r| r.split('"').next())
                                .unwrap_or("?")
                                .to_string();
                            seen.lock().unwrap().push((v, Instant::now()));
                        }
                        Ok((s, b)) => failures.lock().unwrap().push(format!("{s} {}", b.trim())),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    Load {
        stop,
        seen,
        failures,
        threads,
    }
}

impl Load {
    /// Stops the load; panics if any request failed; returns what was seen.
    pub fn finish(self) -> Vec<(String, Instant)> {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let f = self.failures.lock().unwrap();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        assert!(
            f.is_empty(),
            "{} of {} requests failed: {:?}",
            f.len(),
            f.len() + seen.len(),
            &f[..f.len().min(5)]
        );
        assert!(
            seen.len() >= 100,
            "too little load to mean anything: {}",
            seen.len()
        );
        eprintln!("load: {} requests, 0 failed", seen.len());
        seen
    }

    pub fn wait_for_requests(&self, n: usize) {
        poll("load running", Duration::from_secs(20), || {
            (self.seen.lock().unwrap().len() >= n).then_some(())
        });
    }
}

pub fn versions_between(
    seen: &[(String, Instant)],
    from: Instant,
    to: Instant,
) -> std::collections::BTreeSet<String> {
    seen.iter()
        .filter(|(_, t)| *t >= from && *t <= to)
        .map(|(v, _)| v.clone())
        .collect()
}

pub fn stop(mut env: Env) {
    env.daemon.signal(libc::SIGTERM);
    assert!(
        env.daemon.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        env.daemon.stderr()
    );
    // Its log went to a pipe: plain text, no colour codes.
    assert!(
        !env.daemon.stderr().contains('\u{1b}'),
        "ANSI escapes in a log that is not a terminal"
    );
    let marked = handoff_runtime::procfs::marked_processes(&env.dir.path().join("state"));
    poll("no instance left", Duration::from_secs(10), || {
        handoff_runtime::procfs::marked_processes(&env.dir.path().join("state"))
            .is_empty()
            .then_some(())
    });
    let _ = marked;
}
