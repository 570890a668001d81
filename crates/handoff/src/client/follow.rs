//! Following a deployment live: `deploy` starts one and follows it, the
//! follow loop prints its events as they are recorded, says what the health
//! checks answer while a step waits for them, stops at a settled status (or
//! says, on Ctrl-C, that the deployment goes on without it), and prints the
//! report once at the end.

use std::time::{Duration, Instant};

use anyhow::bail;
use handoff_api::types::*;
use handoff_controller::predict::fmt_ms;
use handoff_core::{DeploymentStatus, Origin, StepKind};

use super::{clock, now_ms, services, Client};

/// `handoff deploy`: start, then follow the deployment live until the new
/// revision serves (exit 0) or it failed / rolled back (exit 1).
pub fn deploy(
    c: &Client,
    body: DeployBody,
    detach: bool,
    json: bool,
) -> anyhow::Result<DeploymentStatus> {
    // Before the deployment exists: a Ctrl-C from here on is answered with
    // what goes on, never by dying between the id and the follow.
    if !detach {
        on_ctrl_c();
    }
    let acc: Accepted = c.json("POST", "/deployments", Some(serde_json::to_string(&body)?))?;
    if detach {
        println!(
            "{}",
            if json {
                serde_json::to_string(&acc)?
            } else {
                format!(
                    "deployment {} started; follow it with `handoff status {}` or `handoff report {}`",
                    acc.id, body.service, acc.id
                )
            }
        );
        return Ok(DeploymentStatus::Running);
    }
    if !json {
        println!("deployment {}", acc.id);
    }
    follow(c, &acc.id, json)
}

/// Follows a deployment until it settles; returns its status then.
pub fn follow(c: &Client, id: &str, json: bool) -> anyhow::Result<DeploymentStatus> {
    follow_since(c, id, json, 0, true)
}

/// Like [`follow`], showing only events from `since_ms` (unix ms) on: a
/// rollback within retention continues a deployment whose earlier events
/// were shown already. `retained_settles`: a deployment retaining blue has
/// settled (a deploy is done then); a rollback flip sent to a retained
/// deployment is not done until it has left retention, however soon the
/// first look comes.
pub fn follow_since(
    c: &Client,
    id: &str,
    json: bool,
    since_ms: i64,
    retained_settles: bool,
) -> anyhow::Result<DeploymentStatus> {
    let mut shown = 0;
    let mut first = true;
    let started = Instant::now();
    let mut report_wait: Option<Instant> = None;
    // While a step waits for health: what the checks say, every few
    // seconds, so a revision that never gets healthy says why at once,
    // not after `healthy_deadline` of silence.
    let mut health: Option<HealthWait> = None;
    // A spinner under the step lines while there is something to wait for
    // (health, drain, bake, retention); indicatif hides it when stdout is
    // not a terminal, so scripts and `--json` see plain lines only.
    let bar = if json || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    };
    let interrupted = on_ctrl_c();
    loop {
        if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
            bar.finish_and_clear();
            let service = id.split_once('@').map_or(id, |(s, _)| s);
            eprintln!(
                "\nstopped following; deployment {id} goes on in the daemon.\n  follow it again: handoff follow {id}  (or handoff status {service})\n  stop it:         handoff abort {service}   (rolls back)\n  undo it later:   handoff rollback {service}"
            );
            std::process::exit(130);
        }
        let v: DeploymentView = c.json("GET", &format!("/deployments/{id}"), None)?;
        if first {
            shown = v.events.iter().take_while(|e| e.at_ms < since_ms).count();
            first = false;
        }
        if !json {
            // The report is printed once, in full, when it settles.
            for e in v.events[shown..]
                .iter()
                .filter(|e| e.kind != StepKind::Report)
            {
                bar.suspend(|| println!("{}  {}", clock(e.at_ms), e.message));
                bar.reset_elapsed();
                bar.set_message(waiting_for(e.kind, &e.message));
                health = (e.kind == StepKind::Health).then(|| HealthWait::new(c, &v.service, e));
                if let Some(w) = &health {
                    bar.suspend(|| println!("{}", w.intro()));
                }
            }
            if let Some(w) = health.as_mut() {
                if w.due() {
                    for line in w.lines(c) {
                        bar.suspend(|| println!("{}  {line}", clock(now_ms())));
                    }
                }
            }
        }
        shown = v.events.len();
        // A retention of zero passes through `retained` for an instant,
        // retained until the moment it began: not a deploy that settled
        // (CI caught the CLI ending there, without its report).
        let retains = v
            .retained_until_ms
            .is_none_or(|t| v.events.last().is_none_or(|e| t > e.at_ms));
        let retained = retained_settles && v.status == DeploymentStatus::Retained && retains;
        // The daemon saves the final status a moment before the report it
        // measures after it: wait (briefly) for the report so that it is
        // printed, instead of ending on a status line alone.
        let ended = !v.status.is_active();
        if ended && v.report.is_none() && !retained {
            let since = *report_wait.get_or_insert_with(Instant::now);
            if since.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        if retained || ended {
            bar.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if retained {
                if let Some(t) = v.retained_until_ms {
                    println!(
                        "blue retained until {} (instant rollback: handoff rollback {})",
                        clock(t),
                        v.service
                    );
                }
            } else {
                print_report(&v);
            }
            return Ok(v.status);
        }
        if started.elapsed() > Duration::from_secs(24 * 3600) {
            bail!("gave up following {id} after a day");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How often `deploy` says what the health checks of the instances it
/// waits for answer.
const HEALTH_EVERY: Duration = Duration::from_secs(3);

/// A health step being waited for: its instances and deadline.
struct HealthWait {
    service: String,
    /// The instances the step names (`waiting for web-3, web-4 …`).
    names: Vec<String>,
    /// Unix ms when `healthy_deadline` runs out; `None` if unknown.
    deadline_ms: Option<i64>,
    deadline: Duration,
    next: Instant,
}

impl HealthWait {
    fn new(c: &Client, service: &str, e: &EventView) -> HealthWait {
        let deadline = services(c)
            .ok()
            .and_then(|all| all.into_iter().find(|s| s.name == service))
            .map(|s| Duration::from_millis(s.healthy_deadline_ms))
            .filter(|d| !d.is_zero());
        let names = e
            .message
            .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'))
            .filter(|w| w.starts_with(&format!("{service}-")))
            .map(str::to_string)
            .collect();
        HealthWait {
            service: service.to_string(),
            names,
            deadline_ms: deadline.map(|d| e.at_ms + d.as_millis() as i64),
            deadline: deadline.unwrap_or_default(),
            next: Instant::now() + HEALTH_EVERY,
        }
    }

    fn intro(&self) -> String {
        match self.deadline_ms {
            Some(at) => format!(
                "             waiting up to {} (healthy_deadline) for health, until {}",
                handoff_core::duration::format(self.deadline),
                clock(at)
            ),
            None => "             waiting for health".into(),
        }
    }

    fn due(&mut self) -> bool {
        if Instant::now() < self.next {
            return false;
        }
        self.next = Instant::now() + HEALTH_EVERY;
        true
    }

    /// One line per named instance that is not healthy yet, e.g.
    /// `web-3: GET /healthz → 503 (4 in a row); deadline in 52 s`.
    fn lines(&self, c: &Client) -> Vec<String> {
        let Ok(all) = services(c) else {
            return Vec::new();
        };
        let Some(s) = all.into_iter().find(|s| s.name == self.service) else {
            return Vec::new();
        };
        let left = self
            .deadline_ms
            .map(|at| format!("; deadline in {} s", ((at - now_ms()).max(0) + 999) / 1000))
            .unwrap_or_default();
        let mut out = Vec::new();
        for n in &self.names {
            let target = s
                .groups
                .iter()
                .flat_map(|g| &g.targets)
                .find(|t| &t.name == n);
            let instance = s.instances.iter().find(|i| &i.name == n);
            let said = match (target, instance) {
                (Some(t), _) if t.state == "healthy" => continue,
                (Some(t), _) => format!(
                    "{}: {}",
                    t.state,
                    t.last_check.as_deref().unwrap_or("no health check yet")
                ),
                (None, Some(i)) => format!(
                    "{}: {}",
                    i.state,
                    i.last_error.as_deref().unwrap_or("not registered yet")
                ),
                (None, None) => continue,
            };
            out.push(format!("{n}: {said}{left}"));
        }
        out
    }
}

/// Ctrl-C while following: the flag the follow loop checks within 100 ms,
/// so it can say that the deployment goes on (it runs in the daemon, not
/// here) and how to follow, stop or undo it, instead of vanishing.
fn on_ctrl_c() -> &'static std::sync::atomic::AtomicBool {
    static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn handler(_: libc::c_int) {
        INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, handler as *const () as libc::sighandler_t);
    }
    &INTERRUPTED
}

/// What the deployment is waiting for after a step, for the spinner.
fn waiting_for(kind: StepKind, message: &str) -> String {
    match kind {
        StepKind::Drain => "draining in-flight requests".into(),
        StepKind::Stop => "stopping".into(),
        StepKind::Start => "starting".into(),
        StepKind::Health => "waiting for health checks (and min_healthy_time)".into(),
        StepKind::Traffic => format!("baking: {message}"),
        StepKind::CutOver => "blue finishing its in-flight requests".into(),
        StepKind::Hook => "running hooks".into(),
        StepKind::Rollback | StepKind::RollbackRetry => "rolling back".into(),
        StepKind::Waiting => format!("waiting: {message}"),
        _ => "working".into(),
    }
}

pub fn print_report(v: &DeploymentView) {
    let reason = v.reason.clone().unwrap_or_default();
    match (v.status, v.origin) {
        (DeploymentStatus::Succeeded, Origin::Rollback) => println!(
            "rolled back: {} serves service {} again ({})",
            v.to, v.service, v.id
        ),
        (DeploymentStatus::Succeeded, _) => {
            println!("deployed: {} serves service {} ({})", v.to, v.service, v.id)
        }
        (DeploymentStatus::RolledBack, Origin::Rollback) => println!(
            "ROLLBACK FAILED: {} did not come back ({reason}); {} still serves service {}",
            v.to, v.from, v.service
        ),
        (DeploymentStatus::RolledBack, _) => println!(
            "rolled back: {} serves service {} ({reason})",
            v.from, v.service
        ),
        (DeploymentStatus::Failed, _) => println!("FAILED, needs attention: {reason}"),
        (s, _) => println!("status: {s}"),
    }
    if let Some(r) = &v.report {
        println!(
            "report: took {}; capacity floor {}/{}; mixed versions {}; peak {} instances",
            fmt_ms(r.duration_ms),
            r.capacity_floor,
            r.desired,
            fmt_ms(r.mixed_window_ms),
            r.peak_instances
        );
        for x in &r.per_revision {
            println!(
                "  {}: {} requests, {} 5xx",
                x.revision, x.requests, x.errors_5xx
            );
        }
        match (r.rollback_ms, r.traffic_back_ms) {
            (Some(all), Some(back)) if v.strategy == handoff_core::Strategy::BlueGreen => println!(
                "  rollback: traffic flipped back to {} in {}; green stopped, all done in {}",
                v.from,
                fmt_ms(back),
                fmt_ms(all)
            ),
            (Some(all), Some(back)) => println!(
                "  rollback: {} out of service after {}; all done in {}",
                v.to,
                fmt_ms(back),
                fmt_ms(all)
            ),
            (Some(all), None) => println!("  rollback took {}", fmt_ms(all)),
            _ => {}
        }
    }
}
