//! SIP over TLS (issue 16) against scripted TLS peers on loopback, with certificates made
//! here by rcgen: the TLS listener answers on the connection a request came on; outbound TLS
//! verifies the peer's certificate against the configured CA and the URI host, and a wrong
//! certificate fails the request with a transport error naming the handshake; a reloaded
//! certificate is what the next handshake presents.

use actix::prelude::*;
use pua_xmpp::sip::parse::parse_message;
use pua_xmpp::sip::{Destination, Method, NameAddr, OutRequest, OutResponse, SipMessage};
use pua_xmpp_actors::messages::{
    SendRequest, SendResponse, SipRequestIn, TransactionOutcome, Transport, TxnResult,
};
use pua_xmpp_actors::transport::tls::{client_config, server_config, TlsSettings};
use pua_xmpp_actors::transport::{
    GetConnections, GetTlsAddr, ReloadTls, SipTransport, TransportConfig,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

// ---- harness ------------------------------------------------------------------------------

mod common;
use common::sink;

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, ms: u64) -> Option<T> {
    tokio::time::timeout(Duration::from_millis(ms), rx.recv())
        .await
        .ok()
        .flatten()
}

/// A CA, and leaf certificates it signs, written as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        Pki {
            dir,
            ca_cert,
            ca_key,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A leaf for `names` (IP literals become IP SANs) as `<file>.pem` and `<file>.key`.
    fn leaf(&self, file: &str, names: &[&str], cn: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let c = self.dir.path().join(format!("{file}.pem"));
        let k = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn na(uri: &str, tag: Option<&str>) -> NameAddr {
    NameAddr {
        display: None,
        uri: uri.to_owned(),
        tag: tag.map(str::to_owned),
    }
}

fn notify_to(uri: &str) -> OutRequest {
    OutRequest {
        method: Method::Notify,
        uri: uri.to_owned(),
        route: Vec::new(),
        from: na("sip:romeo*example.net@gw.example.com", Some("gwtag1")),
        to: na("sip:juliet@example.com", Some("jt1")),
        call_id: "tls-call-1".to_owned(),
        cseq: 2,
        contact: Some("sip:romeo*example.net@127.0.0.1:5081;transport=tls".to_owned()),
        headers: vec![
            ("Event", "presence".to_owned()),
            ("Subscription-State", "active;expires=600".to_owned()),
        ],
        content_type: None,
        body: Vec::new(),
        destination: Destination::InDialog,
    }
}

/// The gateway's transport with a TLS listener presenting `cert`/`key` and verifying peers
/// against `ca`.
async fn start_gateway(
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> (
    Addr<SipTransport>,
    SocketAddr,
    mpsc::UnboundedReceiver<SipRequestIn>,
) {
    let mut cfg = TransportConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.t1 = Duration::from_millis(20);
    cfg.tls = Some(TlsSettings {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        server: Some(server_config(cert, key).unwrap()),
        client: client_config(Some(ca), true).unwrap(),
    });
    let (rcpt, inbound) = sink::<SipRequestIn>();
    let addr = SipTransport::bind(cfg, rcpt).await.unwrap();
    let tls_at = addr.send(GetTlsAddr).await.unwrap().expect("TLS listener");
    (addr, tls_at, inbound)
}

/// A TLS client trusting `ca`, connected to `at` and expecting `name` in its certificate.
async fn tls_client(
    ca: &Path,
    at: SocketAddr,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let cfg = client_config(Some(ca), true).unwrap();
    let tcp = TcpStream::connect(at).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// Reads one Content-Length-framed SIP message (our messages have no body here).
async fn read_message<S: AsyncRead + Unpin>(s: &mut S, pending: &mut Vec<u8>) -> Option<String> {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let msg: Vec<u8> = pending.drain(..end + 4).collect();
            return Some(String::from_utf8_lossy(&msg).into_owned());
        }
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => pending.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

async fn write_all<S: AsyncWrite + Unpin>(s: &mut S, text: &str) {
    s.write_all(text.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
}

fn subscribe_over_tls(sent_by: &str) -> String {
    format!(
        "SUBSCRIBE sip:romeo*example.net@gw.example.com SIP/2.0\r\n\
         Via: SIP/2.0/TLS {sent_by};branch=z9hG4bKtls1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:juliet@example.com>;tag=jf1\r\n\
         To: <sip:romeo*example.net@gw.example.com>\r\n\
         Call-ID: tls-in-1\r\n\
         CSeq: 7 SUBSCRIBE\r\n\
         Contact: <sip:juliet@127.0.0.1:5071;transport=tls>\r\n\
         Event: presence\r\n\
         Expires: 600\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

// ---- inbound ------------------------------------------------------------------------------

/// A request over TLS reaches the gateway marked TLS, and its answer comes back on the same
/// TLS connection.
#[actix_rt::test]
async fn tls_listener_accepts_a_request_and_answers_on_the_same_connection() {
    let pki = Pki::new("in");
    let (cert, key) = pki.leaf("gw", &["127.0.0.1", "gw.example.com"], "gw");
    let (gw, tls_at, mut inbound) = start_gateway(&cert, &key, &pki.ca()).await;
    let mut s = tls_client(&pki.ca(), tls_at, "gw.example.com")
        .await
        .expect("handshake with the gateway's certificate");
    let local = s.get_ref().0.local_addr().unwrap();
    write_all(&mut s, &subscribe_over_tls(&local.to_string())).await;
    let got = next(&mut inbound, 3000).await.expect("request delivered");
    assert_eq!(got.req.method, Method::Subscribe);
    assert_eq!(got.source.transport, Transport::Tls);
    assert_eq!(got.source.peer, local);
    let conns = gw.send(GetConnections).await.unwrap();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].transport, Transport::Tls);
    assert!(!conns[0].outbound);
    gw.do_send(SendResponse {
        txn: got.txn,
        resp: OutResponse::to_request(&got.req, 200, None),
    });
    let mut pending = Vec::new();
    let text = read_message(&mut s, &mut pending)
        .await
        .expect("200 over TLS");
    assert!(text.starts_with("SIP/2.0 200 OK\r\n"), "{text}");
    assert!(
        text.contains(&format!("Via: SIP/2.0/TLS {local};branch=z9hG4bKtls1")),
        "{text}"
    );
    assert!(text.contains("Call-ID: tls-in-1\r\n"), "{text}");
}

/// Plain text on the TLS port is no SIP request: the handshake fails and nothing reaches
/// the gateway.
#[actix_rt::test]
async fn plain_sip_on_the_tls_port_is_refused() {
    let pki = Pki::new("plain");
    let (cert, key) = pki.leaf("gw", &["127.0.0.1"], "gw");
    let (gw, tls_at, mut inbound) = start_gateway(&cert, &key, &pki.ca()).await;
    let mut s = TcpStream::connect(tls_at).await.unwrap();
    write_all(&mut s, &subscribe_over_tls("127.0.0.1:5071")).await;
    let mut buf = [0u8; 512];
    // The gateway closes the connection (possibly after a TLS alert).
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true));
    assert!(next(&mut inbound, 200).await.is_none());
    assert!(gw.send(GetConnections).await.unwrap().is_empty());
}

// ---- outbound -----------------------------------------------------------------------------

/// A scripted TLS peer presenting `cert`/`key`; hands accepted connections to the test.
async fn tls_peer(cert: &Path, key: &Path) -> (SocketAddr, mpsc::UnboundedReceiver<TlsConn>) {
    let cfg = server_config(cert, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    actix_rt::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            // A failed handshake (the gateway refusing us) just drops the connection.
            if let Ok(s) = acceptor.accept(tcp).await {
                let _ = tx.send(s);
            }
        }
    });
    (at, rx)
}

type TlsConn = tokio_rustls::server::TlsStream<TcpStream>;

fn outcome_sink() -> (
    Recipient<TransactionOutcome>,
    mpsc::UnboundedReceiver<TransactionOutcome>,
) {
    sink::<TransactionOutcome>()
}

/// A request to a `;transport=tls` URI goes over TLS with Via `SIP/2.0/TLS` and the TLS
/// listener as sent-by; the peer's 200 on that connection ends the transaction; a second
/// request reuses the connection.
#[actix_rt::test]
async fn outbound_tls_to_a_verified_peer_carries_the_request_and_its_response() {
    let pki = Pki::new("out");
    let (gw_cert, gw_key) = pki.leaf("gw", &["127.0.0.1"], "gw");
    let (peer_cert, peer_key) = pki.leaf("peer", &["127.0.0.1"], "proxy");
    let (gw, tls_at, _inbound) = start_gateway(&gw_cert, &gw_key, &pki.ca()).await;
    let (peer_at, mut accepted) = tls_peer(&peer_cert, &peer_key).await;
    let (reply_to, mut outcomes) = outcome_sink();
    let uri = format!("sip:juliet@{peer_at};transport=tls");
    for key in [1u64, 2] {
        gw.do_send(SendRequest {
            req: notify_to(&uri),
            key,
            reply_to: reply_to.clone(),
            // A large MESSAGE asks for TCP: on a TLS route it stays TLS.
            transport: (key == 2).then_some(Transport::Tcp),
        });
    }
    let mut conn = tokio::time::timeout(Duration::from_secs(3), accepted.recv())
        .await
        .unwrap()
        .expect("TLS connection from the gateway");
    let mut pending = Vec::new();
    for key in [1u64, 2] {
        let text = read_message(&mut conn, &mut pending)
            .await
            .expect("NOTIFY over TLS");
        assert!(
            text.starts_with(&format!("NOTIFY {uri} SIP/2.0\r\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("Via: SIP/2.0/TLS {tls_at};branch=")),
            "{text}"
        );
        let Ok(SipMessage::Request(req)) = parse_message(text.as_bytes()) else {
            panic!("unparseable: {text}");
        };
        let mut resp = format!("SIP/2.0 200 OK\r\nVia: {}\r\n", req.via[0]);
        resp.push_str(&format!(
            "From: <{}>;tag=gwtag1\r\nTo: <{}>;tag=jt1\r\nCall-ID: {}\r\nCSeq: {} NOTIFY\r\nContent-Length: 0\r\n\r\n",
            req.from.uri, req.to.uri, req.call_id, req.cseq
        ));
        write_all(&mut conn, &resp).await;
        let out = next(&mut outcomes, 3000).await.expect("outcome");
        assert_eq!(out.key, key);
        match out.result {
            TxnResult::Response(r) => assert_eq!(r.status, 200),
            other => panic!("expected 200, got {other:?}"),
        }
    }
    let conns = gw.send(GetConnections).await.unwrap();
    assert_eq!(conns.len(), 1, "one reused connection: {conns:?}");
    assert_eq!(conns[0].transport, Transport::Tls);
    assert_eq!(conns[0].peer, peer_at);
    assert!(conns[0].outbound);
}

/// Sends one NOTIFY to `uri` and returns its outcome.
async fn notify_outcome(gw: &Addr<SipTransport>, uri: &str) -> TxnResult {
    let (reply_to, mut outcomes) = outcome_sink();
    gw.do_send(SendRequest {
        req: notify_to(uri),
        key: 9,
        reply_to,
        transport: None,
    });
    next(&mut outcomes, 5000).await.expect("outcome").result
}

/// A peer whose certificate comes from a CA we do not trust is refused: the request fails at
/// once with a transport error naming the handshake and the reason (the core maps it like a
/// failed TCP connect), and the connection is gone.
#[actix_rt::test]
async fn peer_certificate_from_an_untrusted_ca_is_refused() {
    let pki = Pki::new("trusted");
    let rogue = Pki::new("rogue");
    let (gw_cert, gw_key) = pki.leaf("gw", &["127.0.0.1"], "gw");
    let (peer_cert, peer_key) = rogue.leaf("peer", &["127.0.0.1"], "proxy");
    let (gw, _tls_at, _inbound) = start_gateway(&gw_cert, &gw_key, &pki.ca()).await;
    let (peer_at, _accepted) = tls_peer(&peer_cert, &peer_key).await;
    let result = notify_outcome(&gw, &format!("sip:juliet@{peer_at};transport=tls")).await;
    match result {
        TxnResult::TransportError(e) => {
            assert!(
                e.contains(&format!("TLS handshake with {peer_at} failed")),
                "{e}"
            );
            assert!(e.contains("UnknownIssuer"), "{e}");
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
    assert!(gw.send(GetConnections).await.unwrap().is_empty());
}

/// A certificate from the trusted CA for another name is refused too: a `sips:` URI's host
/// (here an IP literal) must be in the certificate.
#[actix_rt::test]
async fn peer_certificate_for_another_name_is_refused() {
    let pki = Pki::new("names");
    let (gw_cert, gw_key) = pki.leaf("gw", &["127.0.0.1"], "gw");
    let (peer_cert, peer_key) = pki.leaf("peer", &["proxy.example.com"], "proxy");
    let (gw, _tls_at, _inbound) = start_gateway(&gw_cert, &gw_key, &pki.ca()).await;
    let (peer_at, _accepted) = tls_peer(&peer_cert, &peer_key).await;
    let result = notify_outcome(&gw, &format!("sips:juliet@{peer_at}")).await;
    match result {
        TxnResult::TransportError(e) => {
            assert!(e.contains("TLS handshake"), "{e}");
            assert!(e.contains("not valid for name \"127.0.0.1\""), "{e}");
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
}

/// With verification off (labs), the same peer is reached.
#[actix_rt::test]
async fn tls_verify_false_reaches_a_peer_with_any_certificate() {
    let pki = Pki::new("noverify");
    let rogue = Pki::new("rogue2");
    let (gw_cert, gw_key) = pki.leaf("gw", &["127.0.0.1"], "gw");
    let (peer_cert, peer_key) = rogue.leaf("peer", &["elsewhere.example"], "proxy");
    let mut cfg = TransportConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.tls = Some(TlsSettings {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        server: Some(server_config(&gw_cert, &gw_key).unwrap()),
        client: client_config(None, false).unwrap(),
    });
    let (rcpt, _inbound) = sink::<SipRequestIn>();
    let gw = SipTransport::bind(cfg, rcpt).await.unwrap();
    let (peer_at, mut accepted) = tls_peer(&peer_cert, &peer_key).await;
    let (reply_to, _outcomes) = outcome_sink();
    gw.do_send(SendRequest {
        req: notify_to(&format!("sip:juliet@{peer_at};transport=tls")),
        key: 1,
        reply_to,
        transport: None,
    });
    let mut conn = tokio::time::timeout(Duration::from_secs(3), accepted.recv())
        .await
        .unwrap()
        .expect("connection");
    let text = read_message(&mut conn, &mut Vec::new())
        .await
        .expect("NOTIFY");
    assert!(text.starts_with("NOTIFY sip:juliet@"), "{text}");
}

// ---- reload -------------------------------------------------------------------------------

/// The certificate a fresh handshake presents.
async fn presented_cert(ca: &Path, at: SocketAddr) -> CertificateDer<'static> {
    let s = tls_client(ca, at, "127.0.0.1").await.expect("handshake");
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// [`ReloadTls`] (what SIGHUP sends) puts the new certificate into the next handshakes;
/// files that do not load are an error naming the file, so the caller keeps the old ones.
#[actix_rt::test]
async fn reloaded_certificate_is_presented_by_new_handshakes() {
    let pki = Pki::new("reload");
    let (c1, k1) = pki.leaf("gw1", &["127.0.0.1"], "gw-one");
    let (c2, k2) = pki.leaf("gw2", &["127.0.0.1"], "gw-two");
    let (gw, tls_at, _inbound) = start_gateway(&c1, &k1, &pki.ca()).await;
    let first = presented_cert(&pki.ca(), tls_at).await;
    let want1 = rustls::pki_types::pem::PemObject::from_pem_file(&c1).unwrap();
    assert_eq!(first, want1);
    gw.send(ReloadTls {
        server: Some(server_config(&c2, &k2).unwrap()),
        client: None,
    })
    .await
    .unwrap();
    let second = presented_cert(&pki.ca(), tls_at).await;
    let want2: CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_file(&c2).unwrap();
    assert_eq!(second, want2);
    // Bad files: an error naming them (the gateway logs it and keeps the current ones).
    let missing = pki.dir.path().join("nope.pem");
    let e = server_config(&missing, &k2).map(|_| ()).unwrap_err();
    assert!(e.contains("nope.pem"), "{e}");
    let e = server_config(&c2, &k1).map(|_| ()).unwrap_err();
    assert!(e.contains("gw2.pem") && e.contains("gw1.key"), "{e}");
    let garbage = pki.dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key").unwrap();
    assert!(server_config(&c2, &garbage).is_err());
}

/// A renewed CA bundle (`sip.tls_ca`, re-read on SIGHUP) decides the next outbound
/// handshakes: a peer whose CA the gateway did not trust is refused, then reached once the
/// bundle that holds its CA is loaded; the listener's certificate is untouched.
#[actix_rt::test]
async fn reloaded_ca_bundle_verifies_new_outbound_handshakes() {
    let pki = Pki::new("ca-old");
    let renewed = Pki::new("ca-new");
    let (gw_cert, gw_key) = pki.leaf("gw", &["127.0.0.1"], "gw");
    let (peer_cert, peer_key) = renewed.leaf("peer", &["127.0.0.1"], "proxy");
    let (gw, tls_at, _inbound) = start_gateway(&gw_cert, &gw_key, &pki.ca()).await;
    let (peer_at, _accepted) = tls_peer(&peer_cert, &peer_key).await;
    let uri = format!("sip:juliet@{peer_at};transport=tls");
    match notify_outcome(&gw, &uri).await {
        TxnResult::TransportError(e) => assert!(e.contains("UnknownIssuer"), "{e}"),
        other => panic!("expected a transport error, got {other:?}"),
    }
    gw.send(ReloadTls {
        server: None,
        client: Some(client_config(Some(&renewed.ca()), true).unwrap()),
    })
    .await
    .unwrap();
    // The peer answers nothing, so the NOTIFY times out (T1 = 20 ms): what matters is that
    // the handshake now succeeds, which the connection list shows.
    let (reply_to, _outcomes) = outcome_sink();
    gw.do_send(SendRequest {
        req: notify_to(&uri),
        key: 10,
        reply_to,
        transport: None,
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let conns = gw.send(GetConnections).await.unwrap();
        if conns
            .iter()
            .any(|c| c.peer == peer_at && c.transport == Transport::Tls)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no TLS connection: {conns:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let want: CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_file(&gw_cert).unwrap();
    assert_eq!(presented_cert(&pki.ca(), tls_at).await, want);
}
