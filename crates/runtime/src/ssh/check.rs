//! `handoff hosts check` and the preflight before every deployment: one
//! round trip per host that says, for each thing a deployment needs there,
//! whether it holds and, when it does not, why and what to do.

use std::time::{Duration, Instant};

use super::conn::{quote, quote_path, Conn};
use crate::RuntimeError;

/// Free space below this on the host's `dir` fails the check.
pub const MIN_FREE_MB: u64 = 100;

/// One host's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCheck {
    pub host: String,
    pub address: String,
    /// Round trip of the check, when the host answered.
    pub rtt_ms: Option<u64>,
    /// Problems, each with what to do; empty when the host is ready.
    pub problems: Vec<String>,
    /// Facts worth showing (free disk, kernel).
    pub facts: Vec<String>,
}

impl HostCheck {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The program a command template starts (its first word), when it can be
/// looked up before the release is there: a name found on `PATH` or an
/// absolute path. `./server` lives in the release, shipped later.
pub fn program_of(command: &str) -> Option<String> {
    let first = command.split_whitespace().next()?;
    let first = first.trim_matches(|c| c == '\'' || c == '"');
    if first.contains('{') || first.contains('=') {
        return None;
    }
    (first.starts_with('/') || !first.contains('/')).then(|| first.to_string())
}

/// Checks one host: reachable with the key, host key known and matching
/// (both by ssh itself: a failure is exit 255 with its reason), `dir`
/// writable, `/proc` present, `setsid`, `tar` and `sha256sum` there, the
/// command's program found, free disk.
pub async fn check(conn: &Conn, programs: &[String]) -> HostCheck {
    let spec = &conn.spec;
    let mut out = HostCheck {
        host: spec.name.clone(),
        address: spec.address(),
        rtt_ms: None,
        problems: Vec::new(),
        facts: Vec::new(),
    };
    if !spec.known_hosts.exists() {
        out.problems.push(format!(
            "no known_hosts file at {}: run `handoff hosts trust {}` to check the host's key and record it",
            spec.known_hosts.display(),
            spec.name
        ));
        return out;
    }
    let progs: Vec<String> = programs.iter().map(|p| quote(p)).collect();
    let script = format!(
        r#"D={dir}
mkdir -p "$D" 2>/dev/null
if [ -d "$D" ] && t="$D/.handoff-check.$$" && : > "$t" 2>/dev/null; then rm -f "$t"; echo "ok dir"; else echo "fail dir"; fi
if [ -r /proc/self/stat ]; then echo "ok proc"; else echo "fail proc"; fi
for p in setsid tar sha256sum timeout; do command -v "$p" >/dev/null 2>&1 && echo "ok tool $p" || echo "fail tool $p"; done
for p in {progs}; do command -v "$p" >/dev/null 2>&1 && echo "ok prog $p" || echo "fail prog $p"; done
echo "free $(df -Pk "$D" 2>/dev/null | awk 'NR==2 {{print int($4/1024)}}')"
echo "kernel $(uname -sr)""#,
        dir = quote_path(&spec.dir),
        progs = if progs.is_empty() {
            "''".to_string()
        } else {
            progs.join(" ")
        },
    );
    let started = Instant::now();
    let res = conn.run(&script, None, Duration::from_secs(12)).await;
    let o = match res {
        Ok(o) => o,
        Err(RuntimeError::HostUnreachable { why, .. }) => {
            // Key problems say so themselves; the rest is reachability.
            let key = why.contains("host key") || why.contains("not accepted");
            out.problems.push(if key {
                why
            } else {
                format!("unreachable: {why}")
            });
            return out;
        }
        Err(e) => {
            out.problems.push(e.to_string());
            return out;
        }
    };
    out.rtt_ms = Some(started.elapsed().as_millis() as u64);
    let text = String::from_utf8_lossy(&o.stdout);
    for line in text.lines() {
        let w: Vec<&str> = line.splitn(3, ' ').collect();
        match w.as_slice() {
            ["fail", "dir"] => out.problems.push(format!(
                "dir {} is not writable by {}: create it and give the ssh user write access, or set `dir`",
                spec.dir.display(),
                spec.user.as_deref().unwrap_or("the ssh user")
            )),
            ["fail", "proc"] => out
                .problems
                .push("no /proc: handoff identifies processes by /proc/PID/stat (Linux only)".into()),
            ["fail", "tool", t] => out
                .problems
                .push(format!("`{t}` is not installed (needed to run and ship instances)")),
            ["fail", "prog", ""] => {}
            ["fail", "prog", p] => out.problems.push(format!(
                "the command's program `{p}` is not found on the host's PATH: install it there or use an absolute path"
            )),
            ["free", mb] => match mb.trim().parse::<u64>() {
                Ok(mb) if mb < MIN_FREE_MB => out.problems.push(format!(
                    "only {mb} MB free in {}: releases need room (at least {MIN_FREE_MB} MB)",
                    spec.dir.display()
                )),
                Ok(mb) => out.facts.push(format!("{mb} MB free")),
                Err(_) => {}
            },
            ["kernel", k] => out.facts.push(k.to_string()),
            ["kernel", a, b] => out.facts.push(format!("{a} {b}")),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_the_first_word_when_it_can_be_looked_up() {
        assert_eq!(
            program_of("handoff sample-app --port {port}").as_deref(),
            Some("handoff")
        );
        assert_eq!(
            program_of("/usr/bin/python3 app.py").as_deref(),
            Some("/usr/bin/python3")
        );
        assert_eq!(program_of("./server --port {port}"), None);
        assert_eq!(program_of("PORT={port} ./x"), None);
        assert_eq!(program_of("   "), None);
    }
}
