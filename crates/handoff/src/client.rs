//! The CLI's side of the admin API: a small blocking HTTP/1.1 client and
//! the commands that use it. Request and response bodies are the API's own
//! types (`handoff_api::types`).

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use handoff_api::types::*;
use serde::de::DeserializeOwned;

mod follow;
pub use follow::{deploy, follow, follow_since, print_report};

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

pub(crate) fn services(c: &Client) -> anyhow::Result<Vec<ServiceView>> {
    c.json("GET", "/services", None)
}

pub(crate) fn clock(ms: i64) -> String {
    let s = (ms / 1000).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        (s / 60) % 60,
        s % 60,
        ms.rem_euclid(1000)
    )
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
