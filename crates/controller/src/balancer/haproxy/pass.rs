//! The sync pass: read the backend once, then make it match the books.
//!
//! Order matters. Observations first (HAProxy's verdicts move the books),
//! then the weights from the states they left, increases before decreases
//! so that a cut-over never has a moment with no server weighted, then the
//! sweep of servers nobody claims.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use handoff_core::TargetState;
use handoff_haproxy::{ServerStat, State, Status};

use super::{HaproxyBalancer, STRAY_AFTER};
use crate::balancer::{server_weight, BalancerError};

impl HaproxyBalancer {
    pub(super) async fn pass(self: &Arc<Self>) -> Result<(), BalancerError> {
        let _gate = self.gate.lock().await;
        let rows = self
            .client
            .servers(&self.backend)
            .await
            .map_err(|e| self.err(e))?;
        let by_name: BTreeMap<&str, &ServerStat> =
            rows.iter().map(|r| (r.name.as_str(), r)).collect();
        // One snapshot for the whole pass: a target added meanwhile waits
        // for the next one rather than being half seen.
        let table = self.books.table();
        let mut claimed = BTreeSet::new();
        let mut adds: Vec<(String, SocketAddr)> = Vec::new();
        let mut readies = Vec::new();
        let mut retires = Vec::new();
        {
            let mut k = self.known();
            for (_, t) in table.targets() {
                let name = self.server_name(t);
                claimed.insert(name.clone());
                let row = by_name.get(name.as_str()).copied();
                let ours = row.filter(|r| r.addr.as_deref() == Some(&*t.addr.to_string()));
                if let Some(row) = ours {
                    drop(k);
                    self.count(t, &name, row);
                    k = self.known();
                }
                if k.leaving.contains_key(&name) {
                    continue;
                }
                let registered = matches!(
                    t.state(),
                    TargetState::Initial | TargetState::Healthy | TargetState::Unhealthy
                );
                if !registered {
                    continue;
                }
                match (row, ours) {
                    (None, _) => {
                        if t.first_passed().is_some() {
                            tracing::warn!(backend = %self.backend, server = %name,
                                "haproxy: our server is gone (HAProxy reloaded?); adding it again");
                        }
                        adds.push((name, t.addr));
                    }
                    // A leftover of an earlier instance under this name:
                    // it goes (drained), this target's server comes next.
                    (Some(r), None) => retires.push((name, r.addr.clone())),
                    // Left in drain or maintenance by an interrupted drain
                    // (a killed daemon): back to ready, at the weight the
                    // books give it.
                    (_, Some(r)) if matches!(r.status, Status::Drain | Status::Maint) => {
                        readies.push(name)
                    }
                    (_, Some(r)) => {
                        if let Some(up) = verdict(r) {
                            let said = said(r);
                            if up {
                                // Taken out by handoff: not back until
                                // HAProxy has seen it down.
                                if !k.downed.contains(&name) {
                                    t.observe(true, &said);
                                }
                            } else {
                                k.downed.remove(&name);
                                t.observe(false, &said);
                            }
                        }
                    }
                }
            }
        }
        for (name, addr) in retires {
            self.retire(name, addr);
        }
        for (name, addr) in adds {
            self.client
                .add_server(&self.backend, &name, addr, &self.add)
                .await
                .map_err(|e| self.err(e))?;
        }
        for name in readies {
            self.client
                .set_state(&self.backend, &name, State::Ready)
                .await
                .map_err(|e| self.err(e))?;
        }
        for (name, _, to) in in_order(self.weights(&table, &by_name)) {
            self.client
                .set_weight(&self.backend, &name, to)
                .await
                .map_err(|e| self.err(e))?;
        }
        self.sweep(&rows, &claimed);
        Ok(())
    }

    /// (server, weight now, weight wanted) for each server to change.
    fn weights(
        &self,
        table: &handoff_proxy::table::RoutingTable,
        by_name: &BTreeMap<&str, &ServerStat>,
    ) -> Vec<(String, u32, u32)> {
        let leaving: BTreeSet<String> = self.known().leaving.keys().cloned().collect();
        let mut changes = Vec::new();
        for g in &table.groups {
            let serving = g
                .targets
                .iter()
                .filter(|t| t.state() == TargetState::Healthy)
                .count();
            let share = server_weight(g.weight, serving);
            for t in &g.targets {
                let name = self.server_name(t);
                let Some(row) = by_name.get(name.as_str()) else {
                    continue;
                };
                if leaving.contains(&name)
                    || row.addr.as_deref() != Some(&*t.addr.to_string())
                    || matches!(row.status, Status::Maint | Status::Drain)
                {
                    continue;
                }
                let now = row.uweight.unwrap_or(row.weight);
                let want = match t.state() {
                    TargetState::Healthy if checked(row) => share,
                    // Not judged yet (an adopted server between checks):
                    // HAProxy's own view stands until it is.
                    TargetState::Initial if verdict(row).is_none() && !t.is_held() => now,
                    _ => 0,
                };
                if now != want {
                    changes.push((name, now, want));
                }
            }
        }
        changes
    }

    /// Owned servers no target claims: drained and deleted once they have
    /// been unclaimed for [`STRAY_AFTER`] after the fleet booted.
    fn sweep(self: &Arc<Self>, rows: &[ServerStat], claimed: &BTreeSet<String>) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut k = self.known();
            let Some(booted) = k.booted else { return };
            let unclaimed: BTreeSet<&str> = rows
                .iter()
                .map(|r| r.name.as_str())
                .filter(|n| {
                    n.starts_with(&self.prefix)
                        && !claimed.contains(*n)
                        && !k.leaving.contains_key(*n)
                })
                .collect();
            k.strays.retain(|n, _| unclaimed.contains(n.as_str()));
            for n in unclaimed {
                let since = *k.strays.entry(n.to_string()).or_insert(now.max(booted));
                if now.duration_since(since) >= STRAY_AFTER {
                    due.push(n.to_string());
                }
            }
            for n in &due {
                k.strays.remove(n);
            }
        }
        for n in due {
            let addr = rows
                .iter()
                .find(|r| r.name == n)
                .and_then(|r| r.addr.clone());
            self.retire(n, addr);
        }
    }
}

/// Weight changes, increases first: a cut-over raises green before it
/// lowers blue, so there is never a moment with no server weighted (when
/// HAProxy would answer 503 itself).
fn in_order(mut changes: Vec<(String, u32, u32)>) -> Vec<(String, u32, u32)> {
    changes.sort_by_key(|(_, from, to)| to < from);
    changes
}

/// What HAProxy's checks say: `Some(true)` once it is UP after a passed
/// check (or has no checks), `Some(false)` once DOWN, `None` while it has
/// not decided (not checked yet, or failing but not yet `fall` times).
fn verdict(row: &ServerStat) -> Option<bool> {
    match row.status {
        Status::Up | Status::NoCheck if row.is_settled_up() => Some(true),
        Status::Down | Status::DownGoingUp => Some(false),
        _ => None,
    }
}

/// HAProxy has checked it at least once and routes to it.
fn checked(row: &ServerStat) -> bool {
    row.check_status.as_deref() != Some("INI")
        && matches!(
            row.status,
            Status::Up | Status::UpGoingDown | Status::NoCheck
        )
}

fn said(row: &ServerStat) -> String {
    match (&row.check_status, &row.check_desc) {
        (Some(s), Some(d)) => format!("HAProxy: {} ({s}: {d})", row.status_text),
        (Some(s), None) => format!("HAProxy: {} ({s})", row.status_text),
        _ => format!("HAProxy: {}", row.status_text),
    }
}

#[cfg(test)]
mod tests {
    use super::in_order;

    #[test]
    fn weights_rise_before_others_fall() {
        let c = |n: &str, from, to| (n.to_string(), from, to);
        // Blue (web-1, web-2) listed first, as the live group is.
        let out = in_order(vec![
            c("web-1", 128, 0),
            c("web-2", 128, 0),
            c("web-3", 0, 128),
            c("web-4", 0, 128),
        ]);
        let names: Vec<&str> = out.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, ["web-3", "web-4", "web-1", "web-2"]);
    }
}
