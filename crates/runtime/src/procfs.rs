//! Reading `/proc`: process identity (pid + start time), liveness, and the
//! environment marks that let handoff find instances it started but never
//! recorded (the daemon died between spawn and write).

use std::path::Path;

use crate::owner::{OWNER_VAR, STATE_DIR_VAR};
use crate::RunningInstance;

/// Start time of `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), or `None` if there is no such process or it is a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parens: parse after
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is alive *and* is the process that started at `start`.
pub fn is_same_process(pid: u32, start: u64) -> bool {
    pid != 0 && start_time(pid) == Some(start)
}

/// Whether any process is left in process group `pgid`.
pub fn group_alive(pgid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence/permission.
    pgid != 0 && unsafe { libc::kill(-(pgid as i32), 0) } == 0
}

/// Processes whose environment says they were started by handoff for
/// `state_dir` (compared as its canonical path, as instances are marked):
/// `(pid, service, instance)`. For tools and tests that know a state dir;
/// a daemon asks by owner id ([`owned_by`]).
pub fn marked_processes(state_dir: &Path) -> Vec<(u32, String, String)> {
    let dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let want = format!("{STATE_DIR_VAR}={}", dir.display());
    scan(&want)
        .into_iter()
        .map(|r| (r.pid, r.service, r.instance))
        .collect()
}

/// Live processes marked with owner id `owner` (see [`crate::owner`]).
pub fn owned_by(owner: &str) -> Vec<RunningInstance> {
    scan(&format!("{OWNER_VAR}={owner}"))
}

/// Live processes whose environment holds the exact entry `want`, with
/// the instance they say they are.
fn scan(want: &str) -> Vec<RunningInstance> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        if !vars.contains(&want.as_bytes()) {
            continue;
        }
        let get = |k: &str| {
            vars.iter().find_map(|v| {
                std::str::from_utf8(v)
                    .ok()?
                    .strip_prefix(k)?
                    .strip_prefix('=')
                    .map(str::to_string)
            })
        };
        let (Some(service), Some(instance)) = (get("HANDOFF_SERVICE"), get("HANDOFF_INSTANCE"))
        else {
            continue;
        };
        if let Some(start_time) = start_time(pid) {
            out.push(RunningInstance {
                service,
                instance,
                revision: get("HANDOFF_REVISION").unwrap_or_default(),
                host: None,
                addr: std::net::SocketAddr::from((
                    crate::process::LOCAL_ADDRESS,
                    get("PORT").and_then(|p| p.parse().ok()).unwrap_or(0),
                )),
                pid,
                start_time,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_identity() {
        let me = std::process::id();
        let st = start_time(me).expect("own stat");
        assert!(is_same_process(me, st));
        assert!(
            !is_same_process(me, st + 1),
            "a different start time is another process"
        );
        assert!(!is_same_process(0, st));
    }
}
