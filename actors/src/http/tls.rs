//! TLS for the HTTP listener (`http.tls_cert`, `http.tls_key`): rustls 0.23 with the `ring`
//! provider, certificates and key from PEM files, HTTP/1.1 only.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// Reads the certificate chain and key and builds the server configuration. Errors name the
/// configuration key and the file.
pub fn server_config(cert_path: &str, key_path: &str) -> Result<rustls::ServerConfig, String> {
    let cert_pem = std::fs::read(cert_path)
        .map_err(|e| format!("http.tls_cert: cannot read {cert_path:?}: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("http.tls_cert: {cert_path:?} is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "http.tls_cert: no CERTIFICATE in {cert_path:?} (expected PEM)"
        ));
    }
    let key_pem = std::fs::read(key_path)
        .map_err(|e| format!("http.tls_key: cannot read {key_path:?}: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!("http.tls_key: no usable PRIVATE KEY in {key_path:?} (expected PEM): {e}")
    })?;
    // ring, not aws-lc-rs: no C/cmake build and one provider with SIP TLS. rustls 0.23.48
    // deprecates it for lacking post-quantum key exchange, which an admin API can do without.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("http.tls_cert: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("http.tls_key: does not fit http.tls_cert: {e}"))
}
