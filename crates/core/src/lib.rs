//! handoff-core: the vocabulary every other crate speaks.
//!
//! This crate owns the domain types of the glossary in `DESIGN.md` (service,
//! revision, instance, target state) and the configuration: a `handoff.toml`
//! is read in two stages, raw serde structs first ([`config::raw`]) and then a
//! validation pass that turns them into the typed [`config::Config`] and lists
//! *every* problem with file, line and key. Nothing here does I/O beyond
//! reading the config file, so every crate (proxy, runtime, store, controller,
//! api, the binary) can depend on it without pulling in a runtime.

pub mod command;
pub mod config;
pub mod deploy;
pub mod duration;
pub mod names;
pub mod state;

pub use config::{Config, ConfigError, ConfigProblem};
pub use deploy::{DeploymentStatus, Origin, StepKind, Strategy};
pub use state::TargetState;
