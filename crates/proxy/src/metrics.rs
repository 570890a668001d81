//! Counters kept on the request path, and their Prometheus rendering.
//!
//! The hot path only bumps relaxed atomics that live in the `Target` (so they
//! survive table swaps); the `prometheus-client` [`Collector`] walks the live
//! routing tables at scrape time and renders them. No registry lookup, label
//! hashing or lock happens per request.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use handoff_core::TargetState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use crate::service::ServiceProxy;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
pub struct TargetStats {
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    pub by_class: [AtomicU64; 5],
    /// Non-cumulative bucket counts; the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    /// Failed attempts to connect (each one is retried elsewhere if possible).
    pub connect_errors: AtomicU64,
}

impl TargetStats {
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// Counters an outside balancer (HAProxy) keeps for the target: the
    /// answers so far by class, and its recent mean response time, which
    /// is all it tells of latency; the new answers are put in that bucket.
    pub fn observe(&self, by_class: [u64; 5], mean: Duration) {
        let before = self.requests();
        for (c, n) in self.by_class.iter().zip(by_class) {
            c.store(n, Relaxed);
        }
        let new = by_class.iter().sum::<u64>().saturating_sub(before);
        if new > 0 {
            let secs = mean.as_secs_f64();
            let i = BUCKETS
                .iter()
                .position(|b| secs <= *b)
                .unwrap_or(BUCKETS.len());
            self.buckets[i].fetch_add(new, Relaxed);
            self.sum_micros
                .fetch_add(mean.as_micros() as u64 * new, Relaxed);
        }
    }

    pub fn requests(&self) -> u64 {
        self.by_class.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn errors_5xx(&self) -> u64 {
        self.by_class[4].load(Relaxed)
    }

    /// Non-cumulative latency bucket counts (bounds in [`BUCKETS`], then +Inf).
    pub fn bucket_counts(&self) -> [u64; BUCKETS.len() + 1] {
        std::array::from_fn(|i| self.buckets[i].load(Relaxed))
    }
}

/// Answers handoff gave itself, per service, by reason.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub no_healthy_target: AtomicU64,
    pub connect_failed: AtomicU64,
    pub upstream_timeout: AtomicU64,
    pub upstream_error: AtomicU64,
    pub bad_request: AtomicU64,
    pub header_timeout: AtomicU64,
    pub retries: AtomicU64,
    /// Ejections passive checks wanted but `max_ejection_percent` refused.
    pub ejections_limited: AtomicU64,
    /// Requests answered by targets since removed from the table, so that
    /// a service's total survives the targets a deploy replaces.
    pub retired_requests: AtomicU64,
    /// Idle client connections held without a task (see `fast::park`),
    /// counted on the first service of their listen address.
    pub parked_connections: AtomicU64,
}

impl ServiceStats {
    fn reasons(&self) -> [(&'static str, u64); 8] {
        [
            ("no_healthy_target", self.no_healthy_target.load(Relaxed)),
            ("connect_failed", self.connect_failed.load(Relaxed)),
            ("upstream_timeout", self.upstream_timeout.load(Relaxed)),
            ("upstream_error", self.upstream_error.load(Relaxed)),
            ("bad_request", self.bad_request.load(Relaxed)),
            ("header_timeout", self.header_timeout.load(Relaxed)),
            ("retry", self.retries.load(Relaxed)),
            ("ejection_limited", self.ejections_limited.load(Relaxed)),
        ]
    }
}

/// Renders every service's live targets at scrape time.
#[derive(Debug)]
pub struct ProxyCollector {
    pub(crate) services: Vec<Arc<ServiceProxy>>,
}

type Labels = Vec<(&'static str, String)>;

impl Collector for ProxyCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut rows: Vec<(Labels, Arc<crate::target::Target>, u32)> = Vec::new();
        for svc in &self.services {
            let table = svc.table();
            for g in table.groups.iter() {
                for t in g.targets.iter() {
                    let labels = vec![
                        ("service", svc.name.to_string()),
                        ("group", g.name.to_string()),
                        ("target", t.name.to_string()),
                        ("revision", t.revision.to_string()),
                    ];
                    rows.push((labels, t.clone(), g.weight));
                }
            }
        }

        {
            let mut m = enc.encode_descriptor(
                "handoff_requests",
                "Responses relayed from each target, by status class",
                None,
                MetricType::Counter,
            )?;
            for (labels, t, _) in &rows {
                for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                    let mut l = labels.clone();
                    l.push(("code", class.to_string()));
                    m.encode_family(&l)?.encode_counter::<Labels, _, u64>(
                        &t.stats.by_class[i].load(Relaxed),
                        None,
                    )?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "handoff_request_duration_seconds",
                "Time from request received to response body sent, per target",
                None,
                MetricType::Histogram,
            )?;
            for (labels, t, _) in &rows {
                let mut cum = 0;
                let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
                for (i, b) in BUCKETS.iter().chain([f64::MAX].iter()).enumerate() {
                    cum += t.stats.buckets[i].load(Relaxed);
                    buckets.push((*b, cum));
                }
                let sum = t.stats.sum_micros.load(Relaxed) as f64 / 1e6;
                m.encode_family(labels)?
                    .encode_histogram::<Labels>(sum, cum, &buckets, None)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "handoff_target_in_flight",
                "Requests (and upgraded tunnels) open to each target",
                None,
                MetricType::Gauge,
            )?;
            for (labels, t, _) in &rows {
                m.encode_family(labels)?
                    .encode_gauge(&(t.in_flight() as i64))?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "handoff_target_state",
                "1 for the state each target is in",
                None,
                MetricType::Gauge,
            )?;
            for (labels, t, _) in &rows {
                let now = t.state();
                for s in TargetState::ALL {
                    let mut l = labels.clone();
                    l.push(("state", s.as_str().to_string()));
                    m.encode_family(&l)?.encode_gauge(&i64::from(s == now))?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "handoff_targets",
                "Targets of each service by state",
                None,
                MetricType::Gauge,
            )?;
            for svc in &self.services {
                let table = svc.table();
                for s in TargetState::ALL {
                    let n = table.targets().filter(|(_, t)| t.state() == s).count();
                    let l: Labels = vec![
                        ("service", svc.name.to_string()),
                        ("state", s.as_str().to_string()),
                    ];
                    m.encode_family(&l)?.encode_gauge(&(n as i64))?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "handoff_certificate_expiry_seconds",
                "Seconds until the certificate in use expires (services with TLS)",
                None,
                MetricType::Gauge,
            )?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()) as i64;
            for svc in &self.services {
                if let Some(c) = svc.certificate() {
                    let l: Labels = vec![("service", svc.name.to_string())];
                    m.encode_family(&l)?
                        .encode_gauge(&(c.not_after as i64 - now))?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "handoff_target_connect_errors",
                "Failed connection attempts to each target",
                None,
                MetricType::Counter,
            )?;
            for (labels, t, _) in &rows {
                m.encode_family(labels)?.encode_counter::<Labels, _, u64>(
                    &t.stats.connect_errors.load(Relaxed),
                    None,
                )?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "handoff_group_weight",
                "Traffic weight of each target group",
                None,
                MetricType::Gauge,
            )?;
            for svc in &self.services {
                for g in svc.table().groups.iter() {
                    let l: Labels = vec![
                        ("service", svc.name.to_string()),
                        ("group", g.name.to_string()),
                    ];
                    m.encode_family(&l)?.encode_gauge(&(g.weight as i64))?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "handoff_parked_connections",
                "Idle keep-alive client connections held without a task, by the first service of their listen address",
                None,
                MetricType::Gauge,
            )?;
            for svc in &self.services {
                let l: Labels = vec![("service", svc.name.to_string())];
                m.encode_family(&l)?
                    .encode_gauge(&(svc.stats.parked_connections.load(Relaxed) as i64))?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "handoff_proxy_errors",
                "Answers handoff gave itself instead of relaying (and retries), by reason",
                None,
                MetricType::Counter,
            )?;
            for svc in &self.services {
                for (reason, v) in svc.stats.reasons() {
                    let l: Labels = vec![
                        ("service", svc.name.to_string()),
                        ("reason", reason.to_string()),
                    ];
                    m.encode_family(&l)?
                        .encode_counter::<Labels, _, u64>(&v, None)?;
                }
            }
        }
        Ok(())
    }
}
