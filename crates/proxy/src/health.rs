//! Active health checks (HTTP probes with hysteresis) and the return of
//! passively ejected targets.
//!
//! One task per target, on the control runtime (never on a proxy worker).
//! [`Tracker`] is the pure part: it turns a stream of probe results into
//! state transitions, and says when a transition happened so that an event is
//! emitted exactly once. The task applies transitions with compare-exchange,
//! so a drain that started meanwhile always wins.

use std::net::SocketAddr;
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
    /// Nothing listens on the address (yet): the app is still starting, or
    /// listens somewhere else than the port it was given.
    Refused(SocketAddr),
    /// It answered, with this status (not 2xx/3xx).
    Status(u16),
    /// No answer within the check's timeout.
    Timeout(Duration),
    /// Anything else: a reset, a malformed answer.
    Failed(String),
}

/// One probe's outcome in words, as `status`, the deploy output and a
/// failed deployment's reason show it: what was asked, what came back, and
/// for a refused connection the most likely cause (the app ignores the
/// port it was given).
pub fn outcome(path: &str, addr: SocketAddr, r: &Result<u16, Probe>) -> String {
    match r {
        Ok(code) | Err(Probe::Status(code)) => format!("GET {path} \u{2192} {code}"),
        Err(Probe::Refused(_)) => {
            format!("connection refused on {addr}: does the app listen on {{port}} / $PORT?")
        }
        Err(Probe::Timeout(d)) => format!(
            "GET {path} timed out after {}",
            handoff_core::duration::format(*d)
        ),
        Err(Probe::Failed(m)) => format!("GET {path} failed: {m}"),
    }
}

/// The last health check of a target, and how many in a row ended the
/// same way (a count says "this is not a blip").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCheck {
    pub outcome: String,
    pub ok: bool,
    pub in_a_row: u32,
}

impl LastCheck {
    /// The record after one more check with `outcome`.
    pub fn next(prev: Option<&LastCheck>, outcome: String, ok: bool) -> LastCheck {
        let in_a_row = match prev {
            Some(p) if p.outcome == outcome && p.ok == ok => p.in_a_row.saturating_add(1),
            _ => 1,
        };
        LastCheck {
            outcome,
            ok,
            in_a_row,
        }
    }
}

impl std::fmt::Display for LastCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.in_a_row > 1 {
            write!(f, "{} ({} in a row)", self.outcome, self.in_a_row)
        } else {
            f.write_str(&self.outcome)
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
        let ok = probe(t.addr, &cfg, svc.upstream.as_deref()).await;
        let said = outcome(&cfg.path, t.addr, &ok);
        t.note_check(said, ok.is_ok());
        if startup {
            if matches!(ok, Err(Probe::Refused(_)))
                && state == TargetState::Initial
                && Instant::now() < startup_ends
            {
                continue;
            }
            startup = false;
        }
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
            let why = match (&ok, t.last_check()) {
                (Err(_), Some(last)) if to == TargetState::Unhealthy => format!("{why}: {last}"),
                _ => why,
            };
            t.transition(state, to, &why);
        }
    }
}

/// One HTTP probe on a fresh connection: success is a 2xx or 3xx answer to
/// `GET path` within the timeout; its status. A fresh connection also
/// proves the target still accepts new connections, which a pooled one
/// would not.
pub async fn probe(
    addr: SocketAddr,
    cfg: &Health,
    tls: Option<&crate::upstream::UpstreamTls>,
) -> Result<u16, Probe> {
    let fut = async {
        let stream = crate::upstream::dial(addr, tls).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                Probe::Refused(addr)
            } else if e.to_string().starts_with("TLS to") {
                Probe::Failed(e.to_string())
            } else {
                Probe::Failed(format!("connect {addr}: {e}"))
            }
        })?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Probe::Failed(format!("handshake: {e}")))?;
        let conn = tokio::spawn(conn);
        let req = http::Request::get(cfg.path.as_str())
            .header(http::header::HOST, addr.to_string())
            .header(http::header::USER_AGENT, "handoff-health/1")
            .header(http::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Probe::Failed(format!("bad health check request: {e}")))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| Probe::Failed(e.to_string()))?;
        conn.abort();
        let s = resp.status();
        if s.is_success() || s.is_redirection() {
            Ok(s.as_u16())
        } else {
            Err(Probe::Status(s.as_u16()))
        }
    };
    match tokio::time::timeout(cfg.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Probe::Timeout(cfg.timeout)),
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

    /// A one-shot HTTP server answering every connection with `status`
    /// (or never answering, for `None`); its address.
    async fn server(status: Option<u16>) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = c.read(&mut buf).await;
                    match status {
                        Some(code) => {
                            let _ = c
                                .write_all(
                                    format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n")
                                        .as_bytes(),
                                )
                                .await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                });
            }
        });
        addr
    }

    async fn said(addr: SocketAddr, timeout: Duration) -> String {
        let c = Health {
            timeout,
            ..cfg(1, 1)
        };
        outcome(&c.path, addr, &probe(addr, &c, None).await)
    }

    #[tokio::test]
    async fn the_last_check_says_what_came_back() {
        let ok = server(Some(200)).await;
        assert_eq!(
            said(ok, Duration::from_secs(5)).await,
            "GET /healthz \u{2192} 200"
        );
        let sick = server(Some(503)).await;
        assert_eq!(
            said(sick, Duration::from_secs(5)).await,
            "GET /healthz \u{2192} 503"
        );
        let mute = server(None).await;
        assert_eq!(
            said(mute, Duration::from_millis(200)).await,
            "GET /healthz timed out after 200ms"
        );
        // A port nobody listens on: the app listens elsewhere (or not yet).
        let free = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert_eq!(
            said(free, Duration::from_secs(5)).await,
            format!("connection refused on {free}: does the app listen on {{port}} / $PORT?")
        );
    }

    #[test]
    fn the_last_check_counts_the_same_outcome_in_a_row() {
        let mut last = None;
        for _ in 0..4 {
            last = Some(LastCheck::next(
                last.as_ref(),
                "GET /healthz \u{2192} 503".into(),
                false,
            ));
        }
        let l = last.clone().unwrap();
        assert_eq!(l.to_string(), "GET /healthz \u{2192} 503 (4 in a row)");
        // Another outcome starts again at one.
        let l = LastCheck::next(Some(&l), "GET /healthz \u{2192} 200".into(), true);
        assert_eq!(l.to_string(), "GET /healthz \u{2192} 200");
        assert!(l.ok);
    }

    #[test]
    fn deregistered_targets_never_transition() {
        let c = cfg(1, 1);
        let mut t = Tracker::default();
        assert_eq!(t.record(Draining, true, &c), None);
        assert_eq!(t.record(Unused, false, &c), None);
    }
}
