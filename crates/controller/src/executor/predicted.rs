//! The executor's side of `handoff plan`: the deployment a request would
//! create (the very one `deploy` creates) and the timings measured on this
//! service, handed to the pure predictor.

use std::collections::BTreeMap;

use handoff_runtime::Runtime;

use super::{DeployError, DeployRequest, Deployer};
use handoff_core::config::{Amount, Batch};

use crate::load::auto_batch;
use crate::plan::{self, AutoBatch, Deployment, Strategy};
use crate::predict::{self, fmt_ms, Estimate, Prediction, Timings};

/// How many recent measurements an estimate is the median of.
const RECENT: usize = 20;

impl<R: Runtime> Deployer<R> {
    /// The pending deployment for `req` with `strategy` (nothing changes).
    pub(super) fn build(
        &self,
        id: String,
        req: &DeployRequest,
        strategy: Strategy,
    ) -> Result<Deployment, DeployError> {
        let f = &self.fleet;
        let cfg = &f.service;
        let fleet = f.serving();
        let green = if strategy == Strategy::BlueGreen {
            f.new_names(fleet.len())
        } else {
            Vec::new()
        };
        let ip = &cfg.in_place;
        let (batch, auto) = match req.batch.unwrap_or(ip.batch) {
            Batch::Amount(a) => (a, None),
            Batch::Auto if strategy == Strategy::InPlace => {
                let n = fleet.len();
                let c = auto_batch(
                    n,
                    ip.min_healthy.of(n as u32, false) as usize,
                    &self.meter.load(),
                    ip.headroom,
                    ip.instance_capacity,
                );
                let auto = AutoBatch {
                    headroom: ip.headroom,
                    needed: c.needed,
                    instance_capacity: ip.instance_capacity,
                    choice: c.why,
                };
                (Amount::Count(c.batch as u32), Some(auto))
            }
            // Only in-place has batches.
            Batch::Auto => (Amount::Count(1), None),
        };
        let mut d = plan::new(plan::Request {
            id,
            service: f.name().to_string(),
            from: f.current_revision(),
            to: req.revision.clone(),
            strategy,
            fleet,
            green,
            live_group: f.live_group(),
            batch,
            min_healthy: ip.min_healthy,
            traffic_steps: cfg.blue_green.traffic_steps.clone(),
            hooks: cfg.hooks.commands.keys().cloned().collect(),
        })?;
        d.auto = auto;
        Ok(d)
    }

    /// What this service's config and its measured history say about time.
    pub fn timings(&self) -> Timings {
        let f = &self.fleet;
        let cfg = &f.service;
        let h = &cfg.health;
        let recent = |kind: &str| {
            f.store
                .observations(f.name(), kind, RECENT)
                .unwrap_or_default()
        };
        let more_probes_ms = if h.enabled {
            h.interval.as_millis() as u64 * u64::from(h.healthy_threshold.saturating_sub(1))
        } else {
            0
        };
        let hooks = cfg
            .hooks
            .commands
            .keys()
            .map(|name| {
                let e = Estimate::from_measured(
                    &format!("{name} runs"),
                    &recent(&format!("hook:{name}")),
                    Estimate::new(
                        0,
                        format!(
                            "not measured yet; at most hooks.timeout {}",
                            fmt_ms(cfg.hooks.timeout.as_millis() as u64)
                        ),
                    ),
                );
                (name.clone(), e)
            })
            .collect::<BTreeMap<_, _>>();
        Timings {
            boot: Estimate::from_measured(
                "start-ups",
                &recent("boot"),
                Estimate::new(50, "not measured yet: a guess"),
            ),
            more_probes_ms,
            min_healthy_ms: h.min_healthy_time.as_millis() as u64,
            early_exit_ms: f.start_watch().as_millis() as u64,
            drain: Estimate::from_measured(
                "drains",
                &recent("drain"),
                Estimate::new(
                    0,
                    format!(
                        "not measured yet; at most drain.timeout {}",
                        fmt_ms(cfg.drain.timeout.as_millis() as u64)
                    ),
                ),
            ),
            drain_timeout_ms: cfg.drain.timeout.as_millis() as u64,
            stop: Estimate::from_measured(
                "stops",
                &recent("stop"),
                Estimate::new(
                    100,
                    format!(
                        "not measured yet: a guess; at most stop_grace {}",
                        fmt_ms(f.stop_grace().as_millis() as u64)
                    ),
                ),
            ),
            hooks,
            bake_ms: cfg.blue_green.bake.as_millis() as u64,
            retention_ms: cfg.blue_green.retention.as_millis() as u64,
            flip_ms: FLIP_MS,
        }
    }

    pub(super) fn predict(&self, d: &Deployment) -> Prediction {
        let mut p = predict::predict(d, &self.timings());
        p.batch_choice = d.auto.as_ref().map(|a| a.choice.clone());
        p
    }

    /// `handoff plan`: the predicted deployment of `req` for each strategy.
    pub fn plan(
        &self,
        req: &DeployRequest,
        strategies: &[Strategy],
    ) -> Result<Vec<Prediction>, DeployError> {
        strategies
            .iter()
            .map(|k| {
                let d = self.build(format!("{}-plan", self.fleet.name()), req, *k)?;
                Ok(self.predict(&d))
            })
            .collect()
    }
}

/// A blue/green flip back, end to end (`cargo run --release --example
/// cutover`: 1.5 ms p50, 2.8 ms max on the reference machine).
const FLIP_MS: u64 = 3;
