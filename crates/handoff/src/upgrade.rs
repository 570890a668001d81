//! Both sides of a hand-over (see [`crate::handover`] for the protocol):
//! [`give`] runs in the daemon that steps down, [`Taking`] in the one that
//! takes over.
//!
//! A reload is a hand-over to the same binary with the config file read
//! again: every change (services added or removed, listen addresses,
//! health, drain and proxy settings, fixed targets) applies the way a
//! start applies it, with one mechanism that the same tests prove, and
//! nothing is half-applied. The cost is a new pid (systemd follows it with
//! `Type=notify` and `NotifyAccess=all`, see docs/operations.md).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use handoff_api::daemon::StatusCode;
use handoff_api::daemon::{DaemonCommand, Handover, Refusal};
use handoff_controller::service::ManagedService;
use handoff_core::config;

use handoff_controller::Fleet;
use handoff_runtime::AnyRuntime;

use crate::handover::{self, Message, ADMIN};
use crate::serve::{lock_state_dir, StateLock, RECONCILE_EVERY};

/// How long the new daemon has to connect and say hello.
const HELLO_WITHIN: Duration = Duration::from_secs(20);
/// How long it has, once released, to adopt, see health and serve.
const SERVING_WITHIN: Duration = Duration::from_secs(90);

/// What the stepping-down daemon hands over and may have to take back.
pub struct Giving<'a> {
    pub cfg: &'a config::Config,
    pub keep_instances: bool,
    pub deployers: &'a BTreeMap<String, Arc<dyn ManagedService>>,
    /// Its listening sockets (services by name, and [`ADMIN`]).
    pub listeners: Vec<(String, TcpListener)>,
    pub managing: &'a mut Managing,
}

/// What a daemon manages and lets go of in a hand-over: its fleets
/// (reconcilers and supervision) and the state dir lock. Instances run on.
pub struct Managing {
    pub fleets: Vec<Arc<Fleet<AnyRuntime>>>,
    pub lock: Option<StateLock>,
    pub state_dir: PathBuf,
    /// After a hand-over: the managed services the new daemon adopted
    /// (this one stops the instances of the others).
    pub adopted: Option<Vec<String>>,
}

impl Managing {
    async fn release(&mut self) {
        for f in &self.fleets {
            f.close().await;
        }
        self.lock = None;
    }

    /// After a failed hand-over: the lock again (the new daemon was killed,
    /// so it frees it), then the fleets.
    async fn take_back(&mut self, needs_lock: bool) -> anyhow::Result<()> {
        if needs_lock {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            self.lock = Some(loop {
                match lock_state_dir(&self.state_dir) {
                    Ok(l) => break l,
                    Err(e) if std::time::Instant::now() > deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            });
        }
        for f in &self.fleets {
            f.reopen();
            f.reconcile_every(RECONCILE_EVERY);
        }
        Ok(())
    }
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

/// Hands the daemon over to a new process; `Ok` once it serves (this one
/// then stops accepting, finishes in-flight requests and exits, leaving the
/// instances to the new one). On `Err` nothing changed.
pub async fn give(g: Giving<'_>, command: DaemonCommand) -> Result<Handover, Refusal> {
    let cfg = g.cfg;
    // The config the new daemon will read: refused here with the same
    // located problems `handoff check` prints, the old one stays in force.
    let next = config::load(&cfg.path).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid_config",
            format!("{e}\nthe running config stays in force"),
        )
    })?;
    // Certificates as the new daemon will read them: a bad one refused
    // here, before anything starts.
    for svc in next.services.values() {
        if let Some(t) = svc.tls.as_ref().filter(|t| !t.acme) {
            if let Err(e) = handoff_proxy::tls::load(&t.cert, &t.key, &svc.domains) {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_config",
                    format!(
                        "services.{}.tls: {e}\nthe running config stays in force",
                        svc.name
                    ),
                ));
            }
        }
    }
    let next_dir = std::fs::canonicalize(&next.server.state_dir)
        .or_else(|_| std::path::absolute(&next.server.state_dir))
        .unwrap_or_else(|_| next.server.state_dir.clone());
    if next_dir != cfg.server.state_dir {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "state_dir_changed",
            format!(
                "{}: server.state_dir is now {}, was {}; a hand-over keeps the state dir (its instances, lock and history): put it back, or stop and start handoff",
                cfg.path.display(),
                next_dir.display(),
                cfg.server.state_dir.display()
            ),
        ));
    }
    let binary = match command {
        DaemonCommand::Upgrade { binary: Some(b) } => b,
        _ => own_binary().map_err(|e| {
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no_binary",
                format!("cannot find this daemon's own binary: {e}"),
            )
        })?,
    };
    check_binary(&binary)?;
    // Between deployments only: each service's gate is held until the end.
    let why = "handing over to a new daemon (reload or upgrade)";
    let mut held: Vec<&Arc<dyn ManagedService>> = Vec::new();
    for d in g.deployers.values() {
        if let Err(e) = d.hold(why) {
            for h in held {
                h.unhold();
            }
            return Err(refuse(
                StatusCode::CONFLICT,
                "deployment_active",
                format!("{e}; a reload or upgrade happens between deployments: wait for it to end (handoff status), promote or roll back a retained one, or abort it, then try again"),
            ));
        }
        held.push(d);
    }
    let unhold = || {
        for h in g.deployers.values() {
            h.unhold();
        }
    };
    let needs_lock = g.managing.lock.is_some();
    let out = exchange(g.cfg, g.keep_instances, &binary, g.listeners, g.managing).await;
    // Deploys again only if the state is this daemon's again; a fleet left
    // closed (the lock could not be had back) keeps refusing them.
    if out.is_err() && (!needs_lock || g.managing.lock.is_some()) {
        unhold();
    }
    out
}

/// This daemon's binary path. Installed over since it started (the usual
/// upgrade: `install` a new version, then `handoff upgrade`), Linux names
/// it `PATH (deleted)`: the file now at PATH is the one wanted.
fn own_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    })
}

fn check_binary(binary: &Path) -> Result<(), Refusal> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(binary) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_binary",
            format!("{} is not an executable file", binary.display()),
        )),
        Err(e) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_binary",
            format!("{}: {e}", binary.display()),
        )),
    }
}

async fn exchange(
    cfg: &config::Config,
    keep_instances: bool,
    binary: &Path,
    listeners: Vec<(String, TcpListener)>,
    managing: &mut Managing,
) -> Result<Handover, Refusal> {
    let needs_lock = managing.lock.is_some();
    let failed = |what: String| {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "handover_failed",
            format!(
                "{what}; this daemon goes on serving (the new one's output is in this one's log)"
            ),
        )
    };
    let path = handover::socket_path(&cfg.server.state_dir);
    let _ = std::fs::remove_file(&path);
    let socket = tokio::net::UnixListener::bind(&path)
        .map_err(|e| failed(format!("cannot listen on {}: {e}", path.display())))?;
    let _cleanup = RemoveOnDrop(path.clone());
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("serve")
        .arg("-c")
        .arg(&cfg.path)
        .arg("--takeover")
        .stdin(std::process::Stdio::null());
    if keep_instances {
        cmd.arg("--keep-instances");
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("cannot start {}: {e}", binary.display())))?;
    let new_pid = child.id().unwrap_or(0);
    tracing::info!(pid = new_pid, binary = %binary.display(), "handing over to a new daemon");
    let stream = tokio::select! {
        s = tokio::time::timeout(HELLO_WITHIN, socket.accept()) => match s {
            Ok(Ok((s, _))) => s,
            Ok(Err(e)) => return Err(abandon(child, failed(format!("hand-over socket: {e}"))).await),
            Err(_) => return Err(abandon(child, failed(format!("the new daemon (pid {new_pid}) did not connect within {}s", HELLO_WITHIN.as_secs()))).await),
        },
        st = child.wait() => {
            return Err(failed(format!("the new daemon (pid {new_pid}) exited before taking over ({})", st.map(|s| s.to_string()).unwrap_or_default())));
        }
    };
    // Only the daemon just started may take the sockets: any process of
    // this user could connect to the socket first.
    match stream.peer_cred().ok().and_then(|c| c.pid()) {
        Some(pid) if pid as u32 == new_pid => {}
        other => {
            return Err(abandon(
                child,
                failed(format!(
                    "a process other than the new daemon (pid {other:?}, not {new_pid}) connected to the hand-over socket"
                )),
            )
            .await)
        }
    }
    let stream = stream
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|_| s))
        .map_err(|e| failed(format!("hand-over socket: {e}")))?;
    // Hello → listeners (blocking socket calls, off the runtime).
    let first = tokio::task::spawn_blocking(move || -> std::io::Result<UnixStream> {
        stream.set_read_timeout(Some(HELLO_WITHIN))?;
        match handover::recv(&stream)?.0 {
            Message::Hello { .. } => {}
            other => {
                return Err(std::io::Error::other(format!(
                    "expected hello, got {other:?}"
                )))
            }
        }
        let batches: Vec<&[(String, TcpListener)]> = listeners.chunks(handover::MAX_FDS).collect();
        for (i, batch) in batches.iter().enumerate() {
            let names: Vec<String> = batch.iter().map(|(n, _)| n.clone()).collect();
            let fds: Vec<i32> = batch.iter().map(|(_, l)| l.as_raw_fd()).collect();
            let more = i + 1 < batches.len();
            handover::send(&stream, &Message::Listeners { names, more }, &fds)?;
        }
        Ok(stream)
    })
    .await
    .map_err(|e| failed(e.to_string()))
    .and_then(|r| r.map_err(|e| failed(format!("hand-over: {e}"))));
    let stream = match first {
        Ok(s) => s,
        Err(e) => return Err(abandon(child, e).await),
    };
    // From here the state is the new daemon's, until it fails.
    managing.release().await;
    let serving = tokio::task::spawn_blocking(move || -> std::io::Result<(u32, Vec<String>)> {
        handover::send(&stream, &Message::Released, &[])?;
        stream.set_read_timeout(Some(SERVING_WITHIN))?;
        match handover::recv(&stream)?.0 {
            Message::Serving { pid, services } => Ok((pid, services)),
            other => Err(std::io::Error::other(format!(
                "expected serving, got {other:?}"
            ))),
        }
    })
    .await
    .map_err(|e| failed(e.to_string()))
    .and_then(|r| {
        r.map_err(|e| {
            failed(format!(
                "the new daemon (pid {new_pid}) did not take over: {e}"
            ))
        })
    });
    match serving {
        Ok((pid, services)) => {
            // Reaped by init once this process exits.
            std::mem::forget(child);
            managing.adopted = Some(services);
            Ok(Handover {
                old_pid: std::process::id(),
                new_pid: pid,
                message: format!(
                    "pid {pid} serves now; pid {} finishes its requests and exits",
                    std::process::id()
                ),
            })
        }
        Err(e) => {
            let e = abandon(child, e).await;
            if let Err(back) = managing.take_back(needs_lock).await {
                tracing::error!(error = %format!("{back:#}"), "cannot take the state back after a failed hand-over");
            }
            Err(e)
        }
    }
}

/// The new daemon failed: it goes (so that it can hold nothing), and is
/// reaped.
async fn abandon(mut child: tokio::process::Child, e: Refusal) -> Refusal {
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    tracing::warn!("{}", e.message);
    e
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The new daemon's side.
pub struct Taking {
    stream: UnixStream,
    listeners: Vec<(String, TcpListener)>,
}

impl Taking {
    /// Connects to the daemon stepping down, says hello and receives its
    /// listening sockets.
    pub fn connect(state_dir: &Path) -> anyhow::Result<Taking> {
        let path = handover::socket_path(state_dir);
        let stream = UnixStream::connect(&path).with_context(|| {
            format!(
                "--takeover: no daemon to take over from at {} (it is for `handoff reload`/`upgrade`, which start this process)",
                path.display()
            )
        })?;
        stream.set_read_timeout(Some(HELLO_WITHIN))?;
        handover::send(
            &stream,
            &Message::Hello {
                pid: std::process::id(),
            },
            &[],
        )?;
        let mut listeners = Vec::new();
        loop {
            let (msg, fds) = handover::recv(&stream)?;
            let Message::Listeners { names, more } = msg else {
                anyhow::bail!("hand-over: expected the listeners, got {msg:?}");
            };
            if names.len() != fds.len() {
                anyhow::bail!("hand-over: {} names for {} sockets", names.len(), fds.len());
            }
            listeners.extend(
                names
                    .into_iter()
                    .zip(fds)
                    .map(|(n, fd)| (n, TcpListener::from(fd))),
            );
            if !more {
                break;
            }
        }
        Ok(Taking { stream, listeners })
    }

    /// The sockets by service name ([`ADMIN`] for the admin API's).
    pub fn listeners(&mut self) -> BTreeMap<String, Vec<TcpListener>> {
        let mut by: BTreeMap<String, Vec<TcpListener>> = BTreeMap::new();
        for (n, l) in self.listeners.drain(..) {
            by.entry(n).or_default().push(l);
        }
        by
    }

    /// Waits until the old daemon has let go of the state.
    pub fn released(&self) -> anyhow::Result<()> {
        self.stream.set_read_timeout(Some(SERVING_WITHIN))?;
        match handover::recv(&self.stream)?.0 {
            Message::Released => Ok(()),
            other => anyhow::bail!("hand-over: expected released, got {other:?}"),
        }
    }

    /// Tells the old daemon that this one serves (with the managed
    /// services it adopted); it then steps down.
    pub fn serving(self, services: Vec<String>) -> anyhow::Result<()> {
        handover::send(
            &self.stream,
            &Message::Serving {
                pid: std::process::id(),
                services,
            },
            &[],
        )?;
        Ok(())
    }
}

/// Sockets systemd passed, by the service (or [`ADMIN`]) whose address
/// each one has; those matching nothing are closed.
pub fn systemd_by_service(
    cfg: &config::Config,
    sockets: Vec<TcpListener>,
) -> BTreeMap<String, Vec<TcpListener>> {
    let mut by: BTreeMap<String, Vec<TcpListener>> = BTreeMap::new();
    for l in sockets {
        let Ok(addr) = l.local_addr() else { continue };
        let name = if addr == cfg.server.admin {
            Some(ADMIN.to_string())
        } else {
            cfg.services
                .values()
                .find(|s| s.listen == Some(addr))
                .map(|s| s.name.clone())
        };
        match name {
            Some(n) => by.entry(n).or_default().push(l),
            None => {
                tracing::warn!(%addr, "systemd passed a socket no service listens on; closing it")
            }
        }
    }
    by
}
