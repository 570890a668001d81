//! Automatic certificates (RFC 8555) from Pebble, the ACME test CA, over
//! HTTP-01: Pebble resolves the service's name through
//! `pebble-challtestsrv` (its DNS) to 127.0.0.1 and fetches the challenge
//! from handoff's `http_listen`. Certificates live 30 s here, so renewal at
//! two thirds of the lifetime happens within the test, beside one forced
//! by `handoff certificate renew`, all under HTTPS load.
//!
//! Needs Debian's `pebble` package (CI installs it); elsewhere the test
//! skips with a message.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::https::{first_pem, https, s_client};
use common::*;

/// How long Pebble's certificates last (renewed after 20 s).
const VALIDITY_S: u64 = 30;

/// A child process killed and reaped on drop.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pebble and its DNS, with a certificate of our own test root for
/// Pebble's HTTPS (handoff trusts it through `[server.acme] ca`).
struct Ca {
    _dns: Bg,
    _pebble: Bg,
    directory: String,
    management: u16,
}

fn start_ca(dir: &Path, http01_port: u16) -> Ca {
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut root = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root.distinguished_name
        .push(rcgen::DnType::CommonName, "handoff test root");
    let root_cert = root.self_signed(&root_key).unwrap();
    let issuer = rcgen::Issuer::new(root, root_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), root_cert.pem()).unwrap();
    std::fs::write(dir.join("pebble.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("pebble.key"), leaf_key.serialize_pem()).unwrap();

    let (dns, listen, management, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let dns_proc = Command::new("pebble-challtestsrv")
        .args([
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            &format!("127.0.0.1:{dns}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{dns_mgmt}"),
        ])
        .stdout(log("challtestsrv.log"))
        .stderr(log("challtestsrv.err"))
        .spawn()
        .unwrap();
    let dns_proc = Bg(dns_proc);
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{listen}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": dir.join("pebble.pem"),
        "privateKey": dir.join("pebble.key"),
        "httpPort": http01_port,
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "certificateValidityPeriod": VALIDITY_S,
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let pebble = Command::new("pebble")
        .args([
            "-config",
            dir.join("pebble.json").to_str().unwrap(),
            "-dnsserver",
            &format!("127.0.0.1:{dns}"),
        ])
        // No random waits before validating; more nonces refused than by
        // default, so the client's badNonce retry is exercised.
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "15")
        .stdout(log("pebble.log"))
        .stderr(log("pebble.err"))
        .spawn()
        .unwrap();
    let pebble = Bg(pebble);
    // Both up before handoff's first order (a failed one backs off 60 s).
    for (what, port) in [("pebble", listen), ("pebble-challtestsrv", dns_mgmt)] {
        poll(
            &format!("{what} listening"),
            Duration::from_secs(20),
            || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .ok()
                    .map(|_| ())
            },
        );
    }
    Ca {
        _dns: dns_proc,
        _pebble: pebble,
        directory: format!("https://127.0.0.1:{listen}/dir"),
        management,
    }
}

fn acme_state(admin: SocketAddr, dir: &Path) -> Option<serde_json::Value> {
    let (_, body) = admin_get(admin, dir, "/services").ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.as_array()?
        .iter()
        .find(|s| s["name"] == "app")
        .map(|s| s["certificate"]["acme"].clone())
}

fn plain_get(addr: SocketAddr, host: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Pebble's and its DNS's output, for a failure message.
fn ca_logs(dir: &Path) -> String {
    [
        "pebble.log",
        "pebble.err",
        "challtestsrv.log",
        "challtestsrv.err",
    ]
    .iter()
    .map(|f| {
        format!(
            "--- {f}\n{}",
            std::fs::read_to_string(dir.join(f)).unwrap_or_default()
        )
    })
    .collect()
}

/// [`poll`], but a timeout shows what the daemon and the CA said.
fn poll_acme<T>(
    what: &str,
    limit: Duration,
    dir: &Path,
    daemon: &Proc,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!(
                "timed out after {limit:?} waiting for {what}\n--- handoff\n{}\n{}",
                daemon.stderr(),
                ca_logs(dir)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn config(ca: &Ca, http01: u16, https_port: u16, app: SocketAddr, domains: &str) -> String {
    format!(
        "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\
         [server.acme]\ndirectory = \"{}\"\nemail = \"ops@example.com\"\nca = \"ca.pem\"\n\
         http_listen = \"127.0.0.1:{http01}\"\n\
         [services.app]\nlisten = \"127.0.0.1:{https_port}\"\ndomains = [{domains}]\n\
         targets = [\"{app}\"]\n[services.app.tls]\nacme = true\nhsts = true\n",
        ca.directory
    )
}

/// Verifies the chain served for `host` against `root` with openssl
/// (`-verify_hostname`): its output.
fn verify(addr: SocketAddr, host: &str, root: &Path) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            host,
            "-verify_hostname",
            host,
            "-verify_return_error",
            "-CAfile",
            root.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && shown.contains("Verify return code: 0 (ok)"),
        "the chain served for {host} does not verify: {shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    shown
}

#[test]
fn a_certificate_from_pebble_is_served_and_renewed_under_load() {
    if !have("pebble") || !have("pebble-challtestsrv") {
        let why = "pebble / pebble-challtestsrv not installed (apt-get install pebble)";
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("skipped: {why}");
        return;
    }
    // Daemons started by a reload are re-parented to the test, which
    // reaps them.
    // SAFETY: prctl with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (app, app_addr) = sample_app("v1", &[], d);
    let (http01, https_port) = (free_port(), free_port());
    let ca = start_ca(d, http01);
    let cfg = d.join("handoff.toml");
    std::fs::write(
        &cfg,
        config(&ca, http01, https_port, app_addr, "\"app.test\""),
    )
    .unwrap();
    let start = || {
        let mut p = Proc::spawn(&["serve", "-c", cfg.to_str().unwrap()], d);
        let admin = addr_of(&p.wait_line("admin", Duration::from_secs(30)));
        p.wait_line("ready", Duration::from_secs(30));
        (p, admin)
    };
    let (mut daemon, admin) = start();
    let addr: SocketAddr = format!("127.0.0.1:{https_port}").parse().unwrap();

    // Issued, and served: the chain verifies against Pebble's root, for
    // the service's name.
    poll_acme(
        "the first certificate",
        Duration::from_secs(60),
        d,
        &daemon,
        || {
            let a = acme_state(admin, d)?;
            (a["state"] == "valid" && a["issued"].as_u64()? >= 1).then_some(())
        },
    );
    let root = Command::new("curl")
        .args([
            "-sf",
            "--cacert",
            d.join("ca.pem").to_str().unwrap(),
            &format!("https://127.0.0.1:{}/roots/0", ca.management),
        ])
        .output()
        .unwrap();
    assert!(
        root.status.success(),
        "Pebble's root from its management API"
    );
    let root_pem = d.join("pebble-root.pem");
    std::fs::write(&root_pem, &root.stdout).unwrap();
    let shown = verify(addr, "app.test", &root_pem);
    assert!(shown.contains("Pebble Intermediate CA"), "{shown}");
    let a = poll(
        "the app answering over HTTPS",
        Duration::from_secs(20),
        || {
            https(addr, "app.test", "/", &[b"http/1.1"])
                .ok()
                .filter(|a| a.code == 200)
        },
    );
    assert!(
        a.headers.contains("strict-transport-security"),
        "{}",
        a.headers
    );

    // The plain listener: challenges only while open, the rest redirected.
    let plain: SocketAddr = format!("127.0.0.1:{http01}").parse().unwrap();
    let r = plain_get(plain, "app.test", "/a/b?c=1");
    assert!(r.starts_with("HTTP/1.1 308"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains(&format!("location: https://app.test:{https_port}/a/b?c=1")),
        "{r}"
    );
    let r = plain_get(
        plain,
        "app.test",
        "/.well-known/acme-challenge/nothing-open",
    );
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    // A Host that could point the redirect elsewhere is never redirected.
    let r = plain_get(plain, "evil.test/@x", "/");
    assert!(!r.starts_with("HTTP/1.1 308"), "{r}");

    // A restart with a name added: the certificate in the state dir keeps
    // serving app.test (no stand-in), and one for both names is ordered
    // at once.
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(30)).success());
    std::fs::write(
        &cfg,
        config(
            &ca,
            http01,
            https_port,
            app_addr,
            "\"app.test\", \"www.app.test\"",
        ),
    )
    .unwrap();
    let (mut daemon, admin) = start();
    assert!(
        !daemon.stderr().contains("stand-in"),
        "a valid certificate was replaced by a stand-in: {}",
        daemon.stderr()
    );
    poll_acme(
        "a certificate for both names",
        Duration::from_secs(60),
        d,
        &daemon,
        || {
            let a = acme_state(admin, d)?;
            (a["state"] == "valid" && a["issued"].as_u64()? >= 1).then_some(())
        },
    );
    verify(addr, "www.app.test", &root_pem);
    poll("the app healthy again", Duration::from_secs(20), || {
        https(addr, "www.app.test", "/", &[b"http/1.1"])
            .ok()
            .filter(|a| a.code == 200)
    });

    // HTTPS load through a forced renewal and an automatic one.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let certs = Arc::new(Mutex::new(BTreeSet::<Vec<u8>>::new()));
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = ["app.test", "www.app.test"]
        .into_iter()
        .map(|host| {
            let (stop, failures, certs, served) = (
                stop.clone(),
                failures.clone(),
                certs.clone(),
                served.clone(),
            );
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(150);
                for _ in 0..200_000 {
                    if stop.load(Relaxed) || Instant::now() > deadline {
                        return;
                    }
                    match https(addr, host, "/", &[b"http/1.1"]) {
                        Ok(a) if a.code == 200 => {
                            served.fetch_add(1, Relaxed);
                            certs.lock().unwrap().insert(a.cert);
                        }
                        Ok(a) => failures.lock().unwrap().push(format!(
                            "{host}: {} {}",
                            a.code,
                            a.body.trim()
                        )),
                        Err(e) => failures.lock().unwrap().push(format!("{host}: {e}")),
                    }
                }
            })
        })
        .collect();
    poll("HTTPS load running", Duration::from_secs(20), || {
        (served.load(Relaxed) > 20).then_some(())
    });
    let before = https(addr, "app.test", "/", &[b"http/1.1"]).unwrap().cert;
    let (ok, out) = cli(admin, d, &["certificate", "renew", "app"]);
    assert!(ok && out.contains("renewed: app now presents"), "{out}");
    // Served at once: the CLI says so only after the proxy swapped it.
    let after = https(addr, "app.test", "/", &[b"http/1.1"]).unwrap().cert;
    assert_ne!(before, after, "the renewed certificate is not served");
    let (_, st) = cli(admin, d, &["status", "app"]);
    assert!(st.contains("acme: valid, renews in"), "{st}");

    // A reload hands the plain listener over with the rest: the new
    // daemon answers the CA's challenges for the next renewal.
    let old_pid = daemon_pid(admin, d);
    let (ok, out) = cli(admin, d, &["reload"]);
    assert!(ok && out.contains("reloaded: pid"), "{out}");
    let pid = poll("the new daemon", Duration::from_secs(60), || {
        Some(daemon_pid(admin, d)).filter(|p| *p != old_pid)
    });
    let _last_daemon = StopOnDrop(pid);
    assert!(daemon.wait_exit(Duration::from_secs(30)).success());
    let (ok, out) = cli(admin, d, &["certificate", "renew", "app"]);
    assert!(ok && out.contains("renewed: app now presents"), "{out}");
    // Two thirds of 30 s later, without being asked.
    poll_acme(
        "an automatic renewal",
        Duration::from_secs(VALIDITY_S * 2),
        d,
        &daemon,
        || {
            let a = acme_state(admin, d)?;
            (a["issued"].as_u64()? >= 2).then_some(())
        },
    );
    poll("clients see the fourth", Duration::from_secs(10), || {
        (certs.lock().unwrap().len() >= 4).then_some(())
    });
    stop.store(true, Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let failed = failures.lock().unwrap().clone();
    let n = served.load(Relaxed);
    eprintln!(
        "{n} HTTPS requests over {} certificates, {} failed",
        certs.lock().unwrap().len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {n} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );

    // The CA goes away: a renewal fails, says why, keeps the certificate
    // served, and backs off. Done between two automatic renewals, so that
    // only the one asked for fails here.
    let failures_before = poll("a quiet moment", Duration::from_secs(VALIDITY_S), || {
        let a = acme_state(admin, d)?;
        let quiet = a["state"] == "valid" && a["renew_at_ms"].as_i64()? > client_now_ms() + 8_000;
        quiet.then(|| a["failures"].as_u64().unwrap_or(0))
    });
    let last = https(addr, "app.test", "/", &[b"http/1.1"]).unwrap().cert;
    drop(ca);
    let (ok, out) = cli(admin, d, &["certificate", "renew", "app"]);
    assert!(!ok && out.contains("FAILED"), "{out}");
    assert!(
        out.contains("cannot connect") && out.contains("current certificate stays"),
        "{out}"
    );
    let a = acme_state(admin, d).unwrap();
    assert_eq!(a["state"], "failed", "{a}");
    let n = failures_before + 1;
    assert_eq!(a["failures"].as_u64(), Some(n), "{a}");
    let wait = a["next_attempt_ms"].as_i64().unwrap() - client_now_ms();
    let backoff = 60_000 * (1i64 << (n - 1));
    assert!(
        (backoff - 30_000..=backoff + 1_000).contains(&wait),
        "after {n} failure(s) the next try comes after {backoff} ms, not {wait} ms"
    );
    assert_eq!(
        https(addr, "app.test", "/", &[b"http/1.1"]).unwrap().cert,
        last
    );
    let (_, st) = cli(admin, d, &["status", "app"]);
    assert!(st.contains(&format!("acme: FAILED {n} time(s)")), "{st}");
    let kept = std::fs::read_to_string(d.join("state/acme/certs/app/cert.pem")).unwrap();
    assert_eq!(first_pem(&s_client(addr, "app.test")), first_pem(&kept));

    // SAFETY: kill(2) on the daemon this test started (by a reload).
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    reap(pid, Duration::from_secs(30));
    drop(app);
}

fn daemon_pid(admin: SocketAddr, dir: &Path) -> u32 {
    let (_, b) = admin_get(admin, dir, "/daemon").unwrap();
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    v["pid"].as_u64().unwrap() as u32
}

/// Waits (with a deadline) for `pid` to exit and reaps it (the test is
/// the subreaper of the daemons its daemon hands over to).
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

/// Stops the daemon a reload started if the test ends early: nothing it
/// started is left running.
struct StopOnDrop(u32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: kill(2) on a daemon this test started.
            unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
            reap(self.0, Duration::from_secs(30));
        }
    }
}

fn client_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
