//! SIP over TLS for the tool's SIP side: a bench CA made with rcgen, a certificate for the
//! tool's listener and one for the gateway's (both signed by the CA, so the gateway verifies
//! us with `tls_ca` as it would a real proxy, and the cost measured is the real one), and the
//! rustls server configuration of the tool's `--sip-tls-listen`.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

/// File names in `--tls-dir`.
pub const CA: &str = "ca.pem";
pub const BENCH_CERT: &str = "bench.pem";
pub const BENCH_KEY: &str = "bench.key";
pub const GW_CERT: &str = "gw.pem";
pub const GW_KEY: &str = "gw.key";

/// The `ring` provider only, as the gateway (deprecated only for lacking post-quantum key
/// exchange; the gateway negotiates X25519 or P-256 with it).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes the CA and both leaves in `dir` unless `ca.pem` is already there (a gateway started
/// earlier trusts that CA). Each leaf names `localhost` and every IP in `ips` (IP SANs: the
/// gateway checks the `sips:` URI's IP literal against them). True when files were written.
pub fn ensure(dir: &Path, ips: &[IpAddr]) -> Result<bool, String> {
    if dir.join(CA).exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let err = |e: rcgen::Error| format!("certificate generation: {e}");
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "pua-xmpp-bench CA");
    let ca = params.self_signed(&ca_key).map_err(err)?;
    let mut names = vec!["localhost".to_owned()];
    for ip in ips {
        let s = ip.to_string();
        if !names.contains(&s) {
            names.push(s);
        }
    }
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    write(CA, ca.pem())?;
    for (cert_file, key_file, cn) in [
        (BENCH_CERT, BENCH_KEY, "pua-xmpp-bench"),
        (GW_CERT, GW_KEY, "pua-xmpp gateway (bench)"),
    ] {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(names.clone()).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(err)?;
        write(cert_file, cert.pem())?;
        write(key_file, key.serialize_pem())?;
    }
    Ok(true)
}

/// The tool's TLS server configuration from `dir`'s `bench.pem` / `bench.key`.
pub fn server_config(dir: &Path) -> Result<Arc<ServerConfig>, String> {
    let cp = dir.join(BENCH_CERT);
    let kp = dir.join(BENCH_KEY);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cp)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", cp.display()))?;
    let key = PrivateKeyDer::from_pem_file(&kp).map_err(|e| format!("{}: {e}", kp.display()))?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", cp.display()))?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A client trusting only `ca.pem`, for the tests.
    pub fn client_config(dir: &Path) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(dir.join(CA)).expect("ca.pem") {
            roots.add(c.expect("cert")).expect("root");
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    #[test]
    fn made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("bench-tls-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ip: IpAddr = [127, 0, 0, 19].into();
        assert_eq!(ensure(&dir, &[ip]), Ok(true));
        let ca = std::fs::read(dir.join(CA)).expect("ca");
        assert_eq!(ensure(&dir, &[ip]), Ok(false));
        assert_eq!(std::fs::read(dir.join(CA)).expect("ca"), ca);
        for f in [GW_CERT, GW_KEY, BENCH_CERT, BENCH_KEY] {
            assert!(dir.join(f).exists(), "{f}");
        }
        assert!(server_config(&dir).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
