//! Hosts that stop answering, as the fleet sees them.
//!
//! ```text
//! runtime: host lost (exit 255 / silence) ──► host_changes ──► watch_hosts
//!   lost:  every target on it marked unhealthy at once (the other hosts
//!          carry the traffic; a proxy that waited for health checks would
//!          send requests into the silence for seconds), event `host-lost`;
//!          supervision leaves its instances alone (nothing can be done
//!          there), a deployment fails naming it (see the executor)
//!   back:  event `host-back`; health checks let its instances back in;
//!          the reconciler converges it to the serving revision
//! ```

use std::sync::Arc;

use handoff_runtime::{HostState, Runtime};

use super::Fleet;

impl<R: Runtime> Fleet<R> {
    /// The service's hosts that do not answer, with why (`no answer for
    /// 3.2 s`), in placement order.
    pub fn lost_hosts(&self) -> Vec<(String, String)> {
        self.managed
            .hosts
            .iter()
            .filter_map(|h| match self.runtime.host_state(h) {
                HostState::Up => None,
                HostState::Lost { why, .. } => Some((h.clone(), why)),
            })
            .collect()
    }

    /// Why `host` is unreachable, or `None` when it answers.
    pub fn host_lost(&self, host: &str) -> Option<String> {
        match self.runtime.host_state(host) {
            HostState::Up => None,
            HostState::Lost { why, .. } => Some(why),
        }
    }

    /// What a deployment does when a host is lost.
    pub fn on_host_failure(&self) -> handoff_core::config::OnHostFailure {
        self.managed.on_host_failure
    }

    /// The host instance `name` runs on (`None`: this machine, or no such
    /// instance).
    pub fn host_of(&self, name: &str) -> Option<String> {
        self.slots().get(name).and_then(|s| s.host.clone())
    }

    /// Where once-per-deployment hooks run: a host, or this machine.
    pub fn once_host(&self) -> Option<String> {
        self.managed.once_host.clone()
    }

    /// Runs a hook on `host` (see [`Runtime::exec`]).
    pub async fn exec_on(
        &self,
        host: &str,
        hook: &handoff_runtime::HookRun,
    ) -> (Result<(), String>, String, std::time::Duration) {
        self.runtime.exec(host, hook).await
    }

    /// Checks the places instances will run before a deployment changes
    /// anything (see [`Runtime::preflight`]).
    pub async fn preflight(&self) -> Result<(), handoff_runtime::RuntimeError> {
        self.runtime.preflight(&self.managed.command).await
    }

    pub fn host_state(&self, host: &str) -> HostState {
        self.runtime.host_state(host)
    }

    /// `host h3 unreachable: no answer for 3.2 s` for the first lost host.
    pub fn lost_host_reason(&self) -> Option<String> {
        self.lost_hosts()
            .into_iter()
            .next()
            .map(|(h, why)| format!("host {h} unreachable: {why}"))
    }

    /// Resolves with [`Self::lost_host_reason`] once one of the service's
    /// hosts is lost (at once if one is); never for local instances.
    pub async fn host_lost_wait(&self) -> String {
        let Some(mut rx) = self.runtime.host_changes() else {
            return std::future::pending().await;
        };
        loop {
            if let Some(why) = self.lost_host_reason() {
                return why;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Names among `names` whose host answers (all, for local instances).
    pub fn reachable(&self, names: &[String]) -> Vec<String> {
        let slots = self.slots();
        names
            .iter()
            .filter(|n| {
                slots
                    .get(*n)
                    .and_then(|s| s.host.as_deref())
                    .is_none_or(|h| matches!(self.runtime.host_state(h), HostState::Up))
            })
            .cloned()
            .collect()
    }

    /// Acts on hosts lost and back for as long as the fleet lives.
    pub fn watch_hosts(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let mut rx = self.runtime.host_changes()?;
        let fleet = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut lost: Vec<String> = Vec::new();
            loop {
                {
                    let Some(f) = fleet.upgrade() else { break };
                    let now: Vec<(String, String)> = f.lost_hosts();
                    for (h, why) in &now {
                        if !lost.contains(h) {
                            f.on_host_lost(h, why);
                        }
                    }
                    for h in &lost {
                        if !now.iter().any(|(n, _)| n == h) {
                            f.on_host_back(h);
                        }
                    }
                    lost = now.into_iter().map(|(h, _)| h).collect();
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }))
    }

    fn on_host_back(&self, host: &str) {
        let targets: Vec<handoff_proxy::TargetId> = self
            .slots()
            .values()
            .filter(|s| s.host.as_deref() == Some(host))
            .filter_map(|s| s.target)
            .collect();
        for t in targets {
            self.balancer.restore(t);
        }
        self.event(
            None,
            "host-back",
            &format!("host {host} answers again; its instances serve once their checks pass"),
        );
    }

    fn on_host_lost(&self, host: &str, why: &str) {
        let targets: Vec<(String, handoff_proxy::TargetId)> = self
            .slots()
            .iter()
            .filter(|(_, s)| s.host.as_deref() == Some(host))
            .filter_map(|(n, s)| s.target.map(|t| (n.clone(), t)))
            .collect();
        let reason = format!("host {host} unreachable: {why}");
        for (_, t) in &targets {
            self.balancer.abandon(*t, &reason);
        }
        let names: Vec<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
        self.event(
            None,
            "host-lost",
            &format!(
                "{reason}; out of service: {}",
                if names.is_empty() {
                    "no instance".to_string()
                } else {
                    names.join(", ")
                }
            ),
        );
    }
}
