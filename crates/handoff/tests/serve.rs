//! End to end: the real binary serving static targets, its config errors,
//! its metrics and its shutdown.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn check_lists_every_problem_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[server]\nadmin = \"127.0.0.1:0\"\n\n[services.web]\nlisten = \"127.0.0.1:99999\"\ntargets = []\n\n[services.web.health]\nintervall = \"1s\"\ntimeout = \"soon\"\n",
    )
    .unwrap();
    for cmd in ["check", "serve"] {
        let out = std::process::Command::new(bin())
            .args([cmd, "-c", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd} accepted a bad config");
        let err = String::from_utf8_lossy(&out.stderr);
        let f = cfg.display().to_string();
        assert!(err.contains("has 4 problems"), "{cmd}: {err}");
        assert!(
            err.contains(&format!(
                "{f}:5:1: services.web.listen: '127.0.0.1:99999' is not an address"
            )),
            "{cmd}: {err}"
        );
        assert!(
            err.contains(&format!("{f}:6:1: services.web.targets: is empty")),
            "{cmd}: {err}"
        );
        assert!(err.contains(&format!("{f}:9:1: services.web.health.intervall: unknown key 'intervall'; did you mean 'interval'?")), "{cmd}: {err}");
        assert!(
            err.contains(&format!(
                "{f}:10:1: services.web.health.timeout: 'soon' is not a duration"
            )),
            "{cmd}: {err}"
        );
    }
    let out = std::process::Command::new(bin())
        .args([
            "check",
            "-c",
            dir.path().join("missing.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn check_reports_type_errors_located_and_a_missing_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("typed.toml");
    std::fs::write(
        &cfg,
        "[services.web]\nlisten = \"127.0.0.1:0\"\nrevision = 1\ninstances = \"4\"\ncommand = \"app {port}\"\nstop_grace = 10\nhelth = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let f = cfg.display().to_string();
    assert!(err.contains("has 4 problems"), "{err}");
    for line in [
        format!("{f}:3:1: services.web.revision: expected a string, found integer 1"),
        format!("{f}:4:1: services.web.instances: expected an integer, found string \"4\"; write 4 without quotes"),
        format!("{f}:6:1: services.web.stop_grace: needs a unit, e.g. \"10s\""),
        format!("{f}:7:1: services.web.helth: unknown key 'helth'; did you mean 'health'?"),
    ] {
        assert!(err.contains(&line), "no {line:?} in {err}");
    }

    let missing = dir.path().join("missing.toml");
    let out = std::process::Command::new(bin())
        .args(["check", "-c", missing.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        format!(
            "error: config file {} does not exist; pass yours with -c FILE (examples/ has samples)",
            missing.display()
        )
    );
}

#[test]
fn client_arguments_are_checked_and_list_the_choices() {
    for (args, want) in [
        (
            &["deploy", "web", "v2", "--strategy", "sideways"][..],
            "unknown strategy; use in-place, blue-green or all-at-once",
        ),
        (
            &["plan", "web", "v2", "--strategy", "sideways"][..],
            "unknown strategy; use in-place, blue-green, all-at-once or all",
        ),
        (
            &["deploy", "web", "v2", "--batch", "most"][..],
            "nor \"auto\"",
        ),
    ] {
        let out = std::process::Command::new(bin())
            .args(args)
            .env("HANDOFF_ADMIN", "http://127.0.0.1:9")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    for cmd in ["deploy", "plan"] {
        let out = std::process::Command::new(bin())
            .args([cmd, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("auto"), "{cmd} --help: {help}");
    }
}

#[test]
fn example_config_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = std::process::Command::new(bin())
                .args(["check", "-c", path.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn serves_static_targets_reports_metrics_and_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, a) = sample_app("v1", &["--instance", "a"], dir.path());
    let (_b, b) = sample_app("v1", &["--instance", "b"], dir.path());
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nadmin = \"127.0.0.1:0\"\n[services.api]\nlisten = \"127.0.0.1:0\"\ntargets = [\"{a}\", \"{b}\"]\n[services.api.health]\ninterval = \"100ms\"\n"
        ),
    )
    .unwrap();
    let mut d = Proc::spawn(&["serve", "-c", cfg.to_str().unwrap()], dir.path());
    let api = addr_of(&d.wait_line("listening service=api", Duration::from_secs(10)));
    let admin = addr_of(&d.wait_line("admin", Duration::from_secs(10)));
    d.wait_line("ready", Duration::from_secs(10));
    // Both targets come into service.
    poll("both instances serve", Duration::from_secs(10), || {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..40 {
            if let Ok((200, body)) = http_get(api, "/") {
                seen.insert(body.contains("\"instance\":\"a\""));
            }
        }
        (seen.len() == 2).then_some(())
    });
    assert_eq!(http_get(admin, "/healthz").unwrap().0, 200);
    let (s, metrics) = admin_get(admin, dir.path(), "/metrics").unwrap();
    assert_eq!(s, 200);
    assert!(metrics.contains(&format!("handoff_requests_total{{service=\"api\",group=\"default\",target=\"{a}\",revision=\"static\",code=\"2xx\"}}")), "{metrics}");
    assert!(metrics.contains(&format!("handoff_target_state{{service=\"api\",group=\"default\",target=\"{b}\",revision=\"static\",state=\"healthy\"}} 1")), "{metrics}");
    assert!(
        metrics.contains("handoff_request_duration_seconds_bucket"),
        "{metrics}"
    );

    // SIGTERM while a slow request is in flight: it completes, then exit 0.
    let dirp = dir.path().to_path_buf();
    let slow = std::thread::spawn(move || http_get(api, "/sleep?ms=700"));
    poll("slow request in flight", Duration::from_secs(5), || {
        let (_, m) = admin_get(admin, &dirp, "/metrics").ok()?;
        m.lines()
            .any(|l| l.starts_with("handoff_target_in_flight") && l.ends_with(" 1"))
            .then_some(())
    });
    d.signal(libc::SIGTERM);
    let (s, body) = slow.join().unwrap().unwrap();
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("slept_ms"), "{body}");
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}: {}", d.stderr());
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect_timeout(&api, Duration::from_millis(500)).is_err());
}

#[test]
fn sample_app_knobs_and_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, sick) = sample_app("v2", &["--fail-health", "--error-rate", "1.0"], dir.path());
    assert_eq!(http_get(sick, "/healthz").unwrap().0, 503);
    let (s, body) = http_get(sick, "/").unwrap();
    assert_eq!(s, 500);
    assert!(body.contains("\"version\":\"v2\""), "{body}");

    let (mut app, addr) = sample_app("v3", &["--instance", "web-1"], dir.path());
    let (s, body) = http_get(addr, "/").unwrap();
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(v["version"], "v3");
    assert_eq!(v["instance"], "web-1");
    assert_eq!(v["pid"], app.child.id());
    // SIGTERM mid-request: the request finishes, the app exits 0.
    let slow = std::thread::spawn(move || http_get(addr, "/sleep?ms=500"));
    std::thread::sleep(Duration::from_millis(150)); // let the request arrive; the app has no probe for it
    app.signal(libc::SIGTERM);
    assert_eq!(slow.join().unwrap().unwrap().0, 200);
    assert!(app.wait_exit(Duration::from_secs(10)).success());

    let (mut crash, _) = sample_app("v4", &["--crash-after", "200ms"], dir.path());
    let st = crash.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(1));
}

#[test]
fn admin_api_requires_the_token_and_a_public_address_requires_an_explicit_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(&cfg, "[server]\nadmin = \"0.0.0.0:0\"\n[services.api]\nlisten = \"127.0.0.1:0\"\ntargets = [\"127.0.0.1:9\"]\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "-c", cfg.to_str().unwrap()])
        .env_remove("HANDOFF_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.admin 0.0.0.0:0 is reachable from other machines")
            && err.contains("needs an explicit token"),
        "{err}"
    );

    // Loopback: a token is generated into the state dir, mode 0600.
    std::fs::write(&cfg, "[server]\nadmin = \"127.0.0.1:0\"\n[services.api]\nlisten = \"127.0.0.1:0\"\ntargets = [\"127.0.0.1:9\"]\n").unwrap();
    let mut d = Proc::spawn(&["serve", "-c", cfg.to_str().unwrap()], dir.path());
    let admin = addr_of(&d.wait_line("admin", Duration::from_secs(10)));
    d.wait_line("ready", Duration::from_secs(10));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join(".handoff/token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        http_get(admin, "/healthz").unwrap().0,
        200,
        "healthz needs no token"
    );
    for path in ["/metrics", "/services", "/deployments/x"] {
        let (s, body) = http_get(admin, path).unwrap();
        assert_eq!(s, 401, "{path}");
        assert!(
            body.contains("\"code\":\"unauthorized\"") && body.contains("missing bearer token"),
            "{body}"
        );
    }
    let (s, body) = request_with(
        admin,
        "/services",
        "Authorization: Bearer wrong-token-xxxxxxxx\r\n",
    );
    assert_eq!(s, 401);
    assert!(body.contains("wrong bearer token"), "{body}");
    assert_eq!(admin_get(admin, dir.path(), "/services").unwrap().0, 200);
    // The CLI finds address and token through ./handoff.toml; a wrong one is refused clearly.
    let (ok, out) = cli(admin, dir.path(), &["status", "--json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["name"], "api");
    let bad = std::process::Command::new(bin())
        .args([
            "status",
            "--admin",
            &format!("http://{admin}"),
            "--token",
            "nope",
        ])
        .current_dir("/")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("wrong bearer token"));
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
}

fn request_with(addr: std::net::SocketAddr, path: &str, header: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{header}\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    (out.split_whitespace().nth(1).unwrap().parse().unwrap(), out)
}
