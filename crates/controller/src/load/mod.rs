//! What the proxy currently carries for a service, for `batch = "auto"`.
//!
//! A [`LoadMeter`] samples the service once a second (its request total,
//! which keeps what removed targets answered; requests in flight; healthy
//! targets in service) and keeps ten minutes. From the samples come
//! the load now (requests per second over the last minute, in flight over
//! the last 10 s) and what one instance has been seen to carry (the busiest
//! 10 s per instance in the window). [`auto_batch`] turns those into the
//! largest in-place batch that leaves enough capacity, and says why.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handoff_proxy::ServiceProxy;
use serde::{Deserialize, Serialize};

const EVERY: Duration = Duration::from_secs(1);
const KEEP_MS: u64 = 10 * 60 * 1000;
const RATE_WINDOW_MS: u64 = 60_000;
const PEAK_WINDOW_MS: u64 = 10_000;
const IN_FLIGHT_WINDOW_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Since the meter started.
    pub at_ms: u64,
    /// Requests answered so far (monotonic).
    pub requests: u64,
    pub in_flight: u64,
    /// Healthy targets taking traffic.
    pub in_service: usize,
}

/// The load now and what one instance has carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub rate: f64,
    pub in_flight: f64,
    /// The busiest 10 s per instance in the window; 0 when never loaded.
    pub peak_rate_per_instance: f64,
    pub peak_in_flight_per_instance: f64,
    /// How much history the figures come from.
    pub window_ms: u64,
}

#[derive(Default)]
struct Inner {
    samples: VecDeque<Sample>,
}

pub struct LoadMeter {
    inner: Mutex<Inner>,
    epoch: Instant,
}

impl Default for LoadMeter {
    fn default() -> Self {
        LoadMeter {
            inner: Mutex::default(),
            epoch: Instant::now(),
        }
    }
}

impl LoadMeter {
    /// Samples `proxy` every second for as long as the meter lives.
    pub fn start(self: &Arc<Self>, proxy: Arc<ServiceProxy>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(m) = me.upgrade() else { return };
                m.sample(&proxy);
                drop(m);
                tokio::time::sleep(EVERY).await;
            }
        });
    }

    fn sample(&self, p: &ServiceProxy) {
        let table = p.table();
        let in_flight = table.targets().map(|(_, t)| t.in_flight()).sum();
        let in_service = table.in_service();
        let s = Sample {
            at_ms: self.epoch.elapsed().as_millis() as u64,
            // The service's total, which keeps what removed targets
            // answered: a deploy replaces targets between two samples.
            // Held monotonic across the brief dip of a removal.
            requests: p.requests_total().max(self.last_total()),
            in_flight,
            in_service,
        };
        self.record(s);
    }

    fn last_total(&self) -> u64 {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.samples.back().map_or(0, |s| s.requests)
    }

    /// Adds a sample (the sampler's, or a test's synthetic load).
    pub fn record(&self, s: Sample) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.samples.push_back(s);
        while g
            .samples
            .front()
            .is_some_and(|f| s.at_ms.saturating_sub(f.at_ms) > KEEP_MS)
        {
            g.samples.pop_front();
        }
    }

    pub fn load(&self) -> Load {
        let samples: Vec<Sample> = {
            let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            g.samples.iter().copied().collect()
        };
        load_of(&samples)
    }
}

/// Requests per second between the newest sample and the oldest one no
/// more than `window` before it.
fn rate_over(s: &[Sample], end: usize, window: u64) -> Option<f64> {
    let last = s[end];
    let first = s[..=end]
        .iter()
        .find(|x| last.at_ms.saturating_sub(x.at_ms) <= window)?;
    let dt = last.at_ms.saturating_sub(first.at_ms);
    (dt > 0).then(|| last.requests.saturating_sub(first.requests) as f64 * 1000.0 / dt as f64)
}

/// The figures of a run of samples (oldest first).
pub fn load_of(s: &[Sample]) -> Load {
    let Some(last) = s.last() else {
        return Load::default();
    };
    let rate = rate_over(s, s.len() - 1, RATE_WINDOW_MS).unwrap_or(0.0);
    let recent: Vec<&Sample> = s
        .iter()
        .filter(|x| last.at_ms.saturating_sub(x.at_ms) <= IN_FLIGHT_WINDOW_MS)
        .collect();
    let in_flight = recent.iter().map(|x| x.in_flight as f64).sum::<f64>() / recent.len() as f64;
    let mut peak_rate = 0.0f64;
    let mut peak_in_flight = 0.0f64;
    for (i, x) in s.iter().enumerate() {
        let n = x.in_service.max(1) as f64;
        if let Some(r) = rate_over(s, i, PEAK_WINDOW_MS) {
            peak_rate = peak_rate.max(r / n);
        }
        peak_in_flight = peak_in_flight.max(x.in_flight as f64 / n);
    }
    Load {
        rate,
        in_flight,
        peak_rate_per_instance: peak_rate,
        peak_in_flight_per_instance: peak_in_flight,
        window_ms: last.at_ms.saturating_sub(s[0].at_ms),
    }
}

/// How many instances must stay in service for `load` plus `headroom_pct`,
/// with `capacity` requests per second per instance if the operator knows
/// it (else what one has been seen to carry); and the reason in words.
pub fn instances_needed(load: &Load, headroom_pct: u32, capacity: Option<u32>) -> (usize, String) {
    let h = 1.0 + headroom_pct as f64 / 100.0;
    if load.rate < 0.5 && load.in_flight < 0.5 {
        return (0, "no load measured".into());
    }
    let (cap_rate, whose) = match capacity {
        Some(c) => (c as f64, "in_place.instance_capacity".to_string()),
        None => (
            load.peak_rate_per_instance,
            format!(
                "the most one has carried in the last {}",
                crate::predict::fmt_ms(load.window_ms.max(1000))
            ),
        ),
    };
    let by_rate = if cap_rate > 0.0 {
        (load.rate * h / cap_rate).ceil() as usize
    } else {
        usize::MAX
    };
    let by_in_flight = if capacity.is_none() && load.peak_in_flight_per_instance > 0.0 {
        (load.in_flight * h / load.peak_in_flight_per_instance).ceil() as usize
    } else {
        0
    };
    let needed = by_rate.max(by_in_flight);
    let why = format!(
        "{:.0} req/s and {:.1} in flight now (+{headroom_pct}% = {:.0} req/s) need {} at {:.0} req/s each ({whose})",
        load.rate,
        load.in_flight,
        load.rate * h,
        if needed == usize::MAX {
            "every instance".to_string()
        } else {
            format!("{needed} instance{}", if needed == 1 { "" } else { "s" })
        },
        cap_rate,
    );
    (needed, why)
}

/// The largest in-place batch of `n` instances that keeps what
/// [`instances_needed`] says in service, never breaking `min_healthy`,
/// never below one instance, and never leaving none in service.
pub fn auto_batch(
    n: usize,
    min_healthy: usize,
    load: &Load,
    headroom_pct: u32,
    capacity: Option<u32>,
) -> AutoChoice {
    let (needed, why) = instances_needed(load, headroom_pct, capacity);
    let keep = needed.max(min_healthy).max(usize::from(n > 1));
    let batch = n.saturating_sub(keep).max(1);
    let limit = if keep == min_healthy && min_healthy > 0 && keep > needed {
        format!("; min_healthy keeps {min_healthy}")
    } else if n.saturating_sub(keep) == 0 {
        "; never below one instance".into()
    } else {
        String::new()
    };
    AutoChoice {
        batch,
        needed,
        why: format!("auto: {why}{limit} → batch {batch} of {n}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoChoice {
    pub batch: usize,
    /// Instances the load needs (more than there are at the peak).
    pub needed: usize,
    pub why: String,
}

#[cfg(test)]
mod tests;
