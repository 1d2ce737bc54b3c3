//! The collector's HTTP API, on its own thread and small tokio runtime so that it never
//! touches the packet path: the engine's latest snapshot, actions on sessions, metrics and,
//! with `--db`, the control plane's routes, on `--api` and on `--listen` (TLS when given).
//!
//! - `stats`: `GET /api/v1/sessions` (the [`tapwire_api_types::Snapshot`] as JSON),
//!   `GET /api/v1/sessions/{name}`, `POST /api/v1/sessions/{name}/{enable|disable|rotate}`.
//! - `metrics`: `GET /metrics`, Prometheus text ([`prometheus`]), labels limited to session
//!   names, reasons and inputs.
//! - `control`: the control plane's routes, each a [`tapwire_control::Controller`] operation.
//! - `auth`: who is calling and whether they may: the `Authed` extractor, over one
//!   `authenticate` function.
//! - [`tls`]: the `--listen` listener with rustls.
//!
//! `GET /api/v1/openapi.json` documents every route; a test checks the router against it.

mod auth;
mod control;
mod metrics;
mod stats;
#[cfg(test)]
mod tests;
pub mod tls;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::connect_info::Connected;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::serve::IncomingStream;
use crossbeam_channel::Sender;
use tapwire_api_types::{Message, Snapshot};
use tapwire_control::{Controller, Refused};

use crate::live::control_plane::EngineLink;
use crate::live::engine::Control;
pub use metrics::prometheus;
use tls::TlsListener;

/// The control plane as the collector runs it.
pub type Ctl = Controller<EngineLink>;

#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) control: Sender<Control>,
    pub(crate) token: Option<Arc<str>>,
    /// The control plane, when the collector runs with `--db`: every route then needs a token
    /// (a viewer's for reads; none for reads from localhost).
    pub(crate) controller: Option<Arc<Ctl>>,
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
    controller: Option<Arc<Ctl>>,
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
    .add("GET", "/api/v1/sessions", get(stats::sessions))
    .add("GET", "/api/v1/sessions/{name}", get(stats::session))
    .add(
        "POST",
        "/api/v1/sessions/{name}/{action}",
        post(stats::action),
    )
    .add("GET", "/api/v1/health", get(health))
    .add("GET", "/metrics", get(metrics::metrics))
    .add("GET", "/api/v1/openapi.json", get(control::openapi));
    if with_controller {
        control::routes(r)
    } else {
        r
    }
}

/// `GET /api/v1/health`: from memory only, never the database, so that it answers (and says
/// `"control": "disconnected"`) while the database is away.
async fn health(axum::extract::State(s): axum::extract::State<ApiState>) -> Response {
    use tapwire_api_types::control::{ControlState, Health};
    let (control, collector) = match &s.controller {
        Some(c) => (c.control_state(), Some(c.name().to_string())),
        None => (ControlState::Off, None),
    };
    axum::Json(Health {
        ok: true,
        control,
        collector,
    })
    .into_response()
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

/// A refusal of the control plane as its HTTP status and message.
pub(crate) fn refused(r: Refused) -> Response {
    let code = match &r {
        Refused::BadRequest(_) => StatusCode::BAD_REQUEST,
        Refused::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Refused::Forbidden(_) => StatusCode::FORBIDDEN,
        Refused::NotFound(_) => StatusCode::NOT_FOUND,
        Refused::Conflict(_) => StatusCode::CONFLICT,
        Refused::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        Refused::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut resp = reply(code, r.to_string());
    if code == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}
