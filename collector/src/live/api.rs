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
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use crossbeam_channel::Sender;
use tapwire_api::{Action, Message, Snapshot};

use super::engine::Control;

#[derive(Clone)]
struct ApiState {
    snapshot: Arc<ArcSwap<Snapshot>>,
    control: Sender<Control>,
    token: Option<Arc<str>>,
}

/// Binds `addr` now (so a taken port is an error at start) and serves on a new thread.
pub fn spawn(
    addr: SocketAddr,
    snapshot: Arc<ArcSwap<Snapshot>>,
    control: Sender<Control>,
    token: Option<String>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let state = ApiState {
        snapshot,
        control,
        token: token.map(Arc::from),
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
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "API listener failed");
                        return;
                    }
                };
                let app = router(state);
                if let Err(e) = axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .await
                {
                    tracing::error!(error = %e, "API server stopped");
                }
            });
        })?;
    Ok(local)
}

fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/sessions/{name}", get(session))
        .route("/api/v1/sessions/{name}/{action}", post(action))
        .route("/api/v1/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn sessions(State(s): State<ApiState>) -> Response {
    let snap = s.snapshot.load_full();
    match serde_json::to_vec(&*snap) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn session(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    let snap = s.snapshot.load();
    match snap.sessions.iter().find(|x| x.name == name) {
        Some(x) => axum::Json(x.clone()).into_response(),
        None => reply(StatusCode::NOT_FOUND, format!("no session named {name:?}")),
    }
}

async fn action(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authorised = match (&s.token, bearer) {
        (Some(t), Some(b)) => constant_time_eq(t.as_bytes(), b.as_bytes()),
        (_, Some(_)) => false,
        (_, None) => peer.ip().is_loopback(),
    };
    if !authorised {
        return reply(
            StatusCode::FORBIDDEN,
            "actions need a localhost connection or the API token".into(),
        );
    }
    let Some(action) = Action::parse(&action) else {
        return reply(
            StatusCode::BAD_REQUEST,
            format!("unknown action {action:?}: enable, disable or rotate"),
        );
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    if s.control
        .send(Control::Action {
            session: name,
            action,
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

fn reply(code: StatusCode, message: String) -> Response {
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

async fn metrics(State(s): State<ApiState>) -> Response {
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
