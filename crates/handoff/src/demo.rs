//! `handoff demo`: the main job on embedded defaults, acted out.
//!
//! Starts `handoff serve` (this same binary) on free loopback ports with a
//! state dir in a temporary folder and a service of 4 sample-app instances
//! at v1, keeps steady traffic on it with a built-in load generator, then
//! plays the seed: an in-place deploy to v2 in batches of 2, a blue/green
//! deploy to v3 with a 50% step, and a rollback to v2 — live — and ends with
//! a table comparing the three from their measured reports and from what the
//! load generator saw. Then it keeps running until Ctrl-C (`--exit` ends at
//! once, for scripts and CI).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use handoff_api::types::{DeployBody, DeploymentView, RollbackBody};

use crate::client::{self, Client};

#[derive(Debug, Clone, Args)]
pub struct Demo {
    /// End as soon as the tour is over (for scripts and CI).
    #[arg(long)]
    pub exit: bool,
    /// Instances of the demo service.
    #[arg(long, default_value_t = 4)]
    pub instances: u32,
    /// Concurrent clients of the built-in load generator.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
}

/// What the load generator saw, shared by its threads.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    failed: AtomicU64,
    last_errors: Mutex<Vec<String>>,
}

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_daemon(d: &Demo) -> anyhow::Result<(Daemon, SocketAddr, SocketAddr)> {
    let exe = std::env::current_exe().context("cannot find the handoff binary")?;
    let dir = std::env::temp_dir().join(format!("handoff-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("handoff.toml");
    std::fs::write(
        &cfg,
        format!(
            "# written by `handoff demo`\n[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\n\
             [services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"v1\"\ninstances = {n}\n\
             command = \"'{exe}' sample-app --port {{port}} --version {{revision}}\"\nstop_grace = \"5s\"\n\n\
             [services.web.health]\ninterval = \"200ms\"\nmin_healthy_time = \"1s\"\nhealthy_deadline = \"20s\"\n\n\
             [services.web.drain]\ntimeout = \"10s\"\n\n\
             [services.web.blue_green]\ntraffic_steps = [50]\nbake = \"2s\"\nretention = \"5m\"\n",
            n = d.instances,
            exe = exe.display()
        ),
    )?;
    let mut child = Command::new(&exe)
        .args(["serve", "-c"])
        .arg(&cfg)
        .env("HANDOFF_LOG", "warn")
        // The demo's daemon is its own: a HANDOFF_TOKEN left in the shell
        // (as the README's tour leaves it) would become its token instead
        // of the one it writes into the state dir, which the demo reads.
        .env_remove("HANDOFF_TOKEN")
        .env_remove("HANDOFF_ADMIN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start handoff serve")?;
    let out = child.stdout.take().context("no stdout")?;
    let daemon = Daemon { child, dir };
    let (mut web, mut admin) = (None, None);
    for line in BufReader::new(out).lines() {
        let line = line?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.parse().ok());
        if line.starts_with("listening service=web") {
            web = addr;
        } else if line.starts_with("admin") {
            admin = addr;
        } else if line == "ready" {
            break;
        }
    }
    match (web, admin) {
        (Some(w), Some(a)) => Ok((daemon, w, a)),
        _ => bail!("handoff serve did not start (see its messages above)"),
    }
}

/// One GET on a fresh connection; the version that answered, or an error.
fn get(addr: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if !out.starts_with("HTTP/1.1 200") {
        return Err(out.lines().next().unwrap_or("empty answer").to_string());
    }
    Ok(out
        .split("\"version\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("?")
        .to_string())
}

fn load(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    match get(addr) {
                        Ok(_) => {
                            seen.ok.fetch_add(1, Relaxed);
                        }
                        Err(e) => {
                            seen.failed.fetch_add(1, Relaxed);
                            let mut l = seen.last_errors.lock().unwrap_or_else(|e| e.into_inner());
                            if l.len() < 5 {
                                l.push(e);
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

struct Act {
    name: &'static str,
    view: DeploymentView,
    requests: u64,
    failed: u64,
    took: Duration,
}

fn act(
    c: &Client,
    seen: &Seen,
    name: &'static str,
    run: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<Act> {
    println!("\n== {name}");
    let (ok0, f0) = (seen.ok.load(Relaxed), seen.failed.load(Relaxed));
    let t = Instant::now();
    let id = run()?;
    let took = t.elapsed();
    let view: DeploymentView = c.json("GET", &format!("/deployments/{id}"), None)?;
    Ok(Act {
        name,
        view,
        requests: seen.ok.load(Relaxed) - ok0 + seen.failed.load(Relaxed) - f0,
        failed: seen.failed.load(Relaxed) - f0,
        took,
    })
}

fn deploy(c: &Client, body: DeployBody) -> anyhow::Result<String> {
    let acc: handoff_api::types::Accepted =
        c.json("POST", "/deployments", Some(serde_json::to_string(&body)?))?;
    let status = client::follow(c, &acc.id, false)?;
    if !status.new_revision_serves() {
        bail!("the demo deploy {} ended {status}", acc.id);
    }
    Ok(acc.id)
}

pub fn run(d: Demo) -> anyhow::Result<()> {
    println!(
        "handoff demo: starting a daemon with {} sample-app instances at v1 ...",
        d.instances
    );
    let (daemon, web, admin) = start_daemon(&d)?;
    let token_file = daemon.dir.join("state/token");
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| {
            format!(
                "cannot read the demo daemon's token {}",
                token_file.display()
            )
        })?
        .trim()
        .to_string();
    let c = client::resolve(
        Some(format!("http://{admin}")),
        Some(token.clone()),
        std::path::Path::new("/nonexistent"),
    );
    let ready = Instant::now() + Duration::from_secs(60);
    while get(web).is_err() {
        if Instant::now() > ready {
            bail!("the demo service did not come up within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "service web on http://{web}; steady traffic from {} clients",
        d.clients
    );
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let threads = load(web, d.clients, stop.clone(), seen.clone());
    std::thread::sleep(Duration::from_secs(1));

    let mut acts = Vec::new();
    acts.push(act(
        &c,
        &seen,
        "in-place deploy to v2, batches of 2",
        || {
            deploy(
                &c,
                DeployBody {
                    service: "web".into(),
                    revision: "v2".into(),
                    strategy: Some("in-place".into()),
                    batch: Some("2".into()),
                    artifact: None,
                },
            )
        },
    )?);
    acts.push(act(&c, &seen, "blue/green deploy to v3, 50% step", || {
        deploy(
            &c,
            DeployBody {
                service: "web".into(),
                revision: "v3".into(),
                strategy: Some("blue-green".into()),
                batch: None,
                artifact: None,
            },
        )
    })?);
    acts.push(act(
        &c,
        &seen,
        "rollback to v2 (blue is retained: a flip)",
        || {
            let since = client::now_ms();
            let id = client::control(
                &c,
                "web",
                "rollback",
                Some(serde_json::to_string(&RollbackBody { to: None })?),
                false,
            )?
            .id;
            let status = client::follow_since(&c, &id, false, since, false)?;
            if status != handoff_core::DeploymentStatus::RolledBack {
                bail!("the demo rollback ended {status}");
            }
            Ok(id)
        },
    )?);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }

    // The blue/green deployment ended with the rollback: its report (and
    // the rollback time) is complete now.
    for a in acts.iter_mut().skip(1) {
        let id = a.view.id.clone();
        a.view = c.json("GET", &format!("/deployments/{id}"), None)?;
    }
    println!("\n== what was measured");
    println!(
        "{:<44} {:>9} {:>10} {:>10} {:>10} {:>9} {:>7} {:>10}",
        "", "duration", "predicted", "capacity", "mixed", "requests", "failed", "rollback"
    );
    for (i, a) in acts.iter().enumerate() {
        let is_rollback = i == 2;
        let r = a.view.report.as_ref();
        let floor = r.map_or_else(
            || "-".into(),
            |r| format!("{}/{}", r.capacity_floor, r.desired),
        );
        let ms = |v: Option<u64>| {
            v.map(|x| format!("{:.1} s", x as f64 / 1000.0))
                .unwrap_or_else(|| "-".into())
        };
        // The rollback is the end of the blue/green deployment: its own
        // row shows the flip (the act's time and the measured rollback).
        let (duration, floor, mixed, rollback) = if is_rollback {
            (
                format!("{:.2} s", a.took.as_secs_f64()),
                floor,
                "-".to_string(),
                r.and_then(|r| r.traffic_back_ms.or(r.rollback_ms))
                    .map(|x| format!("{x} ms"))
                    .unwrap_or_else(|| "-".into()),
            )
        } else {
            let d = if i == 1 {
                format!("{:.1} s", a.took.as_secs_f64())
            } else {
                ms(r.map(|r| r.duration_ms))
            };
            (d, floor, ms(r.map(|r| r.mixed_window_ms)), "-".to_string())
        };
        // What `handoff plan` said beforehand: for blue/green, until the
        // new revision alone serves (the act ends there).
        let predicted = match (&a.view.plan, i) {
            (_, 2) | (None, _) => "-".to_string(),
            (Some(p), 1) => ms(Some(p.serving_ms)),
            (Some(p), _) => ms(Some(p.duration_ms)),
        };
        println!(
            "{:<44} {:>9} {:>10} {:>10} {:>10} {:>9} {:>7} {:>10}",
            a.name, duration, predicted, floor, mixed, a.requests, a.failed, rollback
        );
    }
    let failed = seen.failed.load(Relaxed);
    println!(
        "\ntotal: {} requests during the tour, {failed} failed",
        seen.ok.load(Relaxed) + failed
    );
    if failed > 0 {
        println!(
            "failures: {:?}",
            seen.last_errors.lock().unwrap_or_else(|e| e.into_inner())
        );
    }
    println!("\ndashboard  http://{admin}/#token={token}");
    println!("API  http://{admin}   token {token}");
    println!("     export HANDOFF_ADMIN=http://{admin} HANDOFF_TOKEN={token}; handoff status");
    println!("metrics  curl -H 'Authorization: Bearer {token}' http://{admin}/metrics");
    if failed > 0 {
        bail!("{failed} requests failed during the demo");
    }
    if !d.exit {
        println!("\nrunning until Ctrl-C ...");
        wait_for_ctrl_c();
    }
    drop(daemon);
    Ok(())
}

fn wait_for_ctrl_c() {
    // SAFETY: a plain sigwait on SIGINT/SIGTERM, blocked in this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}
