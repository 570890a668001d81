//! HTTPS to the instances (`[services.X.proxy] upstream_tls`): apps that
//! speak only TLS are checked and served through it, deployed under load
//! with no failed request; an instance whose certificate does not verify
//! is never healthy, and says why.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::scenario::*;
use common::*;

/// A root, and a certificate for `localhost` it issued: (root PEM path,
/// cert path, key path) in `dir`, named `name.*`.
fn issue(dir: &Path, name: &str) -> (String, String, String) {
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut root = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} root"));
    let root_cert = root.self_signed(&root_key).unwrap();
    let issuer = rcgen::Issuer::new(root, root_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let p = |f: &str| dir.join(format!("{name}.{f}")).display().to_string();
    std::fs::write(p("root.pem"), root_cert.pem()).unwrap();
    std::fs::write(p("pem"), leaf.pem()).unwrap();
    std::fs::write(p("key"), key.serialize_pem()).unwrap();
    (p("root.pem"), p("pem"), p("key"))
}

#[test]
fn instances_that_speak_only_https_are_checked_served_and_deployed_under_load() {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (root, cert, key) = issue(dir.path(), "good");
    // Signed by a root the proxy does not trust.
    let (_, other_cert, other_key) = issue(dir.path(), "other");
    let (_stranger, stranger_addr) = sample_app(
        "s1",
        &["--tls-cert", &other_cert, "--tls-key", &other_key],
        dir.path(),
    );
    std::fs::write(
        dir.path().join("handoff.toml"),
        format!(
            "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\
             [services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"v1\"\ninstances = 2\n\
             command = \"{b} sample-app --port {{port}} --version {{revision}} --tls-cert {cert} --tls-key {key}\"\n\
             stop_grace = \"5s\"\n\
             [services.web.proxy]\nupstream_tls = true\nupstream_ca = \"{root}\"\nupstream_name = \"localhost\"\n\
             [services.web.health]\ninterval = \"100ms\"\nmin_healthy_time = \"300ms\"\nhealthy_deadline = \"8s\"\n\
             [services.web.drain]\ntimeout = \"5s\"\n\
             [services.web.blue_green]\ntraffic_steps = [50]\nbake = \"1s\"\nretention = \"0s\"\n\
             [services.stranger]\nlisten = \"127.0.0.1:0\"\ntargets = [\"{stranger_addr}\"]\n\
             [services.stranger.proxy]\nupstream_tls = true\nupstream_ca = \"{root}\"\nupstream_name = \"localhost\"\n\
             [services.stranger.health]\ninterval = \"100ms\"\n",
            b = bin()
        ),
    )
    .unwrap();
    let env = start_daemon(guard, dir, None, 2);
    let (code, body) = http_get(env.web, "/").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"version\":\"v1\""), "{body}");
    // The instance really spoke TLS: a plain request to it is refused.
    let services = env.get("/services");
    let web = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap();
    let instance: std::net::SocketAddr = web["groups"][0]["targets"][0]["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        http_get(instance, "/").map_or(true, |(c, _)| c != 200),
        "the instance answered plain HTTP"
    );
    // Uploads to an instance that speaks TLS: a long body and a chunked
    // one, streamed by the fast path, echoed back whole.
    for body in [
        common::upload_length("test", 200_000),
        common::upload_chunked("test", 200_000),
    ] {
        let answer = common::raw_request(env.web, &body).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.300}");
        assert_eq!(answer.matches('q').count(), 200_000, "{answer:.300}");
    }

    // A blue/green and an in-place deploy under load, through TLS.
    let l = load(env.web, 4);
    l.wait_for_requests(50);
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--strategy", "blue-green"]);
    assert!(
        ok && out.contains("deployed: v2 serves service web"),
        "{out}"
    );
    let (ok, out) = env.cli(&["deploy", "web", "v3", "--batch", "1"]);
    assert!(
        ok && out.contains("deployed: v3 serves service web"),
        "{out}"
    );
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let seen = l.finish();
    assert!(
        seen.iter().any(|(v, t)| v == "v3" && *t >= started),
        "v3 did not serve"
    );

    // A certificate from another root: never healthy, and the check says
    // why.
    let why = poll("the stranger judged", Duration::from_secs(20), || {
        let services = env.get("/services");
        let t = services
            .as_array()?
            .iter()
            .find(|s| s["name"] == "stranger")?["groups"][0]["targets"][0]
            .clone();
        (t["state"] == "unhealthy").then(|| t.to_string())
    });
    assert!(
        why.contains("TLS to") && why.contains("certificate"),
        "{why}"
    );
    eprintln!("stranger: {why}");
    let (code, _) = http_get(addr_of_service(&env, "stranger"), "/").unwrap();
    assert_eq!(code, 503);
    stop(env);
}

fn addr_of_service(env: &Env, name: &str) -> std::net::SocketAddr {
    let services = env.get("/services");
    services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["bound"].as_str())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn upstream_tls_settings_without_it_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(
        &cfg,
        "[services.a]\nlisten = \"127.0.0.1:0\"\ntargets = [\"127.0.0.1:9\"]\n\
         [services.a.proxy]\nupstream_ca = \"root.pem\"\n\
         [services.b]\nlisten = \"127.0.0.1:0\"\ntargets = [\"127.0.0.1:9\"]\n\
         [services.b.proxy]\nupstream_tls = true\nupstream_ca = \"missing.pem\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("services.a.proxy.upstream_ca: is for HTTPS to the instances"),
        "{text}"
    );
    assert!(
        text.contains("services.b.proxy.upstream_ca:")
            && text.contains("missing.pem does not exist"),
        "{text}"
    );
}
