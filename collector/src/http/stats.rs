//! The stats API: the engine's latest snapshot, one session of it, and actions on sessions
//! (through the control plane when there is one: stored and audited).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tapwire_api_types::Action;

use super::auth::{Authed, Change, Read};
use super::{ApiState, control, reply};
use crate::live::engine::Control;

pub(super) async fn sessions(State(s): State<ApiState>, _: Authed<Read>) -> Response {
    let snap = s.snapshot.load_full();
    match serde_json::to_vec(&*snap) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(super) async fn session(
    State(s): State<ApiState>,
    _: Authed<Read>,
    Path(name): Path<String>,
) -> Response {
    let snap = s.snapshot.load();
    match snap.sessions.iter().find(|x| x.name == name) {
        Some(x) => axum::Json(x.clone()).into_response(),
        None => reply(StatusCode::NOT_FOUND, format!("no session named {name:?}")),
    }
}

/// `POST /api/v1/sessions/{name}/{action}`: the caller first, then the action. With a
/// controller, enable and disable of an API session are stored; other sessions' actions, and
/// rotations, go to the engine; both need an operator and are audited.
pub(super) async fn action(
    State(s): State<ApiState>,
    Authed(caller, ..): Authed<Change>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let Some(parsed) = Action::parse(&action) else {
        return reply(
            StatusCode::BAD_REQUEST,
            format!("unknown action {action:?}: enable, disable or rotate"),
        );
    };
    if s.controller.is_some() {
        return control::session_action(s, caller, name, parsed).await;
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    if s.control
        .send(Control::Action {
            session: name,
            action: parsed,
            reply: tx,
        })
        .is_err()
    {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "collector is shutting down".into(),
        );
    }
    let answer = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(5))).await;
    match answer {
        Ok(Ok(Ok(msg))) => reply(StatusCode::OK, msg),
        Ok(Ok(Err(msg))) => reply(StatusCode::NOT_FOUND, msg),
        _ => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "collector did not answer".into(),
        ),
    }
}
