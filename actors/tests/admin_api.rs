//! Issue 16, admin API access: the real gateway (`gateway::start`) against a scripted XEP-0114
//! server, with `[http] token`, `allow` and TLS. `/health` stays open; `/metrics`,
//! `/subscriptions` and `/pua/req_winfo` answer 403 to a client address outside `http.allow`
//! and 401 (`WWW-Authenticate: Bearer`) without the right token; each refusal is logged (never
//! with the token) and counted. Also the `[http]` configuration keys and `check-config`.

use pua_xmpp_actors::config::Config;
use pua_xmpp_actors::gateway;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

const COMPONENT: &str = "sip.example.net";
const GW_DOMAIN: &str = "xmpp.example.com";
const SECRET: &str = "admin-test-s3cr3t";
const TOKEN: &str = "tok-0123456789abcdef-ADMIN";
const WAIT: Duration = Duration::from_secs(3);

// ---- log capture ---------------------------------------------------------------------------

/// Everything the gateways of this test binary log (one subscriber for the process).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        let make = move || LogWriter(w.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(make)
            .try_init();
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().expect("log lock")).into_owned()
}

/// The refusal lines logged for requests from `peer` (ip:port) to `path`.
fn refusal_lines(peer: SocketAddr, path: &str) -> Vec<String> {
    log_text()
        .lines()
        .filter(|l| {
            l.contains("HTTP request refused")
                && l.contains(&format!("peer={peer}"))
                && l.contains(&format!("path={path}"))
        })
        .map(str::to_owned)
        .collect()
}

// ---- the scripted XEP-0114 server ------------------------------------------------------------

struct Xmpp {
    sock: TcpStream,
    buf: String,
}

impl Xmpp {
    async fn accept(listener: &TcpListener) -> Xmpp {
        let (sock, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("the gateway did not connect to the XMPP server")
            .expect("accept");
        let mut x = Xmpp {
            sock,
            buf: String::new(),
        };
        x.read_until("'>").await;
        x.sock
            .write_all(
                format!(
                    "<?xml version='1.0'?><stream:stream \
                     xmlns:stream='http://etherx.jabber.org/streams' \
                     xmlns='jabber:component:accept' from='{COMPONENT}' id='adm-1'>"
                )
                .as_bytes(),
            )
            .await
            .expect("write");
        x.read_until("</handshake>").await;
        x.sock.write_all(b"<handshake/>").await.expect("write");
        x
    }

    async fn read_more(&mut self, deadline: Instant) -> bool {
        let mut b = [0u8; 8192];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.sock.read(&mut b)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.push_str(&String::from_utf8_lossy(&b[..n]));
                true
            }
            _ => false,
        }
    }

    async fn read_until(&mut self, pat: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.buf.find(pat) {
                let rest = self.buf.split_off(i + pat.len());
                return std::mem::replace(&mut self.buf, rest);
            }
            assert!(
                self.read_more(deadline).await,
                "timeout waiting for {pat:?}; have {:?}",
                self.buf
            );
        }
    }

    /// Everything the gateway sends within `wait`.
    async fn collect(&mut self, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        while self.read_more(deadline).await {}
        std::mem::take(&mut self.buf)
    }
}

// ---- the gateway ---------------------------------------------------------------------------

struct Gw {
    http: SocketAddr,
    xmpp: Xmpp,
    _sip_peer: UdpSocket,
}

fn free_tcp_port(ip: &str) -> u16 {
    let l = std::net::TcpListener::bind((ip, 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

/// Starts the whole gateway in PUA mode with its HTTP listener on `http_ip` and `tune`. The
/// ports are picked free and released before the gateway binds them, so another test's
/// outgoing connection may take one meanwhile: then the start is tried again on new ports
/// and a new XMPP listener (the failed attempt's component may already be connecting).
async fn start(http_ip: &str, tune: impl Fn(&mut Config)) -> Gw {
    let _ = logs();
    let sip_peer = UdpSocket::bind("127.0.0.1:0").await.expect("bind sip");
    let mut attempt = 0;
    let (listener, http, plain) = loop {
        attempt += 1;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind xmpp");
        let sip_port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.local_addr().expect("addr").port()
        };
        let http: SocketAddr = format!("{http_ip}:{}", free_tcp_port(http_ip))
            .parse()
            .expect("http addr");
        let mut cfg = Config::default();
        cfg.xmpp.component_domain = COMPONENT.into();
        cfg.xmpp.server = listener.local_addr().expect("xmpp addr").to_string();
        cfg.xmpp.secret = SECRET.into();
        cfg.sip.gateway_domain = GW_DOMAIN.into();
        cfg.sip.server_address = format!("sip:{}", sip_peer.local_addr().expect("sip addr"));
        cfg.sip.listen = format!("127.0.0.1:{sip_port}");
        cfg.presence.mode = "pua".into();
        cfg.http.listen = http.to_string();
        cfg.store.path = std::env::temp_dir()
            .join(format!(
                "pua-xmpp-admintest-{}-{}.db",
                std::process::id(),
                http.port()
            ))
            .display()
            .to_string();
        tune(&mut cfg);
        assert_eq!(cfg.validate(), Ok(()));
        match gateway::start(&cfg).await {
            Ok(_) => break (listener, http, cfg.http.tls_cert.is_empty()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < 5 => continue,
            Err(e) => panic!("gateway::start: {e}"),
        }
    };
    let xmpp = Xmpp::accept(&listener).await;
    // The handshake is answered; the gateway counts the link up once it has read that answer
    // (over HTTPS the test waits itself).
    let deadline = Instant::now() + WAIT;
    while plain && get(http, "/health", None).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the component link never came up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Gw {
        http,
        xmpp,
        _sip_peer: sip_peer,
    }
}

// ---- HTTP clients --------------------------------------------------------------------------

#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
    /// The client's own address (it is what the gateway logs).
    local: SocketAddr,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 request over `io`; `auth` is the whole `Authorization` value.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    local: SocketAddr,
    method: &str,
    target: &str,
    auth: Option<&str>,
    body: &str,
) -> Reply {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    io.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, io.read_to_end(&mut buf))
        .await
        .expect("http timeout");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
        local,
    }
}

/// Plain HTTP from the local address `from` to `to`.
async fn http(
    from: &str,
    to: SocketAddr,
    method: &str,
    target: &str,
    auth: Option<&str>,
    body: &str,
) -> Reply {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{from}:0").parse().expect("from"))
        .expect("bind client");
    let stream = sock.connect(to).await.expect("connect http");
    let local = stream.local_addr().expect("local");
    exchange(stream, local, method, target, auth, body).await
}

async fn get(to: SocketAddr, target: &str, auth: Option<&str>) -> Reply {
    http("127.0.0.1", to, "GET", target, auth, "").await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

const WINFO_BODY: &str =
    "uri=sip%3Aalice*xmpp.test%40xmpp.example.com&expires=600&watcher=sip%3Acarol%40sip.test";
/// What a successful req_winfo above makes the gateway send: alice is asked for carol.
const CAROL_ASKS_ALICE: &str =
    "<presence from='carol*sip.test@sip.example.net' to='alice@xmpp.test' type='subscribe'/>";

// ---- the tests -----------------------------------------------------------------------------

#[actix_rt::test]
async fn token_guards_everything_but_health() {
    let mut gw = start("127.0.0.1", |c| c.http.token = TOKEN.into()).await;
    let h = gw.http;

    // /health: open, no token needed (and the link is up: 200).
    let r = get(h, "/health", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("\"status\":\"ok\""), "{r:?}");
    assert_eq!(get(h, "/health", Some("Bearer wrong")).await.status, 200);

    for (method, target) in [
        ("GET", "/metrics"),
        ("GET", "/subscriptions?user=alice@xmpp.test"),
        ("POST", "/pua/req_winfo"),
    ] {
        let path = target.split('?').next().unwrap_or(target);
        let body = if method == "POST" { WINFO_BODY } else { "" };
        // Missing token.
        let r = http("127.0.0.1", h, method, target, None, body).await;
        assert_eq!(r.status, 401, "{method} {target}: {r:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"pua-xmpp\""),
            "{r:?}"
        );
        assert_eq!(r.body, "unauthorized: bearer token required\n");
        let lines = refusal_lines(r.local, path);
        assert_eq!(lines.len(), 1, "{method} {target}: {lines:?}");
        assert!(lines[0].contains("WARN") && lines[0].contains("reason=\"no bearer token\""));
        // Wrong token (also one character short, and the right one under another scheme).
        for auth in [
            bearer("tok-0123456789abcdef-ADMIn"),
            bearer(&TOKEN[..TOKEN.len() - 1]),
            format!("Basic {TOKEN}"),
        ] {
            let r = http("127.0.0.1", h, method, target, Some(&auth), body).await;
            assert_eq!(r.status, 401, "{method} {target} {auth}: {r:?}");
            let lines = refusal_lines(r.local, path);
            assert_eq!(lines.len(), 1, "{lines:?}");
            if auth.starts_with("Bearer") {
                assert_eq!(
                    r.header("www-authenticate"),
                    Some("Bearer realm=\"pua-xmpp\", error=\"invalid_token\"")
                );
                assert!(
                    lines[0].contains("reason=\"wrong bearer token\""),
                    "{lines:?}"
                );
            }
        }
    }
    // Nothing refused reached the registry: alice was never asked.
    let sent = gw.xmpp.collect(Duration::from_millis(400)).await;
    assert!(!sent.contains("type='subscribe'"), "{sent}");

    // The right token: the endpoints work.
    let auth = bearer(TOKEN);
    let r = get(h, "/subscriptions?user=alice@xmpp.test", Some(&auth)).await;
    assert_eq!((r.status, r.body.as_str()), (200, "[]"), "{r:?}");
    let r = http(
        "127.0.0.1",
        h,
        "POST",
        "/pua/req_winfo",
        Some(&auth),
        WINFO_BODY,
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"), "{r:?}");
    let sent = gw.xmpp.collect(Duration::from_millis(500)).await;
    assert!(sent.contains(CAROL_ASKS_ALICE), "{sent}");
    let r = get(h, "/metrics", Some(&auth)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let refused_token: u64 = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("pua_xmpp_http_refusals_total{reason=\"token\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no token refusal counter in {}", r.body));
    assert!(refused_token >= 12, "{refused_token}");
    assert!(
        r.body
            .contains("pua_xmpp_http_refusals_total{reason=\"address\"}"),
        "the address series exists from the start"
    );

    // The token never reaches the log.
    let log = log_text();
    assert!(!log.contains(TOKEN) && !log.contains(&TOKEN[..TOKEN.len() - 1]));
    assert!(!log.contains("tok-0123456789abcdef-ADMIn"));
}

#[actix_rt::test]
async fn allow_list_refuses_other_addresses_with_403() {
    // Listening on 127.0.0.12; only 127.0.0.12 itself (and a v6 prefix) may use the API.
    let mut gw = start("127.0.0.12", |c| {
        c.http.allow = vec!["127.0.0.12/32".into(), "2001:db8::/32".into()];
        c.http.token = TOKEN.into();
    })
    .await;
    let h = gw.http;
    let auth = bearer(TOKEN);

    // From 127.0.0.1: /health yes, the rest 403 even with the right token.
    let r = http("127.0.0.1", h, "GET", "/health", None, "").await;
    assert_eq!(r.status, 200, "{r:?}");
    for (method, target) in [
        ("GET", "/metrics"),
        ("GET", "/subscriptions?user=alice@xmpp.test"),
        ("POST", "/pua/req_winfo"),
    ] {
        let path = target.split('?').next().unwrap_or(target);
        let body = if method == "POST" { WINFO_BODY } else { "" };
        let r = http("127.0.0.1", h, method, target, Some(&auth), body).await;
        assert_eq!(r.status, 403, "{method} {target}: {r:?}");
        assert_eq!(r.body, "forbidden: client address not allowed\n");
        assert_eq!(r.header("www-authenticate"), None);
        let lines = refusal_lines(r.local, path);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("reason=\"client address not in http.allow\""),
            "{lines:?}"
        );
    }
    let sent = gw.xmpp.collect(Duration::from_millis(400)).await;
    assert!(!sent.contains("type='subscribe'"), "{sent}");

    // From 127.0.0.12: allowed, the token is still required.
    let r = http("127.0.0.12", h, "GET", "/metrics", None, "").await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = http("127.0.0.12", h, "GET", "/metrics", Some(&auth), "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let refused: u64 = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("pua_xmpp_http_refusals_total{reason=\"address\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(refused >= 3, "{refused}");
    let r = http(
        "127.0.0.12",
        h,
        "POST",
        "/pua/req_winfo",
        Some(&auth),
        WINFO_BODY,
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"), "{r:?}");
    let sent = gw.xmpp.collect(Duration::from_millis(500)).await;
    assert!(sent.contains(CAROL_ASKS_ALICE), "{sent}");
}

#[actix_rt::test]
async fn allow_list_without_token_lets_allowed_addresses_in() {
    let gw = start("127.0.0.12", |c| c.http.allow = vec!["127.0.0.0/30".into()]).await;
    let r = http("127.0.0.1", gw.http, "GET", "/metrics", None, "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = http("127.0.0.12", gw.http, "GET", "/metrics", None, "").await;
    assert_eq!(r.status, 403, "{r:?}");
}

#[actix_rt::test]
async fn token_file_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    std::fs::write(&path, format!("  {TOKEN}\n")).expect("write");
    let gw = start("127.0.0.1", |c| {
        c.http.token_file = path.display().to_string();
    })
    .await;
    assert_eq!(get(gw.http, "/metrics", None).await.status, 401);
    assert_eq!(
        get(gw.http, "/metrics", Some(&bearer(TOKEN))).await.status,
        200
    );
}

// ---- TLS -----------------------------------------------------------------------------------

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
fn test_cert(dir: &std::path::Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen");
    let cert = dir.join("http.crt");
    let key = dir.join("http.key");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
    (cert, key, ck.cert.der().to_vec())
}

async fn https(
    to: SocketAddr,
    trust: &[u8],
    target: &str,
    auth: Option<&str>,
) -> Result<Reply, std::io::Error> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trust.to_vec()))
        .expect("root");
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(to).await?;
    let local = tcp.local_addr()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await?;
    Ok(exchange(tls, local, "GET", target, auth, "").await)
}

#[actix_rt::test]
async fn https_with_a_test_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, der) = test_cert(dir.path());
    let gw = start("127.0.0.1", |c| {
        c.http.tls_cert = cert.display().to_string();
        c.http.tls_key = key.display().to_string();
        c.http.token = TOKEN.into();
    })
    .await;
    let deadline = Instant::now() + WAIT;
    let r = loop {
        let r = https(gw.http, &der, "/health", None).await.expect("https");
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(r.status, 200, "{r:?}");
    let r = https(gw.http, &der, "/metrics", None).await.expect("https");
    assert_eq!(r.status, 401, "{r:?}");
    let r = https(gw.http, &der, "/metrics", Some(&bearer(TOKEN)))
        .await
        .expect("https");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("pua_xmpp_http_refusals_total"), "{r:?}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let r = get(gw.http, "/health", None).await;
    assert_eq!(r.status, 0, "{r:?}");
    // A client that does not trust the certificate fails the handshake.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    assert!(https(gw.http, other.cert.der(), "/health", None)
        .await
        .is_err());
}

// ---- configuration and check-config ----------------------------------------------------------

fn load(pairs: &[(&str, &str)]) -> Result<Config, String> {
    Config::load_with_env(
        None,
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>(),
    )
    .map_err(|e| e.to_string())
}

#[test]
fn http_keys_from_the_environment_and_their_errors() {
    let c = load(&[
        ("PUA_XMPP__HTTP__TOKEN", TOKEN),
        (
            "PUA_XMPP__HTTP__ALLOW",
            "127.0.0.1, 10.0.0.0/8,2001:db8::/32",
        ),
    ])
    .expect("valid");
    assert_eq!(c.http.token, TOKEN);
    assert_eq!(c.http.allow, ["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"]);
    assert!(!format!("{c:?}").contains(TOKEN), "Debug shows the token");
    for key in [
        "http.token",
        "http.token_file",
        "http.allow",
        "http.tls_cert",
        "http.tls_key",
    ] {
        assert!(Config::keys().contains(&key.to_owned()), "{key}");
    }

    let e = load(&[("PUA_XMPP__HTTP__TOKEN", "short-secret")]).unwrap_err();
    assert_eq!(e, "http.token: token must be at least 16 characters");
    let e = load(&[("PUA_XMPP__HTTP__TOKEN", "with space 0123456789")]).unwrap_err();
    assert!(e.starts_with("http.token: token may only contain"), "{e}");
    assert!(!e.contains("0123456789"), "{e}");
    let e = load(&[("PUA_XMPP__HTTP__ALLOW", "10.0.0.1/8")]).unwrap_err();
    assert_eq!(
        e,
        "http.allow: \"10.0.0.1/8\" has host bits set (did you mean 10.0.0.0/8?)"
    );
    let e = load(&[("PUA_XMPP__HTTP__ALLOW", "gateway.example")]).unwrap_err();
    assert_eq!(
        e,
        "http.allow: expected an IP address or CIDR prefix, got \"gateway.example\""
    );
    let e = load(&[
        ("PUA_XMPP__HTTP__TOKEN", TOKEN),
        ("PUA_XMPP__HTTP__TOKEN_FILE", "/etc/hostname"),
    ])
    .unwrap_err();
    assert_eq!(
        e,
        "http.token_file: set http.token or http.token_file, not both"
    );
    let e = load(&[("PUA_XMPP__HTTP__TOKEN_FILE", "/nonexistent/token")]).unwrap_err();
    assert!(
        e.starts_with("http.token_file: cannot read \"/nonexistent/token\""),
        "{e}"
    );
    let e = load(&[("PUA_XMPP__HTTP__TLS_CERT", "/nonexistent/c.pem")]).unwrap_err();
    assert_eq!(e, "http.tls_key: must be set with http.tls_cert");

    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, _) = test_cert(dir.path());
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    assert!(load(&[
        ("PUA_XMPP__HTTP__TLS_CERT", &cert),
        ("PUA_XMPP__HTTP__TLS_KEY", &key)
    ])
    .is_ok());
    let e = load(&[
        ("PUA_XMPP__HTTP__TLS_CERT", &key),
        ("PUA_XMPP__HTTP__TLS_KEY", &key),
    ])
    .unwrap_err();
    assert!(
        e.starts_with("http.tls_cert: ") && e.contains("no PEM certificate"),
        "{e}"
    );
    let e = load(&[
        ("PUA_XMPP__HTTP__TLS_CERT", &cert),
        ("PUA_XMPP__HTTP__TLS_KEY", &cert),
    ])
    .unwrap_err();
    assert!(
        e.starts_with("http.tls_key: ") && e.contains("no usable PEM private key"),
        "{e}"
    );
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pua-xmpp"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PUA_XMPP__") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn check_config_redacts_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("gw.toml");
    std::fs::write(
        &file,
        "[http]\ntoken = \"file-token-0123456789\"\nallow = [\"10.0.0.0/8\"]\n",
    )
    .expect("write");
    // The environment wins over the file, as for every key.
    let out = bin()
        .arg("check-config")
        .arg(&file)
        .env("PUA_XMPP__HTTP__TOKEN", TOKEN)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let stderr = String::from_utf8(out.stderr).expect("utf-8");
    assert!(
        stdout.contains(
            "\n[http]\nlisten = \"127.0.0.1:9080\"\ntoken = \"<redacted>\"\ntoken_file = \"\"\n\
             allow = [\"10.0.0.0/8\"]\ntls_cert = \"\"\ntls_key = \"\"\n"
        ),
        "{stdout}"
    );
    for s in [&stdout, &stderr] {
        assert!(
            !s.contains(TOKEN) && !s.contains("file-token-0123456789"),
            "{s}"
        );
    }
    // No token: shown empty, so an operator sees that none is set.
    let out = bin().arg("check-config").output().expect("run");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert!(stdout.contains("\ntoken = \"\"\n"), "{stdout}");
    // A bad token in the environment: exit 2, the key named, the value not shown.
    let out = bin()
        .arg("check-config")
        .env("PUA_XMPP__HTTP__TOKEN", "bad token value 123")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).expect("utf-8");
    assert!(
        stderr.contains("http.token: token may only contain"),
        "{stderr}"
    );
    assert!(!stderr.contains("bad token value"), "{stderr}");
}
