//! handoff-api: the daemon's admin surface on `server.admin`.
//!
//! For now it serves `/healthz` (is the daemon up), `/metrics` (Prometheus
//! text rendered by `prometheus-client` from the proxy's collector) and
//! `/logs/{service}/{instance}?lines=N` (the tail of an instance's log). The JSON API, events and dashboard join it here, on the same
//! axum router, so one listener carries every admin surface.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    /// `state_dir/logs`: instance logs by service.
    pub logs_dir: std::path::PathBuf,
}

#[derive(serde::Deserialize)]
struct LogQuery {
    lines: Option<usize>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/logs/{service}/{instance}", get(logs))
        .with_state(state)
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
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn logs(
    State(s): State<AdminState>,
    Path((service, instance)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> impl IntoResponse {
    let safe = |x: &str| {
        !x.is_empty()
            && x.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !safe(&service) || !safe(&instance) {
        return (
            StatusCode::BAD_REQUEST,
            "service and instance names use letters, digits, '-' and '_'\n".to_string(),
        );
    }
    let path = handoff_runtime::logs::path(&s.logs_dir, &service, &instance);
    if !path.exists() {
        return (
            StatusCode::NOT_FOUND,
            format!("no log for instance '{instance}' of service '{service}'\n"),
        );
    }
    let mut t = handoff_runtime::logs::tail(&path, q.lines.unwrap_or(100).min(10_000));
    t.push('\n');
    (StatusCode::OK, t)
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
