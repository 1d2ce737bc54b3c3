//! The stats and control API over HTTP, on its own thread and small tokio runtime so that it
//! never touches the packet path: it serves the engine's latest snapshot and forwards actions.
//!
//! - `GET /api/v1/sessions`: the [`tapwire_api::Snapshot`] as JSON.
//! - `GET /api/v1/sessions/{name}`: one session.
//! - `POST /api/v1/sessions/{name}/{enable|disable|rotate}`: from localhost, or with
//!   `Authorization: Bearer <token>` when a token is set.
//! - `GET /metrics`: Prometheus text, labels limited to session names, reasons and inputs.
//! - `GET /api/v1/health`.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::serve::IncomingStream;
use crossbeam_channel::Sender;
use tapwire_api::{Action, Message, Snapshot};

use super::engine::Control;
use crate::control::auth::Need;
use crate::control::tls::TlsListener;
use crate::control::{Controller, http as ctl_http};

#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) control: Sender<Control>,
    pub(crate) token: Option<Arc<str>>,
    /// The control plane, when the collector runs with `--db`: every route then needs a token
    /// (a viewer's for reads; none for reads from localhost).
    pub(crate) controller: Option<Arc<Controller>>,
}

/// The client's address, from a plain or a TLS listener.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// A second listener for the control plane (probes and remote clients), TLS when configured.
pub struct Listen {
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Binds `addr` (and `listen`) now, so that a taken port is an error at start, and serves
/// on a new thread.
pub fn spawn(
    addr: Option<SocketAddr>,
    listen: Option<Listen>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    control: Sender<Control>,
    token: Option<String>,
    controller: Option<Arc<Controller>>,
) -> std::io::Result<Vec<SocketAddr>> {
    let mut bound = Vec::new();
    for a in addr.iter().chain(listen.as_ref().map(|l| &l.addr)) {
        let listener = TcpListener::bind(a)?;
        listener.set_nonblocking(true)?;
        bound.push(listener);
    }
    let locals = bound
        .iter()
        .map(TcpListener::local_addr)
        .collect::<std::io::Result<Vec<_>>>()?;
    let tls = listen.and_then(|l| l.tls);
    let state = ApiState {
        snapshot,
        control,
        token: token.map(Arc::from),
        controller,
    };
    std::thread::Builder::new()
        .name("tapwire-api".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "API runtime failed to start");
                    return;
                }
            };
            rt.block_on(async move {
                let app = router(state);
                let n = bound.len();
                let mut tasks = tokio::task::JoinSet::new();
                for (i, listener) in bound.into_iter().enumerate() {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "API listener failed");
                            return;
                        }
                    };
                    let app = app.clone();
                    // The last listener is `listen`'s when one was given with TLS.
                    let tls = if i + 1 == n { tls.clone() } else { None };
                    tasks.spawn(async move {
                        let served = match tls {
                            Some(config) => match TlsListener::new(listener, config) {
                                Ok(l) => {
                                    axum::serve(
                                        l,
                                        app.into_make_service_with_connect_info::<Peer>(),
                                    )
                                    .await
                                }
                                Err(e) => Err(e),
                            },
                            None => {
                                axum::serve(
                                    listener,
                                    app.into_make_service_with_connect_info::<Peer>(),
                                )
                                .await
                            }
                        };
                        if let Err(e) = served {
                            tracing::error!(error = %e, "API server stopped");
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
            });
        })?;
    Ok(locals)
}

/// The router and the (method, path) of every route it has, for the OpenAPI test.
pub(crate) struct Routes {
    pub(crate) router: Router<ApiState>,
    pub(crate) list: Vec<(&'static str, &'static str)>,
}

impl Routes {
    pub(crate) fn add(
        mut self,
        method: &'static str,
        path: &'static str,
        handler: MethodRouter<ApiState>,
    ) -> Routes {
        self.router = self.router.route(path, handler);
        self.list.push((method, path));
        self
    }
}

/// Every route; the control plane's only with a controller.
pub(crate) fn routes(with_controller: bool) -> Routes {
    let r = Routes {
        router: Router::new(),
        list: Vec::new(),
    }
    .add("GET", "/api/v1/sessions", get(sessions))
    .add("GET", "/api/v1/sessions/{name}", get(session))
    .add("POST", "/api/v1/sessions/{name}/{action}", post(action))
    .add("GET", "/api/v1/health", get(|| async { "ok\n" }))
    .add("GET", "/metrics", get(metrics))
    .add("GET", "/api/v1/openapi.json", get(ctl_http::openapi));
    if with_controller {
        ctl_http::routes(r)
    } else {
        r
    }
}

pub(crate) fn router(state: ApiState) -> Router {
    routes(state.controller.is_some())
        .router
        .fallback(|| async {
            reply(
                StatusCode::NOT_FOUND,
                "no such route (see /api/v1/openapi.json)".into(),
            )
        })
        .with_state(state)
}

/// With a controller: the refusal, when the client may not do this (checked on the blocking
/// pool: the database may be held by a change for a moment).
pub(crate) async fn check(
    s: &ApiState,
    peer: Peer,
    headers: &HeaderMap,
    need: Need,
) -> Option<Response> {
    let ctl = Arc::clone(s.controller.as_ref()?);
    let bearer = match bearer(headers) {
        Ok(b) => b.map(str::to_string),
        Err(m) => return Some(reply(StatusCode::UNAUTHORIZED, m)),
    };
    let loopback = peer.0.ip().to_canonical().is_loopback();
    match tokio::task::spawn_blocking(move || ctl.authenticate(bearer.as_deref(), loopback, need))
        .await
    {
        Ok(Ok(_)) => None,
        Ok(Err(r)) => Some(ctl_http::refused(r)),
        Err(e) => Some(reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// The `Authorization: Bearer` token, if any; another scheme is an error.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, String> {
    match headers.get(header::AUTHORIZATION) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| Some(t.trim()))
            .ok_or_else(|| "Authorization: use \"Bearer <token>\"".to_string()),
    }
}

async fn sessions(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = check(&s, peer, &headers, Need::Read).await {
        return r;
    }
    let snap = s.snapshot.load_full();
    match serde_json::to_vec(&*snap) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn session(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Some(r) = check(&s, peer, &headers, Need::Read).await {
        return r;
    }
    let snap = s.snapshot.load();
    match snap.sessions.iter().find(|x| x.name == name) {
        Some(x) => axum::Json(x.clone()).into_response(),
        None => reply(StatusCode::NOT_FOUND, format!("no session named {name:?}")),
    }
}

async fn action(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let Some(parsed) = Action::parse(&action) else {
        return reply(
            StatusCode::BAD_REQUEST,
            format!("unknown action {action:?}: enable, disable or rotate"),
        );
    };
    if s.controller.is_some() {
        return ctl_http::session_action(s, peer, headers, name, parsed).await;
    }
    let authorised = match (&s.token, bearer(&headers).ok().flatten()) {
        (Some(t), Some(b)) => constant_time_eq(t.as_bytes(), b.as_bytes()),
        (_, Some(_)) => false,
        (_, None) => peer.0.ip().to_canonical().is_loopback(),
    };
    if !authorised {
        return reply(
            StatusCode::FORBIDDEN,
            "actions need a localhost connection or the API token".into(),
        );
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

pub(crate) fn reply(code: StatusCode, message: String) -> Response {
    (
        code,
        axum::Json(Message {
            ok: code.is_success(),
            message,
        }),
    )
        .into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = check(&s, peer, &headers, Need::Read).await {
        return r;
    }
    let body = prometheus(&s.snapshot.load());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Renders the snapshot as Prometheus text. Labels stay low-cardinality: session names (which
/// the operator chooses or are one per source), reasons, kinds and inputs; never addresses.
pub fn prometheus(s: &Snapshot) -> String {
    let mut out = String::new();
    let header = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(
            out,
            "# HELP tapwire_{name} {help}\n# TYPE tapwire_{name} {kind}"
        );
    };
    header(
        &mut out,
        "uptime_seconds",
        "gauge",
        "Seconds since the collector started.",
    );
    let _ = writeln!(out, "tapwire_uptime_seconds {}", s.uptime_s);
    header(
        &mut out,
        "sources",
        "gauge",
        "Distinct mirrored sources seen.",
    );
    let _ = writeln!(out, "tapwire_sources {}", s.totals.sources);

    header(
        &mut out,
        "input_packets_total",
        "counter",
        "Packets read per input.",
    );
    for i in &s.inputs {
        let _ = writeln!(
            out,
            "tapwire_input_packets_total{{input=\"{}\"}} {}",
            esc(&i.name),
            i.packets
        );
    }
    header(
        &mut out,
        "input_bytes_total",
        "counter",
        "Bytes read per input.",
    );
    for i in &s.inputs {
        let _ = writeln!(
            out,
            "tapwire_input_bytes_total{{input=\"{}\"}} {}",
            esc(&i.name),
            i.bytes
        );
    }
    header(
        &mut out,
        "input_kernel_drops_total",
        "counter",
        "Packets the kernel dropped before tapwire read them.",
    );
    for i in &s.inputs {
        let _ = writeln!(
            out,
            "tapwire_input_kernel_drops_total{{input=\"{}\"}} {}",
            esc(&i.name),
            i.kernel_drops
        );
    }
    header(
        &mut out,
        "not_mirror_packets_total",
        "counter",
        "Packets that were not mirror traffic, by kind.",
    );
    for (k, n) in &s.totals.not_mirror {
        let _ = writeln!(
            out,
            "tapwire_not_mirror_packets_total{{kind=\"{}\"}} {n}",
            esc(k)
        );
    }
    header(
        &mut out,
        "malformed_packets_total",
        "counter",
        "Malformed packets, by reason.",
    );
    for (k, n) in &s.totals.malformed {
        let _ = writeln!(
            out,
            "tapwire_malformed_packets_total{{reason=\"{}\"}} {n}",
            esc(k)
        );
    }
    header(
        &mut out,
        "refused_packets_total",
        "counter",
        "Packets from sources outside the allow-list.",
    );
    let _ = writeln!(
        out,
        "tapwire_refused_packets_total {}",
        s.totals.refused.values().sum::<u64>()
    );

    header(
        &mut out,
        "session_packets_total",
        "counter",
        "Mirrored packets received per session.",
    );
    for x in &s.sessions {
        let _ = writeln!(
            out,
            "tapwire_session_packets_total{{session=\"{}\"}} {}",
            esc(&x.name),
            x.packets
        );
    }
    header(
        &mut out,
        "session_bytes_total",
        "counter",
        "Inner-frame bytes received per session.",
    );
    for x in &s.sessions {
        let _ = writeln!(
            out,
            "tapwire_session_bytes_total{{session=\"{}\"}} {}",
            esc(&x.name),
            x.bytes
        );
    }
    header(
        &mut out,
        "session_written_packets_total",
        "counter",
        "Packets written per session.",
    );
    for x in &s.sessions {
        let _ = writeln!(
            out,
            "tapwire_session_written_packets_total{{session=\"{}\"}} {}",
            esc(&x.name),
            x.written
        );
    }
    header(
        &mut out,
        "session_pending_packets",
        "gauge",
        "Packets accepted for a session's file and not yet on disk.",
    );
    for x in &s.sessions {
        let _ = writeln!(
            out,
            "tapwire_session_pending_packets{{session=\"{}\"}} {}",
            esc(&x.name),
            x.pending
        );
    }
    header(
        &mut out,
        "session_lost_packets_total",
        "counter",
        "Packets lost in transit, from sequence gaps.",
    );
    for x in &s.sessions {
        let _ = writeln!(
            out,
            "tapwire_session_lost_packets_total{{session=\"{}\"}} {}",
            esc(&x.name),
            x.lost
        );
    }
    header(
        &mut out,
        "session_dropped_packets_total",
        "counter",
        "Packets tapwire did not write, by reason.",
    );
    for x in &s.sessions {
        let d = &x.drops;
        for (reason, n) in [
            ("disabled", d.disabled),
            ("filter", d.filter),
            ("disk_guard", d.disk_guard),
            ("disk_full", d.disk_full),
            ("write_error", d.write_error),
            ("backlog", d.backlog),
        ] {
            let _ = writeln!(
                out,
                "tapwire_session_dropped_packets_total{{session=\"{}\",reason=\"{reason}\"}} {n}",
                esc(&x.name)
            );
        }
    }
    header(
        &mut out,
        "session_file_bytes",
        "gauge",
        "Size of the file being written per session.",
    );
    for x in &s.sessions {
        if let Some(f) = &x.files {
            let _ = writeln!(
                out,
                "tapwire_session_file_bytes{{session=\"{}\"}} {}",
                esc(&x.name),
                f.current_bytes
            );
        }
    }
    out
}

/// Escapes a Prometheus label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_escaping() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
