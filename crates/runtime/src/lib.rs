//! handoff-runtime: starting and stopping instances of a revision.
//!
//! The [`Runtime`] trait is the narrow interface the controller uses; the
//! embedded default is [`ProcessRuntime`] (a local child process per
//! instance, each in its own session and process group, logging to
//! `state_dir/logs/SERVICE/INSTANCE.log`). Docker and SSH runtimes will
//! implement the same trait.
//!
//! Also here, because they are about where instances come from and what they
//! leave behind: port allocation ([`ports`]), log rotation ([`logs`]),
//! release directories built from artifacts ([`artifact`]) and reading
//! `/proc` to tell whether a recorded process is still ours ([`procfs`]).

pub mod artifact;
pub mod logs;
pub mod owner;
pub mod ports;
mod process;
pub mod procfs;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

pub use process::ProcessRuntime;

/// Everything needed to start one instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub service: String,
    /// Stable instance name, e.g. `web-2`.
    pub instance: String,
    pub revision: String,
    pub port: u16,
    /// The command template from config (placeholders not yet filled).
    pub command: String,
    /// Working directory: the revision's release directory.
    pub release_dir: PathBuf,
}

/// A started instance: the identity that survives a restart of handoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningInstance {
    pub service: String,
    pub instance: String,
    pub revision: String,
    pub port: u16,
    pub pid: u32,
    /// Start time from `/proc/PID/stat`; with `pid`, the process identity.
    pub start_time: u64,
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

    /// The instance's log file.
    fn log_path(&self, service: &str, instance: &str) -> PathBuf;

    /// Every live instance this runtime's owner started (by the marks it
    /// put on them), recorded or not: how a daemon finds the ones it never
    /// recorded (it died between spawn and write) and never another
    /// daemon's. A runtime that cannot list its instances returns none.
    fn marked(&self) -> Vec<RunningInstance> {
        Vec::new()
    }
}
