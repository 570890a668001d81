//! The embedded runtime: each instance is a local child process.
//!
//! - `/bin/sh -c "exec COMMAND"` so the user's command may use shell syntax
//!   and the pid we record is the app's own.
//! - `setsid()` before exec: the instance gets its own session and process
//!   group, so a crash or restart of handoff (or a Ctrl-C in its terminal)
//!   does not kill it, and a stop can signal the whole group.
//! - stdout/stderr go straight to the instance's log file.
//! - Identity is pid + start time; exits of our own children are reaped by
//!   a task per child, adopted processes (from before a restart) are watched
//!   through `/proc`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::owner::{StateOwner, OWNER_VAR, STATE_DIR_VAR};
use crate::{
    logs, ports, procfs, Exit, InstanceSpec, RunningInstance, Runtime, RuntimeError, StopOutcome,
};

/// `{address}`: where a local instance listens (and the proxy connects).
pub(crate) const LOCAL_ADDRESS: [u8; 4] = [127, 0, 0, 1];

/// How long a new process is watched for an immediate exit (bad command,
/// port taken, crash at boot) before `start` returns.
const EARLY_EXIT_WINDOW: Duration = Duration::from_millis(250);

pub struct ProcessRuntime {
    /// The state dir (canonical) and its owner id, marked on every instance.
    owner: StateOwner,
    logs_dir: PathBuf,
    /// Exit status of children we spawned, by pid.
    children: Arc<Mutex<HashMap<u32, watch::Receiver<Option<Exit>>>>>,
}

impl ProcessRuntime {
    /// A runtime for `state_dir` (created if needed): resolves it to its
    /// canonical path and reads (or makes) its owner id, which every
    /// instance it starts carries.
    pub fn new(state_dir: &Path) -> Result<ProcessRuntime, RuntimeError> {
        let owner = StateOwner::open(state_dir)?;
        Ok(ProcessRuntime {
            logs_dir: owner.dir.join("logs"),
            owner,
            children: Arc::default(),
        })
    }

    /// The state dir as instances are marked with it (canonical).
    pub fn state_dir(&self) -> &Path {
        &self.owner.dir
    }

    /// The owner id instances are marked with.
    pub fn owner(&self) -> &str {
        &self.owner.id
    }

    /// An instance's log file (instances write it directly; the daemon
    /// rotates it).
    pub fn log_path(&self, service: &str, instance: &str) -> PathBuf {
        logs::path(&self.logs_dir, service, instance)
    }

    /// The exit watch of a child we spawned (none for adopted processes).
    fn child(&self, pid: u32) -> Option<watch::Receiver<Option<Exit>>> {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .cloned()
    }

    /// The command with its placeholders filled, each value quoted as one
    /// shell word so that no revision id or path can change the command
    /// (see `handoff_core::command`).
    fn render(spec: &InstanceSpec) -> Result<String, RuntimeError> {
        use handoff_core::command;
        let address = std::net::Ipv4Addr::from(LOCAL_ADDRESS).to_string();
        let release_dir = spec.release_dir.display().to_string();
        let values = command::Values {
            port: spec.port,
            revision: &spec.revision,
            instance: &spec.instance,
            service: &spec.service,
            release_dir: &release_dir,
            address: &address,
        };
        command::render(&spec.command, &values).map_err(|source| RuntimeError::Placeholder {
            instance: spec.instance.clone(),
            source,
        })
    }

    fn exit_of(status: std::process::ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            _ => Exit::Unknown,
        }
    }

    async fn wait_gone(&self, inst: &RunningInstance, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.exited(inst)).await.is_ok()
    }
}

fn signal_group(pgid: u32, sig: i32) {
    if pgid > 1 {
        // SAFETY: plain kill(2) on a process group we created with setsid.
        unsafe {
            libc::kill(-(pgid as i32), sig);
        }
    }
}

impl Runtime for ProcessRuntime {
    fn port_free(&self, _host: Option<&str>, port: u16) -> bool {
        ports::is_free(port)
    }

    async fn spawn(&self, spec: &InstanceSpec) -> Result<RunningInstance, RuntimeError> {
        let command = Self::render(spec)?;
        if !ports::is_free(spec.port) {
            return Err(RuntimeError::PortInUse {
                instance: spec.instance.clone(),
                port: spec.port,
            });
        }
        let log_path = logs::path(&self.logs_dir, &spec.service, &spec.instance);
        let io_err = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| RuntimeError::Io { what, path, source }
        };
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("cannot create log directory", dir))?;
        }
        std::fs::create_dir_all(&spec.release_dir)
            .map_err(io_err("cannot create release directory", &spec.release_dir))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err("cannot open log", &log_path))?;
        let log2 = log
            .try_clone()
            .map_err(io_err("cannot open log", &log_path))?;
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("exec {command}"))
            .current_dir(&spec.release_dir)
            .env("PORT", spec.port.to_string())
            .env("HANDOFF_SERVICE", &spec.service)
            .env("HANDOFF_REVISION", &spec.revision)
            .env("HANDOFF_INSTANCE", &spec.instance)
            .env(STATE_DIR_VAR, &self.owner.dir)
            .env(OWNER_VAR, &self.owner.id)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(false);
        // SAFETY: setsid is async-signal-safe and touches no parent state.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
            instance: spec.instance.clone(),
            command: command.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        let start_time = procfs::start_time(pid).unwrap_or(0);
        let (tx, rx) = watch::channel(None);
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, rx.clone());
        let children = self.children.clone();
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(s) => Self::exit_of(s),
                Err(_) => Exit::Unknown,
            };
            let _ = tx.send(Some(exit));
            // Keep the entry a little so late `exited()` calls still see
            // the status, then forget it (pids get reused).
            tokio::time::sleep(Duration::from_secs(60)).await;
            children
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&pid);
        });
        let inst = RunningInstance {
            service: spec.service.clone(),
            instance: spec.instance.clone(),
            revision: spec.revision.clone(),
            host: None,
            addr: std::net::SocketAddr::from((LOCAL_ADDRESS, spec.port)),
            pid,
            start_time,
        };
        tracing::info!(service = %spec.service, instance = %spec.instance, revision = %spec.revision,
            pid, port = spec.port, "instance spawned");
        Ok(inst)
    }

    fn start_watch(&self) -> Duration {
        EARLY_EXIT_WINDOW
    }

    async fn confirm_start(
        &self,
        spec: &InstanceSpec,
        inst: &RunningInstance,
    ) -> Result<(), RuntimeError> {
        let rx = self.child(inst.pid);
        let Some(mut rx) = rx else {
            return Ok(()); // adopted: it has long been running
        };
        let early =
            match tokio::time::timeout(EARLY_EXIT_WINDOW, rx.wait_for(|e| e.is_some())).await {
                Ok(Ok(e)) => Some((*e).unwrap_or(Exit::Unknown)),
                _ => None,
            };
        let Some(exit) = early else {
            return Ok(());
        };
        signal_group(inst.pid, libc::SIGKILL);
        let log_tail = logs::tail(&self.log_path(&spec.service, &spec.instance), 10);
        if exit == Exit::Code(127) {
            return Err(RuntimeError::CommandNotFound {
                instance: spec.instance.clone(),
                command: Self::render(spec)?,
                dir: spec.release_dir.clone(),
            });
        }
        if log_tail.contains("Address already in use")
            || log_tail.contains("address already in use")
        {
            return Err(RuntimeError::PortInUse {
                instance: spec.instance.clone(),
                port: spec.port,
            });
        }
        Err(RuntimeError::ExitedDuringStart {
            instance: spec.instance.clone(),
            exit,
            log_tail,
        })
    }

    async fn stop(&self, inst: &RunningInstance, grace: Duration) -> StopOutcome {
        if !self.is_alive(inst) {
            // The leader is gone; make sure nothing of its group lingers.
            signal_group(inst.pid, libc::SIGKILL);
            return StopOutcome::NotRunning;
        }
        signal_group(inst.pid, libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        let outcome = if self.wait_gone(inst, grace).await {
            // The leader exited; give the rest of its group the rest of
            // the grace period, then kill whatever is left.
            while procfs::group_alive(inst.pid) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let exit = self.exited(inst).await;
            StopOutcome::Graceful(exit)
        } else {
            tracing::warn!(instance = %inst.instance, pid = inst.pid, "did not stop within the grace period; SIGKILL");
            StopOutcome::Killed
        };
        signal_group(inst.pid, libc::SIGKILL);
        let _ = self.wait_gone(inst, Duration::from_secs(5)).await;
        tracing::info!(service = %inst.service, instance = %inst.instance, pid = inst.pid, ?outcome, "instance stopped");
        outcome
    }

    fn is_alive(&self, inst: &RunningInstance) -> bool {
        if let Some(rx) = self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&inst.pid)
        {
            if rx.borrow().is_some() {
                return false;
            }
        }
        procfs::is_same_process(inst.pid, inst.start_time)
    }

    async fn exited(&self, inst: &RunningInstance) -> Exit {
        let rx = self.child(inst.pid);
        match rx {
            Some(mut rx) => match rx.wait_for(|e| e.is_some()).await {
                Ok(e) => e.unwrap_or(Exit::Unknown),
                Err(_) => Exit::Unknown,
            },
            None => {
                // Not our child (adopted): watch /proc.
                while procfs::is_same_process(inst.pid, inst.start_time) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Exit::Unknown
            }
        }
    }

    async fn log_tail(
        &self,
        service: &str,
        instance: &str,
        _host: Option<&str>,
        lines: usize,
    ) -> Option<String> {
        let path = self.log_path(service, instance);
        path.exists().then(|| logs::tail(&path, lines))
    }

    async fn marked(&self) -> Vec<RunningInstance> {
        let owner = self.owner.id.clone();
        tokio::task::spawn_blocking(move || procfs::owned_by(&owner))
            .await
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
