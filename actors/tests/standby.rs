//! The standby side of active/standby (issue 17) without a database: the lease timing keys
//! (defaults, environment, the checks check-config reports), and the standby's `/health`
//! service over plain HTTP and over HTTPS with the configured certificate, answering 200 only
//! while the lease requests get answers.

use pua_xmpp_actors::config::Config;
use pua_xmpp_actors::http::{StandbyHealth, STANDBY_HEALTH};
use pua_xmpp_actors::store::lease_driver::LeaseStatus;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{env, file};

const PG: &str = "[store]\nurl = \"postgres://pua@127.0.0.1/pua\"\nlease = true\n";

#[test]
fn issue_17_lease_timing_defaults_to_three_seconds_and_follows_file_and_environment() {
    let c = Config::load_with_env(Some(&file("d.toml", PG)), Vec::new()).unwrap();
    assert_eq!(
        (
            c.store.lease_ttl_ms,
            c.store.lease_renew_ms,
            c.store.lease_retry_ms
        ),
        (3000, 1000, 500)
    );
    assert_eq!(
        c.store.lease_config(),
        pua_xmpp::lease::LeaseConfig::default()
    );
    let body = format!("{PG}lease_ttl_ms = 1500\nlease_renew_ms = 500\n");
    let c = Config::load_with_env(
        Some(&file("s.toml", &body)),
        env(&[("PUA_XMPP__STORE__LEASE_RETRY_MS", "250")]),
    )
    .unwrap();
    let l = c.store.lease_config();
    assert_eq!(
        (l.ttl, l.renew_every, l.retry_every, l.margin),
        (
            Duration::from_millis(1500),
            Duration::from_millis(500),
            Duration::from_millis(250),
            Duration::from_millis(250)
        )
    );
    let shown = c.redacted();
    assert!(
        shown.contains("lease_ttl_ms = 1500\nlease_renew_ms = 500\nlease_retry_ms = 250\n"),
        "{shown}"
    );
}

#[test]
fn issue_17_lease_timing_that_cannot_keep_a_lease_is_refused_naming_the_key() {
    let err = |extra: &str| {
        let body = format!("{PG}{extra}");
        Config::load_with_env(Some(&file("bad.toml", &body)), Vec::new())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("lease_ttl_ms = 1500\nlease_renew_ms = 1000\nlease_retry_ms = 250\n"),
        "store.lease_renew_ms: 1000 + store.lease_retry_ms 250 must be under 1250 (5/6 of \
         store.lease_ttl_ms 1500): a renewal and one retry must fit before the lease counts \
         as lost"
    );
    assert_eq!(
        err("lease_ttl_ms = 100\n"),
        "store.lease_ttl_ms: expected a number from 300 to 600000, got 100"
    );
    assert_eq!(
        err("lease_renew_ms = 0\n"),
        "store.lease_renew_ms: expected a number from 50 to 600000, got 0"
    );
    assert_eq!(
        err("lease_retry_ms = 10\n"),
        "store.lease_retry_ms: expected a number from 50 to 600000, got 10"
    );
    // Renewing as often as the lease lasts is refused even with a short retry.
    assert!(
        err("lease_ttl_ms = 3000\nlease_renew_ms = 3000\nlease_retry_ms = 50\n")
            .starts_with("store.lease_renew_ms: 3000 + store.lease_retry_ms 50 must be under 2500")
    );
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Status line and body of one exchange on `conn`.
fn exchange(mut conn: impl Read + Write, request: &str) -> (String, String) {
    conn.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out);
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

fn plain(to: SocketAddr, request: &str) -> (String, String) {
    let c = TcpStream::connect(to).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    exchange(c, request)
}

fn https(to: SocketAddr, trust: &[u8], request: &str) -> (String, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trust.to_vec()))
        .unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(to).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    exchange(rustls::StreamOwned::new(client, tcp), request)
}

const GET_HEALTH: &str = "GET /health HTTP/1.1\r\nhost: gw\r\n\r\n";

fn assert_unavailable(reply: (String, String), reason_part: &str) {
    assert_eq!(reply.0, "HTTP/1.1 503 Service Unavailable");
    let body: serde_json::Value = serde_json::from_str(&reply.1).unwrap();
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["role"], "standby", "{body}");
    let reason = body["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains(reason_part) && reason.ends_with(": cannot take over"),
        "{reason}"
    );
}

#[test]
fn issue_17_a_standby_is_healthy_only_while_the_database_answers() {
    let status = LeaseStatus::new(Duration::from_millis(300));
    let addr = free_addr();
    let h = StandbyHealth::serve(addr, None, status.clone()).unwrap();
    // Nothing heard yet: it could not take over.
    assert_unavailable(plain(addr, GET_HEALTH), "database not reached yet");
    status.answered();
    assert_eq!(
        plain(addr, GET_HEALTH),
        ("HTTP/1.1 200 OK".to_owned(), STANDBY_HEALTH.to_owned())
    );
    // Refused connections (RST): at once.
    status.failed("connection refused");
    assert_unavailable(
        plain(addr, GET_HEALTH),
        "database unreachable: connection refused",
    );
    status.answered();
    assert_eq!(plain(addr, GET_HEALTH).0, "HTTP/1.1 200 OK");
    // Answers stopping without a failure (requests hanging): once the last answer is stale.
    std::thread::sleep(Duration::from_millis(400));
    assert_unavailable(
        plain(addr, GET_HEALTH),
        "database unreachable: no answer for",
    );
    status.answered();
    assert_eq!(plain(addr, GET_HEALTH).0, "HTTP/1.1 200 OK");
    // Anything but GET /health is for the active instance.
    let (line, body) = plain(addr, "GET /pua/req_winfo HTTP/1.1\r\n\r\n");
    assert_eq!(line, "HTTP/1.1 503 Service Unavailable");
    assert!(body.contains("only GET /health is served"), "{body}");
    h.stop();
    // Stopped: the address is free for the active instance's API.
    std::net::TcpListener::bind(addr).unwrap();
}

#[test]
fn issue_17_a_standby_with_https_configured_serves_health_over_https() {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = file("standby.crt", &ck.cert.pem());
    let key = file("standby.key", &ck.key_pair.serialize_pem());
    // The HTTP listener's own loader, as the gateway uses it for both roles.
    let tls =
        pua_xmpp_actors::http::tls::server_config(cert.to_str().unwrap(), key.to_str().unwrap())
            .unwrap();
    let status = LeaseStatus::new(Duration::from_secs(5));
    status.answered();
    let addr = free_addr();
    let h = StandbyHealth::serve(addr, Some(Arc::new(tls)), status.clone()).unwrap();
    assert_eq!(
        https(addr, ck.cert.der(), GET_HEALTH),
        ("HTTP/1.1 200 OK".to_owned(), STANDBY_HEALTH.to_owned())
    );
    status.failed("no answer within 2500 ms");
    assert_unavailable(
        https(addr, ck.cert.der(), GET_HEALTH),
        "database unreachable: no answer within 2500 ms",
    );
    // Plain HTTP on the HTTPS port gets no HTTP answer, and the service goes on.
    let (line, _) = plain(addr, GET_HEALTH);
    assert!(!line.starts_with("HTTP/1.1"), "{line}");
    status.answered();
    assert_eq!(https(addr, ck.cert.der(), GET_HEALTH).0, "HTTP/1.1 200 OK");
    h.stop();
}

/// A "database" that accepts connections and never says a word (a blackholed route behind a
/// relay): the lease thread gives each request up after the lease's usable part, the status
/// says why, and the instance never becomes active. A refused port says so at once.
#[test]
fn issue_17_a_standby_whose_database_hangs_or_refuses_reports_it_and_stays_standby() {
    use pua_xmpp::lease::LeaseConfig;
    use pua_xmpp_actors::store::lease_driver::wait_until_active;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    let refused = free_addr();
    let cfg = LeaseConfig::from_millis(1500, 500, 250);
    let start = |addr: SocketAddr| {
        let status = LeaseStatus::new(cfg.ttl);
        let (tx, rx) = std::sync::mpsc::channel();
        let s = status.clone();
        std::thread::spawn(move || {
            let url = format!("postgres://pua@{addr}/pua");
            let r = wait_until_active(&url, "sip.test", "standby-test", cfg, s);
            let _ = tx.send(r.is_ok());
        });
        (status, rx)
    };
    let (hang, hang_active) = start(silent_addr);
    let (refuse, refuse_active) = start(refused);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        hang.unreachable().as_deref(),
        Some("database not reached yet")
    );
    let r = refuse.unreachable().unwrap_or_default();
    assert!(r.starts_with("database unreachable: "), "{r}");
    // The first request is given up 1.25 s after it left.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        hang.unreachable().as_deref(),
        Some("database unreachable: no answer within 1250 ms")
    );
    assert!(hang_active.try_recv().is_err());
    assert!(refuse_active.try_recv().is_err());
}
