//! TLS for the HTTP listener (`http.tls_cert`, `http.tls_key`): the same rustls build and PEM
//! loading as SIP over TLS (`transport::tls`), HTTP/1.1 only.

use crate::transport::tls::{load_certs, load_key, server_config_of};
use std::path::Path;

/// Reads the certificate chain and key and builds the server configuration. Errors name the
/// configuration key and the file.
pub fn server_config(cert_path: &str, key_path: &str) -> Result<rustls::ServerConfig, String> {
    let certs = load_certs(Path::new(cert_path)).map_err(|e| format!("http.tls_cert: {e}"))?;
    let key = load_key(Path::new(key_path)).map_err(|e| format!("http.tls_key: {e}"))?;
    server_config_of(certs, key)
        .map_err(|e| format!("http.tls_key: does not fit http.tls_cert: {e}"))
}
