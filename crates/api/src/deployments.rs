//! Deployments: create, follow, control, roll back; history and revisions.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use handoff_controller::executor::DeployRequest;
use handoff_controller::plan::{Event, Strategy};
use handoff_controller::service::ManagedService;

use crate::types::*;
use crate::{deploy_error, deployer, error, AdminState};
use handoff_controller::executor::rollback::RollbackKind;

pub(crate) async fn deploy(
    State(s): State<AdminState>,
    body: Result<Json<DeployBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let b = match json_body(body, "deploy") {
        Ok(b) => b,
        Err(r) => return r,
    };
    let d = match deployer(&s, &b.service) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let (strategy, batch) =
        match parse_choice(b.strategy.as_deref(), b.batch.as_deref(), &b.revision) {
            Ok(x) => x,
            Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", m),
        };
    if strategy.as_ref().is_some_and(|s| s.len() > 1) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "strategy: 'all' is for `plan`; a deployment uses one of in-place, blue-green or all-at-once".to_string(),
        );
    }
    let strategy = strategy.and_then(|s| s.first().copied());
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
            ..Default::default()
        })
        .await
    {
        Ok(id) => (StatusCode::CREATED, Json(Accepted { id, rollback: None })).into_response(),
        Err(e) => deploy_error(e),
    }
}

/// A JSON body, or the API's own 400 naming what is wrong with it.
#[allow(clippy::result_large_err)] // the Err is the HTTP answer itself
fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
    what: &str,
) -> Result<T, Response> {
    body.map(|Json(b)| b).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("bad {what} body: {}", e.body_text()),
        )
    })
}

/// The strategy (`all`: every one, for `plan`), batch and revision of a
/// deploy or plan request, checked; the error is a 400's message.
type Choice = (Option<Vec<Strategy>>, Option<handoff_core::config::Batch>);

pub(crate) fn parse_choice(
    strategy: Option<&str>,
    batch: Option<&str>,
    revision: &str,
) -> Result<Choice, String> {
    let strategy = match strategy {
        None => None,
        Some("all") => Some(vec![
            Strategy::InPlace,
            Strategy::BlueGreen,
            Strategy::AllAtOnce,
        ]),
        Some(x) => match handoff_core::config::Strategy::parse(x) {
            Some(k) => Some(vec![k]),
            None => {
                return Err(format!(
                    "strategy: unknown '{x}'; use in-place, blue-green or all-at-once"
                ))
            }
        },
    };
    let batch = match batch {
        None => None,
        Some(x) => Some(handoff_core::config::parse_batch(x).map_err(|m| format!("batch: {m}"))?),
    };
    // The one rule for ids: a revision id becomes a directory name and a
    // `{revision}` in commands, so it never reaches either unchecked.
    handoff_core::names::check_revision(revision).map_err(|e| e.to_string())?;
    Ok((strategy, batch))
}

pub(crate) async fn control(
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
            return rollback(d.as_ref(), b).await;
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
        Ok(id) => (StatusCode::ACCEPTED, Json(Accepted { id, rollback: None })).into_response(),
        Err(e) => deploy_error(e),
    }
}

/// Blue/green in retention: a flip. Running: abort (which rolls back).
/// Otherwise: a new deployment to `to` or the revision that served before
/// (the controller decides; see `executor::rollback`).
async fn rollback(d: &dyn ManagedService, b: RollbackBody) -> Response {
    if let Some(to) = &b.to {
        if let Err(m) = parse_choice(None, None, to) {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                m.replacen("revision", "to", 1),
            );
        }
    }
    match d.rollback(b.to).await {
        Ok((id, how)) => {
            let status = if how == RollbackKind::Deploy {
                StatusCode::CREATED
            } else {
                StatusCode::ACCEPTED
            };
            (
                status,
                Json(Accepted {
                    id,
                    rollback: Some(how),
                }),
            )
                .into_response()
        }
        Err(e) => deploy_error(e),
    }
}

pub(crate) async fn deployment(State(s): State<AdminState>, Path(id): Path<String>) -> Response {
    // `SERVICE@N` names its service; older ids (`SERVICE-N`) are looked up
    // in every service.
    let owner = id.split_once('@').map(|(svc, _)| svc);
    for d in s.deployers.values() {
        if owner.is_some_and(|o| o != d.name()) {
            continue;
        }
        match d.deployment(&id) {
            Ok(Some(v)) => return Json(v).into_response(),
            Ok(None) => {}
            Err(e) => return deploy_error(e),
        }
    }
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no deployment '{id}'; ids look like web@3 (`handoff history SERVICE` lists them)"),
    )
}

pub(crate) async fn history(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let d = match deployer(&s, &name) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match d.history(100) {
        Ok(list) => Json(list).into_response(),
        Err(e) => deploy_error(e),
    }
}

pub(crate) async fn revisions(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let d = match deployer(&s, &name) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match d.revisions() {
        Ok(list) => Json(list).into_response(),
        Err(e) => deploy_error(e),
    }
}

/// `handoff plan`: the predicted deployment, for one strategy or all.
pub(crate) async fn plan(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    body: Result<Json<PlanBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let b = match json_body(body, "plan") {
        Ok(b) => b,
        Err(r) => return r,
    };
    let d = match deployer(&s, &name) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let (strategy, batch) =
        match parse_choice(b.strategy.as_deref(), b.batch.as_deref(), &b.revision) {
            Ok(x) => x,
            Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", m),
        };
    let strategies = strategy.unwrap_or_else(|| vec![d.default_strategy()]);
    let req = DeployRequest {
        revision: b.revision.clone(),
        batch,
        ..Default::default()
    };
    match d.plan(&req, &strategies) {
        Ok(plans) => Json(PlanView {
            schema: PLAN_SCHEMA,
            service: name,
            from: d.current_revision(),
            to: b.revision,
            plans,
        })
        .into_response(),
        Err(e) => deploy_error(e),
    }
}
