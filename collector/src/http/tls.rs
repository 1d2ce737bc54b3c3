//! TLS for the control plane's listener (rustls), and for asking the fleet's other
//! collectors for query parts and streams over theirs. (Clients trust a given CA through
//! `tapwire-client`.) Handshakes run on each connection's own task, inside the connection caps
//! and under their own timeout ([`super::serve`]); a failed one is logged at debug.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How this collector checks the fleet's other collectors: their certificates must chain to
/// one of the certificates in `ca` (PEM; `--peer-ca`, by default the `--tls-cert` file: a
/// fleet sharing one certificate, or whose chains include their CA, needs nothing more) and
/// name the host of the API URL they registered.
pub fn peer_client_config(ca: &Path, flag: &str) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(ca).map_err(|e| format!("{flag} {}: {e}", ca.display()))?
    {
        let c = c.map_err(|e| format!("{flag} {}: {e}", ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("{flag} {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{flag} {}: no certificate in it", ca.display()));
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A server configuration from PEM files: the certificate chain, then the private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
