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

    let (dns, listen, management) = (free_port(), free_port(), free_port());
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
            &format!("127.0.0.1:{}", free_port()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pebble = Bg(pebble);
    poll("pebble listening", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", listen))
            .ok()
            .map(|_| ())
    });
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
    let dir = tempfile::tempdir().unwrap();
    let (app, app_addr) = sample_app("v1", &[], dir.path());
    let (http01, https_port) = (free_port(), free_port());
    let ca = start_ca(dir.path(), http01);
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\
             [server.acme]\ndirectory = \"{}\"\nemail = \"ops@example.com\"\nca = \"ca.pem\"\n\
             http_listen = \"127.0.0.1:{http01}\"\n\
             [services.app]\nlisten = \"127.0.0.1:{https_port}\"\ndomains = [\"app.test\"]\n\
             targets = [\"{app_addr}\"]\n[services.app.tls]\nacme = true\nhsts = true\n",
            ca.directory
        ),
    )
    .unwrap();
    let start = |dir: &Path| {
        let mut d = Proc::spawn(&["serve", "-c", cfg.to_str().unwrap()], dir);
        let admin = addr_of(&d.wait_line("admin", Duration::from_secs(30)));
        d.wait_line("ready", Duration::from_secs(30));
        (d, admin)
    };
    let (mut daemon, admin) = start(dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{https_port}").parse().unwrap();

    // Issued, and served: the chain verifies against Pebble's root, for
    // the service's name (openssl checks it all).
    poll("the first certificate", Duration::from_secs(60), || {
        let a = acme_state(admin, dir.path())?;
        (a["state"] == "valid" && a["issued"].as_u64()? >= 1).then_some(())
    });
    let root = Command::new("curl")
        .args([
            "-sf",
            "--cacert",
            dir.path().join("ca.pem").to_str().unwrap(),
            &format!("https://127.0.0.1:{}/roots/0", ca.management),
        ])
        .output()
        .unwrap();
    assert!(
        root.status.success(),
        "Pebble's root from its management API"
    );
    std::fs::write(dir.path().join("pebble-root.pem"), &root.stdout).unwrap();
    let verified = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "app.test",
            "-verify_hostname",
            "app.test",
            "-verify_return_error",
            "-CAfile",
            dir.path().join("pebble-root.pem").to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success() && shown.contains("Verify return code: 0 (ok)"),
        "the served chain does not verify for app.test: {shown}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
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
    let r = plain_get(
        format!("127.0.0.1:{http01}").parse().unwrap(),
        "app.test",
        "/a/b?c=1",
    );
    assert!(r.starts_with("HTTP/1.1 308"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains(&format!("location: https://app.test:{https_port}/a/b?c=1")),
        "{r}"
    );
    let r = plain_get(
        format!("127.0.0.1:{http01}").parse().unwrap(),
        "app.test",
        "/.well-known/acme-challenge/nothing-open",
    );
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");

    // HTTPS load through a forced renewal and an automatic one.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let certs = Arc::new(Mutex::new(BTreeSet::<Vec<u8>>::new()));
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (stop, failures, certs, served) = (
                stop.clone(),
                failures.clone(),
                certs.clone(),
                served.clone(),
            );
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                for _ in 0..200_000 {
                    if stop.load(Relaxed) || Instant::now() > deadline {
                        return;
                    }
                    match https(addr, "app.test", "/", &[b"http/1.1"]) {
                        Ok(a) if a.code == 200 => {
                            served.fetch_add(1, Relaxed);
                            certs.lock().unwrap().insert(a.cert);
                        }
                        Ok(a) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", a.code, a.body.trim()))
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    poll("HTTPS load running", Duration::from_secs(20), || {
        (served.load(Relaxed) > 20).then_some(())
    });
    let first = https(addr, "app.test", "/", &[b"http/1.1"]).unwrap().cert;
    let (ok, out) = cli(admin, dir.path(), &["certificate", "renew", "app"]);
    assert!(ok && out.contains("renewed: app now presents"), "{out}");
    // Served at once: the CLI says so only after the proxy swapped it.
    let second = https(addr, "app.test", "/", &[b"http/1.1"]).unwrap().cert;
    assert_ne!(first, second, "the renewed certificate is not served");
    let (_, st) = cli(admin, dir.path(), &["status", "app"]);
    assert!(st.contains("acme: valid, renews in"), "{st}");
    // Two thirds of 30 s later, without being asked.
    poll(
        "an automatic renewal",
        Duration::from_secs(VALIDITY_S * 2),
        || {
            let a = acme_state(admin, dir.path())?;
            (a["issued"].as_u64()? >= 3).then_some(())
        },
    );
    poll("clients see the third", Duration::from_secs(10), || {
        (certs.lock().unwrap().len() >= 3).then_some(())
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
    // served, and backs off.
    let last = https(addr, "app.test", "/", &[b"http/1.1"]).unwrap().cert;
    drop(ca);
    let (ok, out) = cli(admin, dir.path(), &["certificate", "renew", "app"]);
    assert!(!ok && out.contains("FAILED"), "{out}");
    assert!(
        out.contains("cannot connect") && out.contains("current certificate stays"),
        "{out}"
    );
    let a = acme_state(admin, dir.path()).unwrap();
    assert_eq!(a["state"], "failed", "{a}");
    let wait = a["next_attempt_ms"].as_i64().unwrap() - client_now_ms();
    assert!(
        (30_000..=61_000).contains(&wait),
        "the first retry comes after about a minute, not {wait} ms"
    );
    assert_eq!(
        https(addr, "app.test", "/", &[b"http/1.1"]).unwrap().cert,
        last
    );
    let (_, st) = cli(admin, dir.path(), &["status", "app"]);
    assert!(st.contains("acme: FAILED 1 time(s)"), "{st}");

    // A restart serves the certificate from the state dir, not a stand-in.
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(30)).success());
    let (mut daemon, _) = start(dir.path());
    let again = s_client(addr, "app.test");
    let kept = std::fs::read_to_string(dir.path().join("state/acme/certs/app/cert.pem")).unwrap();
    assert_eq!(first_pem(&again), first_pem(&kept), "{again}");
    assert!(again.contains("Pebble Intermediate CA"), "{again}");
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(30)).success());
    drop(app);
}

fn client_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
