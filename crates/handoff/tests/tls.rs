//! HTTPS: three services on one TLS address, each presenting its own
//! certificate by SNI, HTTP/2 by ALPN; a deploy and a certificate replaced
//! on disk under HTTPS load, with no request failed.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::https::https;
use common::scenario::*;
use common::*;

/// A self-signed certificate for `names` into `DIR/FILE.pem` and `.key`;
/// its DER.
fn write_cert(dir: &Path, file: &str, names: &[&str]) -> Vec<u8> {
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    // Written beside, then renamed: a reader never sees half a file.
    std::fs::write(dir.join(format!("{file}.key.new")), key.serialize_pem()).unwrap();
    std::fs::write(dir.join(format!("{file}.pem.new")), cert.pem()).unwrap();
    std::fs::rename(
        dir.join(format!("{file}.key.new")),
        dir.join(format!("{file}.key")),
    )
    .unwrap();
    std::fs::rename(
        dir.join(format!("{file}.pem.new")),
        dir.join(format!("{file}.pem")),
    )
    .unwrap();
    cert.der().to_vec()
}

fn version(body: &str) -> String {
    body.split("\"version\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("?")
        .to_string()
}

#[test]
fn three_https_services_on_one_address_deploy_and_renew_under_load() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    write_app_script(dir.path());
    let app_cert = write_cert(dir.path(), "app", &["app.test"]);
    let api_cert = write_cert(dir.path(), "api", &["api.test"]);
    let ten_cert = write_cert(dir.path(), "tenants", &["*.tenants.test"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let service = |name: &str, rev: &str, domains: &str, hsts: bool| {
        format!(
            "[services.{name}]\nlisten = \"127.0.0.1:{port}\"\ndomains = [{domains}]\nrevision = \"{rev}\"\ninstances = 2\n\
             command = \"./app.sh {{port}} {{revision}}\"\nstop_grace = \"5s\"\n\
             [services.{name}.tls]\ncert = \"{name}.pem\"\nkey = \"{name}.key\"\nhsts = {hsts}\n\
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
            service("app", "app1", "\"app.test\"", true),
            service("api", "api1", "\"api.test\"", false),
            service("tenants", "ten1", "\"*.tenants.test\"", false),
        ),
    )
    .unwrap();
    let (ok, out) = cli_check(&cfg);
    assert!(ok, "{out}");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let env = start_daemon(_guard, dir, Some(addr), 6);
    // Each name gets its own certificate and service; HSTS where asked.
    for (host, cert, want) in [
        ("app.test", &app_cert, "app1"),
        ("api.test", &api_cert, "api1"),
        ("acme.tenants.test", &ten_cert, "ten1"),
    ] {
        let a = https(addr, host, "/", &[b"http/1.1"]).unwrap();
        assert_eq!(
            (a.code, version(&a.body)),
            (200, want.to_string()),
            "{host}: {}",
            a.body
        );
        assert!(a.cert == *cert, "{host} presented another certificate");
        assert_eq!(
            a.headers
                .contains("strict-transport-security: max-age=31536000"),
            host == "app.test"
        );
    }
    // The same seen by the usual tools: `openssl s_client -servername`
    // gets each name's certificate, curl speaks HTTP/2 by ALPN.
    for (host, file) in [
        ("app.test", "app.pem"),
        ("api.test", "api.pem"),
        ("x.tenants.test", "tenants.pem"),
    ] {
        let shown = common::https::s_client(addr, host);
        let written = std::fs::read_to_string(env.dir.path().join(file)).unwrap();
        assert_eq!(
            common::https::first_pem(&shown),
            common::https::first_pem(&written),
            "openssl s_client -servername {host}: another certificate:\n{shown}"
        );
    }
    let (spoke, body) = common::https::curl_h2(addr, "api.test", "/");
    assert_eq!(spoke, "2", "curl --http2 to api.test: {body}");
    assert!(body.contains("\"version\":\"api1\""), "{body}");
    // The instances hear that the client spoke HTTPS.
    let a = https(addr, "api.test", "/headers", &[b"http/1.1"]).unwrap();
    assert!(a.body.contains("x-forwarded-proto: https"), "{}", a.body);
    // Uploads over TLS: a long body and a chunked one, streamed by the
    // fast path from the TLS client to the instance, echoed back whole.
    for body in [
        common::upload_length("api.test", 200_000),
        common::upload_chunked("api.test", 200_000),
    ] {
        let a = common::https::https_raw(addr, "api.test", &body, &[b"http/1.1"]).unwrap();
        assert_eq!(a.code, 200, "{}", a.headers);
        assert_eq!(a.body.matches('q').count(), 200_000, "{}", a.headers);
    }
    // HTTP/2 by ALPN.
    let a = https(addr, "app.test", "/", &[b"h2"]).unwrap();
    assert_eq!(a.alpn.as_deref(), Some(b"h2".as_slice()));
    // The certificates in use, in status, the API and the metrics.
    let (_, st) = env.cli(&["status", "app"]);
    assert!(st.contains("certificate app.test expires"), "{st}");
    let services = env.get("/services");
    let app = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "app")
        .unwrap();
    assert_eq!(app["certificate"]["names"], serde_json::json!(["app.test"]));
    let (_, m) = admin_get(env.admin, env.dir.path(), "/metrics").unwrap();
    let left: i64 = m
        .lines()
        .find(|l| l.starts_with("handoff_certificate_expiry_seconds{service=\"app\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no expiry metric for app: {m}"));
    assert!(
        left > 365 * 86_400,
        "rcgen's default lasts until 4096: {left}"
    );

    // HTTPS load on app and api; api is deployed (blue/green), then app's
    // certificate is replaced on disk.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let threads: Vec<_> = ["app.test", "api.test", "app.test", "api.test"]
        .into_iter()
        .map(|host| {
            let (stop, failures, seen) = (stop.clone(), failures.clone(), seen.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(90);
                for _ in 0..100_000 {
                    if stop.load(Relaxed) || Instant::now() > deadline {
                        return;
                    }
                    match https(addr, host, "/", &[b"http/1.1"]) {
                        Ok(a) if a.code == 200 => {
                            seen.lock().unwrap().push((host.into(), version(&a.body)))
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
        (seen.lock().unwrap().len() > 40).then_some(())
    });
    let (ok, out) = env.cli(&["deploy", "api", "api2", "--strategy", "blue-green"]);
    assert!(
        ok && out.contains("deployed: api2 serves service api"),
        "{out}"
    );
    let renewed = write_cert(env.dir.path(), "app", &["app.test"]);
    let took = Instant::now();
    poll(
        "new connections see the new certificate",
        Duration::from_secs(15),
        || {
            let a = https(addr, "app.test", "/", &[b"http/1.1"]).ok()?;
            (a.cert == renewed).then_some(())
        },
    );
    eprintln!(
        "new certificate served {:?} after it was written",
        took.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let failed = failures.lock().unwrap().clone();
    let n = seen.lock().unwrap().len();
    eprintln!("{n} HTTPS requests, {} failed", failed.len());
    assert!(
        failed.is_empty(),
        "{} of {n} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let seen = seen.lock().unwrap().clone();
    assert!(seen
        .iter()
        .filter(|(h, _)| h == "app.test")
        .all(|(_, v)| v == "app1"));
    assert_eq!(
        seen.iter()
            .rev()
            .find(|(h, _)| h == "api.test")
            .map(|x| x.1.as_str()),
        Some("api2")
    );
    stop_env(env);
}

/// `handoff check` refuses a certificate that does not cover the domains.
#[test]
fn check_refuses_a_certificate_for_other_names() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "app", &["other.test"]);
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(
        &cfg,
        "[services.app]\nlisten = \"127.0.0.1:8443\"\ndomains = [\"app.test\"]\ntargets = [\"127.0.0.1:9\"]\n\
         [services.app.tls]\ncert = \"app.pem\"\nkey = \"app.key\"\n",
    )
    .unwrap();
    let (ok, out) = cli_check(&cfg);
    assert!(!ok, "{out}");
    assert!(
        out.contains("services.app.tls") && out.contains("do not cover `app.test`"),
        "{out}"
    );
}

fn cli_check(cfg: &Path) -> (bool, String) {
    let out = std::process::Command::new(bin())
        .args(["check", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn stop_env(env: Env) {
    stop(env)
}
