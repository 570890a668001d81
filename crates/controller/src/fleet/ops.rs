//! What a deployment does to the fleet: start instances (held or not),
//! wait for their health, drain, stop, release, and record the revision
//! that serves. Called by the executor, one action at a time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_core::TargetState;
use handoff_runtime::Runtime;

use super::{slot, Fleet};
use crate::ControllerError;

impl<R: Runtime> Fleet<R> {
    /// Starts `names` on `revision` in `group` (new names get a port; known
    /// ones keep theirs), concurrently. Not supervised until `supervise`.
    pub async fn start(
        self: &Arc<Self>,
        names: &[String],
        revision: &str,
        group: &str,
        hold: bool,
    ) -> Result<(), String> {
        self.release_dir(revision)
            .await
            .map_err(|e| e.to_string())?;
        for n in names {
            // A known instance keeps its host and port (in place: the
            // same server gets the new version); a new one goes to the
            // host with the fewest of its group.
            let known = self.slots().get(n).map(|s| (s.host.clone(), s.port));
            let (host, old) = known.unwrap_or_else(|| (self.place(group), 0));
            let port = self
                .port_for(host.as_deref(), old)
                .map_err(|e| e.to_string())?;
            let mut slots = self.slots();
            let s = slots
                .entry(n.clone())
                .or_insert_with(|| slot(host.clone(), port, revision, group, 0));
            s.port = port;
            s.revision = revision.to_string();
            s.group = group.to_string();
        }
        let mut jobs = Vec::new();
        for n in names {
            let me = self.clone();
            let n = n.clone();
            jobs.push(tokio::spawn(
                async move { me.start_one(&n, None, hold).await },
            ));
        }
        let mut errors = Vec::new();
        for j in jobs {
            if let Ok(Err(e)) = j.await {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Those of `names` whose process is gone (or never started).
    pub fn exited(&self, names: &[String]) -> Vec<String> {
        names
            .iter()
            .filter(|n| {
                let run = self.slots().get(*n).and_then(|s| s.running.clone());
                !run.is_some_and(|r| self.runtime.is_alive(&r))
            })
            .cloned()
            .collect()
    }

    /// All `names` pass their health checks within `healthy_deadline`, then
    /// stay healthy (and alive) for `min_healthy_time`.
    pub async fn await_healthy(&self, names: &[String]) -> Result<(), String> {
        // Woken by every target transition (so a batch moves on the moment
        // its last instance turns healthy) and by a tick, for exits.
        let mut events = self.proxy.subscribe();
        let h = &self.service.health;
        let deadline = Instant::now() + h.healthy_deadline;
        let state = |n: &String| -> Result<bool, String> {
            let (run, target) = self
                .slots()
                .get(n)
                .map(|s| (s.running.clone(), s.target))
                .unwrap_or((None, None));
            let (Some(run), Some(t)) = (run, target) else {
                return Err(format!("{n} is not running"));
            };
            if !self.runtime.is_alive(&run) {
                return Err(format!(
                    "{n} exited (see `handoff logs {} {n}`)",
                    self.name()
                ));
            }
            Ok(self
                .proxy
                .target(t)
                .map(|t| t.state() == TargetState::Healthy || (t.is_held() && t.is_ready()))
                .unwrap_or(false))
        };
        loop {
            let mut all = true;
            for n in names {
                all &= state(n)?;
            }
            if all {
                break;
            }
            if Instant::now() >= deadline {
                let sick: Vec<String> = names
                    .iter()
                    .filter(|n| !state(n).unwrap_or(false))
                    .map(|n| self.why_not_healthy(n))
                    .collect();
                return Err(format!(
                    "not healthy within healthy_deadline {}: {}",
                    handoff_core::duration::format(h.healthy_deadline),
                    sick.join("; ")
                ));
            }
            tokio::select! {
                _ = events.recv() => {}
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
            }
        }
        self.note_ready(names);
        let stay_until = Instant::now() + h.min_healthy_time;
        while Instant::now() < stay_until {
            for n in names {
                if !state(n)? {
                    return Err(format!(
                        "{n} did not stay healthy for min_healthy_time {}",
                        handoff_core::duration::format(h.min_healthy_time)
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }

    /// `NAME: last check …; see `handoff logs SERVICE NAME``: what the
    /// daemon knows of an instance that is not healthy, and where to look.
    pub(super) fn why_not_healthy(&self, name: &str) -> String {
        let target = self.slots().get(name).and_then(|s| s.target);
        let check = target
            .and_then(|t| self.proxy.target(t).ok())
            .and_then(|t| t.last_check());
        let check = match check {
            Some(c) => format!("last check {c}"),
            None if !self.service.health.enabled => "active health checks are off".into(),
            None => "no health check has run yet".into(),
        };
        format!("{name}: {check}; see `handoff logs {} {name}`", self.name())
    }

    /// Records how long each of `names` took from registration (just after
    /// its spawn) to answering its first probe, once per start.
    fn note_ready(&self, names: &[String]) {
        for n in names {
            let t = {
                let mut slots = self.slots();
                let Some(s) = slots.get_mut(n) else { continue };
                match s.target {
                    Some(t) if s.noted != Some(t) => {
                        s.noted = Some(t);
                        t
                    }
                    _ => continue,
                }
            };
            if let Some(took) = self.proxy.target(t).ok().and_then(|t| t.first_passed()) {
                // Kept as the app's own start-up: the probes after the first
                // follow the config, which may change before the next plan.
                let h = &self.service.health;
                let probes = if h.enabled {
                    h.interval * h.healthy_threshold.saturating_sub(1)
                } else {
                    Duration::ZERO
                };
                self.observe("boot", took.saturating_sub(probes));
            }
        }
    }

    /// Deregisters `names` and waits for their in-flight requests (all at
    /// once, each up to the drain timeout). Their supervision ends first so
    /// that the stop that follows is not taken for a crash.
    pub async fn drain(&self, names: &[String]) -> Vec<(String, handoff_proxy::DrainOutcome)> {
        let mut jobs = Vec::new();
        for n in names {
            self.unsupervise(n);
            let Some(t) = self.slots().get(n).and_then(|s| s.target) else {
                continue;
            };
            let (p, n, timeout) = (self.balancer.clone(), n.clone(), self.service.drain.timeout);
            jobs.push(tokio::spawn(async move { (n, p.drain(t, timeout).await) }));
        }
        let mut out = Vec::new();
        for j in jobs {
            if let Ok((n, Ok(o))) = j.await {
                self.observe(
                    "drain",
                    match o {
                        handoff_proxy::DrainOutcome::Drained { waited } => waited,
                        handoff_proxy::DrainOutcome::TimedOut { .. } => self.service.drain.timeout,
                    },
                );
                out.push((n, o));
            }
        }
        out
    }

    /// Stops `names` (drained before) and takes their targets out of the
    /// table. `forget` also drops them from the fleet (blue/green groups
    /// that are done); otherwise they keep their name and port for a start.
    pub async fn stop(&self, names: &[String], forget: bool) {
        let mut jobs = Vec::new();
        for n in names {
            self.unsupervise(n);
            let (run, target) = match self.slots().get_mut(n) {
                Some(s) => (s.running.take(), s.target.take()),
                None => continue,
            };
            let _ = self.record(n, "stopping", run.as_ref());
            if let Some(t) = target {
                let _ = self.balancer.remove(t, Duration::ZERO).await;
            }
            let (rt, grace) = (self.runtime.clone(), self.managed.stop_grace);
            let n = n.clone();
            jobs.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let stopped = match run {
                    Some(run) => {
                        rt.stop(&run, grace).await;
                        Some(t0.elapsed())
                    }
                    None => None,
                };
                (n, stopped)
            }));
        }
        for j in jobs {
            if let Ok((n, stopped)) = j.await {
                if let Some(took) = stopped {
                    self.observe("stop", took);
                }
                if forget {
                    self.slots().remove(&n);
                    let _ = self.store.delete_instance(self.name(), &n);
                } else {
                    let _ = self.record(&n, "stopped", None);
                }
            }
        }
    }

    /// Remembers the artifact a deployment brought for `revision`.
    pub fn set_artifact(&self, revision: &str, path: PathBuf) {
        self.artifacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(revision.to_string(), path);
    }

    /// Lets held instances into service (after their hooks).
    pub fn release(&self, names: &[String]) {
        for n in names {
            if let Some(t) = self.slots().get(n).and_then(|s| s.target) {
                if let Ok(t) = self.proxy.target(t) {
                    t.release_into_service();
                }
            }
        }
    }

    /// Records `revision` as the one that serves, from `group`.
    pub fn mark_current(&self, revision: &str, group: &str) -> Result<(), ControllerError> {
        self.store.set_current_revision(self.name(), revision)?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = revision.to_string();
        *self.live_group.lock().unwrap_or_else(|e| e.into_inner()) = group.to_string();
        Ok(())
    }
}
