//! handoff-runtime: where instances run, and everything that depends on it.
//!
//! The [`Runtime`] trait is the seam between the controller and the place an
//! instance lives. The controller says *what* (service, instance, revision,
//! placement, port, command, release); the runtime does it and returns the
//! instance's address and its identity (host, pid, `/proc` start time),
//! which the store persists so a restarted daemon adopts it. Everything that
//! assumes a place sits behind the trait: whether a port is free, shipping a
//! release to where it runs ([`Runtime::prepare`]), finding strays by their
//! mark ([`Runtime::marked`]), running a hook where the instance lives
//! ([`Runtime::exec`]), reading its log ([`Runtime::log_tail`]) and whether
//! its host can be reached at all ([`Runtime::host_state`]).
//!
//! Two backends:
//! - [`ProcessRuntime`], the embedded default: a local child process per
//!   instance, each in its own session and process group, logging to
//!   `state_dir/logs/SERVICE/INSTANCE.log`.
//! - [`SshRuntime`]: processes on other machines over the system OpenSSH
//!   client, one multiplexed connection per host and one monitor stream per
//!   host that notices exits and lost hosts within seconds (see [`ssh`]).
//!
//! [`AnyRuntime`] picks one per service, so the daemon and its API name one
//! type. Also here, because they are about where instances come from and
//! what they leave behind: port allocation ([`ports`]), log rotation
//! ([`logs`]), release directories built from artifacts ([`artifact`]) and
//! reading `/proc` ([`procfs`]).

mod any;
pub mod artifact;
pub mod logs;
pub mod owner;
pub mod ports;
mod process;
pub mod procfs;
pub mod ssh;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use any::AnyRuntime;
pub use process::ProcessRuntime;
pub use ssh::SshRuntime;

/// Everything needed to start one instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub service: String,
    /// Stable instance name, e.g. `web-2`.
    pub instance: String,
    pub revision: String,
    /// Where it runs: `None` on this machine, else one of the runtime's hosts.
    pub host: Option<String>,
    pub port: u16,
    /// The command template from config (placeholders not yet filled).
    pub command: String,
    /// Working directory: the revision's release directory on this machine
    /// (a remote runtime runs in its copy of it, see [`Runtime::prepare`]).
    pub release_dir: PathBuf,
}

/// A started instance: the identity that survives a restart of handoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningInstance {
    pub service: String,
    pub instance: String,
    pub revision: String,
    /// The host it runs on (`None`: this machine); part of its identity.
    pub host: Option<String>,
    /// Where it serves: returned by the runtime, never assumed.
    pub addr: SocketAddr,
    pub pid: u32,
    /// Start time from `/proc/PID/stat`; with `host` and `pid`, the
    /// process identity (a recycled pid has another start time).
    pub start_time: u64,
}

impl RunningInstance {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `pid 123` locally, `pid 123 on h2` on a host: for messages.
    pub fn whose(&self) -> String {
        match &self.host {
            Some(h) => format!("pid {} on {h}", self.pid),
            None => format!("pid {}", self.pid),
        }
    }
}

/// Whether a host can be reached (see [`Runtime::host_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostState {
    /// Answering (or this machine).
    Up,
    /// Not answering: since when, and why in words (`no answer for 3.2 s`).
    Lost { since_ms: u64, why: String },
}

/// A hook to run on a host, in the revision's release there.
#[derive(Debug, Clone)]
pub struct HookRun {
    pub service: String,
    pub revision: String,
    pub command: String,
    /// `HANDOFF_*` variables: values reach the hook only through these.
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

/// How an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with a status code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
    /// Gone, but not our child (adopted after a restart): status unknown.
    Unknown,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with status {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::Unknown => write!(f, "exited"),
        }
    }
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// Exited within the grace period after SIGTERM.
    Graceful(Exit),
    /// Needed SIGKILL.
    Killed,
    /// Was not running.
    NotRunning,
    /// Its host could not be reached: it may still run there, and is found
    /// by its mark (a stray) when the host answers again.
    Unreachable,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("instance {instance}: command not found: `{command}`; check `command` in the config (it runs with /bin/sh in {dir})")]
    CommandNotFound {
        instance: String,
        command: String,
        dir: PathBuf,
    },
    #[error(
        "instance {instance}: port {port} is already in use; free it or change server.port_range"
    )]
    PortInUse { instance: String, port: u16 },
    #[error("instance {instance}: {exit} while starting; last log lines:\n{log_tail}")]
    ExitedDuringStart {
        instance: String,
        exit: Exit,
        log_tail: String,
    },
    #[error("no free port in {from}-{to}; widen server.port_range")]
    NoFreePort { from: u16, to: u16 },
    #[error("instance {instance}: cannot start `{command}`: {source}")]
    Spawn {
        instance: String,
        command: String,
        source: std::io::Error,
    },
    #[error("instance {instance}: command: {source}; fix `command` in the config")]
    Placeholder {
        instance: String,
        source: handoff_core::command::RenderError,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("artifact {}: {message}", path.display())]
    Artifact { path: PathBuf, message: String },
    #[error("revision {revision} of service {service} was already installed from different content (sha256 {existing}, now {new}); it served (or serves now), so it is immutable: deploy the new content under a new revision id (a revision that never served may be replaced)")]
    RevisionChanged {
        service: String,
        revision: String,
        existing: String,
        new: String,
    },
    #[error("host {host} unreachable: {why}")]
    HostUnreachable { host: String, why: String },
    #[error("host {host}: {message}")]
    Host { host: String, message: String },
    #[error("hosts not ready: {problems} (see `handoff hosts check`)")]
    Preflight { problems: String },
    #[error("host {host}: the copy of revision {revision} there has sha256 {found}, not {expected}: it was changed on the host or corrupted in transit; remove {dir} on {host} and deploy again")]
    ChecksumMismatch {
        host: String,
        revision: String,
        expected: String,
        found: String,
        dir: String,
    },
    #[error("revision {revision} of service {service} was installed from an artifact, but its files are gone from {} (pruned or removed) and no artifact was given: deploy it again with `--artifact PATH`", dir.display())]
    ReleaseGone {
        service: String,
        revision: String,
        dir: PathBuf,
    },
}

/// Where instances run. Implementations must make `stop` leave nothing
/// behind, and `is_alive` must never mistake a recycled pid for the instance.
pub trait Runtime: Send + Sync + 'static {
    /// Launches an instance and returns at once: the caller may register it
    /// (held) and start its health checks while `confirm_start` watches.
    fn spawn(
        &self,
        spec: &InstanceSpec,
    ) -> impl Future<Output = Result<RunningInstance, RuntimeError>> + Send;

    /// Watches a just-spawned instance for an immediate exit (bad command,
    /// port taken, crash at boot) and reports it as a typed error with the
    /// tail of its log. Runs beside the first health checks, so the watch
    /// costs a deploy nothing when the app needs longer than it to be healthy.
    fn confirm_start(
        &self,
        spec: &InstanceSpec,
        inst: &RunningInstance,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// How long `confirm_start` watches (what `start` costs at least).
    fn start_watch(&self) -> Duration {
        Duration::ZERO
    }

    /// `spawn`, then `confirm_start`.
    fn start(
        &self,
        spec: &InstanceSpec,
    ) -> impl Future<Output = Result<RunningInstance, RuntimeError>> + Send {
        async move {
            let inst = self.spawn(spec).await?;
            self.confirm_start(spec, &inst).await?;
            Ok(inst)
        }
    }

    /// Whether `port` is free where an instance would run. A remote runtime
    /// that cannot tell says yes; its `confirm_start` reports `PortInUse`.
    fn port_free(&self, host: Option<&str>, port: u16) -> bool {
        let _ = (host, port);
        true
    }

    /// Makes an installed release (or, with `None`, the working directory
    /// of a revision without an artifact) available where instances run,
    /// and prunes what `keep` does not name. Locally there is nothing to
    /// do: the release is already here.
    fn prepare(
        &self,
        service: &str,
        revision: &str,
        release: Option<&artifact::Release>,
        keep: &[String],
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = (service, revision, release, keep);
        async { Ok(()) }
    }

    /// SIGTERM (or the runtime's equivalent), up to `grace`, then kill.
    fn stop(
        &self,
        inst: &RunningInstance,
        grace: Duration,
    ) -> impl Future<Output = StopOutcome> + Send;

    /// Whether the very process that was started is still running.
    fn is_alive(&self, inst: &RunningInstance) -> bool;

    /// Resolves when the instance exits.
    fn exited(&self, inst: &RunningInstance) -> impl Future<Output = Exit> + Send;

    /// The last `lines` lines of an instance's log, or `None` when it never
    /// logged (or its host cannot be reached).
    fn log_tail(
        &self,
        service: &str,
        instance: &str,
        host: Option<&str>,
        lines: usize,
    ) -> impl Future<Output = Option<String>> + Send;

    /// Every live instance this runtime's owner started (by the marks it
    /// put on them), recorded or not: how a daemon finds the ones it never
    /// recorded (it died between spawn and write) and never another
    /// daemon's. A runtime that cannot list its instances returns none.
    fn marked(&self) -> impl Future<Output = Vec<RunningInstance>> + Send {
        async { Vec::new() }
    }

    /// Runs a hook on `host` in the revision's release there: `Ok(output)`
    /// or `Err(reason)`, with the output and how long it took. Hooks on
    /// this machine are the controller's (`hooks::run`).
    fn exec(
        &self,
        host: &str,
        hook: &HookRun,
    ) -> impl Future<Output = (Result<(), String>, String, Duration)> + Send {
        let msg = format!("hook {}: this runtime has no host {host}", hook.command);
        async move { (Err(msg), String::new(), Duration::ZERO) }
    }

    /// Checks, before a deployment changes anything, that every place it
    /// will run instances of `command` is ready (hosts reachable, dirs
    /// writable, the program there). This machine needs no check.
    fn preflight(&self, command: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = command;
        async { Ok(()) }
    }

    /// Whether `host` answers. This machine always does.
    fn host_state(&self, host: &str) -> HostState {
        let _ = host;
        HostState::Up
    }

    /// Changes when any host is lost or comes back (a counter), for those
    /// who must act at once; `None` for a runtime without hosts.
    fn host_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
