//! Asking another collector of the fleet for its part of a query: `GET /api/v1/packets` with
//! `local=1` (its own files only) on the API URL it registered, with a peer token of this
//! collector's. The answer's body is handed on in pieces over a small bounded channel, so a
//! part goes at the merge's speed; a part that cannot be asked, is refused, or stops sending
//! for [`IDLE`] is reported, never dropped silently.

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::query::fleet::Chunk;

/// Connecting to a collector.
pub const CONNECT: Duration = Duration::from_secs(3);
/// Its answer's head (it plans its part first: reads its indexes).
pub const ANSWER: Duration = Duration::from_secs(30);
/// Silence within a part's body before it counts as broken off.
pub const IDLE: Duration = Duration::from_secs(60);
/// Pieces of a part in flight.
const CHUNKS_IN_FLIGHT: usize = 4;

/// A part asked for and answered: its estimate and its body.
pub struct Answered {
    pub estimate_bytes: u64,
    pub estimate_packets: u64,
    pub chunks: mpsc::Receiver<Chunk>,
}

/// Why a part is not there.
#[derive(Debug)]
pub enum Failed {
    /// The collector refused the request itself (a bad filter, over its limit): the whole
    /// query is refused with its answer.
    Refused(StatusCode, String),
    /// It could not be reached or failed: named in the output.
    Unreachable(String),
}

/// Asks the collector at `api_url` for `path_and_query` with `token` as its bearer.
pub async fn ask(api_url: &str, path_and_query: &str, token: &str) -> Result<Answered, Failed> {
    ask_within(api_url, path_and_query, token, IDLE).await
}

/// [`ask`], the body counting as broken off after `idle` without a byte.
pub async fn ask_within(
    api_url: &str,
    path_and_query: &str,
    token: &str,
    idle: Duration,
) -> Result<Answered, Failed> {
    let base = api_url.trim_end_matches('/');
    let uri: Uri = format!("{base}{path_and_query}")
        .parse()
        .map_err(|e| Failed::Unreachable(format!("its API URL {api_url:?}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(Failed::Unreachable(format!(
            "its API URL {api_url:?} is not http:// (parts are asked for over plain HTTP only)"
        )));
    }
    let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
        return Err(Failed::Unreachable(format!(
            "its API URL {api_url:?} names no host"
        )));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::time::timeout(CONNECT, tokio::net::TcpStream::connect((host, port)))
        .await
        .map_err(|_| {
            Failed::Unreachable(format!("no connection to {authority} within {CONNECT:?}"))
        })?
        .map_err(|e| Failed::Unreachable(format!("{authority}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| Failed::Unreachable(format!("{authority}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "fleet part: connection ended");
        }
    });
    let req = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority.as_str())
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .map_err(|e| Failed::Unreachable(e.to_string()))?;
    let resp = tokio::time::timeout(ANSWER, sender.send_request(req))
        .await
        .map_err(|_| Failed::Unreachable(format!("{authority} did not answer within {ANSWER:?}")))?
        .map_err(|e| Failed::Unreachable(format!("{authority}: {e}")))?;
    let status = resp.status();
    let number = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (estimate_bytes, estimate_packets) = (
        number("x-tapwire-estimate-bytes"),
        number("x-tapwire-estimate-packets"),
    );
    let mut body = Body::new(resp.into_body()).into_data_stream();
    if !status.is_success() {
        let text = tokio::time::timeout(
            ANSWER,
            axum::body::to_bytes(Body::from_stream(body), 64 << 10),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
        let message = serde_json::from_str::<tapwire_api_types::Message>(&text)
            .map(|m| m.message)
            .unwrap_or_else(|_| text.trim().chars().take(300).collect());
        return Err(match status {
            StatusCode::BAD_REQUEST
            | StatusCode::NOT_FOUND
            | StatusCode::UNPROCESSABLE_ENTITY
            | StatusCode::SERVICE_UNAVAILABLE => Failed::Refused(status, message),
            s => Failed::Unreachable(format!("it answered {}: {message}", s.as_u16())),
        });
    }
    let (tx, chunks) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        use futures_core::Stream;
        loop {
            let next = poll_fn(|cx| Pin::new(&mut body).poll_next(cx));
            let item = match tokio::time::timeout(idle, next).await {
                Ok(Some(Ok(b))) => Ok(b.to_vec()),
                Ok(Some(Err(e))) => Err(format!("the connection broke: {e}")),
                Ok(None) => return,
                Err(_) => Err(format!("nothing arrived for {idle:?}")),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    Ok(Answered {
        estimate_bytes,
        estimate_packets,
        chunks,
    })
}
