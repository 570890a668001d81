//! The SSH runtime: instances as processes on other machines, reached with
//! the system OpenSSH client (so users' ssh config, agents and jump hosts
//! work) and nothing installed on the hosts but `sh`, coreutils, `setsid`,
//! `tar` and `sha256sum`.
//!
//! ```text
//! SshHosts (one per daemon)  ── per host: Watch (master connection + status stream)
//!    └─ SshRuntime (one per service: its hosts)  ── implements Runtime
//!
//! on each host, under `dir`:
//!   releases/SERVICE/REVISION/   shipped once, verified by sha256 (ship.rs)
//!   run/SERVICE/INSTANCE.pid     "pid start owner service instance revision port"
//!   logs/SERVICE/INSTANCE.log    the instance's stdout and stderr
//! ```
//!
//! - spawn: one call: `setsid -f` with every stdio redirected (so ssh
//!   returns at once and the process outlives the session), the pidfile
//!   written with the `/proc` start time; identity is host + pid + start.
//! - exits: noticed from the host's status stream (about a second), not by
//!   polling each instance.
//! - stop: TERM to the process group, the grace period, KILL, on the host
//!   in one call.
//! - lost host (exit 255, or silence): [`HostState::Lost`] with how long it
//!   has been silent; calls fail fast with [`RuntimeError::HostUnreachable`]
//!   and a stop says [`StopOutcome::Unreachable`]: the process may still
//!   run there, and is found by its pidfile (a stray) when the host answers.

pub mod check;
pub mod conn;
mod monitor;
mod pool;
mod ship;

pub use pool::SshHosts;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use conn::HostSpec;
use conn::{quote, quote_path};

use crate::{
    artifact, Exit, HookRun, HostState, InstanceSpec, RunningInstance, Runtime, RuntimeError,
    StopOutcome,
};

/// How long a new process is watched for an immediate exit.
const EARLY_EXIT_WINDOW: Duration = Duration::from_millis(500);
/// A process younger than this that no record names is being started, not
/// a stray.
const STRAY_AFTER: Duration = Duration::from_secs(30);
/// A call that should be quick (spawn, a log tail) gets this long.
const CALL_LIMIT: Duration = Duration::from_secs(15);

/// A service's view of the hosts it is placed on.
#[derive(Clone)]
pub struct SshRuntime {
    pub hosts: Arc<SshHosts>,
    /// The service's hosts, in placement order.
    pub placement: Vec<String>,
}

impl SshRuntime {
    pub fn new(hosts: Arc<SshHosts>, placement: Vec<String>) -> SshRuntime {
        SshRuntime { hosts, placement }
    }

    fn host_of<'a>(&self, host: Option<&'a str>, what: &str) -> Result<&'a str, RuntimeError> {
        host.ok_or_else(|| RuntimeError::Host {
            host: "-".into(),
            message: format!("{what}: an instance of a service on hosts has no host"),
        })
    }

    fn spec_of(&self, host: &str) -> Result<&HostSpec, RuntimeError> {
        Ok(&self.hosts.conn_or_err(host)?.spec)
    }

    /// The directory an instance of `revision` runs in on `host`.
    fn workdir(&self, host: &str, service: &str, revision: &str) -> Result<PathBuf, RuntimeError> {
        let spec = self.spec_of(host)?;
        let shipped = self
            .hosts
            .shipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .is_some_and(|s| s.contains(&(service.to_string(), revision.to_string())));
        Ok(if shipped {
            ship::release_dir(&spec.home, service, revision)
        } else {
            spec.dir.clone()
        })
    }

    fn pidfile(dir: &Path, service: &str, instance: &str) -> PathBuf {
        dir.join("run")
            .join(service)
            .join(format!("{instance}.pid"))
    }

    fn logfile(dir: &Path, service: &str, instance: &str) -> PathBuf {
        dir.join("logs")
            .join(service)
            .join(format!("{instance}.log"))
    }

    fn render(spec: &InstanceSpec, address: &str, workdir: &Path) -> Result<String, RuntimeError> {
        use handoff_core::command;
        let release_dir = workdir.display().to_string();
        let values = command::Values {
            port: spec.port,
            revision: &spec.revision,
            instance: &spec.instance,
            service: &spec.service,
            release_dir: &release_dir,
            address,
        };
        command::render(&spec.command, &values).map_err(|source| RuntimeError::Placeholder {
            instance: spec.instance.clone(),
            source,
        })
    }

    /// Ships the prepared release of `service`@`revision` to `host` unless
    /// it is there (a revision without a release needs nothing).
    async fn ship_to(&self, host: &str, service: &str, revision: &str) -> Result<(), RuntimeError> {
        let key = (service.to_string(), revision.to_string());
        let lock = self
            .hosts
            .shipping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host.to_string())
            .or_default()
            .clone();
        let _one = lock.lock().await;
        let done = self
            .hosts
            .shipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .is_some_and(|s| s.contains(&key));
        let prepared = self
            .hosts
            .releases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let (Some((release, keep)), false) = (prepared, done) else {
            return Ok(());
        };
        let conn = self.hosts.conn_or_err(host)?.clone();
        let packed = {
            let _one = self.hosts.packing.lock().await;
            let (dir, rel) = (self.hosts.ship_dir.clone(), release.clone());
            let (svc, rev) = key.clone();
            tokio::task::spawn_blocking(move || ship::pack(&dir, &svc, &rev, &rel))
                .await
                .map_err(|e| RuntimeError::Host {
                    host: host.to_string(),
                    message: format!("packing the release failed: {e}"),
                })??
        };
        let pruned = ship::ship(&conn, &packed, service, revision, &release, &keep).await?;
        let mut shipped = self.hosts.shipped.lock().unwrap_or_else(|e| e.into_inner());
        let on_host = shipped.entry(host.to_string()).or_default();
        // What the prune removed there must be shipped again if wanted.
        on_host.retain(|(s, r)| s != service || !pruned.contains(r));
        on_host.insert(key);
        Ok(())
    }

    /// The shell test "pid $1 with start time $2 is alive" on a host.
    const ALIVE_FN: &'static str = r#"alive() { [ -r "/proc/$1/stat" ] || return 1; set -- "$2" $(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null); [ "$2" != Z ] && [ "${21}" = "$1" ]; }"#;
}

impl Runtime for SshRuntime {
    async fn spawn(&self, spec: &InstanceSpec) -> Result<RunningInstance, RuntimeError> {
        let host = self.host_of(spec.host.as_deref(), &spec.instance)?;
        if let Some(e) = self.hosts.lost_error(host) {
            return Err(e);
        }
        self.ship_to(host, &spec.service, &spec.revision).await?;
        let conn = self.hosts.conn_or_err(host)?;
        let hs = &conn.spec;
        let workdir = self.workdir(host, &spec.service, &spec.revision)?;
        let command = Self::render(spec, &hs.ip.to_string(), &workdir)?;
        let pidfile = Self::pidfile(&hs.home, &spec.service, &spec.instance);
        let log = Self::logfile(&hs.home, &spec.service, &spec.instance);
        let script = format!(
            r#"set -e
{alive}
P={pidfile}; L={log}; W={workdir}
mkdir -p "${{P%/*}}" "${{L%/*}}"
{make_workdir}
cd "$W"
N="$P.new.$$"
# One process per instance name: a previous one still alive (its host was
# cut off while it was stopped) goes first, or it would hold the port and
# lose its pidfile, unseen.
if read -r op ost _ < "$P" 2>/dev/null && alive "$op" "$ost"; then
  kill -TERM -"$op" 2>/dev/null || kill -TERM "$op" 2>/dev/null || true
  i=0; while alive "$op" "$ost" && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
  kill -KILL -"$op" 2>/dev/null || true
fi
export PORT={port} HANDOFF_SERVICE={service} HANDOFF_REVISION={revision} HANDOFF_INSTANCE={instance} HANDOFF_REMOTE_OWNER={owner}
setsid -f /bin/sh -c 'echo $$ > "$0"; eval "exec $1"' "$N" {command} </dev/null >>"$L" 2>&1
i=0
while [ ! -s "$N" ]; do i=$((i+1)); [ $i -le 300 ] || {{ echo "the process wrote no pid in 3 s" >&2; exit 4; }}; sleep 0.01; done
pid=$(cat "$N")
st=0
if [ -r "/proc/$pid/stat" ]; then set -- $(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || true; st=${{20:-0}}; fi
# Plain words (every value follows the naming rule), renamed into place
# so the status stream never reads half a pidfile.
printf '%s %s %s %s %s %s %s\n' "$pid" "$st" {owner} {service} {instance} {revision} {port} > "$N"
mv -f "$N" "$P"
echo "started $pid $st""#,
            alive = Self::ALIVE_FN,
            pidfile = quote_path(&pidfile),
            log = quote_path(&log),
            workdir = quote_path(&workdir),
            // A release must be there (shipped, verified); only the host's
            // own dir, for revisions without one, is made on demand.
            make_workdir = if workdir == hs.dir {
                "mkdir -p \"$W\"".to_string()
            } else {
                "[ -f \"$W/.handoff-sha256\" ] || { echo \"release $W is missing on this host\" >&2; exit 5; }".to_string()
            },
            port = spec.port,
            service = quote(&spec.service),
            revision = quote(&spec.revision),
            instance = quote(&spec.instance),
            owner = quote(self.hosts.owner()),
            command = quote(&command),
        );
        let out = conn.run(&script, None, CALL_LIMIT).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let Some((pid, start_time)) = text.lines().find_map(|l| {
            let mut w = l.strip_prefix("started ")?.split(' ');
            Some((
                w.next()?.parse::<u32>().ok()?,
                w.next()?.parse::<u64>().ok()?,
            ))
        }) else {
            return Err(RuntimeError::Host {
                host: host.to_string(),
                message: format!(
                    "cannot start {} in {}: {}",
                    spec.instance,
                    workdir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        };
        {
            let mut spawned = self.hosts.spawned.lock().unwrap_or_else(|e| e.into_inner());
            // Only young entries matter (see `is_alive` and `marked`).
            spawned.retain(|_, t| t.elapsed() < STRAY_AFTER * 4);
            spawned.insert((host.to_string(), pid), Instant::now());
        }
        tracing::info!(service = %spec.service, instance = %spec.instance, revision = %spec.revision,
            host, pid, port = spec.port, "instance spawned");
        Ok(RunningInstance {
            service: spec.service.clone(),
            instance: spec.instance.clone(),
            revision: spec.revision.clone(),
            host: Some(host.to_string()),
            addr: SocketAddr::new(hs.ip, spec.port),
            pid,
            start_time,
        })
    }

    fn start_watch(&self) -> Duration {
        EARLY_EXIT_WINDOW
    }

    async fn confirm_start(
        &self,
        spec: &InstanceSpec,
        inst: &RunningInstance,
    ) -> Result<(), RuntimeError> {
        let host = self.host_of(inst.host.as_deref(), &inst.instance)?;
        let conn = self.hosts.conn_or_err(host)?;
        let log = Self::logfile(&conn.spec.home, &spec.service, &spec.instance);
        let script = format!(
            "{alive}\nsleep {secs}\nif alive {pid} {st}; then echo alive; else echo gone; tail -n 10 {log} 2>/dev/null; fi",
            alive = Self::ALIVE_FN,
            secs = EARLY_EXIT_WINDOW.as_secs_f64(),
            pid = inst.pid,
            st = inst.start_time,
            log = quote_path(&log),
        );
        let out = conn.run(&script, None, CALL_LIMIT).await?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.starts_with("alive") {
            return Ok(());
        }
        let log_tail = text.strip_prefix("gone\n").unwrap_or(&text).to_string();
        if log_tail.contains("not found") && log_tail.contains("exec") {
            let workdir = self.workdir(host, &spec.service, &spec.revision)?;
            return Err(RuntimeError::CommandNotFound {
                instance: spec.instance.clone(),
                command: Self::render(spec, &conn.spec.ip.to_string(), &workdir)?,
                dir: workdir,
            });
        }
        if log_tail
            .to_ascii_lowercase()
            .contains("address already in use")
        {
            return Err(RuntimeError::PortInUse {
                instance: spec.instance.clone(),
                port: spec.port,
            });
        }
        Err(RuntimeError::ExitedDuringStart {
            instance: format!("{} (on {host})", spec.instance),
            exit: Exit::Unknown,
            log_tail,
        })
    }

    async fn stop(&self, inst: &RunningInstance, grace: Duration) -> StopOutcome {
        let Some(host) = inst.host.as_deref() else {
            return StopOutcome::NotRunning;
        };
        let Some(conn) = self.hosts.conn(host) else {
            return StopOutcome::NotRunning;
        };
        // Tried even when the host counts as lost: it may have just come
        // back (the monitor notices within seconds), and a failed try costs
        // one ConnectTimeout; a stop that cannot reach it leaves the
        // process to be found as a stray when the host answers.
        let pidfile = Self::pidfile(&conn.spec.home, &inst.service, &inst.instance);
        let ticks = (grace.as_millis() / 50).max(1);
        let script = format!(
            r#"{alive}
pid={pid}; st={st}; P={pidfile}
forget() {{ if read -r p _ < "$P" 2>/dev/null && [ "$p" = "$pid" ]; then rm -f "$P"; fi; }}
# Not alive: nothing is signalled (its pid, a group leader's, may be
# another process's by now).
if ! alive $pid $st; then forget; echo notrunning; exit 0; fi
kill -TERM -$pid 2>/dev/null || kill -TERM $pid 2>/dev/null || true
n=0
while alive $pid $st && [ $n -lt {ticks} ]; do sleep 0.05; n=$((n+1)); done
r=graceful
if alive $pid $st; then r=killed; fi
# The rest of its group gets the rest of the grace period, then KILL.
while kill -0 -$pid 2>/dev/null && [ $n -lt {ticks} ]; do sleep 0.05; n=$((n+1)); done
kill -KILL -$pid 2>/dev/null || true
n=0
while alive $pid $st && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
forget
echo $r"#,
            alive = Self::ALIVE_FN,
            pid = inst.pid,
            st = inst.start_time,
            pidfile = quote_path(&pidfile),
        );
        let outcome = match conn.run(&script, None, grace + CALL_LIMIT).await {
            Ok(out) => match String::from_utf8_lossy(&out.stdout).trim() {
                "graceful" => StopOutcome::Graceful(Exit::Unknown),
                "killed" => StopOutcome::Killed,
                "notrunning" => StopOutcome::NotRunning,
                other => {
                    tracing::warn!(host, instance = %inst.instance, "stop: unexpected answer {other:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
                    StopOutcome::Killed
                }
            },
            Err(e) => {
                tracing::warn!(host, instance = %inst.instance, pid = inst.pid, "cannot stop: {e}; it is stopped as a stray when the host answers");
                StopOutcome::Unreachable
            }
        };
        tracing::info!(service = %inst.service, instance = %inst.instance, host, pid = inst.pid, ?outcome, "instance stopped");
        outcome
    }

    fn is_alive(&self, inst: &RunningInstance) -> bool {
        let Some(host) = inst.host.as_deref() else {
            return false;
        };
        let Some(w) = self.hosts.watches.get(host) else {
            return false;
        };
        // Of a host that does not answer nothing is known: what ran there
        // counts as running until it answers (the fleet holds its targets
        // out of service meanwhile).
        if !matches!(w.state(), HostState::Up) {
            return true;
        }
        let spawned = self
            .hosts
            .spawned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(host.to_string(), inst.pid))
            .copied();
        let r = w.reports.borrow();
        match r.begun {
            // No report yet, or one from before the spawn: alive as spawned.
            None => true,
            Some(b) if spawned.is_some_and(|s| b < s) => true,
            Some(_) => r
                .procs
                .iter()
                .any(|p| p.pid == inst.pid && p.start_time == inst.start_time && p.alive),
        }
    }

    async fn exited(&self, inst: &RunningInstance) -> Exit {
        let Some(w) = inst.host.as_deref().and_then(|h| self.hosts.watches.get(h)) else {
            return Exit::Unknown;
        };
        let mut rx = w.reports.subscribe();
        while self.is_alive(inst) {
            if rx.changed().await.is_err() {
                // The runtime is going away: nothing will tell any more.
                std::future::pending::<()>().await;
            }
        }
        Exit::Unknown
    }

    fn port_free(&self, _host: Option<&str>, _port: u16) -> bool {
        true
    }

    async fn prepare(
        &self,
        service: &str,
        revision: &str,
        release: Option<&artifact::Release>,
        keep: &[String],
    ) -> Result<(), RuntimeError> {
        let Some(release) = release else {
            return Ok(());
        };
        self.hosts
            .releases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (service.to_string(), revision.to_string()),
                (release.clone(), keep.to_vec()),
            );
        // A host that does not answer gets it before its first instance
        // of this revision starts (see `spawn`).
        let up: Vec<String> = self
            .placement
            .iter()
            .filter(|h| self.hosts.lost_error(h).is_none())
            .cloned()
            .collect();
        let jobs: Vec<_> = up
            .iter()
            .map(|h| self.ship_to(h, service, revision))
            .collect();
        let mut first_err = None;
        for r in futures_util::future::join_all(jobs).await {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn log_tail(
        &self,
        service: &str,
        instance: &str,
        host: Option<&str>,
        lines: usize,
    ) -> Option<String> {
        let conn = self.hosts.conn(host?)?;
        let log = Self::logfile(&conn.spec.home, service, instance);
        let script = format!(
            "[ -f {log} ] || exit 3; tail -n {lines} {log}",
            log = quote_path(&log)
        );
        let out = conn.run(&script, None, CALL_LIMIT).await.ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }

    async fn marked(&self) -> Vec<RunningInstance> {
        let mut found = Vec::new();
        for host in &self.placement {
            let Some(w) = self.hosts.watches.get(host) else {
                continue;
            };
            if !matches!(w.state(), HostState::Up) {
                continue;
            }
            let spawned = self
                .hosts
                .spawned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            for p in w.reports.borrow().procs.iter() {
                let young = spawned
                    .get(&(host.clone(), p.pid))
                    .is_some_and(|t| t.elapsed() < STRAY_AFTER);
                if p.alive && p.owner == self.hosts.owner() && !young {
                    found.push(RunningInstance {
                        service: p.service.clone(),
                        instance: p.instance.clone(),
                        revision: p.revision.clone(),
                        host: Some(host.clone()),
                        addr: SocketAddr::new(w.conn.spec.ip, p.port),
                        pid: p.pid,
                        start_time: p.start_time,
                    });
                }
            }
        }
        found
    }

    async fn exec(&self, host: &str, hook: &HookRun) -> (Result<(), String>, String, Duration) {
        let started = Instant::now();
        if let Some(e) = self.hosts.lost_error(host) {
            return (Err(e.to_string()), String::new(), Duration::ZERO);
        }
        if let Err(e) = self.ship_to(host, &hook.service, &hook.revision).await {
            return (Err(e.to_string()), String::new(), started.elapsed());
        }
        let conn = match self.hosts.conn_or_err(host) {
            Ok(c) => c,
            Err(e) => return (Err(e.to_string()), String::new(), Duration::ZERO),
        };
        let workdir = match self.workdir(host, &hook.service, &hook.revision) {
            Ok(w) => w,
            Err(e) => return (Err(e.to_string()), String::new(), Duration::ZERO),
        };
        let env: Vec<String> = hook
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        let secs = hook.timeout.as_secs_f64().max(0.1);
        let script = format!(
            "mkdir -p {w} && cd {w} && exec env {env} timeout -k 2 {secs:.1} /bin/sh -c {cmd} </dev/null 2>&1",
            w = quote_path(&workdir),
            env = env.join(" "),
            cmd = quote(&hook.command),
        );
        let limit = hook.timeout + Duration::from_secs(10);
        match conn.run(&script, None, limit).await {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let took = started.elapsed();
                match out.status.code() {
                    Some(0) => (Ok(()), text, took),
                    Some(124) | Some(137) => (
                        Err(format!(
                            "still running after {:.1} s on {host}, killed (hooks.timeout)",
                            hook.timeout.as_secs_f64()
                        )),
                        text,
                        took,
                    ),
                    Some(c) => (Err(format!("exited with status {c} on {host}")), text, took),
                    None => (Err(format!("killed on {host}")), text, took),
                }
            }
            Err(e) => (Err(e.to_string()), String::new(), started.elapsed()),
        }
    }

    fn host_state(&self, host: &str) -> HostState {
        self.hosts.state(host)
    }

    async fn preflight(&self, command: &str) -> Result<(), RuntimeError> {
        let programs: Vec<String> = check::program_of(command).into_iter().collect();
        let mut jobs = Vec::new();
        for h in &self.placement {
            let conn = self.hosts.conn_or_err(h)?.clone();
            let programs = programs.clone();
            jobs.push(tokio::spawn(
                async move { check::check(&conn, &programs).await },
            ));
        }
        let mut problems = Vec::new();
        for j in jobs {
            if let Ok(c) = j.await {
                problems.extend(c.problems.iter().map(|p| format!("{}: {p}", c.host)));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Preflight {
                problems: problems.join("; "),
            })
        }
    }

    fn host_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.hosts.changes.clone())
    }
}
