//! The control plane's HTTP client, shared by the probe's controller link and the `tapwire`
//! command line: a base URL (`http://` or `https://`), a bearer token, a CA file to trust
//! instead of the system's roots, JSON both ways, and every answer's status with the
//! controller's message.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use serde::de::DeserializeOwned;
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

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
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
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
            .http_status_as_error(false);
        if let Some(path) = ca {
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
        let s = base.trim().trim_end_matches('/');
        Ok(Client {
            agent: config.build().into(),
            base: if s.contains("://") {
                s.to_string()
            } else {
                format!("http://{s}")
            },
            token,
        })
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
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let fail = |status, message: String| HttpError { status, message };
        let sent = match body {
            Some(b) => {
                let json = serde_json::to_vec(b).map_err(|e| fail(0, e.to_string()))?;
                let req = req
                    .header("Content-Type", "application/json")
                    .body(json)
                    .map_err(|e| fail(0, e.to_string()))?;
                self.agent.run(req)
            }
            None => {
                let req = req.body(()).map_err(|e| fail(0, e.to_string()))?;
                self.agent.run(req)
            }
        };
        let mut resp = sent.map_err(|e| fail(0, format!("{method} {url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_string()
            .map_err(|e| fail(status, format!("{method} {url}: {e}")))?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<tapwire_api_types::Message>(&text)
                .map(|m| m.message)
                .unwrap_or_else(|_| text.trim().chars().take(300).collect());
            return Err(fail(status, format!("{status}: {message}")));
        }
        serde_json::from_str(&text)
            .map_err(|e| fail(status, format!("{method} {url}: unexpected answer: {e}")))
    }
}

/// A path segment with everything but unreserved characters percent-encoded.
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
