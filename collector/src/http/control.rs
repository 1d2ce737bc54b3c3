//! The control plane's routes. Each handler takes its caller ([`Authed`]), parses its body
//! itself (so that a malformed or unknown field is a 400 naming it) and runs the
//! [`tapwire_control::Controller`] operation on tokio's blocking pool: a change holds the
//! database for its transaction and waits for the engine, which must not stall the API's one
//! runtime thread.
//!
//! `GET /api/v1/openapi.json` documents every route; a test checks the router against it.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tapwire_api_types::Action;
use tapwire_api_types::control::{
    CaptureFile, CaptureFiles, DEFAULT_WAIT_S, FlowCreate, MAX_CATALOG_FILES, MAX_PROBE_BODY_BYTES,
    MAX_WAIT_S, ProbeLimits, ProbeReport, Register, SessionCreate, TokenCreate,
};

use tapwire_control::auth::{Caller, Need};
use tapwire_control::{ProbeRefusal, Refused};

use super::auth::{Admin, Authed, Change, Probe, Read, authenticate};
use super::serve::ThisConnection;
use super::{ApiState, Ctl, Peer, Routes, refused, reply};

/// The OpenAPI 3.1 document, hand-written.
pub const OPENAPI: &str = include_str!("openapi.json");

pub(super) fn routes(r: Routes) -> Routes {
    r.add("POST", "/api/v1/sessions", post(create_session))
        .add("PATCH", "/api/v1/sessions/{name}", patch(update_session))
        .add("DELETE", "/api/v1/sessions/{name}", delete(delete_session))
        .add(
            "GET",
            "/api/v1/sessions/{name}/definition",
            get(session_definition),
        )
        .add("GET", "/api/v1/definitions", get(definitions))
        .add("GET", "/api/v1/flows", get(flows))
        .add("POST", "/api/v1/flows", post(create_flow))
        .add("GET", "/api/v1/flows/{id}", get(flow))
        .add("DELETE", "/api/v1/flows/{id}", delete(delete_flow))
        .add("POST", "/api/v1/flows/{id}/{action}", post(flow_action))
        .add("GET", "/api/v1/probes", get(probes))
        .add(
            "POST",
            "/api/v1/probes/register",
            post(register).layer(DefaultBodyLimit::max(MAX_PROBE_BODY_BYTES)),
        )
        .add("GET", "/api/v1/probes/{name}", get(probe))
        .add("PATCH", "/api/v1/probes/{name}", patch(probe_limits))
        .add("DELETE", "/api/v1/probes/{name}", delete(delete_probe))
        .add("GET", "/api/v1/probes/{name}/flows", get(probe_flows))
        .add(
            "POST",
            "/api/v1/probes/{name}/stats",
            post(probe_stats).layer(DefaultBodyLimit::max(MAX_PROBE_BODY_BYTES)),
        )
        .add("GET", "/api/v1/tokens", get(tokens))
        .add("POST", "/api/v1/tokens", post(create_token))
        .add("DELETE", "/api/v1/tokens/{name}", delete(revoke_token))
        .add("GET", "/api/v1/audit", get(audit))
        .add("GET", "/api/v1/files", get(files))
        .add("GET", "/api/v1/fleet", get(fleet))
        .add("GET", "/api/v1/fleet/sd", get(service_discovery))
}

/// The body as `T`; the error names the field (`body: files.rotate.size: ...`).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refused> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            Refused::BadRequest(format!("body: {}", e.inner()))
        } else {
            Refused::BadRequest(format!("body: {path}: {}", e.inner()))
        }
    })?;
    de.end()
        .map_err(|e| Refused::BadRequest(format!("body: {e}")))?;
    Ok(v)
}

fn parse_id(id: &str) -> Result<i64, Refused> {
    id.parse::<i64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| Refused::BadRequest(format!("id: {id:?} is not a flow id (1 or more)")))
}

/// Runs `op` for `who` on the blocking pool; its value is the JSON answer.
async fn run<T, F>(s: ApiState, who: Caller, ok: StatusCode, op: F) -> Response
where
    T: Serialize + Send + 'static,
    F: FnOnce(&Ctl, &Caller) -> Result<T, Refused> + Send + 'static,
{
    let Some(ctl) = s.controller.clone() else {
        return reply(StatusCode::NOT_FOUND, "the control plane is off".into());
    };
    match tokio::task::spawn_blocking(move || op(&ctl, &who)).await {
        Ok(Ok(v)) => (ok, axum::Json(v)).into_response(),
        Ok(Err(r)) => refused(r),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("handler failed: {e}"),
        ),
    }
}

/// Parses the body (after the caller: an anonymous client learns nothing from the parser),
/// then [`run`].
async fn with_body<B, T, F>(
    s: ApiState,
    who: Caller,
    ok: StatusCode,
    body: Bytes,
    op: F,
) -> Response
where
    B: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    F: FnOnce(&Ctl, &Caller, B) -> Result<T, Refused> + Send + 'static,
{
    let req: B = match parse(&body) {
        Ok(r) => r,
        Err(r) => return refused(r),
    };
    run(s, who, ok, move |ctl, caller| op(ctl, caller, req)).await
}

async fn create_session(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Change>,
    body: Bytes,
) -> Response {
    with_body(
        s,
        who,
        StatusCode::CREATED,
        body,
        |c, who, req: SessionCreate| c.create_session(who, req),
    )
    .await
}

async fn update_session(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Change>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    with_body(
        s,
        who,
        StatusCode::OK,
        body,
        move |c, who, patch: serde_json::Value| c.update_session(who, &name, patch),
    )
    .await
}

async fn delete_session(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Change>,
    Path(name): Path<String>,
) -> Response {
    run(s, who, StatusCode::OK, move |c, who| {
        c.delete_session(who, &name)
            .map(|()| tapwire_api_types::Message {
                ok: true,
                message: format!("session {name} deleted"),
            })
    })
    .await
}

async fn session_definition(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Read>,
    Path(name): Path<String>,
) -> Response {
    run(s, who, StatusCode::OK, move |c, _| c.session(&name)).await
}

async fn definitions(State(s): State<ApiState>, Authed(who, ..): Authed<Read>) -> Response {
    run(s, who, StatusCode::OK, |c, _| c.sessions()).await
}

/// `POST /api/v1/sessions/{name}/{action}` with a controller, for a caller already
/// allowed to change: see [`super::stats::action`].
pub(super) async fn session_action(
    s: ApiState,
    who: Caller,
    name: String,
    action: Action,
) -> Response {
    run(s, who, StatusCode::OK, move |c, who| {
        let message = c.session_action(who, &name, action)?;
        Ok(tapwire_api_types::Message { ok: true, message })
    })
    .await
}

async fn flows(State(s): State<ApiState>, Authed(who, ..): Authed<Read>) -> Response {
    run(s, who, StatusCode::OK, |c, _| c.flows()).await
}

async fn create_flow(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Change>,
    body: Bytes,
) -> Response {
    with_body(
        s,
        who,
        StatusCode::CREATED,
        body,
        |c, who, req: FlowCreate| c.create_flow(who, req),
    )
    .await
}

async fn flow(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Read>,
    Path(id): Path<String>,
) -> Response {
    run(s, who, StatusCode::OK, move |c, _| c.flow(parse_id(&id)?)).await
}

async fn delete_flow(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Change>,
    Path(id): Path<String>,
) -> Response {
    run(s, who, StatusCode::OK, move |c, who| {
        let id = parse_id(&id)?;
        c.delete_flow(who, id).map(|()| tapwire_api_types::Message {
            ok: true,
            message: format!("flow {id} deleted"),
        })
    })
    .await
}

async fn flow_action(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Change>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    run(s, who, StatusCode::OK, move |c, who| {
        let id = parse_id(&id)?;
        let enabled = match action.as_str() {
            "enable" => true,
            "disable" => false,
            other => {
                return Err(Refused::BadRequest(format!(
                    "action: {other:?} is not enable or disable"
                )));
            }
        };
        c.set_flow_enabled(who, id, enabled)
    })
    .await
}

async fn probes(State(s): State<ApiState>, Authed(who, ..): Authed<Read>) -> Response {
    run(s, who, StatusCode::OK, |c, _| c.probes()).await
}

async fn probe(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Read>,
    Path(name): Path<String>,
) -> Response {
    run(s, who, StatusCode::OK, move |c, _| c.probe(&name)).await
}

async fn probe_limits(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Change>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    with_body(
        s,
        who,
        StatusCode::OK,
        body,
        move |c, who, l: ProbeLimits| c.set_probe_limits(who, &name, l),
    )
    .await
}

async fn delete_probe(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Change>,
    Path(name): Path<String>,
) -> Response {
    run(s, who, StatusCode::OK, move |c, who| {
        c.delete_probe(who, &name)
            .map(|()| tapwire_api_types::Message {
                ok: true,
                message: format!("probe {name} deleted"),
            })
    })
    .await
}

/// The answer to a probe's body that could not be read: over [`MAX_PROBE_BODY_BYTES`] (413,
/// counted), or cut off.
fn unread(s: &ApiState, e: &BytesRejection) -> Response {
    let code = e.status();
    let message = if code == StatusCode::PAYLOAD_TOO_LARGE {
        if let Some(c) = &s.controller {
            c.count_probe_refusal(ProbeRefusal::BodyTooLarge);
        }
        format!(
            "body: larger than {MAX_PROBE_BODY_BYTES} bytes, the most a probe may send (its stats for fewer flows, or fewer interfaces)"
        )
    } else {
        format!("body: {}", e.body_text())
    };
    reply(code, message)
}

async fn register(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Probe>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return unread(&s, &e),
    };
    with_body(s, who, StatusCode::OK, body, |c, who, req: Register| {
        c.register(who, req)
    })
    .await
}

async fn probe_stats(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Probe>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return unread(&s, &e),
    };
    with_body(
        s,
        who,
        StatusCode::OK,
        body,
        move |c, who, r: ProbeReport| {
            c.report(who, &name, r)
                .map(|()| tapwire_api_types::Message {
                    ok: true,
                    message: "stored".into(),
                })
        },
    )
    .await
}

/// `?after=VERSION&wait=SECONDS`: answers at once when the flow set's version differs from
/// `after` (or without `after`), else when it changes, else after `wait` with the same set.
/// The caller first, then the query; the token is checked again on every wake-up: revoking
/// it ends the poll with a 401. A poll that waits takes one of the long-polls' places (503
/// when none is free) and its connection gets the long-poll time budget.
async fn probe_flows(
    State(s): State<ApiState>,
    ConnectInfo(p): ConnectInfo<Peer>,
    this: Option<Extension<ThisConnection>>,
    h: HeaderMap,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let Some(ctl) = s.controller.clone() else {
        return reply(StatusCode::NOT_FOUND, "the control plane is off".into());
    };
    let mut who = match authenticate(&s, p, &h, Need::Probe).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (mut after, mut wait_s) = (None, DEFAULT_WAIT_S);
    for pair in q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after" => match v.parse::<u64>() {
                Ok(n) => after = Some(n),
                Err(_) => {
                    return refused(Refused::BadRequest(format!(
                        "after: {v:?} is not a version"
                    )));
                }
            },
            "wait" => match v.parse::<u64>() {
                Ok(n) if n <= MAX_WAIT_S => wait_s = n,
                _ => {
                    return refused(Refused::BadRequest(format!(
                        "wait: {v:?} is not 0 to {MAX_WAIT_S} seconds"
                    )));
                }
            },
            other => return refused(Refused::BadRequest(format!("unknown parameter {other:?}"))),
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_s);
    let mut waiting = None;
    loop {
        // Subscribed before looking, so that a change in between is not missed.
        let mut changes = ctl.changes();
        let (c, n, caller) = (Arc::clone(&ctl), name.clone(), who.clone());
        let set = tokio::task::spawn_blocking(move || c.flowset(&caller, &n)).await;
        let set = match set {
            Ok(Ok(set)) => set,
            Ok(Err(r)) => return refused(r),
            Err(e) => return reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        if after != Some(set.version) || tokio::time::Instant::now() >= deadline {
            return axum::Json(set).into_response();
        }
        if waiting.is_none() {
            let Ok(place) = Arc::clone(&s.long_polls).try_acquire_owned() else {
                let mut r = reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many probes are waiting for their flows: try again shortly".into(),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
                return r;
            };
            let mark = this.as_ref().map(|Extension(c)| c.long_poll());
            waiting = Some((place, mark, ctl.polling(&name)));
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        // The token again at every wake-up: a revoked one ends the poll.
        who = match authenticate(&s, p, &h, Need::Probe).await {
            Ok(c) => c,
            Err(r) => return r,
        };
    }
}

async fn tokens(State(s): State<ApiState>, Authed(who, ..): Authed<Admin>) -> Response {
    run(s, who, StatusCode::OK, |c, _| c.tokens()).await
}

async fn create_token(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Admin>,
    body: Bytes,
) -> Response {
    with_body(
        s,
        who,
        StatusCode::CREATED,
        body,
        |c, who, req: TokenCreate| c.create_token(who, req),
    )
    .await
}

async fn revoke_token(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Admin>,
    Path(name): Path<String>,
) -> Response {
    run(s, who, StatusCode::OK, move |c, who| {
        c.revoke_token(who, &name)
            .map(|()| tapwire_api_types::Message {
                ok: true,
                message: format!("token {name} revoked"),
            })
    })
    .await
}

async fn audit(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Read>,
    RawQuery(q): RawQuery,
) -> Response {
    let (mut after, mut limit) = (0i64, 1000u32);
    for pair in q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after" => match v.parse::<i64>() {
                Ok(n) if n >= 0 => after = n,
                _ => {
                    return refused(Refused::BadRequest(format!(
                        "after: {v:?} is not an audit id"
                    )));
                }
            },
            "limit" => match v.parse::<u32>() {
                Ok(n) if (1..=10_000).contains(&n) => limit = n,
                _ => {
                    return refused(Refused::BadRequest(format!(
                        "limit: {v:?} is not 1 to 10000"
                    )));
                }
            },
            other => return refused(Refused::BadRequest(format!("unknown parameter {other:?}"))),
        }
    }
    run(s, who, StatusCode::OK, move |c, who| {
        c.audit(who, after, limit)
    })
    .await
}

/// The catalog: a session's capture files (every collector's) whose packets overlap
/// `from..=to`. The session is named, never a path; paths in the answer are relative to each
/// collector's output directory.
async fn files(
    State(s): State<ApiState>,
    Authed(who, ..): Authed<Read>,
    RawQuery(q): RawQuery,
) -> Response {
    match files_query(q.as_deref(), crate::live::engine::now_ns()) {
        Ok((session, from_ns, to_ns)) => {
            run(s, who, StatusCode::OK, move |c, _| {
                let (rows, truncated) =
                    c.catalog_files(&session, from_ns, to_ns, MAX_CATALOG_FILES)?;
                Ok(CaptureFiles {
                    files: rows.into_iter().map(capture_file).collect(),
                    truncated,
                })
            })
            .await
        }
        Err(e) => refused(Refused::BadRequest(e)),
    }
}

/// `session` (required), `from` and `to` (RFC 3339, -15m or seconds since the epoch; default:
/// all time), each at most once.
fn files_query(q: Option<&str>, now_ns: u64) -> Result<(String, i64, i64), String> {
    let (mut session, mut from_ns, mut to_ns) = (None, 0i64, i64::MAX);
    let mut seen = std::collections::HashSet::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = super::packets::percent_decode(v)
            .ok_or_else(|| format!("{k}: not percent-encoded UTF-8"))?;
        if !seen.insert(k.to_string()) {
            return Err(format!("{k}: given twice"));
        }
        let time = |v: &str| {
            tapwire_api_types::time::parse_time(v, now_ns)
                .map(|t| i64::try_from(t).unwrap_or(i64::MAX))
        };
        match k {
            "session" => session = Some(v),
            "from" => from_ns = time(&v).map_err(|e| format!("from: {e}"))?,
            "to" => to_ns = time(&v).map_err(|e| format!("to: {e}"))?,
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    let session = session.ok_or("session: required (a session's name)")?;
    if from_ns > to_ns {
        return Err("from: after to".into());
    }
    Ok((session, from_ns, to_ns))
}

fn capture_file(f: tapwire_control::store::CatalogFile) -> CaptureFile {
    CaptureFile {
        collector: f.collector,
        session: f.session,
        path: f.path,
        first_ns: f.first_ns,
        last_ns: f.last_ns,
        packets: f.packets,
        bytes: f.bytes,
        state: f.state.name().to_string(),
        updated_ns: f.updated_ns,
    }
}

/// Every collector of the fleet: state, lease age, sessions, load. Answered from the last
/// state read while the database is away (`control` says so).
async fn fleet(State(s): State<ApiState>, Authed(who, ..): Authed<Read>) -> Response {
    run(s, who, StatusCode::OK, |c, _| Ok(c.fleet())).await
}

/// Prometheus `http_sd_config`: a target per live collector with its API's address.
async fn service_discovery(State(s): State<ApiState>, Authed(who, ..): Authed<Read>) -> Response {
    run(s, who, StatusCode::OK, |c, _| Ok(c.service_discovery())).await
}

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
