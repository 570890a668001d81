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
        assert_eq!(Strategy::parse("rolling"), Some(Strategy::InPlace));
        assert_eq!(DeploymentStatus::parse("done"), None);
    }
}
