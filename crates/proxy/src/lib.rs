//! handoff-proxy: the data plane.
//!
//! It owns the routing of client requests to targets and everything the
//! deployment invariants need from a load balancer:
//!
//! ```text
//! client ──► server.rs (per-worker SO_REUSEPORT listener)
//!              ├─► fast/: handoff's own HTTP/1 loop (most requests); idle
//!              │   connections parked without a task (fast/park.rs)
//!              └─► forward.rs via hyper (io.rs timers/guard): the rest
//!                  both: table.load() → pick healthy target → pooled
//!                  upstream conn, oldest first (target.rs, idle.rs) →
//!                  relay, retry, metrics
//! control ──► service.rs: add_target / set_weights / drain / remove
//!              └─► builds a new RoutingTable (table.rs), swaps it whole
//! health.rs ──► active probes + passive ejection → Target state (atomic CAS)
//!              └─► TargetEvent broadcast (events.rs)
//! metrics.rs ──► prometheus-client Collector reading the live tables
//! ```
//!
//! The request path never takes a lock shared with the control plane: it
//! reads an `ArcSwap` snapshot and the target's atomics. Drain correctness
//! rests on one ordering argument, documented at `Target::acquire`.

mod body;
pub mod error;
pub mod events;
mod fast;
mod forward;
mod h1;
pub mod health;
pub mod http01;
mod idle;
mod io;
pub mod metrics;
pub mod route;
mod server;
pub mod service;
pub mod table;
pub mod target;
pub mod tls;
pub mod upstream;

use std::collections::BTreeMap;
use std::sync::Arc;

use handoff_core::config::Service;
use tokio::sync::broadcast;

pub use error::ControlError;
pub use events::TargetEvent;
pub use metrics::ProxyCollector;
pub use server::ProxyServer;
pub use service::{ServiceProxy, DEFAULT_GROUP};
pub use target::{DrainOutcome, Target, TargetId, TargetSpec};

/// All proxied services of one daemon, before and after they listen.
pub struct Proxy {
    services: BTreeMap<String, Arc<ServiceProxy>>,
    workers: usize,
    events: broadcast::Sender<TargetEvent>,
    http01: Option<(std::net::SocketAddr, Arc<http01::Challenges>)>,
}

impl Proxy {
    pub fn new(workers: usize) -> Proxy {
        let (events, _) = broadcast::channel(4096);
        Proxy {
            services: BTreeMap::new(),
            workers: workers.max(1),
            events,
            http01: None,
        }
    }

    /// Adds a service with an empty `default` group. Fails only when its
    /// `upstream_tls` roots cannot be read.
    pub fn add_service(&mut self, cfg: &Service) -> Result<Arc<ServiceProxy>, ControlError> {
        let upstream = match &cfg.proxy.upstream_tls {
            Some(u) => Some(Arc::new(upstream::UpstreamTls::new(u).map_err(
                |source| ControlError::Tls {
                    service: cfg.name.clone(),
                    source,
                },
            )?)),
            None => None,
        };
        let mut s = ServiceProxy::new(
            &cfg.name,
            cfg.listen,
            cfg.proxy.clone(),
            cfg.health.clone(),
            self.workers,
            self.events.clone(),
        );
        if let Some(p) = Arc::get_mut(&mut s) {
            p.domains = cfg.domains.clone();
            p.path_prefix = cfg.path_prefix.clone();
            p.tls = cfg.tls.clone();
            p.upstream = upstream;
        }
        self.services.insert(cfg.name.clone(), s.clone());
        Ok(s)
    }

    pub fn service(&self, name: &str) -> Option<&Arc<ServiceProxy>> {
        self.services.get(name)
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceProxy>> {
        self.services.values()
    }

    /// Every target state change, across services.
    pub fn subscribe(&self) -> broadcast::Receiver<TargetEvent> {
        self.events.subscribe()
    }

    /// The sender side, for components that subscribe later (API streams).
    pub fn events(&self) -> broadcast::Sender<TargetEvent> {
        self.events.clone()
    }

    /// The Prometheus collector over this proxy's live tables.
    pub fn collector(&self) -> ProxyCollector {
        ProxyCollector {
            services: self.services.values().cloned().collect(),
        }
    }

    /// Binds and starts the workers (for the services that listen; those
    /// behind an outside balancer have no listener).
    pub fn start(
        &self,
        shutdown_timeout: std::time::Duration,
    ) -> Result<ProxyServer, ControlError> {
        self.start_with(shutdown_timeout, BTreeMap::new())
    }

    /// [`Self::start`] on listening sockets taken over (by service name):
    /// see [`ProxyServer::start_with`].
    pub fn start_with(
        &self,
        shutdown_timeout: std::time::Duration,
        inherited: BTreeMap<String, Vec<std::net::TcpListener>>,
    ) -> Result<ProxyServer, ControlError> {
        let svcs: Vec<_> = self.services.values().cloned().collect();
        ProxyServer::start_with(
            &svcs,
            self.workers,
            shutdown_timeout,
            inherited,
            self.http01.clone(),
        )
    }

    /// Also listen on `addr` in plain HTTP for ACME: HTTP-01 answers from
    /// the returned map, redirects to HTTPS for the rest.
    pub fn serve_http01(&mut self, addr: std::net::SocketAddr) -> Arc<http01::Challenges> {
        let c = Arc::new(http01::Challenges::default());
        self.http01 = Some((addr, c.clone()));
        c
    }
}
