//! "Rollback means back": which revision a rollback goes to, decided from
//! the service's history alone (pure, unit-tested), and the request itself.
//!
//! A revision's verdict is the outcome of the newest deployment that
//! judged it: a deployment *to* it that succeeded makes it good; one that
//! rolled back or failed makes it bad; a rollback that *left* it makes it
//! bad too. A revision that served from the first boot and was never
//! judged is good. The target of `rollback` is the revision that served
//! before the current one's deployment, if good; else the newest good one
//! other than the current; with none, the request is refused (and the CLI
//! exits non-zero). A rolled-back or failed revision is never a target, so
//! pressing `rollback` twice cannot bring the bad revision back.

use std::collections::BTreeMap;
use std::sync::Arc;

use handoff_core::{DeploymentStatus, Origin};
use handoff_runtime::Runtime;
use handoff_store::{DeploymentRecord, RevisionRecord};

use super::{DeployError, DeployRequest, Deployer};
use crate::plan::{Event, Phase, Status};

/// Why a rollback cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("service '{service}' has nothing to roll back to: {current} serves and no other revision completed a deployment (rolled-back and failed revisions are never rollback targets); deploy one with `handoff deploy {service} REVISION`")]
    Nothing { service: String, current: String },
    #[error("{revision} is the revision serving '{service}' now; nothing to roll back to")]
    AlreadyServing { service: String, revision: String },
    #[error("service '{service}' never had revision '{revision}'; known: {known}")]
    Unknown {
        service: String,
        revision: String,
        known: String,
    },
    #[error("{revision} {why}, so it is no rollback target of '{service}'; use `handoff deploy {service} {revision}` if you mean to try it again")]
    NotGood {
        service: String,
        revision: String,
        why: String,
    },
    #[error("the files of {revision} are gone from {dir} (pruned or removed), so '{service}' cannot go back to it; deploy it again with `handoff deploy {service} {revision} --artifact PATH`")]
    FilesGone {
        service: String,
        revision: String,
        dir: String,
    },
}

/// What a revision's history says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Served whole (a succeeded deployment, or the first boot); `at_ms`
    /// orders the good ones.
    Good { at_ms: i64 },
    /// Rolled back, failed, or left by a rollback: never a target.
    Bad { why: String },
}

/// Every revision's verdict. `deployments` is newest first, as the store
/// lists them; `revisions` carries the store's `stable` flag (the boot
/// revision has it without any deployment).
pub fn verdicts(
    deployments: &[DeploymentRecord],
    revisions: &[(RevisionRecord, bool)],
) -> BTreeMap<String, Verdict> {
    let mut v = BTreeMap::new();
    for (r, stable) in revisions {
        if *stable {
            v.insert(
                r.id.clone(),
                Verdict::Good {
                    at_ms: r.created_ms,
                },
            );
        }
    }
    for d in deployments.iter().rev() {
        let Some(status) = DeploymentStatus::parse(&d.status) else {
            continue;
        };
        // Closed at boot after a restart cut it short: no judgement.
        let interrupted = serde_json::from_str::<serde_json::Value>(&d.state)
            .is_ok_and(|s| s["interrupted"] == true);
        if interrupted {
            continue;
        }
        let by_rollback = Origin::parse(&d.origin) == Some(Origin::Rollback) && d.from != d.to;
        let left = || Verdict::Bad {
            why: format!("was rolled back by {}", d.id),
        };
        match status {
            DeploymentStatus::Succeeded => {
                v.insert(
                    d.to.clone(),
                    Verdict::Good {
                        at_ms: d.updated_ms,
                    },
                );
                if by_rollback {
                    v.insert(d.from.clone(), left());
                }
            }
            // A rollback that did not make it back still left a revision
            // someone wanted gone; its target is not judged by it.
            DeploymentStatus::RolledBack | DeploymentStatus::Failed if by_rollback => {
                v.insert(d.from.clone(), left());
            }
            DeploymentStatus::RolledBack => {
                v.insert(
                    d.to.clone(),
                    Verdict::Bad {
                        why: format!("was rolled back in {}", d.id),
                    },
                );
            }
            DeploymentStatus::Failed => {
                v.insert(
                    d.to.clone(),
                    Verdict::Bad {
                        why: format!("failed in {}", d.id),
                    },
                );
            }
            // Still running (or retaining): not judged yet.
            _ => {}
        }
    }
    v
}

/// The revision a rollback of `service` from `current` goes to (`to`: the
/// one the operator named, checked).
pub fn target(
    service: &str,
    current: &str,
    to: Option<&str>,
    deployments: &[DeploymentRecord],
    revisions: &[(RevisionRecord, bool)],
) -> Result<String, Refused> {
    let v = verdicts(deployments, revisions);
    if let Some(to) = to {
        if to == current {
            return Err(Refused::AlreadyServing {
                service: service.into(),
                revision: to.into(),
            });
        }
        return match v.get(to) {
            Some(Verdict::Good { .. }) => Ok(to.to_string()),
            Some(Verdict::Bad { why }) => Err(Refused::NotGood {
                service: service.into(),
                revision: to.into(),
                why: why.clone(),
            }),
            None if revisions.iter().any(|(r, _)| r.id == to) => Err(Refused::NotGood {
                service: service.into(),
                revision: to.into(),
                why: "never completed a deployment".into(),
            }),
            None => Err(Refused::Unknown {
                service: service.into(),
                revision: to.into(),
                known: revisions
                    .iter()
                    .map(|(r, _)| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        };
    }
    // The revision that served before the current one's deployment: the
    // newest deployment to `current` that succeeded and came from a good
    // revision (so going back never jumps forward past a bad one).
    let before = deployments
        .iter()
        .filter(|d| d.to == current && d.status == DeploymentStatus::Succeeded.as_str())
        .map(|d| &d.from)
        .find(|b| *b != current && matches!(v.get(*b), Some(Verdict::Good { .. })));
    if let Some(b) = before {
        return Ok(b.clone());
    }
    v.iter()
        .filter_map(|(id, verdict)| match verdict {
            Verdict::Good { at_ms } if id != current => Some((*at_ms, id)),
            _ => None,
        })
        .max()
        .map(|(_, id)| id.clone())
        .ok_or_else(|| Refused::Nothing {
            service: service.into(),
            current: current.into(),
        })
}

/// How a rollback request was carried out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackKind {
    /// Blue/green within retention: traffic flipped back to blue.
    Flip,
    /// A deployment was running: aborted, it rolls back.
    Abort,
    /// A new deployment back to an earlier revision.
    Deploy,
}

impl<R: Runtime> Deployer<R> {
    /// Within retention: a flip. While a deployment runs: abort (which rolls
    /// back). Otherwise: a deployment (marked as a rollback) to `to` or to
    /// the revision [`target`] picks, with the strategy of the deployment
    /// being rolled back.
    pub async fn rollback(
        self: &Arc<Self>,
        to: Option<String>,
    ) -> Result<(String, RollbackKind), DeployError> {
        let svc = self.fleet.name().to_string();
        let name = self.fleet.name();
        // Decided and sent under the gate's one lock: the deployment the
        // decision looked at is the one that gets the event.
        let steered = self.control_with(|cur| {
            let conflict = |status: String| DeployError::Conflict {
                service: svc.clone(),
                id: cur.id.clone(),
                status,
            };
            if cur.status == Status::RollingBack || cur.origin == Origin::Rollback {
                // Pressed again: going back from a rollback would bring
                // back the revision it is leaving.
                return Err(DeployError::AlreadyRollingBack {
                    service: svc.clone(),
                    id: cur.id.clone(),
                });
            }
            let other = to.as_deref().filter(|t| *t != cur.from);
            match (cur.status, &cur.phase) {
                (Status::Retained, Phase::Retaining) if other.is_none() => {
                    Ok((Event::Rollback, RollbackKind::Flip))
                }
                (Status::Retained, Phase::Retaining) => Err(conflict(format!(
                    "retaining {} for an instant rollback; `handoff rollback {name}` flips back to it, or `handoff promote {name}` ends the retention first",
                    cur.from
                ))),
                (Status::Retained, _) => Err(conflict(format!(
                    "retained; its retention is ending and blue ({}) is being terminated: roll back when it has finished",
                    cur.from
                ))),
                (_, _) if other.is_some() => Err(conflict(format!(
                    "running; `handoff rollback {name}` aborts it back to {}, another revision can be asked for once it has ended",
                    cur.from
                ))),
                _ => Ok((Event::Abort, RollbackKind::Abort)),
            }
        })?;
        if let Some(x) = steered {
            return Ok(x);
        }
        let current = self.fleet.current_revision();
        let history = self.fleet.store.deployments(&svc, 10_000)?;
        let revisions = self.fleet.store.revisions(&svc)?;
        let target = target(&svc, &current, to.as_deref(), &history, &revisions)?;
        if let Some(dir) = self.fleet.release_missing(&target) {
            return Err(Refused::FilesGone {
                service: svc,
                revision: target,
                dir: dir.display().to_string(),
            }
            .into());
        }
        // "The previous revision with the same strategy": that of the
        // deployment being rolled back.
        let strategy = history
            .iter()
            .find(|d| d.to == current)
            .and_then(|d| handoff_core::Strategy::parse(&d.strategy));
        let id = self
            .deploy(DeployRequest {
                revision: target,
                strategy,
                origin: Origin::Rollback,
                ..Default::default()
            })
            .await?;
        Ok((id, RollbackKind::Deploy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(n: i64, from: &str, to: &str, status: &str, origin: &str) -> DeploymentRecord {
        DeploymentRecord {
            id: format!("web@{n}"),
            service: "web".into(),
            from: from.into(),
            to: to.into(),
            strategy: "in-place".into(),
            status: status.into(),
            state: "{}".into(),
            report: None,
            origin: origin.into(),
            created_ms: n * 10,
            updated_ms: n * 10 + 5,
        }
    }

    fn revs(ids: &[(&str, bool)]) -> Vec<(RevisionRecord, bool)> {
        ids.iter()
            .enumerate()
            .map(|(i, (id, stable))| {
                (
                    RevisionRecord {
                        service: "web".into(),
                        id: id.to_string(),
                        artifact: None,
                        sha256: None,
                        created_ms: i as i64,
                    },
                    *stable,
                )
            })
            .collect()
    }

    /// Newest first, as the store lists them.
    fn newest_first(mut v: Vec<DeploymentRecord>) -> Vec<DeploymentRecord> {
        v.reverse();
        v
    }

    #[test]
    fn goes_back_to_the_revision_before_the_current_ones_deployment() {
        let h = newest_first(vec![
            dep(1, "v1", "v2", "succeeded", "deploy"),
            dep(2, "v2", "v3", "succeeded", "deploy"),
        ]);
        let r = revs(&[("v1", true), ("v2", true), ("v3", true)]);
        assert_eq!(target("web", "v3", None, &h, &r).unwrap(), "v2");
    }

    #[test]
    fn a_second_rollback_never_brings_the_rolled_back_revision_back() {
        // Blue/green v1 → v3, flipped back: v3 is stable in the store (it
        // served after cut-over) but rolled back. Nothing else to go to.
        let h = newest_first(vec![dep(1, "v1", "v3", "rolled-back", "deploy")]);
        let r = revs(&[("v1", true), ("v3", true)]);
        assert_eq!(
            target("web", "v1", None, &h, &r),
            Err(Refused::Nothing {
                service: "web".into(),
                current: "v1".into()
            })
        );
        // A rollback by deployment (v2 → v1) leaves v2 bad: the next
        // rollback goes further back, never to v2.
        let h = newest_first(vec![
            dep(1, "v0", "v1", "succeeded", "deploy"),
            dep(2, "v1", "v2", "succeeded", "deploy"),
            dep(3, "v2", "v1", "succeeded", "rollback"),
        ]);
        let r = revs(&[("v0", true), ("v1", true), ("v2", true)]);
        assert_eq!(target("web", "v1", None, &h, &r).unwrap(), "v0");
        let e = target("web", "v1", Some("v2"), &h, &r).unwrap_err();
        assert!(e.to_string().contains("was rolled back by web@3"), "{e}");
    }

    #[test]
    fn failed_and_unfinished_revisions_are_never_targets() {
        let h = newest_first(vec![
            dep(1, "v1", "v2", "succeeded", "deploy"),
            dep(2, "v2", "v3", "failed", "deploy"),
            dep(3, "v2", "v4", "rolled-back", "deploy"),
            dep(4, "v2", "v5", "succeeded", "deploy"),
        ]);
        let r = revs(&[
            ("v1", true),
            ("v2", true),
            ("v3", false),
            ("v4", false),
            ("v5", true),
            ("v6", false),
        ]);
        assert_eq!(target("web", "v5", None, &h, &r).unwrap(), "v2");
        for bad in ["v3", "v4", "v6"] {
            let e = target("web", "v5", Some(bad), &h, &r).unwrap_err();
            assert!(matches!(e, Refused::NotGood { .. }), "{bad}: {e}");
        }
        assert!(matches!(
            target("web", "v5", Some("v5"), &h, &r),
            Err(Refused::AlreadyServing { .. })
        ));
        let e = target("web", "v5", Some("v9"), &h, &r).unwrap_err();
        assert!(e.to_string().contains("known: v1, v2, v3"), "{e}");
        assert_eq!(target("web", "v5", Some("v1"), &h, &r).unwrap(), "v1");
    }

    #[test]
    fn a_redeployed_revision_is_good_again() {
        let h = newest_first(vec![
            dep(1, "v1", "v2", "rolled-back", "deploy"),
            dep(2, "v1", "v2", "succeeded", "deploy"),
        ]);
        let r = revs(&[("v1", true), ("v2", true)]);
        assert_eq!(target("web", "v2", None, &h, &r).unwrap(), "v1");
        assert!(matches!(
            verdicts(&h, &r).get("v2"),
            Some(Verdict::Good { .. })
        ));
    }

    #[test]
    fn a_rollback_that_fails_leaves_its_target_alone_and_its_source_bad() {
        let h = newest_first(vec![
            dep(1, "v1", "v2", "succeeded", "deploy"),
            dep(2, "v2", "v3", "succeeded", "deploy"),
            dep(3, "v3", "v2", "rolled-back", "rollback"),
        ]);
        let r = revs(&[("v1", true), ("v2", true), ("v3", true)]);
        let v = verdicts(&h, &r);
        assert!(matches!(v.get("v2"), Some(Verdict::Good { .. })), "{v:?}");
        assert!(matches!(v.get("v3"), Some(Verdict::Bad { .. })), "{v:?}");
        assert_eq!(target("web", "v3", Some("v2"), &h, &r).unwrap(), "v2");
    }

    #[test]
    fn deployments_a_restart_cut_short_judge_nothing() {
        let mut cut = dep(2, "v2", "v3", "rolled-back", "deploy");
        cut.state = r#"{"interrupted":true}"#.into();
        let h = newest_first(vec![dep(1, "v1", "v2", "succeeded", "deploy"), cut]);
        let r = revs(&[("v1", true), ("v2", true), ("v3", false)]);
        let v = verdicts(&h, &r);
        assert_eq!(v.get("v3"), None, "{v:?}");
    }

    #[test]
    fn going_back_never_jumps_forward_past_a_bad_revision() {
        // v1 → v2 → v3 → v4, then `rollback --to v2` (v4 left): the next
        // rollback goes to v1 (what served before v2), not forward to v3.
        let h = newest_first(vec![
            dep(1, "v1", "v2", "succeeded", "deploy"),
            dep(2, "v2", "v3", "succeeded", "deploy"),
            dep(3, "v3", "v4", "succeeded", "deploy"),
            dep(4, "v4", "v2", "succeeded", "rollback"),
        ]);
        let r = revs(&[("v1", true), ("v2", true), ("v3", true), ("v4", true)]);
        assert_eq!(target("web", "v2", None, &h, &r).unwrap(), "v1");
    }
}
