//! The hosts of one daemon: for each, its connection settings and the
//! watcher that keeps its master connection up and reads its status
//! stream ([`super::monitor`]); shared by every service placed on them,
//! with what they have in common: which releases each host has, which
//! processes this daemon spawned there (and when), and the locks that keep
//! packing and shipping to one at a time.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::conn::{Conn, HostSpec};
use super::monitor;
use crate::owner::StateOwner;
use crate::{artifact, HostState, RuntimeError};

/// A prepared release and the revisions kept beside it.
type Prepared = (artifact::Release, Vec<String>);

/// The hosts of one daemon: a connection and a watcher per host, shared by
/// every service placed on them.
pub struct SshHosts {
    pub(super) owner: StateOwner,
    pub(super) watches: BTreeMap<String, Arc<monitor::Watch>>,
    pub(super) tasks: Vec<tokio::task::JoinHandle<()>>,
    pub(super) changes: watch::Receiver<u64>,
    /// Pids spawned by this daemon and when, per host: an exit report older
    /// than the spawn says nothing about it, and a young one is no stray.
    pub(super) spawned: Mutex<HashMap<(String, u32), Instant>>,
    /// (service, revision) shipped to each host, by host.
    pub(super) shipped: Mutex<HashMap<String, std::collections::HashSet<(String, String)>>>,
    /// Releases prepared, by (service, revision), with the revisions kept:
    /// a host that did not answer when one was prepared gets it before
    /// its first instance of that revision starts.
    pub(super) releases: Mutex<HashMap<(String, String), Prepared>>,
    /// Packing a release is done once, by the first host to need it.
    pub(super) packing: tokio::sync::Mutex<()>,
    /// One shipment at a time per host (two instances of a revision
    /// starting there at once must not both unpack it, nor one's prune
    /// remove the other's upload).
    pub(super) shipping: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(super) ship_dir: PathBuf,
}

impl Drop for SshHosts {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The directory of master sockets: private, and short enough for a unix
/// socket path (108 bytes with the NUL; ssh first binds `PATH.` and 16
/// random characters) even under a long state dir: else a fresh directory
/// of our own in the temp dir.
fn control_dir(owner: &StateOwner) -> Result<PathBuf, RuntimeError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    // Sockets are named `PIDhN.sock` (pid, host index): at most ~18 bytes.
    const ROOM: usize = 107 - 1 - 18 - 17;
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| RuntimeError::Io { what, path, source }
    };
    let preferred = owner.dir.join("ssh");
    if preferred.as_os_str().len() <= ROOM {
        std::fs::create_dir_all(&preferred)
            .map_err(io("cannot create the ssh control directory", &preferred))?;
        std::fs::set_permissions(&preferred, std::fs::Permissions::from_mode(0o700)).map_err(
            io("cannot make the ssh control directory private", &preferred),
        )?;
        return Ok(preferred);
    }
    // A new directory each time (never one someone else made first).
    for n in 0..100u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let nonce = format!(
            "{:08x}",
            std::process::id() ^ n.wrapping_mul(0x9e37_79b9) ^ nanos
        );
        let dir = std::env::temp_dir().join(format!("handoff-ssh-{nonce}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                let meta = std::fs::metadata(&dir).map_err(io("cannot read", &dir))?;
                // SAFETY: getuid has no preconditions.
                if meta.uid() == unsafe { libc::getuid() } {
                    return Ok(dir);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("cannot create the ssh control directory", &dir)(e)),
        }
    }
    Err(RuntimeError::Io {
        what: "cannot create a private ssh control directory in",
        path: std::env::temp_dir(),
        source: std::io::Error::other("100 names were taken"),
    })
}

impl SshHosts {
    /// Starts watching `hosts` (a master connection and a status stream
    /// each). Must run inside a tokio runtime.
    pub fn start(state_dir: &Path, hosts: Vec<HostSpec>) -> Result<Arc<SshHosts>, RuntimeError> {
        let owner = StateOwner::open(state_dir)?;
        let control = control_dir(&owner)?;
        let (tx, rx) = watch::channel(0u64);
        let mut watches = BTreeMap::new();
        let mut tasks = Vec::new();
        for (i, mut h) in hosts.into_iter().enumerate() {
            h.home = h.dir.join(&owner.id[..12]);
            let w = Arc::new(monitor::Watch::new(
                // By pid too: during a hand-over two daemons run at once,
                // and the new one must not ride on the old one's masters,
                // which go with it.
                Conn::new(h.clone(), &control, &format!("{}h{i}", std::process::id())),
                &owner.id,
                tx.clone(),
            ));
            tasks.push(tokio::spawn(w.clone().run()));
            watches.insert(h.name.clone(), w);
        }
        Ok(Arc::new(SshHosts {
            ship_dir: owner.dir.join("ship"),
            owner,
            watches,
            tasks,
            changes: rx,
            spawned: Mutex::default(),
            shipped: Mutex::default(),
            releases: Mutex::default(),
            packing: tokio::sync::Mutex::new(()),
            shipping: Mutex::default(),
        }))
    }

    pub fn owner(&self) -> &str {
        &self.owner.id
    }

    pub fn hosts(&self) -> impl Iterator<Item = &HostSpec> {
        self.watches.values().map(|w| &w.conn.spec)
    }

    pub fn conn(&self, host: &str) -> Option<&Conn> {
        self.watches.get(host).map(|w| &w.conn)
    }

    pub fn state(&self, host: &str) -> HostState {
        match self.watches.get(host) {
            Some(w) => w.state(),
            None => HostState::Lost {
                since_ms: 0,
                why: "not a configured host".into(),
            },
        }
    }

    /// Waits until every host answered once, or `limit`; the hosts that
    /// did not stay lost (and are named by `host_state`).
    pub async fn connected(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for w in self.watches.values() {
            let mut rx = w.reports.subscribe();
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left, rx.wait_for(|r| r.begun.is_some())).await;
        }
    }

    pub(super) fn lost_error(&self, host: &str) -> Option<RuntimeError> {
        match self.state(host) {
            HostState::Up => None,
            HostState::Lost { why, .. } => Some(RuntimeError::HostUnreachable {
                host: host.to_string(),
                why,
            }),
        }
    }

    pub(super) fn conn_or_err(&self, host: &str) -> Result<&Conn, RuntimeError> {
        self.conn(host).ok_or_else(|| RuntimeError::Host {
            host: host.to_string(),
            message: "not a configured host; add a [hosts.NAME] section".into(),
        })
    }
}
