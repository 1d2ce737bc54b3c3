//! The probe's local stats API, on its own thread and a small tokio runtime, off the packet
//! path: it serves the latest snapshot the main thread published.
//!
//! - `GET /api/v1/flows`: [`tapwire_api_types::probe::ProbeStats`] as JSON.
//! - `GET /metrics`: Prometheus text.
//! - `GET /api/v1/health`.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tapwire_api_types::probe::{FLOWS_PATH, ProbeStats};

type Snapshot = Arc<ArcSwap<ProbeStats>>;

/// Binds `addr` now, so that a taken port is an error at start.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves on a new thread until the process exits.
pub fn spawn(listener: TcpListener, snapshot: Snapshot) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("probe-api".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "stats API runtime failed to start");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "stats API listener failed");
                        return;
                    }
                };
                let app = Router::new()
                    .route(FLOWS_PATH, get(flows))
                    .route("/metrics", get(metrics))
                    .route("/api/v1/health", get(|| async { "ok\n" }))
                    .with_state(snapshot);
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "stats API stopped");
                }
            });
        })?;
    Ok(())
}

async fn flows(State(s): State<Snapshot>) -> Response {
    axum::Json((*s.load_full()).clone()).into_response()
}

async fn metrics(State(s): State<Snapshot>) -> Response {
    let body = crate::stats::prometheus(&s.load());
    (
        [(
            header::CONTENT_TYPE,
            tapwire_api_types::metrics::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}
