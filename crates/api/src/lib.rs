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
//!   changes), each source in order.
//!
//! Errors are JSON `{"error": {"code", "message"}}` with a stable code:
//! 400 bad body, 404 unknown service/deployment, 409 conflict. The CLI uses
//! the same [`types`].

pub mod types;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use handoff_controller::executor::{self, DeployError, DeployRequest, Deployer};
use handoff_controller::plan::{Event, Kind};
use handoff_proxy::ServiceProxy;
use handoff_runtime::ProcessRuntime;
use prometheus_client::registry::Registry;
use types::*;

#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    /// `state_dir/logs`: instance logs by service.
    pub logs_dir: std::path::PathBuf,
    /// Every proxied service.
    pub services: Arc<BTreeMap<String, Arc<ServiceProxy>>>,
    /// Deployers of managed services.
    pub deployers: Arc<BTreeMap<String, Arc<Deployer<ProcessRuntime>>>>,
    /// The bearer token every endpoint but `/healthz` requires.
    pub token: Arc<str>,
    /// Target state changes of every service.
    pub target_events: tokio::sync::broadcast::Sender<handoff_proxy::TargetEvent>,
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
        .route("/services/{name}/{verb}", post(control))
        .route("/deployments", post(deploy))
        .route("/deployments/{id}", get(deployment))
        .route("/events", get(events))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state);
    Router::new()
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
    match e {
        DeployError::Conflict { .. } => error(StatusCode::CONFLICT, "conflict", e.to_string()),
        DeployError::NoneActive { .. } => error(StatusCode::CONFLICT, "conflict", e.to_string()),
        DeployError::Rejected(_) => error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
        DeployError::Controller(_) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        }
    }
}

#[allow(clippy::result_large_err)] // the Err is the HTTP answer itself, built once
fn deployer<'a>(
    s: &'a AdminState,
    name: &str,
) -> Result<&'a Arc<Deployer<ProcessRuntime>>, Response> {
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

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
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
    let path = handoff_runtime::logs::path(&s.logs_dir, &service, &instance);
    if !path.exists() {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no log for instance '{instance}' of service '{service}'"),
        );
    }
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
    let mut t = handoff_runtime::logs::tail(&path, lines);
    t.push('\n');
    (StatusCode::OK, t).into_response()
}

async fn services(State(s): State<AdminState>) -> Json<Vec<ServiceView>> {
    let mut out = Vec::new();
    for (name, p) in s.services.iter() {
        let table = p.table();
        let d = s.deployers.get(name);
        out.push(ServiceView {
            name: name.clone(),
            listen: p.listen.to_string(),
            revision: d.map(|d| d.fleet.current_revision()),
            deployment: d
                .and_then(|d| d.current())
                .filter(|x| x.status.is_active())
                .map(|x| x.id),
            groups: table
                .groups
                .iter()
                .map(|g| GroupView {
                    name: g.name.to_string(),
                    weight: g.weight,
                    targets: g
                        .targets
                        .iter()
                        .map(|t| TargetView {
                            name: t.name.to_string(),
                            addr: t.addr.to_string(),
                            revision: t.revision.to_string(),
                            state: t.state().to_string(),
                            in_flight: t.in_flight(),
                        })
                        .collect(),
                })
                .collect(),
        });
    }
    Json(out)
}

async fn deploy(
    State(s): State<AdminState>,
    body: Result<Json<DeployBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("bad deploy body: {}", e.body_text()),
            )
        }
    };
    let d = match deployer(&s, &b.service) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let strategy = match b.strategy.as_deref() {
        None => None,
        Some(x) => match handoff_core::config::Strategy::parse(x) {
            Some(k) => Some(Kind::from(k)),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("strategy: unknown '{x}'; use in-place, blue-green or all-at-once"),
                )
            }
        },
    };
    let batch = match b.batch.as_deref() {
        None => None,
        Some(x) => match handoff_core::config::parse_amount(x) {
            Ok(a) => Some(a),
            Err(m) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("batch: {m}"),
                )
            }
        },
    };
    if b.revision.is_empty() || b.revision.contains('/') || b.revision.starts_with('.') {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("revision: '{}' is not a usable revision id", b.revision),
        );
    }
    let artifact = b.artifact.map(std::path::PathBuf::from);
    if let Some(a) = &artifact {
        if !a.is_absolute() || !a.exists() {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "artifact: {} is not an existing absolute path on the daemon's machine",
                    a.display()
                ),
            );
        }
    }
    match d
        .deploy(DeployRequest {
            revision: b.revision,
            strategy,
            batch,
            artifact,
        })
        .await
    {
        Ok(id) => (StatusCode::CREATED, Json(Accepted { id })).into_response(),
        Err(e) => deploy_error(e),
    }
}

async fn control(
    State(s): State<AdminState>,
    Path((name, verb)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let d = match deployer(&s, &name) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let ev = match verb.as_str() {
        "pause" => Event::Pause,
        "resume" => Event::Resume,
        "abort" => Event::Abort,
        "promote" => Event::Promote,
        "rollback" => {
            // The body is optional: empty means "the last stable revision".
            let b = if body.iter().all(u8::is_ascii_whitespace) {
                RollbackBody::default()
            } else {
                match serde_json::from_slice::<RollbackBody>(&body) {
                    Ok(b) => b,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            format!("bad rollback body: {e}"),
                        )
                    }
                }
            };
            return rollback(d, b).await;
        }
        other => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown action '{other}'; use pause, resume, abort, promote or rollback"),
            )
        }
    };
    match d.control(ev) {
        Ok(id) => (StatusCode::ACCEPTED, Json(Accepted { id })).into_response(),
        Err(e) => deploy_error(e),
    }
}

/// Blue/green in retention: a flip. Running: abort (which rolls back).
/// Otherwise: a new deployment to `to` or the last stable revision.
async fn rollback(d: &Arc<Deployer<ProcessRuntime>>, b: RollbackBody) -> Response {
    if let Some(cur) = d.current().filter(|c| c.status.is_active()) {
        let ev = if cur.status == handoff_controller::plan::Status::Retained {
            Event::Rollback
        } else {
            Event::Abort
        };
        return match d.control(ev) {
            Ok(id) => (StatusCode::ACCEPTED, Json(Accepted { id })).into_response(),
            Err(e) => deploy_error(e),
        };
    }
    let current = d.fleet.current_revision();
    let target = match b.to {
        Some(t) => t,
        None => match d.fleet.store.last_stable_except(d.fleet.name(), &current) {
            Ok(Some(t)) => t,
            Ok(None) => {
                return error(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!(
                        "service '{}' has no stable revision other than {current} to roll back to",
                        d.fleet.name()
                    ),
                )
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        },
    };
    if !d
        .fleet
        .store
        .is_stable(d.fleet.name(), &target)
        .unwrap_or(false)
    {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            format!("{target} never completed a deployment of '{}', so it is no rollback target; use `handoff deploy` if you mean to try it again", d.fleet.name()),
        );
    }
    if target == current {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            format!("{target} is the revision serving now; nothing to roll back to"),
        );
    }
    // "The previous revision with the same strategy": the strategy of the
    // deployment being rolled back.
    let strategy = d
        .fleet
        .store
        .deployments(d.fleet.name(), 1)
        .ok()
        .and_then(|l| l.into_iter().next())
        .and_then(|r| handoff_core::config::Strategy::parse(&r.strategy))
        .map(Kind::from);
    match d
        .deploy(DeployRequest {
            revision: target,
            strategy,
            ..Default::default()
        })
        .await
    {
        Ok(id) => (StatusCode::CREATED, Json(Accepted { id })).into_response(),
        Err(e) => deploy_error(e),
    }
}

fn view(d: &Arc<Deployer<ProcessRuntime>>, rec: handoff_store::DeploymentRecord) -> DeploymentView {
    let state: Option<handoff_controller::plan::Deployment> = serde_json::from_str(&rec.state).ok();
    let events = d
        .fleet
        .store
        .deployment_events(&rec.id)
        .unwrap_or_default()
        .into_iter()
        .map(|(at_ms, kind, message)| EventView {
            at_ms,
            kind,
            message,
        })
        .collect::<Vec<_>>();
    let retained_until_ms = (rec.status == "retained")
        .then(|| {
            events
                .iter()
                .rev()
                .find(|e| e.kind == "retained")
                .map(|e| e.at_ms + d.fleet.service.blue_green.retention.as_millis() as i64)
        })
        .flatten();
    DeploymentView {
        id: rec.id,
        service: rec.service,
        from: rec.from,
        to: rec.to,
        strategy: rec.strategy,
        status: rec.status,
        paused: state.as_ref().is_some_and(|s| s.paused),
        reason: state.and_then(|s| s.reason),
        retained_until_ms,
        events,
        report: rec
            .report
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok()),
        created_ms: rec.created_ms,
        updated_ms: rec.updated_ms,
    }
}

async fn deployment(State(s): State<AdminState>, Path(id): Path<String>) -> Response {
    for d in s.deployers.values() {
        if let Ok(Some(rec)) = d.fleet.store.deployment(&id) {
            return Json(view(d, rec)).into_response();
        }
    }
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no deployment '{id}'"),
    )
}

async fn history(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let d = match deployer(&s, &name) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match d.fleet.store.deployments(&name, 100) {
        Ok(list) => Json(list.into_iter().map(|r| view(d, r)).collect::<Vec<_>>()).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// `GET /events`: server-sent events, `event: deployment` for every recorded
/// deployment step and `event: target` for every target state change, each
/// source in the order it happened. A subscriber too slow to keep up gets
/// an `event: lagged` saying how many it missed, never a silent gap.
async fn events(State(s): State<AdminState>) -> impl IntoResponse {
    use axum::response::sse::{Event as Sse, KeepAlive};
    use tokio::sync::broadcast::error::RecvError;
    let (tx, rx) = tokio::sync::mpsc::channel::<Sse>(1024);
    let mut targets = s.target_events.subscribe();
    let t2 = tx.clone();
    tokio::spawn(async move {
        loop {
            let ev = match targets.recv().await {
                Ok(e) => Sse::default().event("target").json_data(serde_json::json!({
                    "service": e.service, "target": e.name, "addr": e.addr.to_string(), "revision": e.revision,
                    "from": e.from.as_str(), "to": e.to.as_str(), "reason": e.reason,
                })),
                Err(RecvError::Lagged(n)) => Ok(Sse::default().event("lagged").data(format!("{n} target events missed"))),
                Err(RecvError::Closed) => return,
            };
            if let Ok(ev) = ev {
                if t2.send(ev).await.is_err() {
                    return;
                }
            }
        }
    });
    for d in s.deployers.values() {
        let mut steps = d.subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let ev = match steps.recv().await {
                    Ok(e) => Sse::default().event("deployment").json_data(&e),
                    Err(RecvError::Lagged(n)) => Ok(Sse::default()
                        .event("lagged")
                        .data(format!("{n} deployment events missed"))),
                    Err(RecvError::Closed) => return,
                };
                if let Ok(ev) = ev {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    axum::response::sse::Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Deployment metrics, read from the store at scrape time.
pub struct DeployCollector {
    pub deployers: Vec<(String, Arc<Deployer<ProcessRuntime>>)>,
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
                for (strategy, status, n) in
                    d.fleet.store.deployment_counts(name).unwrap_or_default()
                {
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
                    ("revision", d.fleet.current_revision()),
                ];
                m.encode_family(&l)?.encode_gauge(&1i64)?;
            }
        }
        Ok(())
    }
}

async fn revisions(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let d = match deployer(&s, &name) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let current = d.fleet.current_revision();
    match d.fleet.store.revisions(&name) {
        Ok(list) => Json(
            list.into_iter()
                .map(|(r, stable)| RevisionView {
                    current: r.id == current,
                    id: r.id,
                    stable,
                    artifact: r.artifact,
                    sha256: r.sha256,
                    created_ms: r.created_ms,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
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

pub use executor::status_str;
