//! Release directories: a revision's artifact, installed once.
//!
//! An artifact (a directory or a `.tar.gz`) is copied or unpacked into
//! `state_dir/releases/SERVICE/REVISION/` through a temporary directory and
//! an atomic rename, so a crash never leaves a half-installed release. Its
//! sha256 is recorded in the release (`.handoff-sha256`): installing the same
//! revision id again with different content is refused (revisions are
//! immutable), with the same content it is a no-op. The last N releases are
//! kept, so rollback never needs the original artifact again.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::RuntimeError;

const MARK: &str = ".handoff-sha256";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub dir: PathBuf,
    pub sha256: String,
}

pub struct Releases {
    root: PathBuf,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::Io { what, path, source }
}

impl Releases {
    pub fn new(state_dir: &Path) -> Releases {
        Releases {
            root: state_dir.join("releases"),
        }
    }

    pub fn dir(&self, service: &str, revision: &str) -> PathBuf {
        self.root.join(service).join(revision)
    }

    /// The release of `revision`, if one was installed.
    pub fn installed(&self, service: &str, revision: &str) -> Option<Release> {
        let dir = self.dir(service, revision);
        let sha = fs::read_to_string(dir.join(MARK)).ok()?;
        Some(Release {
            dir,
            sha256: sha.trim().to_string(),
        })
    }

    /// Installs `artifact` as `revision` (or finds it installed).
    pub fn install(
        &self,
        service: &str,
        revision: &str,
        artifact: &Path,
    ) -> Result<Release, RuntimeError> {
        let sha = hash(artifact)?;
        let dir = self.dir(service, revision);
        if let Ok(existing) = fs::read_to_string(dir.join(MARK)) {
            let existing = existing.trim().to_string();
            if existing == sha {
                return Ok(Release { dir, sha256: sha });
            }
            return Err(RuntimeError::RevisionChanged {
                service: service.into(),
                revision: revision.into(),
                existing,
                new: sha,
            });
        }
        let parent = self.root.join(service);
        fs::create_dir_all(&parent).map_err(io("cannot create releases directory", &parent))?;
        let tmp = parent.join(format!(".tmp-{revision}-{}", unique()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io("cannot create", &tmp))?;
        let filled = if artifact.is_dir() {
            copy_dir(artifact, &tmp)
        } else {
            unpack_tar_gz(artifact, &tmp)
        };
        if let Err(e) = filled {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        fs::write(tmp.join(MARK), &sha).map_err(io("cannot write", &tmp))?;
        // An empty leftover dir (e.g. made by a start without artifact)
        // would block the rename.
        let _ = fs::remove_dir(&dir);
        fs::rename(&tmp, &dir).map_err(io("cannot move release into place at", &dir))?;
        Ok(Release { dir, sha256: sha })
    }

    /// Installs `artifact` as `revision`, replacing a release of different
    /// content (the caller checked that the old one may go): the new one
    /// is built aside and moved in, so the old stays whole until then.
    pub fn replace(
        &self,
        service: &str,
        revision: &str,
        artifact: &Path,
    ) -> Result<Release, RuntimeError> {
        match self.install(service, revision, artifact) {
            Err(RuntimeError::RevisionChanged { .. }) => {
                let dir = self.dir(service, revision);
                let old = self
                    .root
                    .join(service)
                    .join(format!(".old-{revision}-{}", unique()));
                let _ = fs::remove_dir_all(&old);
                fs::rename(&dir, &old).map_err(io("cannot move old release aside", &dir))?;
                let r = self.install(service, revision, artifact);
                match &r {
                    Ok(_) => {
                        let _ = fs::remove_dir_all(&old);
                    }
                    // Put the old one back: nothing lost.
                    Err(_) => {
                        let _ = fs::rename(&old, &dir);
                    }
                }
                r
            }
            other => other,
        }
    }

    /// Removes installed releases of `service` until at most `keep` are
    /// left, never one named in `protect`: releases not in `completed`
    /// (never completed a deployment: failed, rolled back, unfinished)
    /// go first, oldest first, then completed ones, oldest first. Returns
    /// the revisions removed.
    pub fn prune(
        &self,
        service: &str,
        keep: usize,
        protect: &[&str],
        completed: &[&str],
    ) -> Result<Vec<String>, RuntimeError> {
        let parent = self.root.join(service);
        let Ok(entries) = fs::read_dir(&parent) else {
            return Ok(Vec::new());
        };
        let mut rels: Vec<(std::time::SystemTime, String, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let mark = e.path().join(MARK);
                let t = fs::metadata(&mark).and_then(|m| m.modified()).ok()?;
                (!name.starts_with('.')).then(|| (t, name, e.path()))
            })
            .collect();
        let mut left = rels.len();
        // Removal order: never-completed before completed, oldest first.
        rels.sort_by(|a, b| {
            let done = |n: &str| completed.contains(&n);
            done(&a.1)
                .cmp(&done(&b.1))
                .then(a.0.cmp(&b.0))
                .then(a.1.cmp(&b.1))
        });
        let mut removed = Vec::new();
        for (_, name, path) in rels {
            if left <= keep {
                break;
            }
            if protect.contains(&name.as_str()) {
                continue;
            }
            fs::remove_dir_all(&path).map_err(io("cannot remove old release", &path))?;
            removed.push(name);
            left -= 1;
        }
        Ok(removed)
    }
}

/// A name part no other install of this process or another uses at the
/// same time (two installs of one revision must not share a temp dir).
fn unique() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// sha256 of a file, or of a directory tree (sorted relative paths and
/// contents, so the same tree always hashes the same).
pub fn hash(path: &Path) -> Result<String, RuntimeError> {
    let mut h = Sha256::new();
    if path.is_dir() {
        let mut files = Vec::new();
        walk(path, path, &mut files)?;
        files.sort();
        for rel in files {
            h.update(rel.to_string_lossy().as_bytes());
            h.update([0]);
            feed(&mut h, &path.join(&rel))?;
        }
    } else {
        feed(&mut h, path)?;
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn feed(h: &mut Sha256, file: &Path) -> Result<(), RuntimeError> {
    let mut f = fs::File::open(file).map_err(|source| RuntimeError::Artifact {
        path: file.to_path_buf(),
        message: format!("cannot read: {source}"),
    })?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io("cannot read", file))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), RuntimeError> {
    for e in fs::read_dir(dir).map_err(io("cannot read artifact directory", dir))? {
        let e = e.map_err(io("cannot read artifact directory", dir))?;
        let p = e.path();
        let ft = e.file_type().map_err(io("cannot stat", &p))?;
        if ft.is_dir() {
            walk(root, &p, out)?;
        } else if ft.is_file() {
            out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), RuntimeError> {
    for e in fs::read_dir(from).map_err(io("cannot read artifact directory", from))? {
        let e = e.map_err(io("cannot read artifact directory", from))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().map_err(io("cannot stat", &src))?;
        if ft.is_dir() {
            fs::create_dir_all(&dst).map_err(io("cannot create", &dst))?;
            copy_dir(&src, &dst)?;
        } else if ft.is_file() {
            // fs::copy keeps the permission bits (executables stay executable).
            fs::copy(&src, &dst).map_err(io("cannot copy artifact file", &src))?;
        }
    }
    Ok(())
}

fn unpack_tar_gz(file: &Path, to: &Path) -> Result<(), RuntimeError> {
    let name = file.to_string_lossy();
    if !(name.ends_with(".tar.gz") || name.ends_with(".tgz")) {
        return Err(RuntimeError::Artifact {
            path: file.to_path_buf(),
            message: "is neither a directory nor a .tar.gz/.tgz file".into(),
        });
    }
    let f = fs::File::open(file).map_err(|source| RuntimeError::Artifact {
        path: file.to_path_buf(),
        message: format!("cannot open: {source}"),
    })?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    ar.set_preserve_permissions(true);
    // `unpack` refuses entries that would land outside `to` (`..`, absolute).
    ar.unpack(to).map_err(|e| RuntimeError::Artifact {
        path: file.to_path_buf(),
        message: format!("cannot unpack: {e}"),
    })?;
    strip_single_folder(to).map_err(|e| RuntimeError::Artifact {
        path: file.to_path_buf(),
        message: format!("cannot lift the files out of its one folder: {e}"),
    })
}

/// `tar czf app.tar.gz app/` puts everything under one folder: its
/// contents become the release, so the command runs `./server` whatever
/// the folder was called (as `tar --strip-components=1` would).
fn strip_single_folder(to: &Path) -> std::io::Result<()> {
    let entries: Vec<fs::DirEntry> = fs::read_dir(to)?.collect::<Result<_, _>>()?;
    let [only] = entries.as_slice() else {
        return Ok(());
    };
    if !only.file_type()?.is_dir() {
        return Ok(());
    }
    // Moved aside first: it may hold an entry of its own name.
    let aside = to.join(format!(".strip-{}", unique()));
    fs::rename(only.path(), &aside)?;
    for e in fs::read_dir(&aside)? {
        let e = e?;
        fs::rename(e.path(), to.join(e.file_name()))?;
    }
    fs::remove_dir(&aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree(d: &Path) -> PathBuf {
        let a = d.join("app");
        fs::create_dir_all(a.join("static")).unwrap();
        fs::write(a.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(a.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(a.join("static/index.html"), "<h1>v1</h1>").unwrap();
        a
    }

    fn tgz(src: &Path, out: &Path) {
        let f = fs::File::create(out).unwrap();
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            f,
            flate2::Compression::fast(),
        ));
        b.append_dir_all(".", src).unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn installs_a_directory_once_and_refuses_changed_content() {
        let d = tempfile::tempdir().unwrap();
        let rel = Releases::new(&d.path().join("state"));
        let app = tree(d.path());
        let r = rel.install("web", "v1", &app).unwrap();
        assert_eq!(
            fs::read_to_string(r.dir.join("static/index.html")).unwrap(),
            "<h1>v1</h1>"
        );
        assert_eq!(
            fs::metadata(r.dir.join("run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o111,
            0o111
        );
        // Same content: same release, no error.
        assert_eq!(rel.install("web", "v1", &app).unwrap(), r);
        fs::write(app.join("static/index.html"), "<h1>changed</h1>").unwrap();
        let e = rel.install("web", "v1", &app).unwrap_err();
        assert!(e.to_string().contains("so it is immutable"), "{e}");
        // `replace` takes the new content (the caller decided it may) and
        // leaves no old copy behind.
        let r2 = rel.replace("web", "v1", &app).unwrap();
        assert_ne!(r2.sha256, r.sha256);
        assert_eq!(rel.install("web", "v1", &app).unwrap(), r2);
        let leftovers = fs::read_dir(d.path().join("state/releases/web"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".old"))
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn unpacks_tar_gz_and_hashes_it() {
        let d = tempfile::tempdir().unwrap();
        let app = tree(d.path());
        let file = d.path().join("app-v2.tar.gz");
        tgz(&app, &file);
        let rel = Releases::new(&d.path().join("state"));
        let r = rel.install("web", "v2", &file).unwrap();
        assert_eq!(
            fs::read_to_string(r.dir.join("run.sh")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        assert_eq!(r.sha256.len(), 64);
        // The original can go: the release stays.
        fs::remove_file(&file).unwrap();
        assert!(r.dir.join("static/index.html").exists());
        let bad = d.path().join("x.zip");
        fs::write(&bad, "nope").unwrap();
        assert!(rel
            .install("web", "v3", &bad)
            .unwrap_err()
            .to_string()
            .contains("neither a directory"));
    }

    #[test]
    fn a_tarball_of_one_folder_installs_that_folders_contents() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("app/app")).unwrap();
        fs::write(src.join("app/server"), "#!/bin/sh\n").unwrap();
        fs::write(src.join("app/app/inner"), "x").unwrap();
        let tgz = d.path().join("a.tar.gz");
        let f = fs::File::create(&tgz).unwrap();
        let mut t = tar::Builder::new(flate2::write::GzEncoder::new(
            f,
            flate2::Compression::fast(),
        ));
        t.append_dir_all("app", src.join("app")).unwrap();
        t.into_inner().unwrap().finish().unwrap();
        let r = Releases::new(&d.path().join("state"));
        let rel = r.install("web", "v1", &tgz).unwrap();
        assert!(rel.dir.join("server").is_file(), "lifted out of app/");
        assert!(
            rel.dir.join("app/inner").is_file(),
            "a folder of the same name kept"
        );
        assert!(!rel.dir.join("app/server").exists());
    }

    #[test]
    fn prune_keeps_newest_and_in_use() {
        let d = tempfile::tempdir().unwrap();
        let rel = Releases::new(&d.path().join("state"));
        let app = tree(d.path());
        for v in ["v1", "v2", "v3", "v4"] {
            fs::write(app.join("static/index.html"), v).unwrap();
            rel.install("web", v, &app).unwrap();
            // mtime resolution: make the order unambiguous.
            let t = std::time::SystemTime::now()
                - std::time::Duration::from_secs(100 - v[1..].parse::<u64>().unwrap());
            fs::File::open(rel.dir("web", v).join(MARK))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        let all = ["v1", "v2", "v3", "v4"];
        let removed = rel.prune("web", 3, &["v1"], &all).unwrap();
        assert_eq!(removed, vec!["v2".to_string()]);
        assert!(
            rel.dir("web", "v1").exists()
                && rel.dir("web", "v3").exists()
                && rel.dir("web", "v4").exists()
        );
    }

    #[test]
    fn prune_removes_never_completed_releases_first() {
        let d = tempfile::tempdir().unwrap();
        let rel = Releases::new(&d.path().join("state"));
        let app = tree(d.path());
        // v2 completed; v5, v6, v7 failed after it and are newer.
        for (i, v) in ["v2", "v5", "v6", "v7"].iter().enumerate() {
            fs::write(app.join("static/index.html"), v).unwrap();
            rel.install("web", v, &app).unwrap();
            let t = std::time::SystemTime::now() - std::time::Duration::from_secs(100 - i as u64);
            fs::File::open(rel.dir("web", v).join(MARK))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        let removed = rel.prune("web", 2, &["v7"], &["v2"]).unwrap();
        assert_eq!(removed, vec!["v5".to_string(), "v6".to_string()]);
        assert!(rel.dir("web", "v2").exists() && rel.dir("web", "v7").exists());
    }
}
