//! End to end: the daemon says why, while it happens. A revision that never
//! gets healthy shows its last health check during `deploy` (long before
//! `healthy_deadline`) and in the failure; instances that cannot start are
//! listed with their error by `serve` and `status`.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::scenario::*;
use common::*;

/// A CLI run whose stdout lines arrive as they are printed, with when.
struct Live {
    child: std::process::Child,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
}

impl Live {
    fn spawn(env: &Env, args: &[&str]) -> Live {
        let mut child = Command::new(bin())
            .args(args)
            .current_dir(env.dir.path())
            .env("HANDOFF_ADMIN", format!("http://{}", env.admin))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn handoff");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), l)).is_err() {
                    break;
                }
            }
        });
        Live {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line containing `text`, waiting up to `limit`.
    fn wait_for(&mut self, text: &str, limit: Duration) -> (Instant, String) {
        if let Some(l) = self.seen.iter().find(|(_, l)| l.contains(text)) {
            return l.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.1.contains(text) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {text:?} within {limit:?}; stdout so far:\n{}",
                    self.text()
                ),
            }
        }
    }

    /// Waits for the exit (killing it past `limit`); its success and output.
    fn finish(mut self, limit: Duration) -> (bool, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("still running after {limit:?}:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader ends at EOF, which follows the exit.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        (status.success(), self.text())
    }

    fn text(&self) -> String {
        self.seen
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[test]
fn a_revision_that_never_gets_healthy_says_why_while_deploy_waits() {
    // healthy_deadline 8 s (from `setup`).
    let env = setup(1, "");
    let mut deploy = Live::spawn(&env, &["deploy", "web", "bad-v2"]);
    let (waiting, intro) = deploy.wait_for("waiting up to", Duration::from_secs(20));
    assert!(intro.contains("8s (healthy_deadline)"), "{intro}");
    // The sample app's `bad*` answers /healthz with 503.
    let (said, line) = deploy.wait_for("GET /healthz \u{2192} 503", Duration::from_secs(20));
    let after = said.duration_since(waiting);
    assert!(
        after < Duration::from_secs(6),
        "the last check came {after:?} after waiting began, too close to the 8 s deadline: {line}"
    );
    assert!(line.contains("in a row"), "{line}");
    assert!(line.contains("deadline in "), "{line}");
    let (ok, out) = deploy.finish(Duration::from_secs(90));
    eprintln!("{out}");
    assert!(!ok, "a failed deploy exits non-zero:\n{out}");
    let reason = out
        .lines()
        .find(|l| l.starts_with("rolled back:"))
        .unwrap_or_else(|| panic!("no verdict:\n{out}"));
    assert!(
        reason.contains("not healthy within healthy_deadline 8s"),
        "{reason}"
    );
    assert!(
        reason.contains("last check GET /healthz \u{2192} 503"),
        "{reason}"
    );
    assert!(reason.contains("see `handoff logs web web-"), "{reason}");
    // The report says it never became healthy, not that it started slowly.
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("deployment "))
        .unwrap_or_else(|| panic!("no deployment id:\n{out}"));
    let (_, report) = env.cli(&["report", id]);
    assert!(!report.contains("started slower"), "{report}");
    assert!(!report.contains("healthy after"), "{report}");
    assert!(report.contains("never became healthy"), "{report}");
    stop(env);
}

#[test]
fn instances_that_cannot_start_are_listed_with_their_error() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(
        &cfg,
        "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\
         [services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"v1\"\ninstances = 2\n\
         command = \"./no-such-app {port}\"\nstop_grace = \"2s\"\n",
    )
    .unwrap();
    let mut daemon = Proc::spawn(&["serve", "-c", cfg.to_str().unwrap()], dir.path());
    let admin = addr_of(&daemon.wait_line("admin", Duration::from_secs(20)));
    daemon.wait_line("ready", Duration::from_secs(20));
    let warning = daemon.wait_line("warning: web:", Duration::from_secs(5));
    assert!(warning.contains("0 of 2 instances running"), "{warning}");
    assert!(warning.contains("web-1: "), "{warning}");
    assert!(warning.contains("no-such-app"), "{warning}");

    let status = poll(
        "status lists both instances",
        Duration::from_secs(20),
        || {
            let (ok, out) = cli(admin, dir.path(), &["status", "web"]);
            (ok && out.contains("web-1") && out.contains("web-2")).then_some(out)
        },
    );
    eprintln!("{warning}\n{status}");
    assert!(status.contains("instances: 0 of 2 running"), "{status}");
    let web1 = status
        .lines()
        .find(|l| l.trim_start().starts_with("web-1 "))
        .unwrap_or_else(|| panic!("no web-1 line:\n{status}"));
    assert!(web1.contains("no-such-app"), "{web1}");
    assert!(web1.contains("command not found"), "{web1}");
    // web-1 before web-2.
    assert!(status.find("web-1").unwrap() < status.find("web-2").unwrap());

    // The API has the same, per instance.
    let (code, body) = admin_get(admin, dir.path(), "/services").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let instances = v[0]["instances"].as_array().expect("instances").clone();
    assert_eq!(instances.len(), 2, "{body}");
    for i in &instances {
        assert_ne!(i["state"], "running", "{i}");
        assert!(
            i["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("command not found")),
            "{i}"
        );
    }
    // Start failures are warnings in the daemon's log, not INFO noise.
    assert!(
        daemon
            .stderr()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("start-failed")),
        "{}",
        daemon.stderr()
    );

    daemon.signal(libc::SIGTERM);
    assert!(
        daemon.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        daemon.stderr()
    );
}
