//! One watcher per host: keeps the master connection up and reads a status
//! stream from the host, one report a second, of every instance handoff
//! has a pidfile for there (pid, `/proc` start time, owner, service,
//! instance, revision, port, alive). The reports are how exits are noticed
//! (within about a second, with no call per instance) and strays found;
//! their absence is how a lost host is noticed: no report for
//! [`SILENT_AFTER`], or the master ending with exit 255, marks the host
//! lost with the time it has been silent, and the watcher reconnects every
//! second until it answers again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use super::conn::{quote_path, Conn};
use crate::HostState;

/// A host that sent no report this long is lost (reports come every
/// second; ssh's own keepalives end the session after ~4 s). Shorter
/// would take a busy host (or a busy handoff machine) for a lost one.
pub const SILENT_AFTER: Duration = Duration::from_millis(4000);

/// One instance as its host reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub start_time: u64,
    pub owner: String,
    pub service: String,
    pub instance: String,
    pub revision: String,
    pub port: u16,
    pub alive: bool,
}

/// The latest report of a host.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// When its first line arrived: a process spawned before it is in it.
    pub begun: Option<Instant>,
    pub procs: Vec<Proc>,
}

pub struct Watch {
    pub conn: Conn,
    /// The daemon's owner id (names its status stream on the host).
    owner: String,
    state: Mutex<HostState>,
    pub reports: watch::Sender<Report>,
    /// Bumped on every up/lost transition of any host (shared).
    changes: watch::Sender<u64>,
}

/// The status stream, run by `/bin/sh` on the host. Pidfiles hold
/// `pid start owner service instance revision port`, all names that the
/// naming rule keeps free of spaces and shell syntax.
/// Every tenth round it also rotates the instances' logs there as the
/// daemon rotates local ones (see [`crate::logs`]): copy, then truncate.
fn script(conn: &Conn, owner: &str) -> String {
    format!(
        r#"D={dir}
mkdir -p "$D/run" || exit 3
# One stream per daemon and host: one left over from before a partition
# (sshd keeps its channel until TCP gives up) would rotate logs beside this.
M="$D/run/.monitor.{owner}"
if read -r old < "$M" 2>/dev/null; then kill "$old" 2>/dev/null || true; fi
echo $$ > "$M"
n=0
while :; do
  n=$((n+1))
  if [ $((n % 10)) = 1 ]; then
    for l in "$D"/logs/*/*.log; do
      [ -f "$l" ] || continue
      [ "$(stat -c %s "$l" 2>/dev/null || echo 0)" -gt {max} ] || continue
      g={keep}; while [ $g -gt 1 ]; do p=$((g-1)); [ -f "$l.$p" ] && mv -f "$l.$p" "$l.$g"; g=$p; done
      cp -f "$l" "$l.1" && : > "$l"
    done
  fi
  echo begin
  for f in "$D"/run/*/*.pid; do
    [ -f "$f" ] || continue
    read -r pid st owner svc inst rev port < "$f" || continue
    a=0
    # Builtins only: a fork per instance per second is most of the cost.
    if {{ read -r line < "/proc/$pid/stat"; }} 2>/dev/null; then
      set -- ${{line##*") "}}
      [ "$1" != Z ] && [ "${{20}}" = "$st" ] && a=1
    fi
    echo "p $pid $st $owner $svc $inst $rev $port $a"
  done
  echo end
  sleep 1
done"#,
        dir = quote_path(&conn.spec.home),
        owner = owner,
        max = crate::logs::MAX_BYTES,
        keep = crate::logs::KEEP,
    )
}

fn parse(line: &str) -> Option<Proc> {
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() != 9 || f[0] != "p" {
        return None;
    }
    Some(Proc {
        pid: f[1].parse().ok()?,
        start_time: f[2].parse().ok()?,
        owner: f[3].to_string(),
        service: f[4].to_string(),
        instance: f[5].to_string(),
        revision: f[6].to_string(),
        port: f[7].parse().ok()?,
        alive: f[8] == "1",
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Watch {
    pub fn new(conn: Conn, owner: &str, changes: watch::Sender<u64>) -> Watch {
        Watch {
            conn,
            owner: owner.to_string(),
            // Unknown until the first report: lost, so nothing acts on a
            // host that never answered.
            state: Mutex::new(HostState::Lost {
                since_ms: now_ms(),
                why: "not connected yet".into(),
            }),
            reports: watch::channel(Report::default()).0,
            changes,
        }
    }

    pub fn state(&self) -> HostState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, new: HostState) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let host = &self.conn.spec.name;
        let changed = match (&*s, &new) {
            (HostState::Up, HostState::Up) => false,
            // Lost since the first moment it was; the reason may sharpen
            // (from "not connected yet" to what ssh said).
            (HostState::Lost { since_ms, .. }, HostState::Lost { why, .. }) => {
                let since_ms = *since_ms;
                *s = HostState::Lost {
                    since_ms,
                    why: why.clone(),
                };
                false
            }
            _ => {
                match &new {
                    HostState::Lost { why, .. } => {
                        tracing::warn!(host = %host, "host unreachable: {why}")
                    }
                    HostState::Up => tracing::info!(host = %host, "host answers"),
                }
                *s = new;
                true
            }
        };
        drop(s);
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    fn lost(&self, why: String) {
        self.set(HostState::Lost {
            since_ms: now_ms(),
            why,
        });
    }

    /// Runs until the runtime is dropped (the task is aborted then).
    pub async fn run(self: std::sync::Arc<Self>) {
        let mut last_report = Instant::now();
        loop {
            // A socket left by a master that was killed would make the new
            // one run without multiplexing ("already exists"): this watcher
            // is the path's only master, so whatever is there is stale.
            let _ = std::fs::remove_file(&self.conn.control);
            let mut master = match self.conn.master().spawn() {
                Ok(m) => m,
                Err(e) => {
                    self.lost(format!("cannot run ssh: {e}; install the OpenSSH client"));
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            // Wait for the master to answer or fail.
            let deadline = Instant::now() + Duration::from_secs(7);
            let mut ready = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = master.try_wait() {
                    break;
                }
                if self.conn.master_ready().await {
                    ready = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tracing::debug!(host = %self.conn.spec.name, ready, "master connection");
            if !ready {
                let _ = master.start_kill();
                let out = master.wait_with_output().await;
                let err = out
                    .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
                    .unwrap_or_default();
                let why = if err.trim().is_empty() {
                    format!("no answer for {:.1} s", last_report.elapsed().as_secs_f64())
                } else {
                    super::conn::ssh_reason(&err, &self.conn.spec)
                };
                tracing::debug!(host = %self.conn.spec.name, "master failed: {why}");
                self.lost(why);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            self.stream(&mut last_report).await;
            tracing::debug!(host = %self.conn.spec.name, "status stream ended");
            let _ = master.start_kill();
            let _ = master.wait().await;
            let _ = std::fs::remove_file(&self.conn.control);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Reads reports until the host goes silent or the stream ends.
    async fn stream(&self, last_report: &mut Instant) {
        let mut cmd = self.conn.command(&script(&self.conn, &self.owner));
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                // Nothing would tell an exit any more: say so.
                self.lost(format!("cannot run ssh for the status stream: {e}"));
                return;
            }
        };
        let Some(out) = child.stdout.take() else {
            return;
        };
        let mut lines = BufReader::new(out).lines();
        let mut report = Report::default();
        // A new stream gets its own SILENT_AFTER: the last report may be
        // from before the host was lost.
        let opened = Instant::now();
        loop {
            let heard = (*last_report).max(opened);
            let left = SILENT_AFTER.saturating_sub(heard.elapsed());
            match tokio::time::timeout(left.max(Duration::from_millis(50)), lines.next_line()).await
            {
                Ok(Ok(Some(line))) => match line.as_str() {
                    "begin" => {
                        report = Report {
                            begun: Some(Instant::now()),
                            procs: Vec::new(),
                        }
                    }
                    "end" => {
                        *last_report = Instant::now();
                        // Up first: whoever wakes on the report sees it so.
                        self.set(HostState::Up);
                        self.reports.send_replace(std::mem::take(&mut report));
                    }
                    l => {
                        if let Some(p) = parse(l) {
                            report.procs.push(p);
                        }
                    }
                },
                Ok(Ok(None)) | Ok(Err(_)) => {
                    let status = child.wait().await.ok().and_then(|s| s.code());
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use tokio::io::AsyncReadExt;
                        let _ = tokio::time::timeout(
                            Duration::from_millis(200),
                            e.read_to_string(&mut err),
                        )
                        .await;
                    }
                    let why = if status == Some(super::conn::SSH_FAILED) || err.trim().is_empty() {
                        format!("no answer for {:.1} s", last_report.elapsed().as_secs_f64())
                    } else {
                        format!("status stream ended: {}", err.trim())
                    };
                    self.lost(why);
                    return;
                }
                Err(_) => {
                    self.lost(format!(
                        "no answer for {:.1} s",
                        heard.elapsed().as_secs_f64()
                    ));
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_report_line() {
        let p = parse("p 42 1234 abcd web web-1 v1.2 8080 1").unwrap();
        assert_eq!(
            (p.pid, p.start_time, p.port, p.alive),
            (42, 1234, 8080, true)
        );
        assert_eq!((p.service.as_str(), p.instance.as_str()), ("web", "web-1"));
        assert!(parse("p 42 x").is_none());
        assert!(parse("begin").is_none());
    }
}
