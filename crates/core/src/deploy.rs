//! The deployment vocabulary shared by the planner, the store, the API and
//! the CLI: strategies and deployment statuses as enums, each with the one
//! name it has in config, records, JSON and on screen (`as_str`, and the
//! same names through serde), so no layer compares free strings.

use serde::{Deserialize, Serialize};

/// How a deployment moves a service to a new revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    InPlace,
    BlueGreen,
    AllAtOnce,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [Strategy::InPlace, Strategy::BlueGreen, Strategy::AllAtOnce];

    /// The name in config, API, records and output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Strategy::InPlace => "in-place",
            Strategy::BlueGreen => "blue-green",
            Strategy::AllAtOnce => "all-at-once",
        }
    }

    /// A name as users write it (`rolling` is accepted for in-place).
    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "in-place" | "rolling" => Some(Strategy::InPlace),
            "blue-green" => Some(Strategy::BlueGreen),
            "all-at-once" => Some(Strategy::AllAtOnce),
            _ => None,
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a deployment stands, as recorded and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentStatus {
    /// Moving towards the new revision.
    Running,
    /// Going back to the old revision after a failure or an abort.
    RollingBack,
    /// Blue/green: the new revision serves; blue is kept for an instant
    /// rollback until retention ends.
    Retained,
    /// The new revision serves everything.
    Succeeded,
    /// Back on the old revision.
    RolledBack,
    /// The rollback itself failed: needs a person.
    Failed,
}

impl DeploymentStatus {
    pub const ALL: [DeploymentStatus; 6] = [
        DeploymentStatus::Running,
        DeploymentStatus::RollingBack,
        DeploymentStatus::Retained,
        DeploymentStatus::Succeeded,
        DeploymentStatus::RolledBack,
        DeploymentStatus::Failed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Running => "running",
            DeploymentStatus::RollingBack => "rolling-back",
            DeploymentStatus::Retained => "retained",
            DeploymentStatus::Succeeded => "succeeded",
            DeploymentStatus::RolledBack => "rolled-back",
            DeploymentStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeploymentStatus> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether the deployment still holds the service (no other may start).
    pub const fn is_active(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Running | DeploymentStatus::RollingBack | DeploymentStatus::Retained
        )
    }

    /// Whether the new revision ended up serving (the deployment did what
    /// was asked): `Retained` counts, blue only waits to be terminated.
    pub const fn new_revision_serves(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Succeeded | DeploymentStatus::Retained
        )
    }
}

impl std::fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a deployment was started: a rollback's target must never be a
/// revision that a rollback left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// `handoff deploy` (or the API's `POST /deployments`).
    #[default]
    Deploy,
    /// `handoff rollback`: a deployment back to an earlier revision.
    Rollback,
}

impl Origin {
    pub const fn as_str(self) -> &'static str {
        match self {
            Origin::Deploy => "deploy",
            Origin::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Origin> {
        match s {
            "deploy" => Some(Origin::Deploy),
            "rollback" => Some(Origin::Rollback),
            _ => None,
        }
    }
}

/// What one recorded step of a deployment is (its event's `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    /// The deployment was admitted and recorded.
    Created,
    /// Something the operator should know before it goes on (all-at-once).
    Warning,
    Paused,
    Resumed,
    /// A failure or an abort turned it around.
    Rollback,
    /// An instance that exited while a rollback brought it back gets another start.
    RollbackRetry,
    Drain,
    Stop,
    Start,
    Health,
    /// Blue/green: a traffic step.
    Traffic,
    CutOver,
    Retained,
    Terminate,
    FlipBack,
    Succeeded,
    RolledBack,
    Failed,
    Finished,
    /// A step with no words of its own.
    Step,
    /// Closed at boot: handoff stopped or crashed while it ran.
    Interrupted,
    /// The measured report (always the last).
    Report,
    DrainTimeout,
    Hook,
    /// `batch = "auto"`: the load it was sized for.
    Load,
    /// `batch = "auto"`: waiting for the load to allow the next batch.
    Waiting,
}

impl StepKind {
    pub const ALL: [StepKind; 26] = [
        StepKind::Created,
        StepKind::Warning,
        StepKind::Paused,
        StepKind::Resumed,
        StepKind::Rollback,
        StepKind::RollbackRetry,
        StepKind::Drain,
        StepKind::Stop,
        StepKind::Start,
        StepKind::Health,
        StepKind::Traffic,
        StepKind::CutOver,
        StepKind::Retained,
        StepKind::Terminate,
        StepKind::FlipBack,
        StepKind::Succeeded,
        StepKind::RolledBack,
        StepKind::Failed,
        StepKind::Finished,
        StepKind::Step,
        StepKind::Interrupted,
        StepKind::Report,
        StepKind::DrainTimeout,
        StepKind::Hook,
        StepKind::Load,
        StepKind::Waiting,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            StepKind::Created => "created",
            StepKind::Warning => "warning",
            StepKind::Paused => "paused",
            StepKind::Resumed => "resumed",
            StepKind::Rollback => "rollback",
            StepKind::RollbackRetry => "rollback-retry",
            StepKind::Drain => "drain",
            StepKind::Stop => "stop",
            StepKind::Start => "start",
            StepKind::Health => "health",
            StepKind::Traffic => "traffic",
            StepKind::CutOver => "cut-over",
            StepKind::Retained => "retained",
            StepKind::Terminate => "terminate",
            StepKind::FlipBack => "flip-back",
            StepKind::Succeeded => "succeeded",
            StepKind::RolledBack => "rolled-back",
            StepKind::Failed => "failed",
            StepKind::Finished => "finished",
            StepKind::Step => "step",
            StepKind::Interrupted => "interrupted",
            StepKind::Report => "report",
            StepKind::DrainTimeout => "drain-timeout",
            StepKind::Hook => "hook",
            StepKind::Load => "load",
            StepKind::Waiting => "waiting",
        }
    }

    /// A kind as recorded; one this handoff does not know (a newer
    /// record) reads as [`StepKind::Step`].
    pub fn parse(s: &str) -> StepKind {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or(StepKind::Step)
    }

    /// Ends the step before it without being a planned step itself.
    pub const fn interrupts(self) -> bool {
        matches!(
            self,
            StepKind::Rollback
                | StepKind::RolledBack
                | StepKind::Failed
                | StepKind::Paused
                | StepKind::Interrupted
        )
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_as_str() {
        for s in Strategy::ALL {
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(j, format!("\"{}\"", s.as_str()));
            assert_eq!(Strategy::parse(s.as_str()), Some(s));
        }
        for s in DeploymentStatus::ALL {
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(j, format!("\"{}\"", s.as_str()));
            assert_eq!(DeploymentStatus::parse(s.as_str()), Some(s));
        }
        for k in StepKind::ALL {
            let j = serde_json::to_string(&k).unwrap();
            assert_eq!(j, format!("\"{}\"", k.as_str()));
            assert_eq!(StepKind::parse(k.as_str()), k);
        }
        assert_eq!(StepKind::parse("from-the-future"), StepKind::Step);
        assert_eq!(Strategy::parse("rolling"), Some(Strategy::InPlace));
        assert_eq!(DeploymentStatus::parse("done"), None);
    }
}
