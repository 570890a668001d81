//! Shipping a release to a host: once per host and revision.
//!
//! The installed local release is packed once into a gzip'd tar
//! (`STATE_DIR/ship/SERVICE/REVISION.tar.gz`) and its sha256 taken; each
//! host gets it as one compressed stream on ssh's stdin, checks the sha256
//! of what arrived, unpacks it into a temporary directory beside the
//! releases and renames it into place, so a release there is whole or
//! absent. A marker inside (`.handoff-sha256`) holds the release's content
//! hash: a host that already has the revision with that hash is skipped,
//! one with another hash is refused (revisions are immutable; someone
//! changed it there). Releases the fleet no longer keeps are removed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::conn::{quote, quote_path, Conn};
use crate::artifact::Release;
use crate::RuntimeError;

const MARKER: &str = ".handoff-sha256";
/// Exit status of the host's check when the stream's sha256 is wrong.
const BAD_STREAM: i32 = 9;
/// Exit status when the release there has other content.
const CHANGED: i32 = 10;

pub fn release_dir(dir: &Path, service: &str, revision: &str) -> PathBuf {
    dir.join("releases").join(service).join(revision)
}

/// Packs `release` (once) and returns the pack and its sha256.
pub fn pack(
    ship_dir: &Path,
    service: &str,
    revision: &str,
    release: &Release,
) -> Result<(PathBuf, String), RuntimeError> {
    let dir = ship_dir.join(service);
    let pack = dir.join(format!(
        "{revision}.{}.tar.gz",
        &release.sha256[..16.min(release.sha256.len())]
    ));
    let io = |what: &'static str, p: &Path| {
        let path = p.to_path_buf();
        move |source| RuntimeError::Io { what, path, source }
    };
    if !pack.exists() {
        std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        let tmp = pack.with_extension(format!("tmp{}", std::process::id()));
        let f = std::fs::File::create(&tmp).map_err(io("cannot create", &tmp))?;
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.follow_symlinks(false);
        tar.append_dir_all(".", &release.dir)
            .map_err(io("cannot pack release", &release.dir))?;
        let gz = tar.into_inner().map_err(io("cannot pack release", &tmp))?;
        gz.finish().map_err(io("cannot pack release", &tmp))?;
        std::fs::rename(&tmp, &pack).map_err(io("cannot create", &pack))?;
    }
    let sha = crate::artifact::hash(&pack)?;
    Ok((pack, sha))
}

/// Ships `release` of `service`@`revision` to the host behind `conn`
/// unless it is there already, then removes that service's releases
/// there that `keep` does not name.
pub async fn ship(
    conn: &Conn,
    packed: &(PathBuf, String),
    service: &str,
    revision: &str,
    release: &Release,
    keep: &[String],
) -> Result<Vec<String>, RuntimeError> {
    let host = conn.spec.name.clone();
    let target = release_dir(&conn.spec.home, service, revision);
    let limit = Duration::from_secs(30);
    // Already there?
    let probe = format!(
        "cat {m} 2>/dev/null || true",
        m = quote_path(&target.join(MARKER))
    );
    let out = conn.run(&probe, None, limit).await?;
    let there = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if there.is_empty() {
        let (pack, sha) = packed.clone();
        let script = format!(
            r#"set -e
T={target}; S={sha}; C={content}
tmp="$T.incoming.$$"
mkdir -p "${{T%/*}}"
rm -rf "$tmp" "$tmp.tgz"; mkdir "$tmp"
cat > "$tmp.tgz"
got=$(sha256sum "$tmp.tgz" | cut -d' ' -f1)
if [ "$got" != "$S" ]; then rm -rf "$tmp" "$tmp.tgz"; echo "$got"; exit {bad}; fi
tar -xzf "$tmp.tgz" -C "$tmp"; rm -f "$tmp.tgz"
printf '%s\n' "$C" > "$tmp/{marker}"
if [ -e "$T" ]; then
  old=$(cat "$T/{marker}" 2>/dev/null || true); rm -rf "$tmp"
  if [ "$old" != "$C" ]; then echo "$old"; exit {changed}; fi
else
  mv "$tmp" "$T"
fi
echo shipped"#,
            target = quote_path(&target),
            sha = quote(&sha),
            content = quote(&release.sha256),
            bad = BAD_STREAM,
            changed = CHANGED,
            marker = MARKER,
        );
        let size = std::fs::metadata(&pack).map(|m| m.len()).unwrap_or(0);
        // A slow link gets time in proportion to the size (1 MB/s floor).
        let limit = limit + Duration::from_secs(size / 1_000_000);
        let out = conn.run(&script, Some(&pack), limit).await?;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match out.status.code() {
            Some(0) => {
                tracing::info!(host = %host, service, revision, bytes = size, "release shipped")
            }
            Some(BAD_STREAM) => {
                return Err(RuntimeError::ChecksumMismatch {
                    host,
                    revision: revision.to_string(),
                    expected: sha,
                    found: said,
                    dir: target.display().to_string(),
                })
            }
            Some(CHANGED) => {
                return Err(RuntimeError::ChecksumMismatch {
                    host,
                    revision: revision.to_string(),
                    expected: release.sha256.clone(),
                    found: said,
                    dir: target.display().to_string(),
                })
            }
            _ => {
                return Err(RuntimeError::Host {
                    host,
                    message: format!(
                        "cannot install revision {revision} in {}: {}",
                        target.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                })
            }
        }
    } else if there != release.sha256 {
        return Err(RuntimeError::ChecksumMismatch {
            host,
            revision: revision.to_string(),
            expected: release.sha256.clone(),
            found: there,
            dir: target.display().to_string(),
        });
    }
    Ok(prune(conn, service, revision, keep).await)
}

/// Removes the service's releases on the host that neither `keep` nor
/// `revision` names (and half-shipped leftovers); returns the revisions
/// removed. Failing to prune costs disk, not correctness: logged.
async fn prune(conn: &Conn, service: &str, revision: &str, keep: &[String]) -> Vec<String> {
    let dir = conn.spec.home.join("releases").join(service);
    let mut names: Vec<String> = keep.iter().map(|k| quote(k)).collect();
    names.push(quote(revision));
    let script = format!(
        r#"cd {dir} 2>/dev/null || exit 0
for r in * .[!.]*; do
  [ -e "$r" ] || continue
  case "$r" in *.incoming.*) rm -rf "$r"; continue;; esac
  keep=0
  for k in {names}; do [ "$r" = "$k" ] && keep=1; done
  [ $keep = 1 ] || {{ rm -rf "$r"; echo "$r"; }}
done"#,
        dir = quote_path(&dir),
        names = names.join(" "),
    );
    match conn.run(&script, None, Duration::from_secs(30)).await {
        Ok(out) => {
            let gone: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            if !gone.is_empty() {
                tracing::info!(host = %conn.spec.name, service, "pruned releases {}", gone.join(", "));
            }
            gone
        }
        Err(e) => {
            tracing::warn!(host = %conn.spec.name, service, "cannot prune releases: {e}");
            Vec::new()
        }
    }
}
