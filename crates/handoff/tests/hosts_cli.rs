//! `handoff hosts check` and `handoff hosts trust`, without a daemon: a host
//! nothing listens for, then (root with sshd only; skipped elsewhere, except
//! in CI) real hosts of the test bed, a known_hosts file without their keys,
//! trusting one, and a changed key refused.

mod common;

use common::bin;
use common::hostbed::HostBed;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long one `handoff hosts …` may take (ssh has ConnectTimeout=5).
const LIMIT: Duration = Duration::from_secs(60);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// `handoff hosts ARGS` with `input` on stdin, killed after [`LIMIT`].
fn hosts(args: &[&str], input: &str) -> Run {
    let mut child = Command::new(bin())
        .arg("hosts")
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(LIMIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions; the child is
            // not reaped yet (its waiter still waits), so the pid is its own.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("handoff hosts {} ran longer than {LIMIT:?}", args.join(" "));
        }
    };
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_host_nothing_listens_for_fails_the_check_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let kh = write(&dir.path().join("known_hosts"), "");
    let cfg = write(
        &dir.path().join("handoff.toml"),
        &format!(
            "[server]\nstate_dir = \"state\"\n\n\
             [hosts.h1]\naddress = \"root@127.0.0.1:1\"\nknown_hosts = \"{kh}\"\n\n\
             [hosts.h2]\naddress = \"root@127.0.0.1:1\"\n\n\
             [services.web]\nlisten = \"127.0.0.1:18080\"\nrevision = \"v1\"\n\
             hosts = [\"h1\"]\ncommand = \"sleep 1000 {{port}}\"\n"
        ),
    );

    let r = hosts(&["check", "-c", &cfg], "");
    assert_eq!(r.code, Some(1), "{}", r.all());
    assert!(r.stdout.starts_with("HOST"), "{}", r.stdout);
    assert!(!r.stdout.contains('\x1b'), "{}", r.stdout);
    let row = r.stdout.lines().find(|l| l.starts_with("h1 ")).unwrap();
    assert!(
        row.contains("root@127.0.0.1:1") && row.contains("FAIL"),
        "{row}"
    );
    assert!(r.stdout.contains("unreachable"), "{}", r.stdout);
    assert!(r.stdout.contains("Connection refused"), "{}", r.stdout);
    // h2 has no known_hosts file yet (STATE_DIR/known_hosts): trust first.
    assert!(r.stdout.contains("handoff hosts trust h2"), "{}", r.stdout);
    assert!(
        !dir.path().join("state").exists(),
        "a check creates nothing"
    );

    let r = hosts(&["check", "-c", &cfg, "--json", "h1"], "");
    assert_eq!(r.code, Some(1), "{}", r.all());
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["host"], "h1");
    assert_eq!(list[0]["address"], "root@127.0.0.1:1");
    assert_eq!(list[0]["ok"], false);
    assert!(list[0]["rtt_ms"].is_null(), "{v}");
    let problem = list[0]["problems"][0].as_str().unwrap();
    assert!(problem.contains("Connection refused"), "{problem}");

    // A name the config does not have: the ones it has.
    let r = hosts(&["check", "-c", &cfg, "h9"], "");
    assert_eq!(r.code, Some(1), "{}", r.all());
    assert!(
        r.stderr.contains("no host 'h9' in ") && r.stderr.contains("the hosts defined are h1, h2"),
        "{}",
        r.stderr
    );
    let r = hosts(&["trust", "h9", "-c", &cfg], "");
    assert_eq!(r.code, Some(1), "{}", r.all());
    assert!(
        r.stderr.contains("the hosts defined are h1, h2"),
        "{}",
        r.stderr
    );

    // Nothing to trust when nothing answers, and nothing written.
    let r = hosts(&["trust", "h1", "-c", &cfg, "--yes"], "");
    assert_eq!(r.code, Some(1), "{}", r.all());
    assert!(r.stderr.contains("Connection refused"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), "");

    // A broken config: the same located errors as `handoff check`.
    let bad = write(
        &dir.path().join("bad.toml"),
        "[hosts.h1]\naddress = \"root@127.0.0.1:99999\"\n",
    );
    let r = hosts(&["check", "-c", &bad], "");
    let c = Command::new(bin())
        .args(["check", "-c", &bad])
        .output()
        .unwrap();
    assert_eq!(r.code, c.status.code(), "{}", r.all());
    assert_eq!(r.stderr, String::from_utf8_lossy(&c.stderr));
    assert!(r.stderr.contains("hosts.h1.address"), "{}", r.stderr);
}

#[test]
fn real_hosts_pass_and_an_unknown_key_is_trusted_after_its_fingerprint() {
    let Some(bed) = HostBed::start(2) else { return };
    let dir = bed.dir().join("cli");
    std::fs::create_dir(&dir).unwrap();
    let service = "[services.web]\nlisten = \"127.0.0.1:18080\"\nrevision = \"v1\"\n\
                   hosts = [\"h1\", \"h2\"]\ncommand = \"sleep 1000 {port}\"\n";
    let server = format!(
        "[server]\nstate_dir = \"{}\"\n\n",
        dir.join("state").display()
    );
    let cfg = write(
        &dir.join("good.toml"),
        &format!("{server}{}{service}", bed.hosts_toml()),
    );

    let r = hosts(&["check", "-c", &cfg], "");
    assert_eq!(r.code, Some(0), "{}", r.all());
    for h in bed.hosts() {
        let row = r
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{} ", h.name)))
            .unwrap_or_else(|| panic!("no row for {}: {}", h.name, r.stdout));
        assert!(row.contains(&h.ip.to_string()), "{row}");
        assert!(row.contains(" ok "), "{row}");
        assert!(row.contains(" ms ") && row.contains("MB free"), "{row}");
    }
    assert!(r.stdout.contains("2 hosts ready"), "{}", r.stdout);

    // A program that is not on the hosts fails both, saying which.
    let missing = write(
        &dir.join("missing.toml"),
        &format!(
            "{server}{}{}",
            bed.hosts_toml(),
            service.replace("sleep 1000", "no-such-program-here")
        ),
    );
    let r = hosts(&["check", "-c", &missing, "--json"], "");
    assert_eq!(r.code, Some(1), "{}", r.all());
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    for h in v.as_array().unwrap() {
        assert_eq!(h["ok"], false, "{h}");
        assert!(h["rtt_ms"].as_u64().is_some(), "{h}");
        assert!(
            h["problems"][0]
                .as_str()
                .unwrap()
                .contains("no-such-program-here"),
            "{h}"
        );
    }

    // known_hosts without the hosts' keys: FAIL, with what to do.
    let empty = write(&dir.join("known_hosts"), "");
    let toml = bed
        .hosts_toml()
        .replace(&bed.known_hosts().display().to_string(), &empty);
    let cfg = write(
        &dir.join("untrusted.toml"),
        &format!("{server}{toml}{service}"),
    );
    let r = hosts(&["check", "-c", &cfg, "h1"], "");
    assert_eq!(r.code, Some(1), "{}", r.all());
    assert!(r.stdout.contains("FAIL"), "{}", r.stdout);
    assert!(
        r.stdout.contains("run `handoff hosts trust h1`"),
        "{}",
        r.stdout
    );

    // Trust asks first; no is no.
    let r = hosts(&["trust", "h1", "-c", &cfg], "n\n");
    assert_eq!(r.code, Some(1), "{}", r.all());
    assert!(r.stdout.contains("SHA256:"), "{}", r.stdout);
    assert!(r.stdout.contains(&empty), "names the file: {}", r.stdout);
    assert!(
        r.stdout.contains("Record these keys for h1? [y/N]"),
        "{}",
        r.stdout
    );
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "");

    // The fingerprint shown is the host's own.
    let key = bed.dir().join("h1").join("ssh_host_ed25519_key.pub");
    let own = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&key)
        .output()
        .unwrap();
    let own = String::from_utf8_lossy(&own.stdout);
    let fp = own.split_whitespace().nth(1).unwrap();
    let r = hosts(&["trust", "h1", "-c", &cfg, "--yes"], "");
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert!(r.stdout.contains(fp), "{fp} not in {}", r.stdout);
    let h1 = &bed.hosts()[0];
    let recorded = std::fs::read_to_string(&empty).unwrap();
    assert!(
        recorded.contains(&format!("{} ssh-ed25519 AAAA", h1.ip)),
        "{recorded}"
    );
    let r = hosts(&["check", "-c", &cfg, "h1"], "");
    assert_eq!(r.code, Some(0), "{}", r.all());
    // h2 is still unknown.
    let r = hosts(&["check", "-c", &cfg], "");
    assert_eq!(r.code, Some(1), "{}", r.all());

    // Again: already there, nothing changes.
    let r = hosts(&["trust", "h1", "-c", &cfg, "--yes"], "");
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert!(r.stdout.contains("already holds"), "{}", r.stdout);
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), recorded);

    // A different key on record: refused, even with --yes, loudly.
    let other = dir.join("other_key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(made.success());
    let public = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let blob = public.split_whitespace().nth(1).unwrap();
    let changed = format!("{} ssh-ed25519 {blob}\n", h1.ip);
    write(&dir.join("known_hosts"), &changed);
    let r = hosts(&["trust", "h1", "-c", &cfg, "--yes"], "");
    assert_eq!(r.code, Some(1), "{}", r.all());
    assert!(r.stderr.contains("HAS CHANGED"), "{}", r.stderr);
    assert!(r.stderr.contains("man-in-the-middle"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("ssh-keygen -R '{}' -f '{empty}'", h1.ip)),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), changed);

    // Trusting into the default STATE_DIR/known_hosts makes the dirs.
    let toml = bed.hosts_toml().replace(
        &format!("known_hosts = \"{}\"\n", bed.known_hosts().display()),
        "",
    );
    let cfg = write(
        &dir.join("default.toml"),
        &format!("{server}{toml}{service}"),
    );
    let r = hosts(&["trust", "h2", "-c", &cfg], "y\n");
    assert_eq!(r.code, Some(0), "{}", r.all());
    let kh = dir.join("state").join("known_hosts");
    assert!(r.stdout.contains(&kh.display().to_string()), "{}", r.stdout);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&kh).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "a new known_hosts is private: {mode:o}"
    );
    let r = hosts(&["check", "-c", &cfg, "h2"], "");
    assert_eq!(r.code, Some(0), "{}", r.all());
}
