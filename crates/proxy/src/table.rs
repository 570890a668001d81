//! The routing table of one service: target groups with weights.
//!
//! A table is immutable. Writers (the control handle) build a new one and
//! swap it in whole through `ArcSwap`; the request path loads it once per
//! request and never locks. Target *state* lives in each `Target`'s atomics,
//! so health flips take effect without a swap.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use handoff_core::config::Balance;
use handoff_core::TargetState;

use crate::target::{InFlight, Target};

#[derive(Debug, Clone)]
pub struct Group {
    /// `default` for a single-group service; `blue` / `green` during blue/green.
    pub name: Arc<str>,
    /// Relative share of traffic; 0 = no new requests.
    pub weight: u32,
    pub targets: Vec<Arc<Target>>,
}

#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    pub groups: Vec<Group>,
}

impl RoutingTable {
    pub fn targets(&self) -> impl Iterator<Item = (&Group, &Arc<Target>)> {
        self.groups
            .iter()
            .flat_map(|g| g.targets.iter().map(move |t| (g, t)))
    }

    /// Healthy targets taking traffic (in a group of weight > 0): the
    /// capacity in service.
    pub fn in_service(&self) -> usize {
        self.groups
            .iter()
            .filter(|g| g.weight > 0)
            .flat_map(|g| g.targets.iter())
            .filter(|t| t.state() == handoff_core::TargetState::Healthy)
            .count()
    }

    pub fn find(&self, id: u64) -> Option<&Arc<Target>> {
        self.targets().map(|(_, t)| t).find(|t| t.id == id)
    }

    /// Picks a healthy target and claims a request slot on it, skipping
    /// `exclude` (targets that already failed this request).
    ///
    /// Groups are chosen by weight among those that have a healthy target, so
    /// a group whose targets are all down sheds its share to the others
    /// instead of failing it. Returns `None` only when no eligible target is
    /// healthy anywhere.
    pub(crate) fn pick(
        &self,
        balance: Balance,
        rr: &AtomicUsize,
        exclude: &[u64],
    ) -> Option<InFlight> {
        // A claim can fail if the target starts draining between the scan and
        // the claim; a few attempts absorb that race.
        for _ in 0..4 {
            let group = self.pick_group(exclude)?;
            let t = match balance {
                Balance::RoundRobin => round_robin(group, rr, exclude),
                Balance::LeastOutstanding => p2c(group, exclude),
            }?;
            if let Some(claim) = t.acquire() {
                return Some(claim);
            }
        }
        None
    }

    fn pick_group(&self, exclude: &[u64]) -> Option<&Group> {
        if self.groups.len() == 1 {
            let g = &self.groups[0];
            return (g.weight > 0 && any_healthy(g, exclude)).then_some(g);
        }
        let mut total = 0u64;
        let mut live: [Option<&Group>; 8] = [None; 8];
        let mut n = 0;
        for g in &self.groups {
            if g.weight > 0 && n < live.len() && any_healthy(g, exclude) {
                total += g.weight as u64;
                live[n] = Some(g);
                n += 1;
            }
        }
        if total == 0 {
            return None;
        }
        let mut x = fastrand::u64(0..total);
        for g in live.iter().take(n).flatten() {
            if x < g.weight as u64 {
                return Some(g);
            }
            x -= g.weight as u64;
        }
        None
    }
}

fn eligible(t: &Target, exclude: &[u64]) -> bool {
    t.state() == TargetState::Healthy && !exclude.contains(&t.id)
}

fn any_healthy(g: &Group, exclude: &[u64]) -> bool {
    g.targets.iter().any(|t| eligible(t, exclude))
}

fn round_robin<'a>(g: &'a Group, rr: &AtomicUsize, exclude: &[u64]) -> Option<&'a Arc<Target>> {
    let n = g.targets.len();
    let start = rr.fetch_add(1, Relaxed);
    (0..n)
        .map(|i| &g.targets[(start + i) % n])
        .find(|t| eligible(t, exclude))
}

/// Power of two choices on outstanding requests: near-optimal balance with
/// no shared "least loaded" structure to contend on.
fn p2c<'a>(g: &'a Group, exclude: &[u64]) -> Option<&'a Arc<Target>> {
    let n = g.targets.len();
    match n {
        0 => None,
        1 => g.targets.first().filter(|t| eligible(t, exclude)),
        _ => {
            let a = fastrand::usize(0..n);
            let mut b = fastrand::usize(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (ta, tb) = (&g.targets[a], &g.targets[b]);
            match (eligible(ta, exclude), eligible(tb, exclude)) {
                (true, true) => Some(if tb.in_flight() < ta.in_flight() {
                    tb
                } else {
                    ta
                }),
                (true, false) => Some(ta),
                (false, true) => Some(tb),
                // Both random picks were out: fall back to a scan from `a`.
                (false, false) => (0..n)
                    .map(|i| &g.targets[(a + i) % n])
                    .find(|t| eligible(t, exclude)),
            }
        }
    }
}
