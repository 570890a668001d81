//! The torture test: the real daemon under load for a minute while several
//! operators issue random control calls (deploys of good and bad revisions,
//! rollback, abort, pause/resume, promote, the same request twice at the
//! same instant) and instances are SIGKILLed at random.
//!
//! Checked throughout: at most one active deployment per service, ids
//! unique, no API answer outside 201/202/409. At the end: every deployment
//! finished with a complete history (`created` first, `report` last), the
//! fleet converged to the desired count on one revision, 0 failed client
//! requests (bad revisions never become healthy, so by design they never
//! serve), and nothing left running after the daemon stops.
//!
//! `TORTURE_SECS` sets the chaos phase (default 60).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use common::scenario::*;
use common::*;

const INSTANCES: usize = 4;

fn chaos_secs() -> u64 {
    std::env::var("TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// What one operator call can be.
#[derive(Debug, Clone, Copy)]
enum Call {
    Deploy { good: bool, blue_green: bool },
    Rollback,
    Abort,
    Pause,
    Resume,
    Promote,
}

fn pick(rng: &mut fastrand::Rng) -> Call {
    match rng.u32(0..100) {
        0..30 => Call::Deploy {
            good: true,
            blue_green: rng.bool(),
        },
        30..40 => Call::Deploy {
            good: false,
            blue_green: rng.bool(),
        },
        40..55 => Call::Rollback,
        55..65 => Call::Abort,
        65..75 => Call::Pause,
        75..90 => Call::Resume,
        _ => Call::Promote,
    }
}

fn request(call: Call, n: u32) -> (String, String) {
    match call {
        Call::Deploy { good, blue_green } => (
            "/deployments".into(),
            serde_json::json!({
                "service": "web",
                "revision": format!("{}{n}", if good { "v" } else { "bad" }),
                "strategy": if blue_green { "blue-green" } else { "in-place" },
            })
            .to_string(),
        ),
        Call::Rollback => ("/services/web/rollback".into(), String::new()),
        Call::Abort => ("/services/web/abort".into(), String::new()),
        Call::Pause => ("/services/web/pause".into(), String::new()),
        Call::Resume => ("/services/web/resume".into(), String::new()),
        Call::Promote => ("/services/web/promote".into(), String::new()),
    }
}

fn history(env: &Env) -> Vec<serde_json::Value> {
    env.get("/services/web/deployments")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn is_active(status: &str) -> bool {
    matches!(status, "running" | "rolling-back" | "retained")
}

#[test]
fn random_control_calls_and_kills_under_load_keep_every_invariant() {
    let env = setup_sections(
        INSTANCES as u32,
        "[services.web.health]\ninterval = \"100ms\"\nmin_healthy_time = \"200ms\"\nhealthy_deadline = \"3s\"\n\
         [services.web.drain]\ntimeout = \"5s\"\n\
         [services.web.in_place]\nbatch = 1\nmin_healthy = 2\n\
         [services.web.blue_green]\ntraffic_steps = [50]\nbake = \"500ms\"\nretention = \"3s\"\n",
    );
    let secs = chaos_secs();
    let l = load_for(env.web, 4, Duration::from_secs(secs + 120));
    l.wait_for_requests(50);
    let state = env.dir.path().join("state");
    let token = token(env.dir.path());
    let chaos_until = Instant::now() + Duration::from_secs(secs);
    let counter = AtomicU32::new(1);
    let answers: Mutex<BTreeMap<u16, u32>> = Mutex::default();
    let problems: Mutex<Vec<String>> = Mutex::default();
    let kills = AtomicU32::new(0);
    let done = AtomicBool::new(false);
    let max_active = AtomicU32::new(0);
    std::thread::scope(|s| {
        // Operators.
        for seed in 0..3u64 {
            let (admin, token, counter, answers, problems) =
                (env.admin, &token, &counter, &answers, &problems);
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed * 7919 + 1);
                while Instant::now() < chaos_until {
                    std::thread::sleep(Duration::from_millis(rng.u64(200..1200)));
                    let call = pick(&mut rng);
                    let (path, body) = request(call, counter.fetch_add(1, Relaxed));
                    // A third of the calls are sent twice at the same instant.
                    let copies = if rng.u32(0..3) == 0 { 2 } else { 1 };
                    let barrier = Barrier::new(copies);
                    let codes: Vec<(u16, serde_json::Value)> = std::thread::scope(|s2| {
                        (0..copies)
                            .map(|_| {
                                let (barrier, path, body) = (&barrier, &path, &body);
                                s2.spawn(move || {
                                    barrier.wait();
                                    post(admin, token, path, body)
                                })
                            })
                            .collect::<Vec<_>>()
                            .into_iter()
                            .map(|h| h.join().unwrap())
                            .collect()
                    });
                    for (code, b) in &codes {
                        *answers.lock().unwrap().entry(*code).or_default() += 1;
                        if !matches!(code, 201 | 202 | 409) {
                            problems
                                .lock()
                                .unwrap()
                                .push(format!("{call:?} {path}: {code} {b}"));
                        }
                    }
                    if copies == 2 && matches!(call, Call::Deploy { .. }) {
                        let admitted = codes.iter().filter(|c| c.0 == 201).count();
                        if admitted > 1 {
                            problems
                                .lock()
                                .unwrap()
                                .push(format!("the same deploy admitted twice: {codes:?}"));
                        }
                    }
                }
            });
        }
        // The killer.
        {
            let (state, kills) = (&state, &kills);
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(42);
                while Instant::now() < chaos_until {
                    std::thread::sleep(Duration::from_millis(rng.u64(1500..4000)));
                    let marked = handoff_runtime::procfs::marked_processes(state);
                    if marked.is_empty() {
                        continue;
                    }
                    let (pid, _, _) = &marked[rng.usize(0..marked.len())];
                    // SAFETY: kill(2) on an instance this test's daemon started.
                    unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                    kills.fetch_add(1, Relaxed);
                }
            });
        }
        // The checker: at most one active deployment, ids unique.
        {
            let (env, problems, done, max_active) = (&env, &problems, &done, &max_active);
            s.spawn(move || {
                while !done.load(Relaxed) {
                    let h = history(env);
                    let active = h
                        .iter()
                        .filter(|d| is_active(d["status"].as_str().unwrap_or("")))
                        .count() as u32;
                    max_active.fetch_max(active, Relaxed);
                    if active > 1 {
                        problems
                            .lock()
                            .unwrap()
                            .push(format!("{active} active deployments at once"));
                    }
                    let ids: BTreeSet<&str> = h.iter().filter_map(|d| d["id"].as_str()).collect();
                    if ids.len() != h.len() {
                        problems
                            .lock()
                            .unwrap()
                            .push("a deployment id twice".into());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        // Quiesce: once the chaos is over, resume and promote until nothing
        // is active (a paused deployment would wait for ever).
        while Instant::now() < chaos_until {
            std::thread::sleep(Duration::from_millis(200));
        }
        poll("no active deployment", Duration::from_secs(90), || {
            let h = history(&env);
            let active = h
                .iter()
                .find(|d| is_active(d["status"].as_str().unwrap_or("")));
            match active {
                None => Some(()),
                Some(d) => {
                    let verb = if d["paused"] == true {
                        "resume"
                    } else if d["status"] == "retained" {
                        "promote"
                    } else {
                        "resume"
                    };
                    let _ = env.post(&format!("/services/web/{verb}"), "");
                    std::thread::sleep(Duration::from_millis(300));
                    None
                }
            }
        });
        done.store(true, Relaxed);
    });

    // The fleet converges: the desired count, healthy, on the current
    // revision.
    let revision = poll("the fleet converged", Duration::from_secs(60), || {
        let services = env.get("/services");
        let web = &services[0];
        let current = web["revision"].as_str()?.to_string();
        let targets: Vec<&serde_json::Value> = web["groups"]
            .as_array()?
            .iter()
            .filter(|g| g["weight"].as_u64() > Some(0))
            .flat_map(|g| g["targets"].as_array().unwrap().iter())
            .collect();
        let all: usize = web["groups"]
            .as_array()?
            .iter()
            .map(|g| g["targets"].as_array().map_or(0, Vec::len))
            .sum();
        // A process killed at the very end of the chaos leaves its target
        // healthy until its checks fail: converged means the processes
        // match too.
        let ok = targets.len() == INSTANCES
            && all == INSTANCES
            && targets
                .iter()
                .all(|t| t["state"] == "healthy" && t["revision"] == current.as_str())
            && handoff_runtime::procfs::marked_processes(&state).len() == INSTANCES;
        ok.then_some(current)
    });
    assert_eq!(
        handoff_runtime::procfs::marked_processes(&state).len(),
        INSTANCES,
        "exactly the desired processes run"
    );
    // Complete histories.
    let h = history(&env);
    for d in &h {
        let id = d["id"].as_str().unwrap();
        let status = d["status"].as_str().unwrap();
        assert!(
            matches!(status, "succeeded" | "rolled-back" | "failed"),
            "{id} ended {status}"
        );
        let events = d["events"].as_array().unwrap();
        assert_eq!(
            events.first().map(|e| &e["kind"]),
            Some(&"created".into()),
            "{id}: {events:?}"
        );
        assert_eq!(
            events.last().map(|e| &e["kind"]),
            Some(&"report".into()),
            "{id}: {events:?}"
        );
    }
    let failed: Vec<&serde_json::Value> = h.iter().filter(|d| d["status"] == "failed").collect();
    let problems = problems.into_inner().unwrap();
    let answers = answers.into_inner().unwrap();
    let by_status: BTreeMap<String, usize> = h.iter().fold(BTreeMap::new(), |mut m, d| {
        *m.entry(d["status"].as_str().unwrap().to_string())
            .or_default() += 1;
        m
    });
    let (answered, lost) = (
        l.seen.lock().unwrap().len(),
        l.failures.lock().unwrap().clone(),
    );
    eprintln!(
        "torture: {secs} s, {} deployments {by_status:?}, answers {answers:?}, {} kills, max active {}, serving {revision}; load: {} answered, {} failed {:?}",
        h.len(),
        kills.load(Relaxed),
        max_active.load(Relaxed),
        answered,
        lost.len(),
        &lost[..lost.len().min(5)],
    );
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(failed.is_empty(), "a rollback failed: {failed:#?}");
    assert!(h.len() >= 3, "the chaos started deployments: {}", h.len());
    l.finish();
    stop(env);
}
