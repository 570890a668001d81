//! `GET /metrics`, and the deployment metrics read from the store.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use handoff_controller::service::ManagedService;

use crate::{error, AdminState};

pub(crate) async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let mut out = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot render metrics: {e}"),
        ),
    }
}

/// Deployment metrics, read from the store at scrape time.
pub struct DeployCollector {
    pub deployers: Vec<(String, Arc<dyn ManagedService>)>,
}

impl std::fmt::Debug for DeployCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.deployers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("DeployCollector")
            .field("services", &names)
            .finish()
    }
}

impl prometheus_client::collector::Collector for DeployCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        type L = Vec<(&'static str, String)>;
        {
            let mut m = enc.encode_descriptor(
                "handoff_deployments",
                "Deployments by strategy and result (running ones count as running)",
                None,
                MetricType::Counter,
            )?;
            for (name, d) in &self.deployers {
                for (strategy, status, n) in d.deployment_counts() {
                    let l: L = vec![
                        ("service", name.clone()),
                        ("strategy", strategy),
                        ("result", status),
                    ];
                    m.encode_family(&l)?.encode_counter::<L, _, u64>(&n, None)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "handoff_revision",
                "1 for the revision that serves each managed service",
                None,
                MetricType::Gauge,
            )?;
            for (name, d) in &self.deployers {
                let l: L = vec![
                    ("service", name.clone()),
                    ("revision", d.current_revision()),
                ];
                m.encode_family(&l)?.encode_gauge(&1i64)?;
            }
        }
        Ok(())
    }
}
