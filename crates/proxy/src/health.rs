//! Active health checks (HTTP probes with hysteresis) and the return of
//! passively ejected targets.
//!
//! One task per target, on the control runtime (never on a proxy worker).
//! [`Tracker`] is the pure part: it turns a stream of probe results into
//! state transitions, and says when a transition happened so that an event is
//! emitted exactly once. The task applies transitions with compare-exchange,
//! so a drain that started meanwhile always wins.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use handoff_core::config::Health;
use handoff_core::TargetState;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use crate::service::ServiceProxy;
use crate::target::Target;

/// First and longest wait between start-up probes (see `run`).
const STARTUP_FIRST_RETRY: Duration = Duration::from_millis(5);
const STARTUP_MAX_RETRY: Duration = Duration::from_millis(100);

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Nothing listens on the port (yet).
    Refused(String),
    /// Anything else: a bad answer, a timeout, a reset.
    Failed(String),
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Refused(m) | Probe::Failed(m) => f.write_str(m),
        }
    }
}

/// Consecutive results; the pure half of health checking.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    ok_streak: u32,
    fail_streak: u32,
}

impl Tracker {
    /// Records one probe result for a target in `state` and returns the
    /// transition it causes, if any, with the reason in words.
    pub fn record(
        &mut self,
        state: TargetState,
        ok: bool,
        cfg: &Health,
    ) -> Option<(TargetState, String)> {
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
        }
        match state {
            TargetState::Initial | TargetState::Unhealthy
                if self.ok_streak >= cfg.healthy_threshold =>
            {
                Some((
                    TargetState::Healthy,
                    format!("{} health checks passed", self.ok_streak),
                ))
            }
            TargetState::Initial | TargetState::Healthy
                if self.fail_streak >= cfg.unhealthy_threshold =>
            {
                Some((
                    TargetState::Unhealthy,
                    format!("{} health checks failed", self.fail_streak),
                ))
            }
            _ => None,
        }
    }
}

pub(crate) fn spawn(svc: Arc<ServiceProxy>, target: Arc<Target>) {
    tokio::spawn(run(svc, target));
}

async fn run(svc: Arc<ServiceProxy>, t: Arc<Target>) {
    let cfg = svc.health.clone();
    let mut tracker = Tracker::default();
    let mut healthy_since: Option<Instant> = None;
    let tick = if cfg.enabled {
        cfg.interval
    } else {
        // Without active checks this loop only ends passive ejections.
        Duration::from_millis(250)
    };
    // Start-up: until a new target's port first accepts a connection, a
    // refused probe means "not listening yet", not "unhealthy". It is not
    // counted, and the next probe comes after a short back-off instead of
    // a whole interval, so a deploy waits for the app, not for the clock.
    // The phase lasts at most as long as the plain schedule would take to
    // call the target unhealthy, so a dead target is still reported so.
    let mut startup = cfg.enabled && t.state() == TargetState::Initial;
    let startup_ends = Instant::now() + cfg.interval * cfg.unhealthy_threshold;
    let mut startup_wait = STARTUP_FIRST_RETRY;
    let mut first = true;
    loop {
        let state = t.state();
        if state == TargetState::Unused {
            return;
        }
        if !first {
            if startup {
                tokio::time::sleep(startup_wait.min(tick)).await;
                startup_wait = (startup_wait * 3 / 2).min(STARTUP_MAX_RETRY);
            } else {
                tokio::time::sleep(tick).await;
            }
        }
        first = false;
        let state = t.state();
        if !state.is_registered() {
            // Draining: its fate belongs to the drain; wait for `unused`.
            continue;
        }
        if !cfg.enabled {
            if state == TargetState::Unhealthy && !t.ejected() {
                t.transition(state, TargetState::Healthy, "ejection ended");
            }
            continue;
        }
        let ok = probe(&t, &cfg).await;
        if startup {
            if matches!(ok, Err(Probe::Refused(_)))
                && state == TargetState::Initial
                && Instant::now() < startup_ends
            {
                continue;
            }
            startup = false;
        }
        let ok = ok.map_err(|e| e.to_string());
        if t.ejected() {
            // Passive ejection holds the target out for its back-off even if
            // probes pass (an app can answer /healthz and fail real work).
            tracker = Tracker::default();
            continue;
        }
        let state = t.state();
        if state == TargetState::Healthy {
            let since = *healthy_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= cfg.max_ejection_time {
                t.forgive_ejections();
            }
        } else {
            healthy_since = None;
        }
        if let Some((to, why)) = tracker.record(state, ok.is_ok(), &cfg) {
            if to == TargetState::Healthy {
                t.note_passed();
            }
            if t.is_held() {
                // Held: passing checks make it ready, not healthy.
                if to == TargetState::Healthy {
                    t.mark_ready();
                    continue;
                }
                t.set_ready(false);
            }
            let why = match &ok {
                Err(e) if to == TargetState::Unhealthy => format!("{why}: {e}"),
                _ => why,
            };
            t.transition(state, to, &why);
        }
    }
}

/// One HTTP probe on a fresh connection: success is a 2xx or 3xx answer to
/// `GET path` within the timeout. A fresh connection also proves the target
/// still accepts new connections, which a pooled one would not.
pub async fn probe(t: &Target, cfg: &Health) -> Result<(), Probe> {
    let fut = async {
        let stream = tokio::net::TcpStream::connect(t.addr).await.map_err(|e| {
            let m = format!("connect {}: {e}", t.addr);
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                Probe::Refused(m)
            } else {
                Probe::Failed(m)
            }
        })?;
        let _ = stream.set_nodelay(true);
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Probe::Failed(format!("handshake: {e}")))?;
        let conn = tokio::spawn(conn);
        let req = http::Request::get(cfg.path.as_str())
            .header(http::header::HOST, t.addr.to_string())
            .header(http::header::USER_AGENT, "handoff-health/1")
            .header(http::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Probe::Failed(format!("bad health check request: {e}")))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| Probe::Failed(format!("request: {e}")))?;
        conn.abort();
        let s = resp.status();
        if s.is_success() || s.is_redirection() {
            Ok(())
        } else {
            Err(Probe::Failed(format!(
                "GET {} answered {}",
                cfg.path,
                s.as_u16()
            )))
        }
    };
    match tokio::time::timeout(cfg.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Probe::Failed(format!(
            "no answer within {}",
            handoff_core::duration::format(cfg.timeout)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TargetState::*;

    fn cfg(h: u32, u: u32) -> Health {
        Health {
            enabled: true,
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: h,
            unhealthy_threshold: u,
            min_healthy_time: Duration::ZERO,
            healthy_deadline: Duration::from_secs(10),
            passive_failures: 5,
            ejection_time: Duration::from_secs(1),
            max_ejection_time: Duration::from_secs(10),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn initial_needs_healthy_threshold_passes_in_a_row() {
        let c = cfg(3, 2);
        let mut t = Tracker::default();
        assert_eq!(t.record(Initial, true, &c), None);
        assert_eq!(t.record(Initial, true, &c), None);
        let (to, why) = t.record(Initial, true, &c).unwrap();
        assert_eq!(to, Healthy);
        assert_eq!(why, "3 health checks passed");
    }

    #[test]
    fn a_failure_resets_the_streak() {
        let c = cfg(2, 3);
        let mut t = Tracker::default();
        assert_eq!(t.record(Initial, true, &c), None);
        assert_eq!(t.record(Initial, false, &c), None);
        assert_eq!(t.record(Initial, true, &c), None);
        assert_eq!(t.record(Initial, true, &c).unwrap().0, Healthy);
    }

    #[test]
    fn healthy_flips_only_after_unhealthy_threshold_and_back() {
        let c = cfg(2, 2);
        let mut t = Tracker::default();
        assert_eq!(t.record(Healthy, false, &c), None);
        assert_eq!(t.record(Healthy, false, &c).unwrap().0, Unhealthy);
        assert_eq!(t.record(Unhealthy, false, &c), None);
        assert_eq!(t.record(Unhealthy, true, &c), None);
        assert_eq!(t.record(Unhealthy, true, &c).unwrap().0, Healthy);
        // Staying healthy emits nothing more.
        assert_eq!(t.record(Healthy, true, &c), None);
    }

    #[test]
    fn deregistered_targets_never_transition() {
        let c = cfg(1, 1);
        let mut t = Tracker::default();
        assert_eq!(t.record(Draining, true, &c), None);
        assert_eq!(t.record(Unused, false, &c), None);
    }
}
