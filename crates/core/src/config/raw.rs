//! Stage one: the file as serde sees it.
//!
//! Every field is optional and leaves that carry units (durations, amounts)
//! are kept as strings, so that one bad value does not stop the reading of
//! the rest: stage two ([`super::validate`]) reports every problem at once.
//! Unknown keys are collected by `serde_ignored` (see `super::load`) rather
//! than `#[serde(deny_unknown_fields)]`, because the derive stops at the first
//! unknown key and we promise the user the whole list.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub server: Option<RawServer>,
    pub services: Option<BTreeMap<String, RawService>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    pub admin: Option<String>,
    pub state_dir: Option<String>,
    pub workers: Option<i64>,
    pub shutdown_timeout: Option<String>,
    pub port_range: Option<String>,
    pub releases_kept: Option<i64>,
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawService {
    pub listen: Option<String>,
    pub targets: Option<Vec<String>>,
    pub revision: Option<String>,
    pub instances: Option<i64>,
    pub command: Option<String>,
    pub artifact: Option<String>,
    pub strategy: Option<String>,
    pub stop_grace: Option<String>,
    pub health: Option<RawHealth>,
    pub drain: Option<RawDrain>,
    pub proxy: Option<RawProxy>,
    pub in_place: Option<RawInPlace>,
    pub blue_green: Option<RawBlueGreen>,
    pub hooks: Option<RawHooks>,
    pub rollback: Option<RawRollback>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawHealth {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<i64>,
    pub unhealthy_threshold: Option<i64>,
    pub min_healthy_time: Option<String>,
    pub healthy_deadline: Option<String>,
    pub passive_failures: Option<i64>,
    pub ejection_time: Option<String>,
    pub max_ejection_time: Option<String>,
    pub max_ejection_percent: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawDrain {
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawProxy {
    pub balance: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_header_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawInPlace {
    pub batch: Option<CountOrText>,
    pub min_healthy: Option<CountOrText>,
    pub headroom: Option<String>,
    pub instance_capacity: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawBlueGreen {
    pub traffic_steps: Option<Vec<i64>>,
    pub bake: Option<String>,
    pub retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawHooks {
    pub timeout: Option<String>,
    pub before_install: Option<String>,
    pub after_install: Option<String>,
    pub application_start: Option<String>,
    pub validate_service: Option<String>,
    pub before_allow_traffic: Option<String>,
    pub after_allow_traffic: Option<String>,
    pub migrate_expand: Option<String>,
    pub migrate_contract: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRollback {
    pub max_error_rate_increase: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    pub min_requests: Option<i64>,
}

/// `batch = 1` and `batch = "50%"` are both natural to write.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CountOrText {
    Count(i64),
    Text(String),
}

/// The keys each table accepts, for "did you mean" hints on unknown keys.
pub fn known_keys(table: &[&str]) -> &'static [&'static str] {
    match table {
        [] => &["server", "services"],
        ["server"] => &[
            "admin",
            "state_dir",
            "workers",
            "shutdown_timeout",
            "port_range",
            "releases_kept",
            "token",
        ],
        ["services", _] => &[
            "listen",
            "targets",
            "revision",
            "instances",
            "command",
            "artifact",
            "strategy",
            "stop_grace",
            "health",
            "drain",
            "proxy",
            "in_place",
            "blue_green",
            "hooks",
            "rollback",
        ],
        ["services", _, "health"] => &[
            "enabled",
            "path",
            "interval",
            "timeout",
            "healthy_threshold",
            "unhealthy_threshold",
            "min_healthy_time",
            "healthy_deadline",
            "passive_failures",
            "ejection_time",
            "max_ejection_time",
            "max_ejection_percent",
        ],
        ["services", _, "drain"] => &["timeout"],
        ["services", _, "proxy"] => &[
            "balance",
            "connect_timeout",
            "response_timeout",
            "header_timeout",
            "idle_timeout",
            "max_header_bytes",
        ],
        ["services", _, "in_place"] => &["batch", "min_healthy", "headroom", "instance_capacity"],
        ["services", _, "blue_green"] => &["traffic_steps", "bake", "retention"],
        ["services", _, "hooks"] => &[
            "timeout",
            "before_install",
            "after_install",
            "application_start",
            "validate_service",
            "before_allow_traffic",
            "after_allow_traffic",
            "migrate_expand",
            "migrate_contract",
        ],
        ["services", _, "rollback"] => {
            &["max_error_rate_increase", "max_p99_ratio", "min_requests"]
        }
        _ => &[],
    }
}
