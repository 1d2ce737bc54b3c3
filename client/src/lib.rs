//! tapwire-client: the one blocking HTTP client of tapwire's APIs, shared by the `tapwire`
//! command line, the terminal UI and the probe's controller link: a base URL (`http://` or
//! `https://`), a bearer token, a CA file to trust instead of the system's roots, typed JSON
//! both ways, and every answer's status with the server's message.
//!
//! [`Client::call`] is the typed request (a 2xx answer parsed as `T`, anything else an
//! [`HttpError`]); [`Client::send`] is the plain exchange for callers that word failures
//! themselves (the UI's header). [`Client::register`], [`Client::flows`] (the long-poll) and
//! [`Client::report`] are the probe protocol. [`Client::stream`] reads a session's live pcapng
//! stream as whole blocks ([`stream`]).

pub mod stream;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tapwire_api_types::Message;
use tapwire_api_types::control::{FlowSet, ProbeReport, REGISTER_PATH, Register, Registered};
use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// The largest answer read (a flow set, a list of flows with stats, the audit log).
const MAX_BODY_BYTES: u64 = 64 << 20;

/// A failed request: no answer (`status` 0) or an error status with the controller's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl HttpError {
    /// The controller refused the credentials (unknown, revoked, or not allowed).
    pub fn is_auth(&self) -> bool {
        matches!(self.status, 401 | 403)
    }
}

/// An answer of any status, its body read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `503 Service Unavailable`.
    pub fn status_line(&self) -> String {
        status_line(self.status)
    }
}

/// A request that got no (whole) answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failed {
    /// The status, when the failure came after it (reading the body); 0 otherwise.
    pub status: u16,
    /// `GET http://...: <what ureq said>`.
    pub message: String,
    /// What an operator needs to see in a status line: `connection refused`, `timed out`.
    pub reason: String,
}

/// A streamed answer: its headers (lower-case names) and its body.
pub struct Streamed {
    pub headers: Vec<(String, String)>,
    pub body: Box<dyn std::io::Read + Send>,
}

impl Streamed {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `?a=1&b=x%20y`: the pairs whose value is given, each value percent-encoded.
pub fn query_string(pairs: &[(&str, Option<&str>)]) -> String {
    let mut s = String::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            s.push(if s.is_empty() { '?' } else { '&' });
            s.push_str(k);
            s.push('=');
            s.push_str(&segment(v));
        }
    }
    s
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
    max_body_bytes: u64,
}

/// How a [`Client`] is made: [`Client::builder`].
pub struct Builder<'a> {
    base: &'a str,
    token: Option<String>,
    ca: Option<&'a Path>,
    timeout: Duration,
    connect_timeout: Option<Duration>,
    max_body_bytes: u64,
}

impl<'a> Builder<'a> {
    /// The bearer token sent with every request.
    pub fn token(mut self, token: Option<String>) -> Builder<'a> {
        self.token = token;
        self
    }

    /// Trust only this CA (PEM) for https.
    pub fn ca(mut self, ca: Option<&'a Path>) -> Builder<'a> {
        self.ca = ca;
        self
    }

    /// For the whole of each request (a long-poll's must exceed its wait).
    pub fn timeout(mut self, timeout: Duration) -> Builder<'a> {
        self.timeout = timeout;
        self
    }

    /// For the connection alone [default: the timeout, at most 5 s].
    pub fn connect_timeout(mut self, timeout: Duration) -> Builder<'a> {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The largest answer read [default: 64 MiB].
    pub fn max_body_bytes(mut self, n: u64) -> Builder<'a> {
        self.max_body_bytes = n;
        self
    }

    pub fn build(self) -> Result<Client, String> {
        let timeout = self.timeout;
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(
                self.connect_timeout
                    .unwrap_or(timeout.min(Duration::from_secs(5))),
            ))
            .http_status_as_error(false);
        if let Some(path) = self.ca {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--ca {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("--ca {}: no certificate in it", path.display()));
            }
            let roots = certs
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect();
            config = config.tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::Specific(Arc::new(roots)))
                    .build(),
            );
        }
        Ok(Client {
            agent: config.build().into(),
            base: base_url(self.base),
            token: self.token,
            max_body_bytes: self.max_body_bytes,
        })
    }
}

impl Client {
    /// `base`: `host:port` (plain HTTP) or a URL. `timeout`: for the whole of each request
    /// (a long-poll's must exceed its wait).
    pub fn new(
        base: &str,
        token: Option<String>,
        ca: Option<&Path>,
        timeout: Duration,
    ) -> Result<Client, String> {
        Client::builder(base)
            .token(token)
            .ca(ca)
            .timeout(timeout)
            .build()
    }

    pub fn builder(base: &str) -> Builder<'_> {
        Builder {
            base,
            token: None,
            ca: None,
            timeout: Duration::from_secs(15),
            connect_timeout: None,
            max_body_bytes: MAX_BODY_BYTES,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, HttpError> {
        self.call("GET", path, None::<&()>)
    }

    /// One request; `body` is sent as JSON. A 2xx answer is parsed as `T`; any other is an
    /// error with the controller's `message`.
    pub fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, HttpError> {
        let url = format!("{}{path}", self.base);
        let answer = self.send(method, path, body).map_err(|f| HttpError {
            status: f.status,
            message: f.message,
        })?;
        let (status, text) = (answer.status, answer.body);
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<Message>(&text)
                .map(|m| m.message)
                .unwrap_or_else(|_| text.trim().chars().take(300).collect());
            return Err(HttpError {
                status,
                message: format!("{status}: {message}"),
            });
        }
        serde_json::from_str(&text).map_err(|e| HttpError {
            status,
            message: format!("{method} {url}: unexpected answer: {e}"),
        })
    }

    /// One request and its answer, whatever the status; `body` is sent as JSON.
    pub fn send<B: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<Answer, Failed> {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        // Not sent at all (a URL or body that cannot be made): the error alone.
        let unsent = |e: String| Failed {
            status: 0,
            message: e.clone(),
            reason: e,
        };
        let fail = |status, e: ureq::Error| Failed {
            status,
            message: format!("{method} {url}: {e}"),
            reason: describe(&e),
        };
        let sent = match body {
            Some(b) => {
                let json = serde_json::to_vec(b).map_err(|e| unsent(e.to_string()))?;
                let req = req
                    .header("Content-Type", "application/json")
                    .body(json)
                    .map_err(|e| unsent(e.to_string()))?;
                self.agent.run(req)
            }
            None => {
                let req = req.body(()).map_err(|e| unsent(e.to_string()))?;
                self.agent.run(req)
            }
        };
        let mut resp = sent.map_err(|e| fail(0, e))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(self.max_body_bytes)
            .read_to_string()
            .map_err(|e| fail(status, e))?;
        Ok(Answer { status, body })
    }

    /// A GET whose answer is read as a stream (a query's pcapng): a 2xx answer's headers and
    /// body reader, anything else an error with the server's message. The body has no size
    /// limit; the client's timeout covers the whole transfer, so give streaming clients a long one.
    pub fn get_stream(&self, path: &str) -> Result<Streamed, HttpError> {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method("GET").uri(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let req = req.body(()).map_err(|e| HttpError {
            status: 0,
            message: e.to_string(),
        })?;
        let mut resp = self.agent.run(req).map_err(|e| HttpError {
            status: 0,
            message: format!("GET {url}: {e}"),
        })?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = resp
                .body_mut()
                .with_config()
                .limit(self.max_body_bytes)
                .read_to_string()
                .unwrap_or_default();
            let message = serde_json::from_str::<Message>(&text)
                .map(|m| m.message)
                .unwrap_or_else(|_| text.trim().chars().take(300).collect());
            return Err(HttpError {
                status,
                message: format!("{status}: {message}"),
            });
        }
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        Ok(Streamed {
            headers,
            body: Box::new(resp.into_body().into_reader()),
        })
    }

    /// `POST /api/v1/probes/register`.
    pub fn register(&self, req: &Register) -> Result<Registered, HttpError> {
        self.call("POST", REGISTER_PATH, Some(req))
    }

    /// `GET /api/v1/probes/{name}/flows`: with `after`, a long-poll that answers when the
    /// flow set's version differs from it (or after the controller's wait, which this
    /// client's timeout must exceed).
    pub fn flows(&self, probe: &str, after: Option<u64>) -> Result<FlowSet, HttpError> {
        let path = match after {
            Some(v) => format!("/api/v1/probes/{}/flows?after={v}", segment(probe)),
            None => format!("/api/v1/probes/{}/flows", segment(probe)),
        };
        self.get(&path)
    }

    /// `POST /api/v1/probes/{name}/stats`.
    pub fn report(&self, probe: &str, report: &ProbeReport) -> Result<Message, HttpError> {
        let path = format!("/api/v1/probes/{}/stats", segment(probe));
        self.call("POST", &path, Some(report))
    }
}

/// `127.0.0.1:9750`, `http://host:9750/` or `https://...` as a base URL without a trailing
/// slash; a bare address gets `http://`.
pub fn base_url(connect: &str) -> String {
    let s = connect.trim().trim_end_matches('/');
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

/// A path segment with everything but unreserved characters percent-encoded (session names
/// are `<src>_<kind>_<id>`, which for IPv6 holds colons).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `503 Service Unavailable`, or the bare number for a code without a reason phrase.
fn status_line(status: u16) -> String {
    match ureq::http::StatusCode::from_u16(status) {
        Ok(s) => s.to_string(),
        Err(_) => status.to_string(),
    }
}

/// A short reason for a failed request: what the operator needs to see in a status line.
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::ConnectionReset => "connection reset".into(),
            std::io::ErrorKind::TimedOut => "timed out".into(),
            _ => io.to_string(),
        },
        ureq::Error::Timeout(_) => "timed out".into(),
        ureq::Error::HostNotFound => "host not found".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(base_url("127.0.0.1:9750"), "http://127.0.0.1:9750");
        assert_eq!(base_url("http://[::1]:9750/"), "http://[::1]:9750");
        assert_eq!(base_url(" https://c.example:443 "), "https://c.example:443");
    }

    #[test]
    fn names_are_escaped_as_one_segment() {
        assert_eq!(segment("edge-1_a.b"), "edge-1_a.b");
        assert_eq!(
            segment("fd77::11_erspan-ii_100"),
            "fd77%3A%3A11_erspan-ii_100"
        );
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn query_strings() {
        assert_eq!(
            query_string(&[
                ("session", Some("web")),
                ("source", None),
                ("filter", Some("host 10.0.0.5 && port 80"))
            ]),
            "?session=web&filter=host%2010.0.0.5%20%26%26%20port%2080"
        );
        assert_eq!(query_string(&[("a", None)]), "");
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_line(503), "503 Service Unavailable");
        assert_eq!(status_line(404), "404 Not Found");
    }
}
