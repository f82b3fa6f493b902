//! Graceful shutdown of the real `pua-xmpp` binary (issue 5): SIGTERM makes it stop taking new
//! work, let in-flight SIP client transactions finish, close the XEP-0114 stream with
//! `</stream:stream>`, flush the store and exit 0 within `runtime.shutdown_timeout_secs`.
//! The peers are scripted on loopback: a XEP-0114 server on TCP and a SIP proxy on UDP.

use pua_xmpp::sip::parse::parse_message;
use pua_xmpp::sip::{Method, SipMessage, SipRequest};
use pua_xmpp::subscriber::Relation;
use pua_xmpp_actors::store::load_snapshot;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const COMPONENT: &str = "sip.example.net";
const SECRET: &str = "gw-test-s3cr3t";
const STREAM_ID: &str = "gw-stream-3BF96D32";
/// `sha1(STREAM_ID + SECRET)` computed outside the code under test (`sha1sum`).
const HANDSHAKE: &str = "78645a4c7ee5eab11526f9e79d1408cf4d58910e";
/// Start-up of a debug binary (restore, binds) can take a while on a busy machine.
const START_WAIT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(3);

const ROMEO: &str = "romeo@example.net";
const JULIET_JID: &str = "juliet*example.com@sip.example.net";
const JULIET_URI: &str = "sip:juliet@example.com";
const PS_TAG: &str = "ps-91aa07";
const PIDF_OPEN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:juliet@example.com">
  <tuple id="t-desk"><status><basic>open</basic></status><note>On the balcony</note></tuple>
</presence>
"#;

// ---- the gateway process ----------------------------------------------------------------------

/// The running binary; killed (SIGKILL, by its own handle) if a test fails before it exits.
struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
    sip: SocketAddr,
    timeout_secs: u64,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A free UDP port on loopback (bound, read, released) for `sip.listen`.
fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("local_addr").port()
}

impl Gateway {
    /// Starts the binary with a config naming the scripted peers.
    fn spawn(xmpp: &str, proxy: SocketAddr, timeout_secs: u64) -> Gateway {
        Gateway::spawn_with(xmpp, proxy, timeout_secs, "")
    }

    /// `store_extra`: more lines for the `[store]` section.
    fn spawn_with(xmpp: &str, proxy: SocketAddr, timeout_secs: u64, store_extra: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let sip: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let toml = format!(
            "[sip]\nlisten = \"{sip}\"\nserver_address = \"sip:{proxy}\"\n\
             gateway_domain = \"xmpp.example.com\"\n\
             [xmpp]\ncomponent_domain = \"{COMPONENT}\"\nserver = \"{xmpp}\"\n\
             secret = \"{SECRET}\"\n\
             [presence]\nnotify_min_interval_secs = 1\n\
             [store]\npath = \"{}\"\n{store_extra}\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [runtime]\nshutdown_timeout_secs = {timeout_secs}\n",
            dir.path().join("store.db").display()
        );
        let cfg = dir.path().join("pua-xmpp.toml");
        std::fs::write(&cfg, toml).expect("write config");
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pua-xmpp"));
        for (k, _) in std::env::vars() {
            if k.starts_with("PUA_XMPP__") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pua-xmpp");
        Gateway {
            child,
            dir,
            sip,
            timeout_secs,
        }
    }

    fn store_path(&self) -> PathBuf {
        self.dir.path().join("store.db")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// Waits for a log line containing `needle`.
    async fn wait_log(&self, needle: &str, wait: Duration) {
        let end = Instant::now() + wait;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < end,
                "no log line {needle:?} after {wait:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn sigterm(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM failed: {st}");
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits until the process exits; fails after `wait`.
    async fn wait_exit(&mut self, wait: Duration) -> ExitStatus {
        let end = Instant::now() + wait;
        loop {
            if let Some(st) = self.exited() {
                return st;
            }
            assert!(
                Instant::now() < end,
                "pua-xmpp still running {wait:?} after SIGTERM; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The bound of the requirement: the configured timeout plus 2 s.
    fn exit_bound(&self) -> Duration {
        Duration::from_secs(self.timeout_secs + 2)
    }
}

// ---- the scripted XEP-0114 server -------------------------------------------------------------

struct Xmpp {
    sock: TcpStream,
    buf: String,
}

impl Xmpp {
    async fn accept(listener: &TcpListener) -> Xmpp {
        let (sock, _) = tokio::time::timeout(START_WAIT, listener.accept())
            .await
            .expect("the gateway did not connect to the XMPP server")
            .expect("accept");
        let mut x = Xmpp {
            sock,
            buf: String::new(),
        };
        x.read_until(&format!("to='{COMPONENT}'>")).await;
        x.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
             xmlns='jabber:component:accept' from='{COMPONENT}' id='{STREAM_ID}'>"
        ))
        .await;
        let hs = x.read_until("</handshake>").await;
        assert_eq!(hs, format!("<handshake>{HANDSHAKE}</handshake>"));
        x.send("<handshake/>").await;
        x
    }

    /// Everything up to and including `pat`; fails on timeout or EOF first.
    async fn read_until(&mut self, pat: &str) -> String {
        let end = Instant::now() + WAIT;
        let mut b = [0u8; 8192];
        loop {
            if let Some(i) = self.buf.find(pat) {
                let rest = self.buf.split_off(i + pat.len());
                return std::mem::replace(&mut self.buf, rest);
            }
            let left = end.saturating_duration_since(Instant::now());
            let n = match tokio::time::timeout(left, self.sock.read(&mut b)).await {
                Err(_) => panic!("timeout waiting for {pat:?}; have {:?}", self.buf),
                Ok(r) => r.expect("component stream read"),
            };
            assert!(n > 0, "EOF before {pat:?}; have {:?}", self.buf);
            self.buf
                .push_str(std::str::from_utf8(&b[..n]).expect("component sent non-UTF-8"));
        }
    }

    /// Reads until EOF (or `wait`), returning everything the gateway sent.
    async fn read_to_end(&mut self, wait: Duration) -> String {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(wait, self.sock.read_to_end(&mut rest)).await;
        let mut all = std::mem::take(&mut self.buf);
        all.push_str(&String::from_utf8_lossy(&rest));
        all
    }

    async fn send(&mut self, s: &str) {
        self.sock.write_all(s.as_bytes()).await.expect("write");
    }
}

// ---- the scripted SIP proxy -------------------------------------------------------------------

struct Proxy {
    sock: UdpSocket,
    addr: SocketAddr,
}

impl Proxy {
    async fn bind() -> Proxy {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = sock.local_addr().expect("proxy addr");
        Proxy { sock, addr }
    }

    async fn recv_within(&self, wait: Duration) -> Option<SipMessage> {
        let mut buf = vec![0u8; 65536];
        let (n, _) = tokio::time::timeout(wait, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .expect("recv_from");
        Some(parse_message(&buf[..n]).expect("gateway sent unparseable SIP"))
    }

    async fn subscribe(&self) -> SipRequest {
        match self.recv_within(WAIT).await {
            Some(SipMessage::Request(r)) if r.method == Method::Subscribe => r,
            other => panic!("expected a SUBSCRIBE, got {other:?}"),
        }
    }

    async fn send(&self, to: SocketAddr, text: &str) {
        self.sock.send_to(text.as_bytes(), to).await.expect("send");
    }

    /// The 200 of a presence server to `req`.
    fn ok(req: &SipRequest) -> String {
        let mut s = "SIP/2.0 200 OK\r\n".to_owned();
        for v in &req.via {
            s.push_str(&format!("Via: {v}\r\n"));
        }
        s.push_str(&format!(
            "From: <{}>;tag={}\r\nTo: <{}>;tag={PS_TAG}\r\nCall-ID: {}\r\nCSeq: {} SUBSCRIBE\r\n\
             Expires: 1800\r\nContent-Length: 0\r\n\r\n",
            req.from.uri,
            req.from.tag.as_deref().unwrap_or(""),
            req.to.uri,
            req.call_id,
            req.cseq,
        ));
        s
    }

    /// NOTIFY active with `PIDF_OPEN` in the dialog of `sub`.
    fn notify(&self, sub: &SipRequest) -> String {
        let target = sub.contact.as_ref().map(|c| c.uri.as_str()).unwrap_or("");
        format!(
            "NOTIFY {target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {proxy};branch=z9hG4bK-ps-101\r\n\
             Max-Forwards: 70\r\n\
             From: <{JULIET_URI}>;tag={PS_TAG}\r\n\
             To: <{from}>;tag={tag}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 101 NOTIFY\r\n\
             Contact: <sip:{proxy}>\r\n\
             Event: presence\r\n\
             Subscription-State: active;expires=1740\r\n\
             Content-Type: application/pidf+xml\r\n\
             Content-Length: {len}\r\n\r\n{PIDF_OPEN}",
            proxy = self.addr,
            from = sub.from.uri,
            tag = sub.from.tag.as_deref().unwrap_or(""),
            call_id = sub.call_id,
            len = PIDF_OPEN.len(),
        )
    }
}

fn subscribe_stanza(to: &str, id: &str) -> String {
    format!("<presence from='{ROMEO}' to='{to}' type='subscribe' id='{id}'/>")
}

/// The persisted subscriber pairs as (watcher, presentity, relation, dialog Call-ID).
fn stored_pairs(path: &Path) -> Vec<(String, String, Relation, Option<String>)> {
    let snap = load_snapshot(path).expect("load_snapshot");
    let mut v: Vec<_> = snap
        .subscriptions
        .into_iter()
        .map(|(r, _)| {
            (
                r.pair.watcher.to_string(),
                r.pair.presentity.to_string(),
                r.relation,
                r.dialog.map(|d| d.call_id),
            )
        })
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

// ---- tests ------------------------------------------------------------------------------------

#[actix_rt::test]
async fn sigterm_closes_the_stream_flushes_the_subscription_and_exits_0() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind xmpp");
    let proxy = Proxy::bind().await;
    let xmpp_addr = listener.local_addr().expect("addr").to_string();
    let mut gw = Gateway::spawn(&xmpp_addr, proxy.addr, 3);
    let mut xmpp = Xmpp::accept(&listener).await;

    // An active subscription romeo → juliet (§4.2).
    xmpp.send(&subscribe_stanza(JULIET_JID, "s1")).await;
    let sub = proxy.subscribe().await;
    assert_eq!(sub.uri, JULIET_URI);
    proxy.send(gw.sip, &Proxy::ok(&sub)).await;
    proxy.send(gw.sip, &proxy.notify(&sub)).await;
    match proxy.recv_within(WAIT).await {
        Some(SipMessage::Response(r)) => assert_eq!((r.status, r.cseq), (200, 101)),
        other => panic!("expected the 200 to the NOTIFY, got {other:?}"),
    }
    xmpp.read_until(&format!(
        "<presence from='{JULIET_JID}' to='{ROMEO}' type='subscribed'/>"
    ))
    .await;
    xmpp.read_until("On the balcony</status>").await;

    let signalled = Instant::now();
    gw.sigterm();
    // Step 3: the gateway ends its stream; the server answers with its own closing tag.
    xmpp.read_until("</stream:stream>").await;
    xmpp.send("</stream:stream>").await;
    let status = gw.wait_exit(gw.exit_bound()).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", gw.log());
    assert!(took < gw.exit_bound(), "took {took:?}");
    // Nothing follows the closing tag, and the socket is closed (read_to_end ends).
    assert_eq!(xmpp.read_to_end(WAIT).await, "");

    assert_eq!(
        stored_pairs(&gw.store_path()),
        [(
            ROMEO.to_owned(),
            JULIET_JID.to_owned(),
            Relation::Approved,
            Some(sub.call_id.clone())
        )]
    );
    let log = gw.log();
    for step in [
        "signal received: shutting down",
        "shutdown 1/4: no new work",
        "shutdown 2/4: no SIP client transaction in flight",
        "shutdown 3/4: XMPP stream closed (</stream:stream> sent) flushed_stanzas=0 server_closed=true dropped_inbound=0",
        "shutdown 4/4: store flushed; exiting",
    ] {
        assert!(log.contains(step), "log lacks {step:?}:\n{log}");
    }
}

/// A pair's record waits `store.coalesce_ms` for more changes before the shard writes it while
/// nobody was told about it (here: the 200 to our SUBSCRIBE, before any NOTIFY): with a long
/// wait nothing is in the file while the subscription is up, and SIGTERM still writes the
/// record (the shards hand over what they hold back before the store's last flush). What a
/// peer is told about is written at once (issue 14; `gateway.rs` tests that).
#[actix_rt::test]
async fn sigterm_writes_the_records_the_shards_hold_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind xmpp");
    let proxy = Proxy::bind().await;
    let xmpp_addr = listener.local_addr().expect("addr").to_string();
    let mut gw = Gateway::spawn_with(&xmpp_addr, proxy.addr, 3, "coalesce_ms = 10000\n");
    let mut xmpp = Xmpp::accept(&listener).await;

    xmpp.send(&subscribe_stanza(JULIET_JID, "s1")).await;
    let sub = proxy.subscribe().await;
    proxy.send(gw.sip, &Proxy::ok(&sub)).await;
    // Well past the store's own 20 ms batch: what is not in the file is held by the shard.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored_pairs(&gw.store_path()), []);

    gw.sigterm();
    xmpp.read_until("</stream:stream>").await;
    xmpp.send("</stream:stream>").await;
    let status = gw.wait_exit(gw.exit_bound()).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", gw.log());
    assert_eq!(
        stored_pairs(&gw.store_path()),
        [(
            ROMEO.to_owned(),
            JULIET_JID.to_owned(),
            Relation::Pending,
            Some(sub.call_id.clone())
        )]
    );
}

#[actix_rt::test]
async fn sigterm_waits_for_the_in_flight_subscribe_and_forwards_no_new_stanza() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind xmpp");
    let proxy = Proxy::bind().await;
    let xmpp_addr = listener.local_addr().expect("addr").to_string();
    // 8 s: the wait for transactions may take up to 4 s.
    let mut gw = Gateway::spawn(&xmpp_addr, proxy.addr, 8);
    let mut xmpp = Xmpp::accept(&listener).await;

    xmpp.send(&subscribe_stanza(JULIET_JID, "s1")).await;
    let sub = proxy.subscribe().await;
    // The SUBSCRIBE is in flight (no answer yet) when the signal comes.
    let signalled = Instant::now();
    gw.sigterm();
    gw.wait_log("shutdown 1/4", WAIT).await;
    // New work after the signal is not taken: no SUBSCRIBE for this one.
    xmpp.send(&subscribe_stanza(
        "mercutio*example.com@sip.example.net",
        "s2",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gw.exited(), None, "exited before the transaction finished");
    // Only retransmissions of the in-flight SUBSCRIBE (Timer E) arrive meanwhile.
    while let Some(m) = proxy.recv_within(Duration::from_millis(1)).await {
        match m {
            SipMessage::Request(r) => assert_eq!(
                (r.method, r.call_id.as_str(), r.cseq),
                (Method::Subscribe, sub.call_id.as_str(), sub.cseq)
            ),
            other => panic!("unexpected {other:?}"),
        }
    }
    let answered = Instant::now();
    proxy.send(gw.sip, &Proxy::ok(&sub)).await;

    // This server never closes its side: the gateway's wait for it is bounded.
    let sent = xmpp.read_to_end(gw.exit_bound()).await;
    assert!(sent.ends_with("</stream:stream>"), "{sent:?}");
    let status = gw.wait_exit(gw.exit_bound()).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", gw.log());
    // Not the 4 s budget of the transaction wait: it ended with the 200.
    let after_answer = answered.elapsed();
    assert!(
        after_answer < Duration::from_millis(3500),
        "exit {after_answer:?} after the 200"
    );
    assert!(signalled.elapsed() < gw.exit_bound());
    while let Some(m) = proxy.recv_within(Duration::from_millis(50)).await {
        if let SipMessage::Request(r) = m {
            assert_eq!(r.call_id, sub.call_id, "a new SIP request after SIGTERM");
        }
    }
    let log = gw.log();
    for step in [
        "shutting down: inbound presence no longer forwarded",
        "shutdown 2/4: no SIP client transaction in flight",
        "server_closed=false dropped_inbound=1",
        "shutdown 4/4: store flushed; exiting",
    ] {
        assert!(log.contains(step), "log lacks {step:?}:\n{log}");
    }
    // The pair the 200 answered is kept (pending: no NOTIFY came); mercutio's never existed.
    let pairs = stored_pairs(&gw.store_path());
    assert_eq!(pairs.len(), 1, "{pairs:?}");
    assert_eq!(
        (pairs[0].0.as_str(), pairs[0].1.as_str()),
        (ROMEO, JULIET_JID)
    );
}

#[actix_rt::test]
async fn sigterm_without_an_xmpp_server_still_exits_0_in_time() {
    // A port nothing listens on: the component keeps reconnecting.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let xmpp_addr = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let proxy = Proxy::bind().await;
    let mut gw = Gateway::spawn(&xmpp_addr, proxy.addr, 2);
    gw.wait_log("XMPP component link down", START_WAIT).await;
    let signalled = Instant::now();
    gw.sigterm();
    let status = gw.wait_exit(gw.exit_bound()).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", gw.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "{:?}",
        signalled.elapsed()
    );
    let log = gw.log();
    assert!(
        log.contains(
            "shutdown 3/4: XMPP component was not connected; nothing to close lost_stanzas=0"
        ),
        "{log}"
    );
    assert!(
        log.contains("shutdown 4/4: store flushed; exiting"),
        "{log}"
    );
    assert_eq!(stored_pairs(&gw.store_path()), []);
}

#[actix_rt::test]
async fn sigterm_gives_up_on_an_unanswered_subscribe_after_half_the_budget_and_exits_0() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind xmpp");
    let proxy = Proxy::bind().await;
    let xmpp_addr = listener.local_addr().expect("addr").to_string();
    let mut gw = Gateway::spawn(&xmpp_addr, proxy.addr, 2);
    let mut xmpp = Xmpp::accept(&listener).await;
    xmpp.send(&subscribe_stanza(JULIET_JID, "s1")).await;
    let _sub = proxy.subscribe().await;
    // Never answered: Timer F (32 s) is far beyond the budget.
    let signalled = Instant::now();
    gw.sigterm();
    xmpp.read_until("</stream:stream>").await;
    xmpp.send("</stream:stream>").await;
    let status = gw.wait_exit(gw.exit_bound()).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", gw.log());
    // Half of 2 s for the transaction, then the close and the flush.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    let log = gw.log();
    assert!(
        log.contains("shutdown 2/4: gave up waiting for SIP client transactions client_txns=1"),
        "{log}"
    );
    assert!(
        log.contains("shutdown 4/4: store flushed; exiting"),
        "{log}"
    );
}

#[actix_rt::test]
async fn second_sigterm_exits_at_once_with_status_1() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind xmpp");
    let proxy = Proxy::bind().await;
    let xmpp_addr = listener.local_addr().expect("addr").to_string();
    let mut gw = Gateway::spawn(&xmpp_addr, proxy.addr, 30);
    let mut xmpp = Xmpp::accept(&listener).await;
    xmpp.send(&subscribe_stanza(JULIET_JID, "s1")).await;
    let _sub = proxy.subscribe().await;
    gw.sigterm();
    // The shutdown now waits up to 15 s for the unanswered SUBSCRIBE.
    gw.wait_log("shutdown 1/4", WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.exited(), None);
    let again = Instant::now();
    gw.sigterm();
    let status = gw.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(1), "log:\n{}", gw.log());
    assert!(
        again.elapsed() < Duration::from_secs(1),
        "{:?}",
        again.elapsed()
    );
    assert!(
        gw.log()
            .contains("second signal: exiting now without finishing the shutdown"),
        "{}",
        gw.log()
    );
}
