//! Deployments: create, follow, control, roll back; history and revisions.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use handoff_controller::executor::{DeployRequest, Deployer};
use handoff_controller::plan::{Event, Kind};
use handoff_controller::predict::{compare, Prediction};
use handoff_runtime::ProcessRuntime;

use crate::types::*;
use crate::{deploy_error, deployer, error, AdminState};

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
        })
        .await
    {
        Ok(id) => (StatusCode::CREATED, Json(Accepted { id })).into_response(),
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
type Choice = (Option<Vec<Kind>>, Option<handoff_core::config::Batch>);

pub(crate) fn parse_choice(
    strategy: Option<&str>,
    batch: Option<&str>,
    revision: &str,
) -> Result<Choice, String> {
    let strategy = match strategy {
        None => None,
        Some("all") => Some(vec![Kind::InPlace, Kind::BlueGreen, Kind::AllAtOnce]),
        Some(x) => match handoff_core::config::Strategy::parse(x) {
            Some(k) => Some(vec![Kind::from(k)]),
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
    let plan: Option<Prediction> = d
        .fleet
        .store
        .deployment_plan(&rec.id)
        .ok()
        .flatten()
        .and_then(|p| serde_json::from_str(&p).ok());
    let comparison = plan.as_ref().map(|p| {
        let ev: Vec<(i64, String, String)> = events
            .iter()
            .map(|e| (e.at_ms, e.kind.clone(), e.message.clone()))
            .collect();
        compare(p, &ev)
    });
    DeploymentView {
        plan,
        comparison,
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

pub(crate) async fn deployment(State(s): State<AdminState>, Path(id): Path<String>) -> Response {
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

pub(crate) async fn history(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let d = match deployer(&s, &name) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match d.fleet.store.deployments(&name, 100) {
        Ok(list) => Json(list.into_iter().map(|r| view(d, r)).collect::<Vec<_>>()).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

pub(crate) async fn revisions(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
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
    let strategies = strategy.unwrap_or_else(|| vec![d.fleet.service.strategy.into()]);
    let req = DeployRequest {
        revision: b.revision.clone(),
        batch,
        ..Default::default()
    };
    match d.plan(&req, &strategies) {
        Ok(plans) => Json(PlanView {
            schema: PLAN_SCHEMA,
            service: name,
            from: d.fleet.current_revision(),
            to: b.revision,
            plans,
        })
        .into_response(),
        Err(e) => deploy_error(e),
    }
}
