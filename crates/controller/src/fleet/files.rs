//! What a service keeps on disk: instance logs, and releases.
//!
//! A revision's release is installed once from its artifact (verified by
//! sha256 against the release and the store), then handed to the runtime,
//! which makes it available where instances run (nothing to do locally;
//! shipped to each host for instances on hosts).
//!
//! Which installed releases a service may lose: pruning removes releases
//! that never completed a deployment first, and never the current one, one
//! in use, or the one a rollback would go to; a rollback target whose files
//! are gone is found before the rollback starts, not by a start that fails.

use std::path::PathBuf;

use handoff_runtime::artifact::Releases;
use handoff_runtime::Runtime;

use super::Fleet;
use crate::executor::rollback::{self, Verdict};
use crate::ControllerError;

impl<R: Runtime> Fleet<R> {
    /// Where `revision`'s files should be if they are gone: it was
    /// installed from an artifact, its release directory is no longer
    /// there, and no artifact is at hand to install it again.
    pub fn release_missing(&self, revision: &str) -> Option<PathBuf> {
        let rec = self.store.revision(self.name(), revision).ok().flatten()?;
        rec.sha256.as_ref()?;
        let releases = Releases::new(&self.state_dir);
        if releases.installed(self.name(), revision).is_some() {
            return None;
        }
        let reinstallable = (revision == self.managed.revision)
            .then(|| self.managed.artifact.clone())
            .flatten()
            .is_some_and(|a| a.exists());
        (!reinstallable).then(|| releases.dir(self.name(), revision))
    }

    /// Prunes `service`'s releases to `releases_kept`, keeping `in_use`
    /// (and the current revision and the rollback target) whatever their
    /// age; never-completed releases go before completed ones.
    pub(super) fn prune_releases(&self, in_use: &[String]) -> Result<Vec<String>, ControllerError> {
        let svc = self.name();
        let history = self.store.deployments(svc, 10_000)?;
        let revisions = self.store.revisions(svc)?;
        let current = self.current_revision();
        let verdicts = rollback::verdicts(&history, &revisions);
        let good: Vec<&str> = verdicts
            .iter()
            .filter(|(_, v)| matches!(v, Verdict::Good { .. }))
            .map(|(id, _)| id.as_str())
            .collect();
        let back = rollback::target(svc, &current, None, &history, &revisions).ok();
        let protect: Vec<&str> = in_use
            .iter()
            .map(String::as_str)
            .chain([current.as_str()])
            .chain(back.as_deref())
            .collect();
        Ok(Releases::new(&self.state_dir).prune(svc, self.releases_kept, &protect, &good)?)
    }

    /// Whether `revision` may take new content under its id: it never
    /// completed a deployment (no rollback can want its old files) and no
    /// instance runs it.
    pub(super) fn may_replace(&self, revision: &str) -> bool {
        let svc = self.name();
        let (Ok(history), Ok(revisions)) = (
            self.store.deployments(svc, 10_000),
            self.store.revisions(svc),
        ) else {
            return false;
        };
        let served = revisions
            .iter()
            .any(|(r, stable)| r.id == revision && *stable)
            || matches!(
                rollback::verdicts(&history, &revisions).get(revision),
                Some(Verdict::Good { .. })
            );
        !served
            && revision != self.current_revision()
            && !self.slots().values().any(|s| s.revision == revision)
    }

    /// The last `lines` lines of an instance's log, or `None` when the
    /// instance never logged (unknown to this service) or its host cannot
    /// be reached. An instance that is gone is looked for on every host.
    pub async fn log_tail(&self, instance: &str, lines: usize) -> Option<String> {
        let host = self.slots().get(instance).map(|s| s.host.clone());
        let hosts = match host {
            Some(h) => vec![h],
            None => self.placement().into_iter().map(|(h, _)| h).collect(),
        };
        for h in hosts {
            if let Some(t) = self
                .runtime
                .log_tail(self.name(), instance, h.as_deref(), lines)
                .await
            {
                return Some(t);
            }
        }
        None
    }

    /// The revisions whose releases this machine keeps (after pruning):
    /// the hosts keep the same ones.
    pub(super) fn kept_releases(&self) -> Vec<String> {
        let dir = handoff_runtime::artifact::Releases::new(&self.state_dir).dir(self.name(), "x");
        let Some(dir) = dir.parent() else {
            return Vec::new();
        };
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl<R: Runtime> Fleet<R> {
    /// Installs `revision`'s artifact (once; verified by sha256 against both
    /// the release and the store) and prunes old releases. The artifact is
    /// the one `deploy --artifact` brought, or the config's for its
    /// revision; a revision installed before keeps its release (rollback
    /// never needs the original file); one without any runs in the
    /// config's directory.
    pub async fn install_release(&self, revision: &str) -> Result<PathBuf, ControllerError> {
        let given = self
            .artifacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(revision)
            .cloned();
        let artifact = given.or_else(|| {
            (revision == self.managed.revision)
                .then(|| self.managed.artifact.clone())
                .flatten()
        });
        let installed = handoff_runtime::artifact::Releases::new(&self.state_dir)
            .installed(self.name(), revision);
        // An original that is still there is verified against the installed
        // release (a changed revision is refused); once it is gone, the
        // installed release is all a rollback or redeploy needs.
        let (dir, sha) = match artifact
            .clone()
            .filter(|a| a.exists() || installed.is_none())
        {
            Some(a) => {
                let releases = handoff_runtime::artifact::Releases::new(&self.state_dir);
                let (svc, rev) = (self.name().to_string(), revision.to_string());
                // A revision that never served may take new content under
                // its id (a broken build fixed); one that served may not.
                let replace = self.may_replace(revision);
                let rel = tokio::task::spawn_blocking(move || {
                    if replace {
                        releases.replace(&svc, &rev, &a)
                    } else {
                        releases.install(&svc, &rev, &a)
                    }
                })
                .await
                .map_err(|e| ControllerError::Internal(e.to_string()))??;
                (rel.dir, Some(rel.sha256))
            }
            None => match installed {
                Some(rel) => (rel.dir, Some(rel.sha256)),
                // It was installed from an artifact once: running it from
                // the config's directory instead would run other code.
                None if self
                    .store
                    .revision(self.name(), revision)?
                    .is_some_and(|r| r.sha256.is_some()) =>
                {
                    return Err(handoff_runtime::RuntimeError::ReleaseGone {
                        service: self.name().to_string(),
                        revision: revision.to_string(),
                        dir: handoff_runtime::artifact::Releases::new(&self.state_dir)
                            .dir(self.name(), revision),
                    }
                    .into());
                }
                None => (self.base_dir.clone(), None),
            },
        };
        let stored = self.store.put_revision(&handoff_store::RevisionRecord {
            service: self.name().to_string(),
            id: revision.to_string(),
            artifact: artifact.as_ref().map(|a| a.display().to_string()),
            sha256: sha.clone(),
            created_ms: handoff_store::now_ms(),
        })?;
        if let (Some(old), Some(new)) = (&stored.sha256, &sha) {
            if old != new && self.may_replace(revision) {
                self.store
                    .replace_revision(&handoff_store::RevisionRecord {
                        service: self.name().to_string(),
                        id: revision.to_string(),
                        artifact: artifact.as_ref().map(|a| a.display().to_string()),
                        sha256: sha.clone(),
                        created_ms: handoff_store::now_ms(),
                    })?;
                self.event(
                    None,
                    "revision-replaced",
                    &format!(
                        "{revision} never served, so its content was replaced (sha256 {old} → {new})"
                    ),
                );
            } else if old != new {
                return Err(handoff_runtime::RuntimeError::RevisionChanged {
                    service: self.name().to_string(),
                    revision: revision.to_string(),
                    existing: old.clone(),
                    new: new.clone(),
                }
                .into());
            }
        }
        if sha.is_some() {
            let in_use: Vec<String> = self
                .slots()
                .values()
                .map(|s| s.revision.clone())
                .chain([revision.to_string()])
                .collect();
            let removed = self.prune_releases(&in_use)?;
            if !removed.is_empty() {
                self.event(
                    None,
                    "releases-pruned",
                    &format!("removed old releases {}", removed.join(", ")),
                );
            }
        }
        // Where the instances run: shipped there (once per host), and the
        // releases kept here are the ones kept there.
        let release = sha.as_ref().map(|sha| handoff_runtime::artifact::Release {
            dir: dir.clone(),
            sha256: sha.clone(),
        });
        let keep = self.kept_releases();
        self.runtime
            .prepare(self.name(), revision, release.as_ref(), &keep)
            .await?;
        self.release_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(revision.to_string(), dir.clone());
        Ok(dir)
    }

    /// The release directory of an installed revision, installing it the
    /// first time only: every batch and every hook of a deployment asks, and
    /// hashing an artifact again each time would be work done for nothing
    /// (revisions are immutable; the first install verified it).
    pub async fn release_dir(&self, revision: &str) -> Result<PathBuf, ControllerError> {
        let known = self
            .release_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(revision)
            .cloned();
        match known {
            Some(d) => Ok(d),
            None => self.install_release(revision).await,
        }
    }
}
