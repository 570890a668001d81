//! Instance logs: one file per instance, rotated by size.
//!
//! The child writes straight to the file (O_APPEND), so rotation is
//! copy-then-truncate: the child's next write lands at the new end (0).
//! A few lines may be lost in the instant between copy and truncate; that is
//! the accepted price of not putting handoff in the log path.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Rotate when a log passes this size.
pub const MAX_BYTES: u64 = 10 << 20;
/// Rotated generations kept (`.1` newest … `.N`).
pub const KEEP: u32 = 3;

pub fn path(logs_dir: &Path, service: &str, instance: &str) -> PathBuf {
    logs_dir.join(service).join(format!("{instance}.log"))
}

/// Rotates `path` if it is larger than `max`; returns whether it did.
pub fn rotate_if_large(path: &Path, max: u64, keep: u32) -> std::io::Result<bool> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(false);
    };
    if meta.len() <= max {
        return Ok(false);
    }
    let gen = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    for n in (1..keep).rev() {
        if gen(n).exists() {
            std::fs::rename(gen(n), gen(n + 1))?;
        }
    }
    std::fs::copy(path, gen(1))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// The last `lines` lines of a log (for error messages and `handoff logs`).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_generations() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        for round in 0..4 {
            std::fs::write(&p, format!("round {round}\n").repeat(100)).unwrap();
            assert!(rotate_if_large(&p, 100, 2).unwrap());
            assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        }
        assert!(d.path().join("a.log.1").exists());
        assert!(d.path().join("a.log.2").exists());
        assert!(!d.path().join("a.log.3").exists());
        assert!(std::fs::read_to_string(d.path().join("a.log.1"))
            .unwrap()
            .starts_with("round 3"));
        assert!(!rotate_if_large(&p, 100, 2).unwrap());
    }

    #[test]
    fn tail_returns_last_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.log");
        std::fs::write(&p, "1\n2\n3\n4\n").unwrap();
        assert_eq!(tail(&p, 2), "3\n4");
        assert_eq!(tail(&d.path().join("none"), 2), "");
    }
}
