//! The collector's HTTP API, on its own thread and small tokio runtime so that it never
//! touches the packet path: the engine's latest snapshot, actions on sessions, metrics and,
//! with `--db`, the control plane's routes, on `--api` and on `--listen` (TLS when given).
//!
//! - `stats`: `GET /api/v1/sessions` (the [`tapwire_api_types::Snapshot`] as JSON),
//!   `GET /api/v1/sessions/{name}`, `POST /api/v1/sessions/{name}/{enable|disable|rotate}`.
//! - `stream`: `GET /api/v1/sessions/{name}/stream`, a session's packets as a live pcapng
//!   stream (the engine's half is [`crate::live::stream`]).
//! - `metrics`: `GET /metrics`, Prometheus text ([`prometheus`]), labels limited to session
//!   names, reasons and inputs.
//! - [`packets`]: `GET /api/v1/packets`, a query's pcapng streamed ([`crate::query`]).
//! - `control`: the control plane's routes, each a [`tapwire_control::Controller`] operation.
//! - `auth`: who is calling and whether they may: the `Authed` extractor, over one
//!   `authenticate` function.
//! - [`tls`]: the rustls configuration of `--listen`.
//! - [`serve`]: the accept loop both listeners share, with its caps and timeouts: the API
//!   keeps answering under a flood and never takes the descriptors capture needs.
//!
//! `GET /api/v1/openapi.json` documents every route; a test checks the router against it.

mod auth;
mod control;
mod metrics;
pub mod packets;
mod parts;
mod relay;
pub mod serve;
mod stats;
mod stream;
#[cfg(test)]
mod tests;
pub mod tls;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use crossbeam_channel::Sender;
use tapwire_api_types::{Message, Snapshot};
use tapwire_control::{Controller, Refused};
use tokio::sync::Semaphore;

use crate::live::control_plane::EngineLink;
use crate::live::engine::Control;
pub use auth::ApiToken;
pub use metrics::prometheus;
use serve::{Gate, Limits};

/// The control plane as the collector runs it.
pub type Ctl = Controller<EngineLink>;

#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) control: Sender<Control>,
    pub(crate) token: Option<ApiToken>,
    /// The control plane, when the collector runs with `--db`: every route then needs a token
    /// (a viewer's for reads; none for reads from localhost).
    pub(crate) controller: Option<Arc<Ctl>>,
    /// Packet queries (`/api/v1/packets`), when served.
    pub(crate) query: Option<Arc<packets::QueryState>>,
    /// Long-polls waiting now, at most [`Limits::max_long_polls`].
    pub(crate) long_polls: Arc<Semaphore>,
    /// Live streams relayed from the fleet's other collectors, at most [`relay::MAX_RELAYS`].
    pub(crate) relays: Arc<Semaphore>,
    /// How the fleet's other collectors' HTTPS APIs are checked (`None`: http:// only).
    pub(crate) peer_tls: Option<Arc<rustls::ClientConfig>>,
    /// The connections' gate, for `/metrics` (`None` for a router served by a test).
    pub(crate) gate: Option<Arc<Gate>>,
    /// The catalog of capture files' counters (with `--db`), for `/api/v1/health`.
    pub(crate) catalog: Option<Arc<crate::live::catalog::Counters>>,
}

impl ApiState {
    pub(crate) fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        control: Sender<Control>,
        token: Option<ApiToken>,
        controller: Option<Arc<Ctl>>,
    ) -> ApiState {
        // Served, the gate's limits replace this ([`serve_on`]).
        let limits = Limits::for_descriptor_limit(crate::fds::limit());
        ApiState {
            snapshot,
            control,
            token,
            controller,
            query: None,
            long_polls: Arc::new(Semaphore::new(limits.max_long_polls)),
            relays: Arc::new(Semaphore::new(relay::MAX_RELAYS)),
            peer_tls: None,
            gate: None,
            catalog: None,
        }
    }

    /// Reports the catalog's backlog in `/api/v1/health`.
    pub(crate) fn with_catalog(
        mut self,
        c: Option<Arc<crate::live::catalog::Counters>>,
    ) -> ApiState {
        self.catalog = c;
        self
    }

    /// Answers packet queries (`/api/v1/packets`) with `query`.
    pub(crate) fn with_query(mut self, query: Arc<packets::QueryState>) -> ApiState {
        self.query = Some(query);
        self
    }
}

/// The client's address (a request extension, as axum's `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// A second listener for the control plane (probes and remote clients), TLS when configured.
pub struct Listen {
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How the fleet's other collectors' HTTPS APIs are checked (query parts, streams).
    pub peers: Option<Arc<rustls::ClientConfig>>,
}

/// Binds `addr` (and `listen`) now, so that a taken port is an error at start, and serves
/// `state` on both on a new thread through one [`Gate`] with `limits`.
pub(crate) fn spawn(
    addr: Option<SocketAddr>,
    listen: Option<Listen>,
    mut state: ApiState,
    limits: Limits,
) -> std::io::Result<(Vec<SocketAddr>, Arc<Gate>)> {
    if let Some(p) = listen.as_ref().and_then(|l| l.peers.clone()) {
        state.peer_tls = Some(p);
    }
    let mut bound = Vec::new();
    let tls = listen.as_ref().and_then(|l| l.tls.clone());
    for (a, tls) in addr
        .iter()
        .map(|a| (a, None))
        .chain(listen.as_ref().map(|l| (&l.addr, tls)))
    {
        let listener = TcpListener::bind(a)?;
        listener.set_nonblocking(true)?;
        bound.push((listener, tls.map(tokio_rustls::TlsAcceptor::from)));
    }
    let locals = bound
        .iter()
        .map(|(l, _)| l.local_addr())
        .collect::<std::io::Result<Vec<_>>>()?;
    let gate = serve_on(bound, state, limits)?;
    Ok((locals, gate))
}

/// The nice value of the API's thread (and of the threads it starts): where it shares a CPU
/// with the capture, the capture wins. Writing live streams is the API's heaviest work: 50
/// streams served from the capture's own CPU took 39 % of its throughput at nice 0, none
/// measurable at 10 (scripts/bench-stream.sh); a stream that gets less CPU drops packets, as
/// a slow reader's does, and the files lose none.
pub const API_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`API_NICE`] (Linux keeps a nice value per thread;
/// raising it needs no privilege).
fn yield_to_capture() {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    #[allow(unsafe_code)]
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, API_NICE) };
    if r != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the API thread's priority");
    }
}

/// Serves `state`'s router on `listeners` (TLS where an acceptor is given) on a new thread,
/// through one [`Gate`] with `limits`.
pub(crate) fn serve_on(
    listeners: Vec<(TcpListener, Option<tokio_rustls::TlsAcceptor>)>,
    mut state: ApiState,
    limits: Limits,
) -> std::io::Result<Arc<Gate>> {
    let gate = Gate::new(limits);
    state.gate = Some(Arc::clone(&gate));
    state.long_polls = Arc::new(Semaphore::new(limits.max_long_polls));
    let served = Arc::clone(&gate);
    std::thread::Builder::new()
        .name("tapwire-api".into())
        .spawn(move || {
            yield_to_capture();
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
                let mut tasks = tokio::task::JoinSet::new();
                tasks.spawn(serve::reaper(Arc::clone(&served)));
                for (listener, tls) in listeners {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "API listener failed");
                            return;
                        }
                    };
                    tasks.spawn(serve::accept_loop(
                        listener,
                        tls,
                        Arc::clone(&served),
                        app.clone(),
                    ));
                }
                while tasks.join_next().await.is_some() {}
            });
        })?;
    Ok(gate)
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
    .add("GET", "/api/v1/packets", get(packets::packets))
    .add("POST", "/api/v1/packets/save", post(packets::save))
    .add("GET", "/api/v1/sessions/{name}/stream", get(stream::stream))
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
        catalog: s.catalog.as_deref().map(|c| c.backlog()),
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
        .layer(DefaultBodyLimit::max(serve::MAX_BODY_BYTES))
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
