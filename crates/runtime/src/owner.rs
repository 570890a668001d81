//! Who owns an instance: every state dir has a random id, made once, and
//! every instance carries it (and the state dir's absolute path) in its
//! environment. A daemon adopts or stops only processes with its own id.
//!
//! Why not the path alone: the default `state_dir = ".handoff"` is the same
//! relative string in every config, and even an absolute path can be
//! deleted and made again, or mean another directory in another mount
//! namespace. The id is the identity; the path is for people reading
//! `/proc/PID/environ`.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::RuntimeError;

/// File in the state dir that holds its id.
pub const OWNER_FILE: &str = "owner";
/// Environment variable with the owner id of the state dir an instance
/// belongs to.
pub const OWNER_VAR: &str = "HANDOFF_OWNER";
/// Environment variable with that state dir's absolute path.
pub const STATE_DIR_VAR: &str = "HANDOFF_STATE_DIR";

/// A state dir, resolved: its canonical absolute path and its owner id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateOwner {
    pub dir: PathBuf,
    pub id: String,
}

impl StateOwner {
    /// Creates `state_dir` if needed, resolves it to its canonical path and
    /// reads its id, making one the first time.
    pub fn open(state_dir: &Path) -> Result<StateOwner, RuntimeError> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| RuntimeError::Io { what, path, source }
        };
        std::fs::create_dir_all(state_dir).map_err(io("cannot create state_dir", state_dir))?;
        let dir =
            std::fs::canonicalize(state_dir).map_err(io("cannot resolve state_dir", state_dir))?;
        let path = dir.join(OWNER_FILE);
        let id = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&dir)?,
            Err(e) => return Err(io("cannot read the state dir's owner id", &path)(e)),
        };
        if !valid(&id) {
            return Err(RuntimeError::Io {
                what: "the state dir's owner id is not 32 hex digits (delete the file and restart handoff; instances it started before are then no longer recognised as its own):",
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{id:?}")),
            });
        }
        Ok(StateOwner { dir, id })
    }
}

fn valid(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Writes a fresh id to a temp file, then links it into place: the link
/// fails if another process got there first, and then its id is the one.
fn create(dir: &Path) -> Result<String, RuntimeError> {
    let path = dir.join(OWNER_FILE);
    let tmp = dir.join(format!(".{OWNER_FILE}.{}", std::process::id()));
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| RuntimeError::Io { what, path, source }
    };
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
        .map_err(io(
            "cannot read random bytes for the owner id",
            Path::new("/dev/urandom"),
        ))?;
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            writeln!(f, "{id}")?;
            f.sync_all()
        })
        .map_err(io("cannot write the owner id", &tmp));
    let linked = written.and_then(|()| match std::fs::hard_link(&tmp, &path) {
        Ok(()) => Ok(id),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .map_err(io("cannot read the state dir's owner id", &path)),
        Err(e) => Err(io("cannot create the state dir's owner id", &path)(e)),
    });
    let _ = std::fs::remove_file(&tmp);
    linked
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{procfs, InstanceSpec, ProcessRuntime, Runtime};

    #[test]
    fn an_id_is_made_once_per_state_dir_and_the_path_is_made_absolute() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let first = StateOwner::open(&a.path().join("x/../.handoff")).unwrap();
        assert_eq!(
            first.dir,
            std::fs::canonicalize(a.path()).unwrap().join(".handoff")
        );
        assert!(valid(&first.id), "{}", first.id);
        let again = StateOwner::open(&a.path().join(".handoff")).unwrap();
        assert_eq!(again, first, "the id is kept across restarts");
        let other = StateOwner::open(&b.path().join(".handoff")).unwrap();
        assert_ne!(other.id, first.id, "another state dir, another owner");
    }

    #[test]
    fn a_corrupt_id_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(OWNER_FILE), "not-an-id\n").unwrap();
        let e = StateOwner::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("owner id is not 32 hex digits"), "{e}");
        assert!(e.contains(OWNER_FILE), "{e}");
    }

    fn spec(dir: &Path) -> InstanceSpec {
        InstanceSpec {
            service: "web".into(),
            instance: "web-1".into(),
            revision: "v1".into(),
            host: None,
            port: crate::ports::allocate(None, &[]).unwrap(),
            command: "sleep 30".into(),
            release_dir: dir.join("release"),
        }
    }

    /// Two daemons, each with its own `.handoff` and a `web-1`: each one's
    /// stray scan finds only its own instance (the scan that once stopped
    /// another daemon's service).
    #[tokio::test]
    async fn each_runtime_finds_only_the_instances_it_owns() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ra = ProcessRuntime::new(&a.path().join(".handoff")).unwrap();
        let rb = ProcessRuntime::new(&b.path().join(".handoff")).unwrap();
        let ia = ra.start(&spec(a.path())).await.unwrap();
        let ib = rb.start(&spec(b.path())).await.unwrap();

        let pids =
            |v: Vec<crate::RunningInstance>| -> Vec<u32> { v.iter().map(|m| m.pid).collect() };
        assert_eq!(pids(ra.marked().await), [ia.pid]);
        assert_eq!(pids(rb.marked().await), [ib.pid]);
        let found = &ra.marked().await[0];
        assert_eq!(
            (
                found.service.as_str(),
                found.instance.as_str(),
                found.revision.as_str()
            ),
            ("web", "web-1", "v1")
        );
        assert_eq!((found.addr, found.start_time), (ia.addr, ia.start_time));

        // The marks: the id and the absolute path, whatever path was given.
        let env = std::fs::read(format!("/proc/{}/environ", ia.pid)).unwrap();
        let env = String::from_utf8_lossy(&env);
        let owner = StateOwner::open(&a.path().join(".handoff")).unwrap();
        assert!(
            env.contains(&format!("{OWNER_VAR}={}\0", owner.id)),
            "{env}"
        );
        assert!(
            env.contains(&format!("{STATE_DIR_VAR}={}\0", owner.dir.display())),
            "{env}"
        );
        let by_path = procfs::marked_processes(&a.path().join(".handoff/logs/../../.handoff"));
        assert_eq!(by_path.iter().map(|m| m.0).collect::<Vec<_>>(), [ia.pid]);

        for (rt, inst) in [(&ra, &ia), (&rb, &ib)] {
            rt.stop(inst, Duration::from_secs(2)).await;
            assert!(!rt.is_alive(inst));
        }
        assert!(ra.marked().await.is_empty() && rb.marked().await.is_empty());
    }
}
