//! The daemon itself over the API: who runs (`GET /daemon`), and handing
//! over to a new process (`POST /reload`, `POST /upgrade`).
//!
//! The API does not do the hand-over: it sends a [`DaemonRequest`] to the
//! daemon's main loop (`handoff serve`), which owns the listeners, the
//! state dir lock and the fleets, and answers once the new daemon serves
//! (or says why not). The answer goes out before this daemon's admin
//! server stops.

use axum::extract::State;
pub use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::{error, AdminState};

/// What to hand over to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonCommand {
    /// The same binary, re-reading the daemon's config file.
    Reload,
    /// Another binary (default: the running one), same config file.
    Upgrade { binary: Option<std::path::PathBuf> },
}

/// A hand-over that went through.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handover {
    pub old_pid: u32,
    pub new_pid: u32,
    pub message: String,
}

/// Why not, with the status and code the API answers with.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

pub struct DaemonRequest {
    pub command: DaemonCommand,
    pub reply: tokio::sync::oneshot::Sender<Result<Handover, Refusal>>,
}

/// `GET /daemon`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonView {
    pub pid: u32,
    pub version: String,
    /// The config file it runs (and a reload re-reads).
    pub config: String,
}

pub(crate) async fn daemon(State(s): State<AdminState>) -> Json<DaemonView> {
    Json(DaemonView {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        config: s.config_path.to_string(),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpgradeBody {
    #[serde(default)]
    binary: Option<String>,
}

pub(crate) async fn reload(State(s): State<AdminState>) -> Response {
    ask(&s, DaemonCommand::Reload).await
}

pub(crate) async fn upgrade(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    // The body is optional: none, or `{"binary": PATH}`.
    let body: UpgradeBody = if body.iter().all(u8::is_ascii_whitespace) {
        UpgradeBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("the body must be {{\"binary\": PATH}} or empty: {e}"),
                )
            }
        }
    };
    let binary = body.binary.filter(|b| !b.is_empty());
    ask(
        &s,
        DaemonCommand::Upgrade {
            binary: binary.map(Into::into),
        },
    )
    .await
}

async fn ask(s: &AdminState, command: DaemonCommand) -> Response {
    let Some(tx) = &s.daemon else {
        return error(
            StatusCode::CONFLICT,
            "not_supported",
            "this daemon cannot hand over (it was not started by `handoff serve`)",
        );
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if tx.send(DaemonRequest { command, reply }).await.is_err() {
        return error(
            StatusCode::CONFLICT,
            "stopping",
            "the daemon is stopping; nothing to hand over",
        );
    }
    match answer.await {
        Ok(Ok(h)) => (StatusCode::OK, Json(h)).into_response(),
        Ok(Err(r)) => error(r.status, r.code, r.message),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "handover_failed",
            "the daemon dropped the request; see its log",
        ),
    }
}
