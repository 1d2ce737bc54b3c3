//! Asking another collector of the fleet for its part of a query: `GET /api/v1/packets` with
//! `local=1` (its own files only) on the API URL it registered, with a peer token of this
//! collector's. The answer's body is handed on in pieces over a small bounded channel, so a
//! part goes at the merge's speed; a part that cannot be asked, is refused, or stops sending
//! for [`IDLE`] is reported, never dropped silently.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
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

/// Asks the collector at `api_url` for `path_and_query` with `token` as its bearer (over
/// HTTPS checked with `tls`).
pub async fn ask(
    api_url: &str,
    path_and_query: &str,
    token: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Answered, Failed> {
    ask_within(api_url, path_and_query, token, tls, IDLE).await
}

/// Sends `req` over `io` (a new HTTP/1.1 connection).
async fn send<IO>(
    io: IO,
    req: Request<Body>,
    authority: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, Failed>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| Failed::Unreachable(format!("{authority}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "fleet: connection to a collector ended");
        }
    });
    tokio::time::timeout(ANSWER, sender.send_request(req))
        .await
        .map_err(|_| Failed::Unreachable(format!("{authority} did not answer within {ANSWER:?}")))?
        .map_err(|e| Failed::Unreachable(format!("{authority}: {e}")))
}

/// [`ask`], the body counting as broken off after `idle` without a byte.
pub async fn ask_within(
    api_url: &str,
    path_and_query: &str,
    token: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    idle: Duration,
) -> Result<Answered, Failed> {
    let base = api_url.trim_end_matches('/');
    let uri: Uri = format!("{base}{path_and_query}")
        .parse()
        .map_err(|e| Failed::Unreachable(format!("its API URL {api_url:?}: {e}")))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(Failed::Unreachable(format!(
                "its API URL {api_url:?} is not http:// or https://"
            )));
        }
    };
    let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
        return Err(Failed::Unreachable(format!(
            "its API URL {api_url:?} names no host"
        )));
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = authority.as_str().to_string();
    let tcp = tokio::time::timeout(
        CONNECT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| Failed::Unreachable(format!("no connection to {authority} within {CONNECT:?}")))?
    .map_err(|e| Failed::Unreachable(format!("{authority}: {e}")))?;
    let req = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority.as_str())
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .map_err(|e| Failed::Unreachable(e.to_string()))?;
    let resp = if https {
        let Some(tls) = tls else {
            return Err(Failed::Unreachable(format!(
                "its API URL {api_url:?} is https:// and this collector has no CA to check it with (--peer-ca, or --tls-cert)"
            )));
        };
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| Failed::Unreachable(format!("{authority}: {e}")))?;
        let stream = tokio::time::timeout(
            CONNECT,
            tokio_rustls::TlsConnector::from(Arc::clone(tls)).connect(name, tcp),
        )
        .await
        .map_err(|_| {
            Failed::Unreachable(format!(
                "no TLS handshake with {authority} within {CONNECT:?}"
            ))
        })?
        .map_err(|e| Failed::Unreachable(format!("{authority}: TLS: {e}")))?;
        send(stream, req, &authority).await?
    } else {
        send(tcp, req, &authority).await?
    };
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
