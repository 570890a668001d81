//! The CLI's side of the admin API: a small blocking HTTP/1.1 client and
//! the commands that use it. Request and response bodies are the API's own
//! types (`handoff_api::types`).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use handoff_api::types::*;
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
    follow_since(c, id, json, 0)
}

/// Like [`follow`], showing only events from `since_ms` (unix ms) on: a
/// rollback within retention continues a deployment whose earlier events
/// were shown already.
pub fn follow_since(
    c: &Client,
    id: &str,
    json: bool,
    since_ms: i64,
) -> anyhow::Result<DeploymentStatus> {
    let mut shown = 0;
    let mut first = true;
    let started = Instant::now();
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
    loop {
        let v: DeploymentView = c.json("GET", &format!("/deployments/{id}"), None)?;
        if first {
            shown = v.events.iter().take_while(|e| e.at_ms < since_ms).count();
            first = false;
        }
        if !json {
            for e in &v.events[shown..] {
                bar.suspend(|| println!("{}  {}", clock(e.at_ms), e.message));
                bar.reset_elapsed();
                bar.set_message(waiting_for(e.kind, &e.message));
            }
        }
        shown = v.events.len();
        let retained = v.status == DeploymentStatus::Retained;
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
            "report: {} ms; capacity floor {}/{}; mixed versions {} ms; peak {} instances",
            r.duration_ms, r.capacity_floor, r.desired, r.mixed_window_ms, r.peak_instances
        );
        for x in &r.per_revision {
            println!(
                "  {}: {} requests, {} 5xx",
                x.revision, x.requests, x.errors_5xx
            );
        }
        if let Some(ms) = r.rollback_ms {
            println!("  rollback took {ms} ms");
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
            s.listen,
            s.revision.clone().unwrap_or_else(|| "static".into()),
            s.deployment
                .as_ref()
                .map(|d| format!("  deploying: {d}"))
                .unwrap_or_default()
        );
        for g in &s.groups {
            println!("  group {} (weight {})", g.name, g.weight);
            for t in &g.targets {
                println!(
                    "    {:<12} {:<21} {:<10} {:<10} in-flight {}",
                    t.name, t.addr, t.revision, t.state, t.in_flight
                );
            }
        }
    }
    Ok(())
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
    let all: Vec<ServiceView> = c.json("GET", "/services", None)?;
    let svc = all
        .iter()
        .find(|s| s.name == service)
        .ok_or_else(|| anyhow::anyhow!("no service '{service}'"))?;
    for g in &svc.groups {
        for t in &g.targets {
            println!(
                "==> {} ({}, {}, {}) <==",
                t.name, t.addr, t.revision, t.state
            );
            logs(c, service, &t.name, lines)?;
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
