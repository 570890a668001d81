//! Inputs that cannot inject: revision ids and names follow one rule
//! wherever they enter (API, CLI, config), and placeholder values reach the
//! shell as quoted words, on the real daemon.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// A path no other test (or run) uses, that must never come to exist.
fn marker(what: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let p = std::env::temp_dir().join(format!(
        "handoff-pwned-{what}-{}-{nanos}",
        std::process::id()
    ));
    assert!(!p.exists());
    p
}

/// A POST on the admin API with the daemon's token: (status, JSON body).
fn post(admin: SocketAddr, dir: &Path, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        token(dir),
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = out
        .split_once("\r\n\r\n")
        .and_then(|x| serde_json::from_str(x.1).ok())
        .unwrap_or_default();
    (status, json)
}

/// One managed instance of the sample app, run by `app.sh` in the config's
/// directory (its release directory) as `{release_dir}/app.sh`.
fn start(dir: &Path) -> (Proc, SocketAddr, SocketAddr) {
    let app = dir.join("app.sh");
    std::fs::write(
        &app,
        format!(
            "#!/bin/sh\nexec '{}' sample-app --port \"$1\" --version \"$2\"\n",
            bin()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.join("handoff.toml");
    std::fs::write(
        &cfg,
        "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\
         [services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"v1\"\ninstances = 1\n\
         command = \"{release_dir}/app.sh {port} {revision}\"\nstop_grace = \"3s\"\n\
         [services.web.health]\ninterval = \"100ms\"\nmin_healthy_time = \"0s\"\nhealthy_deadline = \"10s\"\n",
    )
    .unwrap();
    let mut d = Proc::spawn(&["serve", "-c", cfg.to_str().unwrap()], dir);
    let web = addr_of(&d.wait_line("listening service=web", Duration::from_secs(20)));
    let admin = addr_of(&d.wait_line("admin", Duration::from_secs(20)));
    d.wait_line("ready", Duration::from_secs(20));
    (d, web, admin)
}

/// The version the service answers with, once it answers.
fn version(web: SocketAddr) -> Option<String> {
    let (code, body) = http_get(web, "/").ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    Some(v["version"].as_str()?.to_string())
}

#[test]
fn the_api_refuses_ids_that_could_become_code_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, web, admin) = start(dir.path());
    poll("v1 serving", Duration::from_secs(20), || {
        (version(web)? == "v1").then_some(())
    });
    let m = marker("api");
    let m = m.display();
    for revision in [
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("v2;touch {m}"),
        format!("v2' ; touch {m} ; '"),
        format!("v2\"$(touch {m})\""),
        format!("v2\ntouch {m}"),
        // Without a '/', which the old ad-hoc check refused: instances run
        // in the config's directory, where these would leave `pwned`.
        "$(touch pwned)".to_string(),
        "v2;touch pwned".to_string(),
        "v2&&touch${IFS}pwned".to_string(),
    ] {
        let deploy = serde_json::json!({ "service": "web", "revision": revision }).to_string();
        let plan = serde_json::json!({ "revision": revision }).to_string();
        for (path, body) in [("/deployments", deploy), ("/services/web/plan", plan)] {
            let (code, json) = post(admin, dir.path(), path, &body);
            assert_eq!(code, 400, "POST {path} {revision:?}: {json}");
            let msg = json["error"]["message"].as_str().unwrap_or_default();
            assert!(
                msg.starts_with("revision: '")
                    && msg.contains("is not a valid revision id")
                    && msg.ends_with(
                        "use letters, digits, '.', '_', '+', '-' (first a letter or digit), \
                         at most 128 characters"
                    ),
                "POST {path} {revision:?}: {msg}"
            );
        }
    }
    // A 5,000-character id is a clear 400 (it used to be a 500: too long a
    // file name), and the message does not repeat it whole.
    let long = "a".repeat(5000);
    let (code, json) = post(
        admin,
        dir.path(),
        "/deployments",
        &serde_json::json!({ "service": "web", "revision": long }).to_string(),
    );
    assert_eq!(code, 400, "{json}");
    let msg = json["error"]["message"].as_str().unwrap();
    assert!(msg.contains("it is 5000 characters long"), "{msg}");
    assert!(msg.len() < 300, "{msg}");
    // Nothing was started, nothing ran.
    let history = get_json(admin, dir.path(), "/services/web/deployments");
    assert_eq!(history, serde_json::json!([]), "{history}");
    assert!(!Path::new(&m.to_string()).exists(), "{m} was created");
    assert!(!dir.path().join("pwned").exists());
    // A valid id with the rule's punctuation deploys, quoted all the way to
    // the app (the command is `{release_dir}/app.sh {port} {revision}`).
    let (ok, out) = cli(admin, dir.path(), &["deploy", "web", "v2.1+build_7-rc"]);
    assert!(ok, "{out}");
    assert_eq!(version(web).as_deref(), Some("v2.1+build_7-rc"));
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}: {}", daemon.stderr());
    assert!(!Path::new(&m.to_string()).exists(), "{m} was created");
    assert!(!dir.path().join("pwned").exists());
}

fn get_json(admin: SocketAddr, dir: &Path, path: &str) -> serde_json::Value {
    let (code, body) = admin_get(admin, dir, path).unwrap();
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn the_cli_refuses_a_bad_id_before_sending_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = marker("cli");
    let bad = format!("$(touch {})", m.display());
    // Nothing listens on port 1: had it tried to send, it would say so.
    let admin: SocketAddr = "127.0.0.1:1".parse().unwrap();
    for args in [
        vec!["deploy", "web", bad.as_str()],
        vec!["plan", "web", bad.as_str()],
        vec!["rollback", "web", "--to", bad.as_str()],
    ] {
        let (ok, out) = cli(admin, dir.path(), &args);
        assert!(!ok, "{args:?}: {out}");
        assert!(
            out.starts_with("error: revision: '$(touch ")
                && out.contains("is not a valid revision id (it starts with '$'): use letters"),
            "{args:?}: {out}"
        );
    }
    let (ok, out) = cli(admin, dir.path(), &["deploy", "web@1", "v2"]);
    assert!(!ok);
    assert!(
        out.starts_with("error: service: 'web@1' is not a valid service name ('@' is not allowed)"),
        "{out}"
    );
    assert!(!m.exists());
}

#[test]
fn a_config_with_a_bad_revision_id_is_refused_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(
        &cfg,
        "[services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"v1 && reboot\"\ninstances = 1\n\
         command = \"app --port {port} --version \\\"$(echo {revision})\\\"\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let at = |line: usize, key: &str| format!("{}:{line}:1: {key}: ", cfg.display());
    assert!(
        err.contains(&format!(
            "{}'v1 && reboot' is not a valid revision id (a space is not allowed)",
            at(3, "services.web.revision")
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}placeholder {{revision}} is inside a command substitution",
            at(5, "services.web.command")
        )),
        "{err}"
    );
}

#[test]
fn a_release_dir_with_spaces_and_quotes_starts() {
    let tmp = tempfile::tempdir().unwrap();
    // The config's directory is the release directory of a revision without
    // an artifact: `{release_dir}` carries all of this name into the command
    // (which runs there, so an injected `touch pwned` would create it there).
    let dir = tmp
        .path()
        .join("it's a \"dir\" $(touch pwned) `touch pwned`;x");
    std::fs::create_dir(&dir).unwrap();
    let (mut daemon, web, _admin) = start(&dir);
    let v = poll("the instance serving", Duration::from_secs(20), || {
        version(web)
    });
    assert_eq!(v, "v1");
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}: {}", daemon.stderr());
    assert!(!dir.join("pwned").exists() && !tmp.path().join("pwned").exists());
}
