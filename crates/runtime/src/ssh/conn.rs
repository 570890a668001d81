//! One host as the system OpenSSH client reaches it.
//!
//! Every call goes through the host's master connection (a child process
//! of the monitor, `ssh -M -N`, its socket in a private directory of the
//! state dir), so a command costs one round trip (~130 ms measured, against
//! ~350 ms for a fresh connection). When there is no master, a call falls
//! back to its own connection with the same settings, so a call never
//! depends on the monitor being up. Settings (see `../shared/HOSTS.md`):
//! `BatchMode` (never a prompt), strict host-key checking against handoff's
//! own known_hosts, `ConnectTimeout=5`, and `ServerAliveInterval=1` ×
//! `ServerAliveCountMax=4`, so a silent host ends every session with exit
//! 255 in about 4 s instead of hanging.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::RuntimeError;

/// Exit status of `ssh` itself failing (connection, authentication, host
/// key): the host, not the command.
pub const SSH_FAILED: i32 = 255;

/// A host as the runtime needs it (from `[hosts.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub name: String,
    pub user: Option<String>,
    /// What ssh connects to (an IP or a name).
    pub hostname: String,
    pub port: u16,
    /// Where instances there listen and the proxy connects.
    pub ip: IpAddr,
    pub identity: Option<PathBuf>,
    pub known_hosts: PathBuf,
    /// handoff's directory on the host (as configured).
    pub dir: PathBuf,
    /// This daemon's own part of it, `dir/OWNER` (the first 12 characters
    /// of the state dir's owner id): releases, pidfiles and logs of two
    /// daemons that share a host and a service name never meet (one would
    /// replace, prune or stop the other's). Equal to `dir` until a runtime
    /// sets it.
    pub home: PathBuf,
}

impl HostSpec {
    /// `user@host:port` for messages.
    pub fn address(&self) -> String {
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        if self.port == 22 {
            format!("{user}{}", self.hostname)
        } else {
            format!("{user}{}:{}", self.hostname, self.port)
        }
    }
}

impl HostSpec {
    /// The runtime's view of a `[hosts.NAME]` section; its known_hosts
    /// defaults to `STATE_DIR/known_hosts`.
    pub fn from_config(h: &handoff_core::config::Host, state_dir: &Path) -> HostSpec {
        HostSpec {
            name: h.name.clone(),
            user: h.user.clone(),
            hostname: h.hostname.clone(),
            port: h.port,
            ip: h.ip,
            identity: h.identity.clone(),
            known_hosts: h
                .known_hosts
                .clone()
                .unwrap_or_else(|| state_dir.join("known_hosts")),
            dir: h.dir.clone(),
            home: h.dir.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Conn {
    pub spec: HostSpec,
    /// The master connection's socket.
    pub control: PathBuf,
}

/// `'…'`: one shell word whatever `s` holds.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A path as one shell word.
pub fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

impl Conn {
    /// `socket`: the master socket's short name in `control_dir` (host
    /// names may be long; a unix socket path may not).
    pub fn new(spec: HostSpec, control_dir: &Path, socket: &str) -> Conn {
        let control = control_dir.join(format!("{socket}.sock"));
        Conn { spec, control }
    }

    /// Options shared by the master and every call.
    fn options(&self) -> Vec<OsString> {
        let mut o: Vec<OsString> = Vec::new();
        let mut opt = |s: String| {
            o.push("-o".into());
            o.push(s.into());
        };
        opt("BatchMode=yes".into());
        opt("StrictHostKeyChecking=yes".into());
        opt(format!(
            "UserKnownHostsFile={}",
            self.spec.known_hosts.display()
        ));
        opt("GlobalKnownHostsFile=/dev/null".into());
        opt("ConnectTimeout=5".into());
        opt("ServerAliveInterval=1".into());
        opt("ServerAliveCountMax=4".into());
        opt("LogLevel=ERROR".into());
        opt(format!("ControlPath={}", self.control.display()));
        if let Some(id) = &self.spec.identity {
            opt(format!("IdentityFile={}", id.display()));
            opt("IdentitiesOnly=yes".into());
        }
        o.push("-p".into());
        o.push(self.spec.port.to_string().into());
        if let Some(u) = &self.spec.user {
            o.push("-l".into());
            o.push(u.into());
        }
        o
    }

    /// The master connection: no command, no stdio, ends when the host
    /// goes silent (keepalives) or when it is killed.
    pub fn master(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ssh");
        c.args(self.options())
            .args([
                "-M",
                "-N",
                "-o",
                "ControlMaster=yes",
                "-o",
                "ControlPersist=no",
            ])
            .arg(&self.spec.hostname)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Whether the master answers.
    pub async fn master_ready(&self) -> bool {
        let mut c = tokio::process::Command::new("ssh");
        c.args(self.options())
            .args(["-O", "check"])
            .arg(&self.spec.hostname)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), c.status()).await,
            Ok(Ok(s)) if s.success()
        )
    }

    /// `script` run by `/bin/sh` on the host, through the master if there
    /// is one. The caller sets stdin/stdout.
    pub fn command(&self, script: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ssh");
        c.args(self.options())
            .args(["-o", "ControlMaster=no", "-T"])
            .arg(&self.spec.hostname)
            .arg("--")
            // The remote login shell joins the words and parses them: give
            // it one quoted word so the script reaches `sh -c` unchanged.
            .arg(format!("/bin/sh -c {}", quote(script)))
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Runs `script` with `input` on stdin (a file, or nothing) and returns
    /// its output. Exit 255 or no answer within `limit`: the host is
    /// unreachable (the error says why); any other status is the caller's
    /// to read.
    pub async fn run(
        &self,
        script: &str,
        input: Option<&Path>,
        limit: Duration,
    ) -> Result<Output, RuntimeError> {
        let mut c = self.command(script);
        c.stdout(Stdio::piped());
        match input {
            Some(p) => {
                let f = std::fs::File::open(p).map_err(|source| RuntimeError::Io {
                    what: "cannot open",
                    path: p.to_path_buf(),
                    source,
                })?;
                c.stdin(Stdio::from(f));
            }
            None => {
                c.stdin(Stdio::null());
            }
        }
        let started = std::time::Instant::now();
        let child = c.spawn().map_err(|e| RuntimeError::Host {
            host: self.spec.name.clone(),
            message: format!("cannot run ssh: {e}; install the OpenSSH client"),
        })?;
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                return Err(RuntimeError::Host {
                    host: self.spec.name.clone(),
                    message: format!("ssh failed: {e}"),
                })
            }
            Err(_) => {
                return Err(RuntimeError::HostUnreachable {
                    host: self.spec.name.clone(),
                    why: format!("no answer for {:.1} s", started.elapsed().as_secs_f64()),
                })
            }
        };
        if out.status.code() == Some(SSH_FAILED) {
            return Err(RuntimeError::HostUnreachable {
                host: self.spec.name.clone(),
                why: ssh_reason(&String::from_utf8_lossy(&out.stderr), &self.spec),
            });
        }
        Ok(out)
    }
}

/// What ssh's own error means for a user, with what to do.
pub fn ssh_reason(stderr: &str, spec: &HostSpec) -> String {
    let line = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("ssh exited with status 255")
        .to_string();
    let kh = spec.known_hosts.display();
    if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        format!("its host key does not match the one in {kh}: if the host was reinstalled, check its fingerprint and run `handoff hosts trust {}`", spec.name)
    } else if stderr.contains("Host key verification failed")
        || stderr.contains("No ED25519 host key")
        || stderr.contains("host key for")
    {
        format!(
            "its host key is not in {kh}: run `handoff hosts trust {}` to check and record it",
            spec.name
        )
    } else if stderr.contains("Permission denied") {
        format!("{line}: the key was not accepted; check `identity` and the host's authorized_keys for {}", spec.address())
    } else {
        line
    }
}
