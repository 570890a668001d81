//! The deploy report, measured from what actually happened: a sampler
//! applies every target state change to a healthy count and reads the proxy
//! every 50 ms during the deployment (healthy targets in service, per-revision request counters,
//! live instances) and the store's events give the step timings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handoff_core::TargetState;
use handoff_proxy::ServiceProxy;
use serde::{Deserialize, Serialize};

const EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RevisionFigures {
    pub revision: String,
    pub requests: u64,
    pub errors_5xx: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub deployment: String,
    pub service: String,
    pub from: String,
    pub to: String,
    pub strategy: String,
    pub outcome: String,
    pub duration_ms: u64,
    /// Instances serving when the deployment began (the capacity wanted).
    pub desired: usize,
    /// Fewest healthy targets in service at any sample.
    pub capacity_floor: usize,
    /// Most instances alive at once.
    pub peak_instances: usize,
    /// How long both revisions had targets in service at once (healthy, in
    /// a group with weight): the time a client could get either.
    pub mixed_window_ms: u64,
    pub per_revision: Vec<RevisionFigures>,
    /// From the start of the rollback to its end, if there was one.
    pub rollback_ms: Option<u64>,
    /// From the start of the rollback until `to` had no target in service
    /// any more (blue/green: the flip itself), if there was one.
    #[serde(default)]
    pub traffic_back_ms: Option<u64>,
    /// `(step, ms since start)` from the deployment's events.
    pub steps: Vec<(String, u64)>,
    pub reason: Option<String>,
}

#[derive(Default)]
struct Seen {
    floor: Option<usize>,
    peak: usize,
    /// Since when both revisions have had targets in service, if they have.
    mixed_since: Option<Instant>,
    /// Closed stretches of both revisions in service.
    mixed: Duration,
    /// Last seen (requests, 5xx) per target, to accumulate deltas: targets
    /// removed from the table take their own counters with them.
    last: HashMap<u64, (u64, u64)>,
    /// (requests, 5xx) per revision during the deployment.
    totals: HashMap<String, (u64, u64)>,
    rollback_started: Option<Instant>,
    /// When `to` left service for good during the rollback.
    traffic_back: Option<Instant>,
    /// Healthy targets, kept up to date by applying each target event's
    /// own transition in order: a dip shorter than the sampler's reaction
    /// time is still counted. (It also counts healthy targets of weight-0
    /// groups, so it can only read high; the table samples, which know the
    /// weights, bound the floor from the other side.)
    healthy: Option<i64>,
}

impl Seen {
    fn apply(&mut self, e: &handoff_proxy::TargetEvent) {
        let Some(h) = self.healthy.as_mut() else {
            return;
        };
        if e.from == TargetState::Healthy {
            *h -= 1;
        }
        if e.to == TargetState::Healthy {
            *h += 1;
        }
        let now = (*h).max(0) as usize;
        self.floor = Some(self.floor.map_or(now, |f| f.min(now)));
    }

    fn sample(&mut self, p: &ServiceProxy, from: &str, to: &str, alive: usize) {
        let table = p.table();
        let in_service = table.in_service();
        self.floor = Some(self.floor.map_or(in_service, |f| f.min(in_service)));
        if self.healthy.is_none() {
            let all = table
                .targets()
                .filter(|(_, t)| t.state() == TargetState::Healthy)
                .count();
            self.healthy = Some(all as i64);
        }
        self.peak = self.peak.max(alive);
        let now = Instant::now();
        let serving = |rev: &str| {
            table
                .groups
                .iter()
                .filter(|g| g.weight > 0)
                .flat_map(|g| g.targets.iter())
                .any(|t| &*t.revision == rev && t.state() == TargetState::Healthy)
        };
        if self.rollback_started.is_some() && self.traffic_back.is_none() && !serving(to) {
            self.traffic_back = Some(now);
        }
        match (serving(from) && serving(to), self.mixed_since) {
            (true, None) => self.mixed_since = Some(now),
            (false, Some(since)) => {
                self.mixed += now - since;
                self.mixed_since = None;
            }
            _ => {}
        }
        for (_, t) in table.targets() {
            let cur = (t.stats.requests(), t.stats.errors_5xx());
            let prev = self.last.insert(t.id, cur);
            let Some(prev) = prev else { continue };
            let d = (cur.0.saturating_sub(prev.0), cur.1.saturating_sub(prev.1));
            if d.0 == 0 {
                continue;
            }
            let e = self.totals.entry(t.revision.to_string()).or_default();
            e.0 += d.0;
            e.1 += d.1;
        }
    }
}

/// Samples while the deployment runs; `finish` stops it and fills a report.
pub struct Sampler {
    started: Instant,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
    proxy: Arc<ServiceProxy>,
    from: String,
    to: String,
}

impl Sampler {
    pub fn start(
        proxy: Arc<ServiceProxy>,
        from: &str,
        to: &str,
        alive: impl Fn() -> usize + Send + 'static,
    ) -> Sampler {
        // Subscribed before the first count, so no transition falls between.
        let mut events = proxy.subscribe();
        let seen = Arc::new(Mutex::new(Seen::default()));
        seen.lock().unwrap().sample(&proxy, from, to, alive());
        let (p, s2, f, t) = (
            proxy.clone(),
            seen.clone(),
            from.to_string(),
            to.to_string(),
        );
        // Every target state change is applied to the healthy count in
        // order, so a dip in capacity is counted however short; the timer
        // samples weights and request counters.
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(EVERY) => {}
                    ev = events.recv() => match ev {
                        Ok(e) if e.service != *p.name => continue,
                        Ok(e) => s2.lock().unwrap_or_else(|e| e.into_inner()).apply(&e),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => tokio::time::sleep(EVERY).await,
                        Err(_) => {}
                    },
                }
                let n = alive();
                s2.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sample(&p, &f, &t, n);
            }
        });
        Sampler {
            started: Instant::now(),
            seen,
            task,
            proxy,
            from: from.into(),
            to: to.into(),
        }
    }

    pub fn rollback_started(&self) {
        let mut s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        s.rollback_started.get_or_insert_with(Instant::now);
    }

    /// The executor moved all traffic back at `at` (a blue/green flip):
    /// more precise than the next sample.
    pub fn traffic_back(&self, at: Instant) {
        let mut s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if s.rollback_started.is_some_and(|r| r <= at) {
            s.traffic_back = Some(s.traffic_back.map_or(at, |t| t.min(at)));
        }
    }

    pub fn finish(self, mut r: Report, alive: usize) -> Report {
        self.task.abort();
        let mut s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        s.sample(&self.proxy, &self.from, &self.to, alive);
        r.duration_ms = self.started.elapsed().as_millis() as u64;
        r.capacity_floor = s.floor.unwrap_or(0);
        r.peak_instances = s.peak;
        let open = s.mixed_since.map_or(Duration::ZERO, |t| t.elapsed());
        r.mixed_window_ms = (s.mixed + open).as_millis() as u64;
        r.per_revision = [&self.from, &self.to]
            .iter()
            .map(|rev| {
                let (requests, errors_5xx) = s.totals.get(*rev).copied().unwrap_or_default();
                RevisionFigures {
                    revision: rev.to_string(),
                    requests,
                    errors_5xx,
                }
            })
            .collect();
        r.rollback_ms = s.rollback_started.map(|t| t.elapsed().as_millis() as u64);
        r.traffic_back_ms = match (s.rollback_started, s.traffic_back) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a).as_millis() as u64),
            _ => None,
        };
        r
    }
}
