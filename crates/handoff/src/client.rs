//! The CLI's side of the admin API: a small blocking HTTP/1.1 client and
//! the commands that use it. Request and response bodies are the API's own
//! types (`handoff_api::types`).

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use handoff_api::types::*;
use serde::de::DeserializeOwned;

pub mod certificate;
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
    // A config with a mistake (say, one being fixed for `handoff reload`)
    // still names the daemon's address and token.
    let (loose_admin, loose_dir, loose_token) = handoff_core::config::reach(config);
    let admin = admin.unwrap_or_else(|| {
        cfg.as_ref()
            .map(|c| format!("http://{}", c.server.admin))
            .unwrap_or_else(|| format!("http://{loose_admin}"))
    });
    let token = token
        .or_else(|| cfg.as_ref().and_then(|c| c.server.token.clone()))
        .or(loose_token)
        .or_else(|| {
            let dir = cfg
                .as_ref()
                .map(|c| c.server.state_dir.clone())
                .unwrap_or(loose_dir);
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

/// `handoff reload` / `handoff upgrade`: returns once the new daemon serves.
pub(crate) fn handover(
    c: &Client,
    path: &str,
    binary: Option<std::path::PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let body = binary.map(|b| serde_json::json!({ "binary": b.display().to_string() }).to_string());
    let h: handoff_api::daemon::Handover = c.json("POST", path, body)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&h)?);
    } else {
        let what = if path == "/reload" {
            "reloaded"
        } else {
            "upgraded"
        };
        println!("{what}: {}", h.message);
    }
    Ok(())
}

pub(crate) fn services(c: &Client) -> anyhow::Result<Vec<ServiceView>> {
    c.json("GET", "/services", None)
}

/// `2027-03-01` (UTC) for a unix-ms time.
pub(crate) fn clock_date(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
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
        let front = match (s.bound.as_deref().or(s.listen.as_deref()), &s.balancer) {
            (Some(a), _) => format!("listen {a}"),
            (None, b) => b.clone(),
        };
        println!(
            "{}  {front}  revision {}{}",
            s.name,
            s.revision.clone().unwrap_or_else(|| "static".into()),
            s.deployment
                .as_ref()
                .map(|d| format!("  deploying: {d}"))
                .unwrap_or_default()
        );
        if let Some(c) = &s.certificate {
            let days = (c.not_after_ms - now_ms()) / 86_400_000;
            println!(
                "  certificate {} expires {} ({days} days){}",
                c.names.join(", "),
                &clock_date(c.not_after_ms),
                c.acme
                    .as_ref()
                    .map(|a| format!("; {}", certificate::describe(a)))
                    .unwrap_or_default()
            );
        }
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
                    "{indent}{:<12} {}{:<21} {:<10} {:<10} in-flight {}{check}",
                    t.name,
                    host_column(s, &t.name),
                    t.addr,
                    t.revision,
                    t.state,
                    t.in_flight
                );
            }
        }
        for line in hosts_lines(s, now_ms()) {
            println!("{line}");
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
            "    {:<12} {}{:<10} {:<10} restarts {}  {why}",
            i.name,
            host_column(s, &i.name),
            i.revision,
            match (i.state.as_str(), i.target_state.as_deref()) {
                ("running", Some(t)) => t,
                (s, _) => s,
            },
            i.restarts
        );
    }
}

/// For a service on hosts, the host instance `name` runs on, padded to
/// the longest host name, and a space; empty for local instances, so their
/// rows stay as they always were.
fn host_column(s: &ServiceView, name: &str) -> String {
    if s.hosts.is_empty() {
        return String::new();
    }
    let width = s.hosts.iter().map(|h| h.name.len()).max().unwrap_or(0);
    let host = s
        .instances
        .iter()
        .find(|i| i.name == name)
        .and_then(|i| i.host.as_deref())
        .unwrap_or("-");
    format!("{host:<width$} ")
}

/// A service on hosts: each host, whether it answers (how long it has not,
/// and why) and its healthy instances; when one is unreachable, the
/// capacity left. Nothing for a service of local processes.
fn hosts_lines(s: &ServiceView, now_ms: i64) -> Vec<String> {
    if s.hosts.is_empty() {
        return Vec::new();
    }
    let width = s.hosts.iter().map(|h| h.name.len()).max().unwrap_or(0);
    let mut out = vec!["  hosts:".to_string()];
    let mut lost = Vec::new();
    for h in &s.hosts {
        let up = h.state == "up";
        let mut line = format!(
            "    {:<width$} {:<11} {}/{} healthy",
            h.name,
            if up { "up" } else { "UNREACHABLE" },
            h.healthy,
            h.instances
        );
        if !up {
            let why = h.why.as_deref().unwrap_or("no answer");
            line.push_str(&format!("  {why}"));
            if let Some(since) = h.since_ms {
                line.push_str(&format!(
                    " (unreachable since {}, {} ago)",
                    clock(since as i64),
                    span(now_ms.saturating_sub(since as i64))
                ));
            }
            lost.push(format!("host {} unreachable: {why}", h.name));
        }
        out.push(line);
    }
    if !lost.is_empty() {
        // As the dashboard counts: healthy targets of groups with traffic.
        let in_service: usize = s
            .groups
            .iter()
            .filter(|g| g.weight > 0)
            .map(|g| g.targets.iter().filter(|t| t.state == "healthy").count())
            .sum();
        let of = s.desired.unwrap_or(s.instances.len());
        out.push(format!(
            "  capacity: {in_service} of {of} instances in service ({})",
            lost.join("; ")
        ));
    }
    out
}

/// A span of time for people: `850 ms`, `3.2 s`, `4 min 5 s`, `2 h 10 min`.
fn span(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service(hosts: Vec<HostStatus>) -> ServiceView {
        let target = |n: usize, state: &str| TargetView {
            name: format!("web-{n}"),
            addr: format!("10.77.1.{}:4000", 10 + n),
            revision: "v1".into(),
            state: state.into(),
            in_flight: 0,
            requests: 0,
            last_check: None,
        };
        let instance = |n: usize, host: Option<&str>| InstanceStatus {
            name: format!("web-{n}"),
            revision: "v1".into(),
            group: "default".into(),
            host: host.map(String::from),
            port: 4000,
            pid: Some(100 + n as u32),
            state: if n == 3 && host.is_some() {
                "unreachable"
            } else {
                "running"
            }
            .into(),
            target_state: Some(
                if n == 3 && host.is_some() {
                    "unhealthy"
                } else {
                    "healthy"
                }
                .into(),
            ),
            last_check: None,
            restarts: 0,
            last_error: None,
        };
        let on_hosts = !hosts.is_empty();
        ServiceView {
            name: "web".into(),
            listen: Some("127.0.0.1:8080".into()),
            balancer: "builtin".into(),
            certificate: None,
            bound: None,
            revision: Some("v1".into()),
            deployment: None,
            groups: vec![GroupView {
                name: "default".into(),
                weight: 100,
                targets: vec![
                    target(1, "healthy"),
                    target(2, "healthy"),
                    target(3, if on_hosts { "unhealthy" } else { "healthy" }),
                ],
            }],
            healthy_deadline_ms: 10_000,
            desired: Some(3),
            instances: (1..=3)
                .map(|n| instance(n, on_hosts.then(|| ["h1", "h2", "h3"][n - 1])))
                .collect(),
            hosts,
        }
    }

    fn host(name: &str, lost_at: Option<u64>) -> HostStatus {
        HostStatus {
            name: name.into(),
            state: if lost_at.is_some() {
                "unreachable"
            } else {
                "up"
            }
            .into(),
            why: lost_at.map(|_| "no answer for 3.2 s".into()),
            since_ms: lost_at,
            instances: 1,
            healthy: usize::from(lost_at.is_none()),
        }
    }

    #[test]
    fn a_lost_host_shows_with_why_for_how_long_and_the_capacity_left() {
        let lost_at = 1_700_000_000_000u64;
        let s = service(vec![
            host("h1", None),
            host("h2", None),
            host("h3", Some(lost_at)),
        ]);
        let lines = hosts_lines(&s, lost_at as i64 + 12_300);
        assert_eq!(
            lines[..3],
            [
                "  hosts:",
                "    h1 up          1/1 healthy",
                "    h2 up          1/1 healthy",
            ]
        );
        assert!(
            lines[3].starts_with(
                "    h3 UNREACHABLE 0/1 healthy  no answer for 3.2 s (unreachable since "
            ),
            "{lines:?}"
        );
        assert!(lines[3].ends_with(", 12.3 s ago)"), "{lines:?}");
        assert_eq!(
            lines[4],
            "  capacity: 2 of 3 instances in service (host h3 unreachable: no answer for 3.2 s)"
        );
        assert_eq!(host_column(&s, "web-3"), "h3 ");
    }

    #[test]
    fn all_hosts_up_no_capacity_line_and_local_services_unchanged() {
        let s = service(vec![host("h1", None), host("h2", None), host("h3", None)]);
        assert_eq!(hosts_lines(&s, 0).len(), 4);
        let local = service(Vec::new());
        assert!(hosts_lines(&local, 0).is_empty());
        assert_eq!(host_column(&local, "web-1"), "");
    }

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(span(850), "850 ms");
        assert_eq!(span(3_240), "3.2 s");
        assert_eq!(span(245_000), "4 min 5 s");
        assert_eq!(span(7_800_000), "2 h 10 min");
    }
}
