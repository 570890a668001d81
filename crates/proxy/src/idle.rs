//! One worker's idle connections to one target, taken **oldest first**.
//!
//! Oldest first spreads requests over every pooled connection, and so over
//! every process of a multi-process target: nginx, gunicorn or puma
//! workers each own the connections they accepted, and the kernel hands a
//! burst of new connections to them unevenly. Newest first (what this
//! was, and what nginx's upstream keepalive does) keeps reusing the few
//! connections most recently returned; on 2026-12-02 those were 51 of 68 on
//! one of the upstream nginx's two workers, which then set the pace:
//! `wrk -c64` through handoff gave p99 3.8–93 ms and 42–50 k req/s, against
//! 3.2–4.8 ms and 51–57 k oldest first, in the same alternating runs
//! (nginx and HAProxy: 2.5–7 ms).
//!
//! What oldest first could cost, and how it is kept from it: after a burst,
//! a pool larger than the traffic needs would keep every connection just
//! used, each idle longer, up to the target's own keep-alive timeout
//! (gunicorn: 2 s, Node: 5 s), where a request written as the target
//! closes is lost. So a connection idle for [`FRESH`] is closed rather
//! than used while a younger one waits behind it: the pool shrinks back to
//! what the traffic keeps busy, and the connection used is never older
//! than it would have been newest first.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Idle connections older than this are dropped rather than reused, well
/// under the keep-alive timeout of common servers (nginx: 75 s).
const MAX_IDLE: Duration = Duration::from_secs(50);

/// See the module docs.
pub(crate) const FRESH: Duration = Duration::from_secs(1);

/// Stale connections closed by one [`IdlePool::take`], at most.
const CLOSE_PER_TAKE: usize = 16;

/// Enough that a worker at high concurrency never churns connections (the
/// lesson of kamal-proxy's 100, in PEERS.md).
const MAX_PER_WORKER: usize = 1024;

pub(crate) struct IdlePool<C> {
    /// Oldest at the front.
    idle: VecDeque<(C, Instant)>,
}

impl<C> Default for IdlePool<C> {
    fn default() -> Self {
        IdlePool {
            idle: VecDeque::new(),
        }
    }
}

impl<C> IdlePool<C> {
    /// The oldest connection that `usable` accepts (it is alive), dropping
    /// the stale ones before it (see the module docs).
    pub(crate) fn take(
        &mut self,
        now: Instant,
        mut usable: impl FnMut(&mut C) -> bool,
    ) -> Option<C> {
        let mut closed = 0;
        while let Some((mut c, since)) = self.idle.pop_front() {
            let idle = now.saturating_duration_since(since);
            // At most CLOSE_PER_TAKE stale ones closed per request: after a
            // burst the rest go over the next requests, not all in one.
            let stale = idle >= FRESH && !self.idle.is_empty() && closed < CLOSE_PER_TAKE;
            if idle >= MAX_IDLE || stale {
                closed += 1;
                continue;
            }
            if usable(&mut c) {
                return Some(c);
            }
        }
        None
    }

    /// Keeps a connection for reuse; `false` (and it is dropped) when the
    /// pool is full.
    pub(crate) fn put(&mut self, c: C, now: Instant) -> bool {
        if self.idle.len() >= MAX_PER_WORKER {
            return false;
        }
        self.idle.push_back((c, now));
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.idle.len()
    }

    pub(crate) fn clear(&mut self) {
        self.idle.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ages_ms: &[u64], now: Instant) -> IdlePool<u32> {
        let mut p = IdlePool::default();
        for (i, a) in ages_ms.iter().enumerate() {
            assert!(p.put(i as u32, now - Duration::from_millis(*a)));
        }
        p
    }

    #[test]
    fn oldest_first_so_every_connection_takes_turns() {
        let now = Instant::now();
        let mut p = pool(&[30, 20, 10], now);
        let mut order = Vec::new();
        for _ in 0..6 {
            let c = p.take(now, |_| true).unwrap();
            order.push(c);
            p.put(c, now);
        }
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_connection_idle_past_fresh_is_closed_while_a_younger_one_waits() {
        let now = Instant::now();
        let fresh = FRESH.as_millis() as u64;
        let mut p = pool(&[fresh + 500, fresh + 10, 5], now);
        assert_eq!(p.take(now, |_| true), Some(2));
        assert_eq!(p.len(), 0, "the two stale ones were dropped");
    }

    #[test]
    fn a_burst_surplus_is_closed_a_few_per_request() {
        let now = Instant::now();
        let fresh = FRESH.as_millis() as u64;
        let ages: Vec<u64> = (0..40).map(|i| fresh + 1000 - i).collect();
        let mut p = pool(&ages, now);
        // The 17th oldest is used (stale but alive); 16 were closed.
        assert_eq!(p.take(now, |_| true), Some(CLOSE_PER_TAKE as u32));
        assert_eq!(p.len(), 40 - CLOSE_PER_TAKE - 1);
    }

    #[test]
    fn the_last_connection_is_used_up_to_max_idle_then_dropped() {
        let now = Instant::now();
        let fresh = FRESH.as_millis() as u64;
        assert_eq!(pool(&[fresh * 5], now).take(now, |_| true), Some(0));
        let max = MAX_IDLE.as_millis() as u64;
        assert_eq!(pool(&[max + 1], now).take(now, |_| true), None);
    }

    #[test]
    fn dead_connections_are_skipped_and_dropped() {
        let now = Instant::now();
        let mut p = pool(&[3, 2, 1], now);
        assert_eq!(p.take(now, |c| *c == 2), Some(2));
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn a_full_pool_refuses() {
        let now = Instant::now();
        let mut p = IdlePool::default();
        for i in 0..MAX_PER_WORKER {
            assert!(p.put(i, now));
        }
        assert!(!p.put(0, now));
    }
}
