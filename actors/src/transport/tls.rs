//! SIP over TLS (RFC 3261 §26, issue 16): the rustls configurations of the TLS listener and of
//! outbound connections, built from PEM files, and the name a peer's certificate must carry.
//! The connections themselves are TCP streams wrapped on the TCP I/O thread (`io`), so TLS
//! gets the same framing, limits and back-pressure as TCP.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// The TLS side of the transport: what [`super::TransportConfig::tls`] carries.
#[derive(Clone)]
pub struct TlsSettings {
    /// Address of the TLS listener; `None`: no listener (outbound TLS only).
    pub listen: Option<std::net::SocketAddr>,
    /// Certificate and key of the listener (required with `listen`); replaced on SIGHUP
    /// with [`super::ReloadTls`].
    pub server: Option<Arc<ServerConfig>>,
    /// How outbound connections verify their peer.
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("listen", &self.listen)
            .field("server", &self.server.is_some())
            .finish()
    }
}

/// Where the system's trusted CAs are, when `tls_ca` is not given (Debian's bundle; the
/// `SSL_CERT_FILE` variable overrides it, as for OpenSSL).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The `ring` provider (the one rustls build of the project). rustls 0.23.48 deprecates it
/// for lacking post-quantum key exchange, not for any flaw; SIP peers (Kamailio's OpenSSL)
/// negotiate X25519 or P-256 with it.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file (a chain or a CA bundle).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", path.display()))
}

/// A server configuration (no client certificates) for a chain and its key: the SIP TLS
/// listener's and the HTTP listener's (`http::tls`).
pub fn server_config_of(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
}

/// The listener's configuration from a certificate chain and a private key (PEM files).
/// Fails, naming the file, when either does not load or the key does not match.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let cfg = server_config_of(load_certs(cert)?, load_key(key)?)
        .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))?;
    Ok(Arc::new(cfg))
}

/// How outbound connections verify servers: against `ca` (a PEM bundle) or the system's CAs,
/// or not at all with `verify = false` (labs only; the caller logs it loudly).
pub fn client_config(ca: Option<&Path>, verify: bool) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let cfg = if verify {
        let system;
        let path = match ca {
            Some(p) => p,
            None => {
                system = std::env::var_os("SSL_CERT_FILE")
                    .map(std::path::PathBuf::from)
                    .unwrap_or_else(|| SYSTEM_CA_BUNDLE.into());
                system.as_path()
            }
        };
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(load_certs(path)?);
        if added == 0 {
            return Err(format!("{}: no usable CA certificate", path.display()));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

/// The name a server's certificate must carry: the URI host (RFC 5922 §4: the host of the
/// URI that led to it). An IP literal (with or without brackets) must then be an IP SAN.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} is no TLS server name: {e}"))
}

/// `tls_verify = false`: any certificate is accepted (signatures still checked, so the
/// handshake itself is sound). For labs only.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
