//! The CLI's side of the admin API: a small blocking HTTP/1.1 client and
//! the commands that use it. Request and response bodies are the API's own
//! types (`handoff_api::types`).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use handoff_api::types::*;
use handoff_controller::predict::fmt_ms;
use handoff_core::{DeploymentStatus, Origin, StepKind};
use serde::de::DeserializeOwned;

pub struct Client {
    admin: String,
    hostport: String,
    token: Option<String>,
}

/// Where the daemon is and how to prove who we are: `--admin` /
/// `HANDOFF_ADMIN` and `--token` / `HANDOFF_TOKEN` win; otherwise the
/// config file (`-c`, default `handoff.toml`) gives `server.admin` and the
/// state dir whose `token` file the daemon wrote.
pub fn resolve(admin: Option<String>, token: Option<String>, config: &std::path::Path) -> Client {
    // An empty HANDOFF_TOKEN / HANDOFF_ADMIN means unset, as in most tools.
    let token = token.filter(|t| !t.trim().is_empty());
    let admin = admin.filter(|a| !a.trim().is_empty());
    let cfg = config
        .exists()
        .then(|| handoff_core::config::load(config).ok())
        .flatten();
    let admin = admin.unwrap_or_else(|| {
        cfg.as_ref()
            .map(|c| format!("http://{}", c.server.admin))
            .unwrap_or_else(|| format!("http://{}", handoff_core::config::defaults::ADMIN))
    });
    let token = token
        .or_else(|| cfg.as_ref().and_then(|c| c.server.token.clone()))
        .or_else(|| {
            let dir = cfg
                .as_ref()
                .map(|c| c.server.state_dir.clone())
                .unwrap_or_else(|| handoff_core::config::defaults::STATE_DIR.into());
            std::fs::read_to_string(dir.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
        });
    let hostport = admin
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    Client {
        admin,
        hostport,
        token,
    }
}

impl Client {
    /// One request; returns (status, body).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<(u16, String)> {
        let mut s = std::net::TcpStream::connect(&self.hostport).map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the handoff daemon at {}: {e}; is `handoff serve` running? (set --admin or HANDOFF_ADMIN)",
                self.admin
            )
        })?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let body = body.unwrap_or_default();
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.hostport,
            body.len()
        )?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let out = String::from_utf8_lossy(&out).into_owned();
        let (head, rest) = out
            .split_once("\r\n\r\n")
            .context("malformed answer from the daemon")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("malformed status line")?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        Ok((status, body))
    }

    pub fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<T> {
        let text = self.text(method, path, body)?;
        serde_json::from_str(&text).with_context(|| format!("unexpected answer: {}", text.trim()))
    }

    /// The body of a 2xx answer; any other answer becomes the API's error
    /// message (or a hint when no token was found at all).
    pub fn text(&self, method: &str, path: &str, body: Option<String>) -> anyhow::Result<String> {
        let (status, text) = self.call(method, path, body)?;
        if status == 401 && self.token.is_none() {
            bail!(
                "the daemon at {} wants a token and none was found: set HANDOFF_TOKEN, pass --token, or run from the directory of its handoff.toml (-c FILE)",
                self.admin
            );
        }
        if !(200..300).contains(&status) {
            match serde_json::from_str::<ErrorBody>(&text) {
                Ok(e) => bail!("{}", e.error.message),
                Err(_) => bail!("daemon answered {status}: {}", text.trim()),
            }
        }
        Ok(text)
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn clock(ms: i64) -> String {
    let s = (ms / 1000).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        (s / 60) % 60,
        s % 60,
        ms.rem_euclid(1000)
    )
}

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
        let retained = retained_settles && v.status == DeploymentStatus::Retained;
        if retained || !v.status.is_active() {
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

fn services(c: &Client) -> anyhow::Result<Vec<ServiceView>> {
    c.json("GET", "/services", None)
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

pub fn status(c: &Client, service: Option<&str>, json: bool) -> anyhow::Result<()> {
    let all: Vec<ServiceView> = c.json("GET", "/services", None)?;
    let list: Vec<&ServiceView> = all
        .iter()
        .filter(|s| service.is_none_or(|n| n == s.name))
        .collect();
    if let Some(n) = service {
        if list.is_empty() {
            bail!("no service '{n}'");
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for s in list {
        println!(
            "{}  listen {}  revision {}{}",
            s.name,
            s.bound.as_deref().unwrap_or(&s.listen),
            s.revision.clone().unwrap_or_else(|| "static".into()),
            s.deployment
                .as_ref()
                .map(|d| format!("  deploying: {d}"))
                .unwrap_or_default()
        );
        // Groups are blue/green vocabulary: a service with one group (in
        // place, or fixed targets) shows its targets without it.
        let with_targets = s.groups.iter().filter(|g| !g.targets.is_empty()).count();
        for g in s
            .groups
            .iter()
            .filter(|g| !g.targets.is_empty() || with_targets == 0)
        {
            if with_targets > 1 {
                println!("  group {} (weight {})", g.name, g.weight);
            }
            let mut targets: Vec<&TargetView> = g.targets.iter().collect();
            targets.sort_by(|a, b| by_index(&a.name).cmp(&by_index(&b.name)));
            for t in targets {
                let check = match (&t.last_check, t.state.as_str()) {
                    // A healthy target's last check is no news.
                    (Some(c), "initial" | "unhealthy") => format!("  last check: {c}"),
                    _ => String::new(),
                };
                let indent = if with_targets > 1 { "    " } else { "  " };
                println!(
                    "{indent}{:<12} {:<21} {:<10} {:<10} in-flight {}{check}",
                    t.name, t.addr, t.revision, t.state, t.in_flight
                );
            }
        }
        print_instances(s);
    }
    Ok(())
}

/// The instances that are not running and healthy, with their last error:
/// one that cannot start has no target, so the groups above never show it.
fn print_instances(s: &ServiceView) {
    let Some(desired) = s.desired else { return };
    let running = s.instances.iter().filter(|i| i.state == "running").count();
    let mut sick: Vec<&InstanceStatus> = s.instances.iter().filter(|i| !i.is_well()).collect();
    if sick.is_empty() && running >= desired {
        return;
    }
    sick.sort_by(|a, b| by_index(&a.name).cmp(&by_index(&b.name)));
    println!("  instances: {running} of {desired} running");
    for i in sick {
        let why = i
            .last_error
            .as_deref()
            .or(i.last_check.as_deref())
            .unwrap_or("no error recorded");
        println!(
            "    {:<12} {:<10} {:<10} restarts {}  {why}",
            i.name,
            i.revision,
            match (i.state.as_str(), i.target_state.as_deref()) {
                ("running", Some(t)) => t,
                (s, _) => s,
            },
            i.restarts
        );
    }
}

/// Sort key: `web-2` before `web-10` (the numeric tail, then the name).
fn by_index(name: &str) -> (u64, &str) {
    let n = name.rsplit('-').next().and_then(|n| n.parse().ok());
    (n.unwrap_or(0), name)
}

pub fn history(c: &Client, service: &str, json: bool) -> anyhow::Result<()> {
    let list: Vec<DeploymentView> =
        c.json("GET", &format!("/services/{service}/deployments"), None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    crate::plan_view::print_history(&list);
    Ok(())
}

pub fn report(c: &Client, id: &str, json: bool) -> anyhow::Result<()> {
    let v: DeploymentView = c.json("GET", &format!("/deployments/{id}"), None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} of {}: {} → {} ({})",
        v.id, v.service, v.from, v.to, v.strategy
    );
    for e in &v.events {
        println!("{}  {}", clock(e.at_ms), e.message);
    }
    print_report(&v);
    if let Some(c) = &v.comparison {
        crate::plan_view::print_comparison(c);
    }
    Ok(())
}

/// A service's revisions.
pub fn revisions(c: &Client, service: &str, json: bool) -> anyhow::Result<()> {
    let list: Vec<RevisionView> = c.json("GET", &format!("/services/{service}/revisions"), None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for r in list {
        let mark = if r.current {
            "serving"
        } else if r.stable {
            "stable"
        } else {
            "never completed"
        };
        let sha = r
            .sha256
            .map(|s| format!("  sha256 {}", &s[..12.min(s.len())]))
            .unwrap_or_default();
        println!("{:<16} {mark}{sha}", r.id);
    }
    Ok(())
}

/// The tail of every instance's log of a service.
pub fn all_logs(c: &Client, service: &str, lines: usize) -> anyhow::Result<()> {
    let all = services(c)?;
    let svc = all
        .iter()
        .find(|s| s.name == service)
        .ok_or_else(|| anyhow::anyhow!("no service '{service}'"))?;
    // Every instance, in index order: one that cannot start has no target
    // but has the log that says why.
    let mut shown: Vec<(String, String)> = svc
        .groups
        .iter()
        .flat_map(|g| &g.targets)
        .map(|t| {
            (
                t.name.clone(),
                format!("{}, {}, {}", t.addr, t.revision, t.state),
            )
        })
        .collect();
    for i in &svc.instances {
        if !shown.iter().any(|(n, _)| n == &i.name) {
            shown.push((i.name.clone(), format!("{}, {}", i.revision, i.state)));
        }
    }
    shown.sort_by(|a, b| by_index(&a.0).cmp(&by_index(&b.0)));
    for (name, what) in shown {
        println!("==> {name} ({what}) <==");
        if let Err(e) = logs(c, service, &name, lines) {
            println!("({e})");
        }
    }
    Ok(())
}

/// The tail of an instance's log.
pub fn logs(c: &Client, service: &str, instance: &str, lines: usize) -> anyhow::Result<()> {
    let text = c.text(
        "GET",
        &format!("/logs/{service}/{instance}?lines={lines}"),
        None,
    )?;
    print!("{text}");
    Ok(())
}

pub fn control(
    c: &Client,
    service: &str,
    verb: &str,
    body: Option<String>,
    json: bool,
) -> anyhow::Result<Accepted> {
    let acc: Accepted = c.json("POST", &format!("/services/{service}/{verb}"), body)?;
    if json {
        println!("{}", serde_json::to_string(&acc)?);
    }
    Ok(acc)
}

/// Unix milliseconds now (the CLI and the daemon share a clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
