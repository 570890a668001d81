//! Is the new revision worse than the old one? Judged from the proxy's own
//! per-revision figures (no external metrics system): 5xx rate and p99
//! latency over a window, compared between `from` and `to`.

use handoff_proxy::metrics::BUCKETS;
use handoff_proxy::ServiceProxy;

use handoff_core::config::RollbackPolicy;

/// A p99 must also be this much slower in absolute terms to count (bucket
/// bounds are coarse; 1 ms → 2.5 ms is not a regression anyone feels).
pub const MIN_P99_WORSENING_SECS: f64 = 0.05;

/// Counters of one revision at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub buckets: [u64; BUCKETS.len() + 1],
}

impl Counts {
    pub fn of(proxy: &ServiceProxy, revision: &str) -> Counts {
        let mut c = Counts::default();
        for (_, t) in proxy.table().targets() {
            if &*t.revision == revision {
                c.requests += t.stats.requests();
                c.errors += t.stats.errors_5xx();
                for (i, b) in t.stats.bucket_counts().iter().enumerate() {
                    c.buckets[i] += b;
                }
            }
        }
        c
    }

    /// What happened between `before` and `self`. Targets removed from the
    /// table take their counts with them, hence the saturation.
    pub fn since(&self, before: &Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(before.requests),
            errors: self.errors.saturating_sub(before.errors),
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(before.buckets[i])),
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// Upper bound of the bucket holding the 99th percentile (seconds).
    pub fn p99(&self) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (total as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b;
            if seen >= rank {
                return Some(BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
    }
}

/// `Err(reason)` when `new` is measurably worse than `old`.
pub fn verdict(
    p: &RollbackPolicy,
    from: &str,
    old: &Counts,
    to: &str,
    new: &Counts,
) -> Result<(), String> {
    if new.requests < p.min_requests {
        return Ok(());
    }
    let (ro, rn) = (old.error_rate(), new.error_rate());
    if rn > ro + p.max_error_rate_increase {
        return Err(format!(
            "revision {to} answered {:.1}% 5xx ({} of {}) vs {:.1}% for {from}",
            rn * 100.0,
            new.errors,
            new.requests,
            ro * 100.0
        ));
    }
    if let (Some(po), Some(pn)) = (old.p99(), new.p99()) {
        if old.requests >= p.min_requests
            && pn > po * p.max_p99_ratio
            && pn - po >= MIN_P99_WORSENING_SECS
        {
            return Err(format!(
                "revision {to} p99 latency ≤{:.0} ms vs ≤{:.0} ms for {from}",
                pn * 1000.0,
                po * 1000.0
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RollbackPolicy = RollbackPolicy {
        max_error_rate_increase: 0.05,
        max_p99_ratio: 2.0,
        min_requests: 20,
    };

    fn counts(requests: u64, errors: u64, slow: bool) -> Counts {
        let mut c = Counts {
            requests,
            errors,
            ..Default::default()
        };
        // All in the 1 ms bucket, or all in the 250 ms one.
        c.buckets[if slow { 8 } else { 1 }] = requests;
        c
    }

    #[test]
    fn error_rate_increase_beyond_threshold_fails() {
        assert!(verdict(
            &P,
            "v1",
            &counts(100, 0, false),
            "v2",
            &counts(100, 3, false)
        )
        .is_ok());
        let e = verdict(
            &P,
            "v1",
            &counts(100, 0, false),
            "v2",
            &counts(100, 20, false),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "revision v2 answered 20.0% 5xx (20 of 100) vs 0.0% for v1"
        );
        // Too few requests to judge.
        assert!(verdict(
            &P,
            "v1",
            &counts(100, 0, false),
            "v2",
            &counts(10, 10, false)
        )
        .is_ok());
    }

    #[test]
    fn latency_regression_fails_only_when_large_in_both_senses() {
        let e = verdict(
            &P,
            "v1",
            &counts(100, 0, false),
            "v2",
            &counts(100, 0, true),
        )
        .unwrap_err();
        assert!(e.contains("p99 latency ≤250 ms vs ≤1 ms"), "{e}");
        assert!(verdict(&P, "v1", &counts(100, 0, true), "v2", &counts(100, 0, true)).is_ok());
    }

    #[test]
    fn p99_picks_the_right_bucket() {
        let mut c = Counts::default();
        c.buckets[0] = 98;
        c.buckets[5] = 2;
        assert_eq!(c.p99(), Some(BUCKETS[5]));
        assert_eq!(Counts::default().p99(), None);
    }
}
