//! Cut-over latency: from the API call that flips blue/green (a rollback
//! within retention) to the first response served by the other group, and
//! to the last response served by the old one. Keep-alive clients timestamp
//! every response. Figures, not pass/fail.
//!
//!   cargo build --release && cargo run --release --example cutover [-- ROUNDS]
//!
//! Last line: BENCH cutover rounds=N api_ms_p50=… first_new_ms_p50=… last_old_ms_p50=… (and max)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let bin = std::env::current_dir()
        .unwrap()
        .join("target/release/handoff");
    assert!(bin.exists(), "build first: cargo build --release");
    let dir = std::env::temp_dir().join(format!("handoff-cutover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("handoff.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\n[services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"v1\"\ninstances = 2\n\
             command = \"'{}' sample-app --port {{port}} --version {{revision}}\"\n\
             [services.web.health]\ninterval = \"100ms\"\nmin_healthy_time = \"200ms\"\n\
             [services.web.blue_green]\ntraffic_steps = []\nretention = \"10m\"\n",
            bin.display()
        ),
    )
    .unwrap();
    let mut daemon = Command::new(&bin)
        .args(["serve", "-c"])
        .arg(&cfg)
        .env("HANDOFF_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut web, mut admin) = (None, None);
    for line in BufReader::new(daemon.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        let addr: Option<SocketAddr> = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.parse().ok());
        if line.starts_with("listening") {
            web = addr
        }
        if line.starts_with("admin") {
            admin = addr
        }
        if line == "ready" {
            break;
        }
    }
    let (web, admin) = (web.unwrap(), admin.unwrap());
    let token = std::fs::read_to_string(dir.join("state/token"))
        .unwrap()
        .trim()
        .to_string();
    let api = |method: &str, path: &str, body: &str| -> String {
        let mut s = TcpStream::connect(admin).unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let wait_status = |id: &str, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !api("GET", &format!("/deployments/{id}"), "")
            .contains(&format!("\"status\":\"{want}\""))
        {
            assert!(Instant::now() < deadline, "{id} never became {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (mut api_ms, mut first_new, mut last_old) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // v(2r) serves; deploy v(2r+1) blue/green, then flip back within retention.
        let (old, new) = (format!("r{round}a"), format!("r{round}b"));
        for rev in [&old, &new] {
            let out = api(
                "POST",
                "/deployments",
                &format!(
                    "{{\"service\":\"web\",\"revision\":\"{rev}\",\"strategy\":\"blue-green\"}}"
                ),
            );
            let id = out
                .split("\"id\":\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_else(|| panic!("{out}"))
                .to_string();
            wait_status(&id, "retained");
        }
        // `new` serves (green), `old` is retained (blue). Load, then flip.
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::<(Instant, bool)>::new()));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (stop, seen, new) = (stop.clone(), seen.clone(), new.clone());
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(web).unwrap();
                    s.set_nodelay(true).unwrap();
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut local = Vec::with_capacity(100_000);
                    while !stop.load(Relaxed) {
                        s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n").unwrap();
                        let mut len = 0;
                        loop {
                            let mut l = String::new();
                            r.read_line(&mut l).unwrap();
                            if l == "\r\n" {
                                break;
                            }
                            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length: ")
                            {
                                len = v.trim().parse().unwrap()
                            }
                        }
                        let mut body = vec![0u8; len];
                        r.read_exact(&mut body).unwrap();
                        local.push((
                            Instant::now(),
                            String::from_utf8_lossy(&body)
                                .contains(&format!("\"version\":\"{new}\"")),
                        ));
                    }
                    seen.lock().unwrap().extend(local);
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let t0 = Instant::now();
        let out = api("POST", "/services/web/rollback", "");
        let t1 = Instant::now();
        assert!(out.starts_with("HTTP/1.1 202"), "{out}");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Relaxed);
        for c in clients {
            c.join().unwrap()
        }
        let seen = seen.lock().unwrap();
        let fnew = seen
            .iter()
            .filter(|(t, is_new)| *t >= t0 && !*is_new)
            .map(|(t, _)| *t)
            .min()
            .unwrap();
        let lold = seen
            .iter()
            .filter(|(_, is_new)| *is_new)
            .map(|(t, _)| *t)
            .max()
            .unwrap();
        api_ms.push((t1 - t0).as_secs_f64() * 1e3);
        first_new.push((fnew - t0).as_secs_f64() * 1e3);
        last_old.push(lold.saturating_duration_since(t0).as_secs_f64() * 1e3);
        println!("round {round}: API answered in {:.2} ms; first response from {old} after {:.2} ms; last from {new} after {:.2} ms ({} responses)", api_ms[round], first_new[round], last_old[round], seen.len());
        // Let the rolled-back deployment settle before the next round.
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let stat = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[v.len() / 2], v[v.len() - 1])
    };
    let ((a50, amax), (f50, fmax), (l50, lmax)) =
        (stat(&mut api_ms), stat(&mut first_new), stat(&mut last_old));
    println!("BENCH cutover rounds={rounds} api_ms_p50={a50:.2} api_ms_max={amax:.2} first_new_ms_p50={f50:.2} first_new_ms_max={fmax:.2} last_old_ms_p50={l50:.2} last_old_ms_max={lmax:.2}");
}
