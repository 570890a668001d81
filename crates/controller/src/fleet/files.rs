//! What a service keeps on disk: instance logs, and releases.
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
    /// instance never logged (unknown to this service).
    pub fn log_tail(&self, instance: &str, lines: usize) -> Option<String> {
        let path = self.runtime.log_path(self.name(), instance);
        path.exists()
            .then(|| handoff_runtime::logs::tail(&path, lines))
    }
}
