//! `GET /metrics`, and the deployment metrics read from the store.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use handoff_controller::service::{HostStatus, ManagedService};

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
        self.encode_hosts(&mut enc)
    }
}

impl DeployCollector {
    /// Per host of each service placed on hosts: whether it answers, how
    /// many instances it carries and how many of them are healthy. A
    /// service of local processes adds nothing (nor does a registry with
    /// none: not even the families' HELP lines).
    fn encode_hosts(
        &self,
        enc: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        type L = Vec<(&'static str, String)>;
        let all: Vec<(&str, Vec<HostStatus>)> = self
            .deployers
            .iter()
            .map(|(name, d)| (name.as_str(), d.hosts()))
            .filter(|(_, h)| !h.is_empty())
            .collect();
        if all.is_empty() {
            return Ok(());
        }
        /// A family: its name, its help, its value for a host.
        type Family = (&'static str, &'static str, fn(&HostStatus) -> i64);
        let families: [Family; 3] = [
            (
                "handoff_host_up",
                "1 while a host of a service answers over ssh, 0 while it is unreachable",
                |h| i64::from(h.state == "up"),
            ),
            (
                "handoff_host_instances",
                "Instances of a service placed on each host",
                |h| h.instances as i64,
            ),
            (
                "handoff_host_healthy_instances",
                "Instances of a service on each host that run and pass their health checks",
                |h| h.healthy as i64,
            ),
        ];
        for (metric, help, value) in families {
            let mut m = enc.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            for (service, hosts) in &all {
                for h in hosts {
                    let l: L = vec![("service", service.to_string()), ("host", h.name.clone())];
                    m.encode_family(&l)?.encode_gauge(&value(h))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_controller::executor::rollback::RollbackKind;
    use handoff_controller::executor::{DeployError, DeployRequest, StepEvent};
    use handoff_controller::plan::{Deployment, Event};
    use handoff_controller::predict::Prediction;
    use handoff_controller::service::{BoxFuture, DeploymentView, InstanceStatus, RevisionView};
    use handoff_core::Strategy;

    /// A service that answers only what the collector asks.
    struct Fake {
        hosts: Vec<HostStatus>,
    }

    impl ManagedService for Fake {
        fn balancer(&self) -> String {
            "builtin".into()
        }
        fn hold(&self, _: &str) -> Result<(), DeployError> {
            Ok(())
        }
        fn unhold(&self) {}
        fn name(&self) -> &str {
            "fake"
        }
        fn current_revision(&self) -> String {
            "v1".into()
        }
        fn default_strategy(&self) -> Strategy {
            unreachable!()
        }
        fn latest(&self) -> Option<Deployment> {
            None
        }
        fn deploy(&self, _: DeployRequest) -> BoxFuture<'_, Result<String, DeployError>> {
            unreachable!()
        }
        fn control(&self, _: Event) -> Result<String, DeployError> {
            unreachable!()
        }
        fn rollback(
            &self,
            _: Option<String>,
        ) -> BoxFuture<'_, Result<(String, RollbackKind), DeployError>> {
            unreachable!()
        }
        fn deployment(&self, _: &str) -> Result<Option<DeploymentView>, DeployError> {
            unreachable!()
        }
        fn history(&self, _: usize) -> Result<Vec<DeploymentView>, DeployError> {
            unreachable!()
        }
        fn revisions(&self) -> Result<Vec<RevisionView>, DeployError> {
            unreachable!()
        }
        fn plan(&self, _: &DeployRequest, _: &[Strategy]) -> Result<Vec<Prediction>, DeployError> {
            unreachable!()
        }
        fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StepEvent> {
            unreachable!()
        }
        fn logs(&self, _: &str, _: usize) -> BoxFuture<'_, Option<String>> {
            unreachable!()
        }
        fn deployment_counts(&self) -> Vec<(String, String, u64)> {
            Vec::new()
        }
        fn instances(&self) -> Vec<InstanceStatus> {
            Vec::new()
        }
        fn desired(&self) -> usize {
            0
        }
        fn hosts(&self) -> Vec<HostStatus> {
            self.hosts.clone()
        }
    }

    fn host(name: &str, up: bool, instances: usize, healthy: usize) -> HostStatus {
        HostStatus {
            name: name.into(),
            state: if up { "up" } else { "unreachable" }.into(),
            why: (!up).then(|| "no answer for 3.2 s".into()),
            since_ms: (!up).then_some(1_700_000_000_000),
            instances,
            healthy,
        }
    }

    fn scrape(services: Vec<(&str, Vec<HostStatus>)>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(DeployCollector {
            deployers: services
                .into_iter()
                .map(|(n, hosts)| {
                    (
                        n.to_string(),
                        Arc::new(Fake { hosts }) as Arc<dyn ManagedService>,
                    )
                })
                .collect(),
        }));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn hosts_up_unreachable_and_their_instances() {
        let out = scrape(vec![
            (
                "web",
                vec![
                    host("h1", true, 1, 1),
                    host("h2", true, 2, 1),
                    host("h3", false, 1, 0),
                ],
            ),
            ("local", Vec::new()),
        ]);
        for line in [
            "# TYPE handoff_host_up gauge",
            "handoff_host_up{service=\"web\",host=\"h1\"} 1",
            "handoff_host_up{service=\"web\",host=\"h2\"} 1",
            "handoff_host_up{service=\"web\",host=\"h3\"} 0",
            "# TYPE handoff_host_instances gauge",
            "handoff_host_instances{service=\"web\",host=\"h2\"} 2",
            "handoff_host_instances{service=\"web\",host=\"h3\"} 1",
            "# TYPE handoff_host_healthy_instances gauge",
            "handoff_host_healthy_instances{service=\"web\",host=\"h1\"} 1",
            "handoff_host_healthy_instances{service=\"web\",host=\"h2\"} 1",
            "handoff_host_healthy_instances{service=\"web\",host=\"h3\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "no `{line}` in:\n{out}");
        }
        assert!(!out.contains("service=\"local\",host"), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
    }

    #[test]
    fn services_without_hosts_add_nothing() {
        let out = scrape(vec![("web", Vec::new()), ("api", Vec::new())]);
        assert!(!out.contains("handoff_host"), "{out}");
        assert!(
            out.contains("handoff_revision{service=\"web\",revision=\"v1\"} 1"),
            "{out}"
        );
    }
}
