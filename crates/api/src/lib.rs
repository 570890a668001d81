//! handoff-api: the daemon's admin surface on `server.admin`.
//!
//! One axum router serves:
//!
//! - `GET /healthz`, `GET /metrics` (Prometheus text from the proxy's
//!   collector), `GET /logs/{service}/{instance}?lines=N`;
//! - `GET /services`: groups, weights, targets, states, in-flight;
//! - `POST /deployments` (body [`types::DeployBody`]), `GET /deployments/{id}`,
//!   `GET /services/{name}/deployments`;
//! - `POST /services/{name}/{pause|resume|abort|promote|rollback}`;
//! - `GET /events`: server-sent events (`deployment` steps, `target` state
//!   changes), each source in order;
//! - `GET /`: the dashboard (static HTML, CSS and JavaScript embedded in the
//!   binary, public like `/healthz`: every figure it shows comes from the
//!   API above with the token the page is given).
//!
//! Errors are JSON `{"error": {"code", "message"}}` with a stable code:
//! 400 bad body, 404 unknown service/deployment, 409 conflict. The CLI uses
//! the same [`types`].

pub mod daemon;
mod dashboard;
mod deployments;
mod events;
mod metrics;
pub mod types;

use deployments::*;
use events::events;
use metrics::metrics;
pub use metrics::DeployCollector;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use handoff_controller::executor::DeployError;
use handoff_controller::service::ManagedService;
use handoff_proxy::ServiceProxy;
use prometheus_client::registry::Registry;
use types::*;

#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    /// Every proxied service.
    pub services: Arc<BTreeMap<String, Arc<ServiceProxy>>>,
    /// Managed services, through the controller's narrow surface.
    pub deployers: Arc<BTreeMap<String, Arc<dyn ManagedService>>>,
    /// The bearer token every endpoint but `/healthz` requires.
    pub token: Arc<str>,
    /// Target state changes of every service.
    pub target_events: tokio::sync::broadcast::Sender<handoff_proxy::TargetEvent>,
    /// Turns true when the daemon stops: open event streams end cleanly, so
    /// the graceful shutdown of the admin server need not cut them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// The daemon's main loop, for `POST /reload` and `POST /upgrade`
    /// (none in tests that build the API alone).
    pub daemon: Option<tokio::sync::mpsc::Sender<daemon::DaemonRequest>>,
    /// The config file the daemon runs.
    pub config_path: Arc<str>,
    /// Automatic certificates, when a service has `tls.acme = true`.
    pub acme: Option<handoff_acme::Manager>,
}

/// The API described for people and schema-driven tools (public, like
/// `/healthz`: it holds no secret).
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn router(state: AdminState) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/logs/{service}/{instance}", get(logs))
        .route("/services", get(services))
        .route("/services/{name}/deployments", get(history))
        .route("/services/{name}/revisions", get(revisions))
        .route("/services/{name}/plan", post(deployments::plan))
        .route(
            "/services/{name}/certificate/renew",
            post(renew_certificate),
        )
        .route("/services/{name}/{verb}", post(control))
        .route("/deployments", post(deploy))
        .route("/deployments/{id}", get(deployment))
        .route("/events", get(events))
        .route("/daemon", get(daemon::daemon))
        .route("/reload", post(daemon::reload))
        .route("/upgrade", post(daemon::upgrade))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state);
    Router::new()
        .route("/", get(dashboard::index))
        .route("/ui/app.js", get(dashboard::script))
        .route("/ui/style.css", get(dashboard::style))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(guarded)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; the API is described at GET /openapi.json",
            )
        })
}

/// `Authorization: Bearer TOKEN` on every endpoint but `/healthz`.
async fn auth(
    State(s): State<AdminState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(given.as_bytes(), s.token.as_bytes()) {
        let why = if given.is_empty() { "missing" } else { "wrong" };
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("{why} bearer token; send `Authorization: Bearer TOKEN` with the token from HANDOFF_TOKEN, [server] token, or the token file in the state dir"),
        );
    }
    next.run(req).await
}

/// Compares without an early exit, so timing does not reveal the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn acme_view(a: handoff_acme::Status) -> AcmeView {
    let ms = |s: Option<u64>| s.map(|s| s as i64 * 1000);
    AcmeView {
        state: match a.state {
            handoff_acme::State::Pending => "pending",
            handoff_acme::State::Ordering => "ordering",
            handoff_acme::State::Valid => "valid",
            handoff_acme::State::Failed => "failed",
        }
        .into(),
        renew_at_ms: ms(a.renew_at),
        error: a.error,
        next_attempt_ms: ms(a.next_attempt),
        failures: a.failures,
        issued: a.issued,
    }
}

/// `POST /services/{name}/certificate/renew`: order a new certificate now.
async fn renew_certificate(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    if !s.services.contains_key(&name) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no service '{name}' in this daemon's config"),
        );
    }
    match s.acme.as_ref().map(|m| m.renew(&name)) {
        Some(handoff_acme::Renew::Started) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"service": name, "renewing": true})),
        )
            .into_response(),
        Some(handoff_acme::Renew::Busy) => error(
            StatusCode::CONFLICT,
            "busy",
            format!("a certificate for service '{name}' is being ordered now; follow it with `handoff status {name}`"),
        ),
        _ => error(
            StatusCode::CONFLICT,
            "not_acme",
            format!("service '{name}' does not get its certificate over ACME (set `acme = true` in [services.{name}.tls] and add [server.acme])"),
        ),
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }),
    )
        .into_response()
}

fn deploy_error(e: DeployError) -> Response {
    use handoff_controller::executor::rollback::Refused;
    match e {
        DeployError::Conflict { .. }
        | DeployError::Busy { .. }
        | DeployError::NoneActive { .. }
        | DeployError::AlreadyRollingBack { .. }
        | DeployError::HostLost { .. }
        | DeployError::Rollback(_) => {
            if let DeployError::Rollback(Refused::Unknown { .. }) = e {
                return error(StatusCode::NOT_FOUND, "not_found", e.to_string());
            }
            error(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        DeployError::Rejected(_) => error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
        DeployError::Controller(ref c) => {
            // A bad artifact or a changed revision is the request's fault.
            if let handoff_controller::ControllerError::Runtime(r) = c {
                use handoff_controller::RuntimeError as R;
                // Hosts that cannot take the deployment now: the fleet's
                // state, not the request, is at fault.
                if matches!(
                    r,
                    R::HostUnreachable { .. } | R::Host { .. } | R::Preflight { .. }
                ) {
                    return error(StatusCode::CONFLICT, "conflict", e.to_string());
                }
                return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string());
            }
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        }
    }
}

#[allow(clippy::result_large_err)] // the Err is the HTTP answer itself, built once
fn deployer<'a>(s: &'a AdminState, name: &str) -> Result<&'a Arc<dyn ManagedService>, Response> {
    s.deployers.get(name).ok_or_else(|| {
        if s.services.contains_key(name) {
            error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("service '{name}' has fixed targets; only managed services (with `command`) are deployed"),
            )
        } else {
            error(StatusCode::NOT_FOUND, "not_found", format!("no service '{name}'; known: {}", s.services.keys().cloned().collect::<Vec<_>>().join(", ")))
        }
    })
}

async fn logs(
    State(s): State<AdminState>,
    Path((service, instance)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let safe = |x: &str| {
        !x.is_empty()
            && x.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !safe(&service) || !safe(&instance) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "service and instance names use letters, digits, '-' and '_'",
        );
    }
    let d = match deployer(&s, &service) {
        Ok(d) => d,
        Err(r) => return r,
    };
    // Parsed by hand: the first `lines=` wins and any oddity gets the API's
    // own error shape, not the extractor's plain-text rejection.
    let lines_param = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("lines="));
    let lines = match lines_param.map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) => n.min(10_000),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "lines: must be a whole number",
            )
        }
    };
    match d.logs(&instance, lines).await {
        Some(mut t) => {
            t.push('\n');
            (StatusCode::OK, t).into_response()
        }
        None => {
            let known: Vec<String> = s.services.get(&service).map_or(Vec::new(), |p| {
                let table = p.table();
                let mut names: Vec<String> = table
                    .groups
                    .iter()
                    .flat_map(|g| g.targets.iter().map(|t| t.name.to_string()))
                    .collect();
                names.sort();
                names
            });
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no log for instance '{instance}' of service '{service}'; known: {}",
                    if known.is_empty() {
                        "none running".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        }
    }
}

async fn services(State(s): State<AdminState>) -> Json<Vec<ServiceView>> {
    // `web-2` before `web-10`: by the name's numeric tail, then the name.
    fn by_index(name: &str) -> (u64, &str) {
        let n = name.rsplit('-').next().and_then(|n| n.parse().ok());
        (n.unwrap_or(0), name)
    }
    let mut out = Vec::new();
    for (name, p) in s.services.iter() {
        let table = p.table();
        let d = s.deployers.get(name);
        out.push(ServiceView {
            name: name.clone(),
            listen: p.listen.map(|a| a.to_string()),
            // A fixed port binds as configured; port 0's actual port is in
            // `ProxyServer::addrs`, which this state does not carry (yet).
            bound: p
                .bound()
                .or(p.listen.filter(|l| l.port() != 0))
                .map(|a| a.to_string()),
            balancer: d.map_or_else(|| "builtin".to_string(), |d| d.balancer()),
            certificate: p.certificate().map(|c| CertificateView {
                names: c.names.clone(),
                not_after_ms: c.not_after as i64 * 1000,
                acme: s.acme.as_ref().and_then(|m| m.status(name)).map(acme_view),
            }),
            revision: d.map(|d| d.current_revision()),
            deployment: d
                .and_then(|d| d.latest())
                .filter(|x| x.status.is_active())
                .map(|x| x.id),
            groups: table
                .groups
                .iter()
                .map(|g| {
                    let mut targets: Vec<TargetView> = g
                        .targets
                        .iter()
                        .map(|t| TargetView {
                            name: t.name.to_string(),
                            addr: t.addr.to_string(),
                            revision: t.revision.to_string(),
                            state: t.state().to_string(),
                            in_flight: t.in_flight(),
                            requests: t.stats.requests(),
                            last_check: t.last_check(),
                        })
                        .collect();
                    targets.sort_by(|a, b| by_index(&a.name).cmp(&by_index(&b.name)));
                    GroupView {
                        name: g.name.to_string(),
                        weight: g.weight,
                        targets,
                    }
                })
                .collect(),
            healthy_deadline_ms: p.health.healthy_deadline.as_millis() as u64,
            desired: d.map(|d| d.desired()),
            instances: d.map(|d| d.instances()).unwrap_or_default(),
            hosts: d.map(|d| d.hosts()).unwrap_or_default(),
        });
    }
    Json(out)
}

/// Serves the admin API until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
