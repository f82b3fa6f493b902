//! The XEP-0114 component actor against an in-process scripted server (spec §8, cases 47,
//! 93–97). Backoffs are shortened through `ComponentConfig` so the suite runs in seconds.

use actix::prelude::*;
use pua_xmpp::stanza::{Availability, InPresence, Jid, OutPresence, PresenceType, Show, Status};
use pua_xmpp_actors::component::{
    handshake_digest, Backoff, ComponentConfig, StreamEvent, StreamParser, XmppComponent,
};
use pua_xmpp_actors::messages::{ComponentStatus, SendPresence, StanzaIn, StanzasIn};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

const DOMAIN: &str = "sip.xmpp.test";
const SECRET: &str = "s3cr3t";
const WAIT: Duration = Duration::from_secs(5);

/// Collects what the component reports to the gateway.
struct Collector {
    presences: UnboundedSender<InPresence>,
    status: UnboundedSender<bool>,
}

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<StanzaIn> for Collector {
    type Result = ();
    fn handle(&mut self, msg: StanzaIn, _: &mut Context<Self>) {
        let _ = self.presences.send(msg.0);
    }
}

/// Batches are told apart from single stanzas: (true, ids) for a `StanzasIn`.
struct BatchCollector(UnboundedSender<(bool, Vec<Option<String>>)>);

impl Actor for BatchCollector {
    type Context = Context<Self>;
}

impl Handler<StanzaIn> for BatchCollector {
    type Result = ();
    fn handle(&mut self, msg: StanzaIn, _: &mut Context<Self>) {
        let _ = self.0.send((false, vec![msg.0.id]));
    }
}

impl Handler<StanzasIn> for BatchCollector {
    type Result = ();
    fn handle(&mut self, msg: StanzasIn, _: &mut Context<Self>) {
        let _ = self
            .0
            .send((true, msg.0.into_iter().map(|p| p.id).collect()));
    }
}

impl Handler<ComponentStatus> for Collector {
    type Result = ();
    fn handle(&mut self, msg: ComponentStatus, _: &mut Context<Self>) {
        let _ = self.status.send(msg.online);
    }
}

struct Harness {
    listener: TcpListener,
    comp: Addr<XmppComponent>,
    presences: UnboundedReceiver<InPresence>,
    status: UnboundedReceiver<bool>,
}

fn test_config(server: String, secret: &str) -> ComponentConfig {
    ComponentConfig {
        domain: DOMAIN.into(),
        server,
        secret: secret.into(),
        keepalive: Duration::from_secs(60),
        queue_limit: 100,
        reconnect_max: Duration::from_millis(400),
        reconnect_initial: Duration::from_millis(50),
        fatal_backoff: Duration::from_millis(300),
        conflict_retry: None,
        connect_timeout: Duration::from_secs(5),
        max_stanza: 1 << 20,
    }
}

async fn start(tune: impl FnOnce(&mut ComponentConfig), secret: &str) -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = test_config(listener.local_addr().unwrap().to_string(), secret);
    tune(&mut cfg);
    let (ptx, presences) = unbounded_channel();
    let (stx, status) = unbounded_channel();
    let collector = Collector {
        presences: ptx,
        status: stx,
    }
    .start();
    let comp = XmppComponent::start(cfg, collector.clone().recipient(), collector.recipient());
    Harness {
        listener,
        comp,
        presences,
        status,
    }
}

/// One server-side connection with a read buffer.
struct Conn {
    sock: TcpStream,
    buf: String,
}

impl Conn {
    /// Reads until `pat` is in the buffer; returns everything up to and including it.
    async fn read_until(&mut self, pat: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.buf.find(pat) {
                let rest = self.buf.split_off(i + pat.len());
                return std::mem::replace(&mut self.buf, rest);
            }
            let mut b = [0u8; 4096];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.sock.read(&mut b))
                .await
                .unwrap_or_else(|_| panic!("timeout waiting for {pat:?}; have {:?}", self.buf))
                .unwrap();
            assert!(n > 0, "EOF waiting for {pat:?}; have {:?}", self.buf);
            self.buf.push_str(std::str::from_utf8(&b[..n]).unwrap());
        }
    }

    async fn send(&mut self, s: &str) {
        self.sock.write_all(s.as_bytes()).await.unwrap();
    }

    /// Reads until EOF; returns what was left.
    async fn read_to_eof(&mut self) -> String {
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, self.sock.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        let mut out = std::mem::take(&mut self.buf);
        out.push_str(std::str::from_utf8(&rest).unwrap());
        out
    }
}

const CLIENT_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
     xmlns:stream='http://etherx.jabber.org/streams' to='sip.xmpp.test'>";

/// Accepts a connection, checks the header, sends ours with `stream_id`, reads the handshake.
/// Returns the connection and the handshake value the component sent.
async fn accept_header(listener: &TcpListener, stream_id: &str) -> (Conn, String) {
    let (sock, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("component did not connect")
        .unwrap();
    let mut c = Conn {
        sock,
        buf: String::new(),
    };
    let header = c.read_until("'sip.xmpp.test'>").await;
    assert_eq!(header, CLIENT_HEADER);
    c.send(&format!(
        "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns='jabber:component:accept' from='{DOMAIN}' id='{stream_id}' xml:lang='en'>"
    ))
    .await;
    let hs = c.read_until("</handshake>").await;
    let value = hs
        .strip_prefix("<handshake>")
        .and_then(|s| s.strip_suffix("</handshake>"))
        .unwrap_or_else(|| panic!("bad handshake element {hs:?}"))
        .to_owned();
    (c, value)
}

/// Full successful login: checks the handshake value for `stream_id` + SECRET (case 93).
async fn accept_login(h: &mut Harness, stream_id: &str) -> Conn {
    let (mut c, value) = accept_header(&h.listener, stream_id).await;
    assert_eq!(value, handshake_digest(stream_id, SECRET));
    c.send("<handshake/>").await;
    assert!(next(&mut h.status).await, "expected online status");
    c
}

async fn next<T>(rx: &mut UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timeout waiting for a message from the component")
        .expect("channel closed")
}

fn jid(s: &str) -> Jid {
    Jid::new(s).unwrap()
}

#[test]
fn case_093_handshake_digest_is_lowercase_hex_sha1_of_id_and_secret() {
    assert_eq!(
        handshake_digest("3BF96D32", "s3cr3t"),
        "ba33290100f616a33656a931798d6c9011cfa840"
    );
}

#[actix_rt::test]
async fn case_093_handshake_then_subscribe_is_forwarded_as_stanza_in() {
    let mut h = start(|_| {}, SECRET).await;
    // A Prosody-style UUID id: hashed exactly as received.
    let mut c = accept_login(&mut h, "5f7c0a1e-9b3d-4d4e-8e1a-0c2b7d9e4f11").await;
    c.send("<presence type='subscribe' from='alice@xmpp.test' to='bob*sip.test@sip.xmpp.test'/>")
        .await;
    let p = next(&mut h.presences).await;
    assert_eq!(
        p,
        InPresence {
            from: jid("alice@xmpp.test"),
            to: jid("bob*sip.test@sip.xmpp.test"),
            kind: Ok(PresenceType::Subscribe),
            id: None,
            lang: None,
            body: Availability::default(),
            invalid_show: None,
            invalid_priority: None,
            error: None,
        }
    );
}

/// Issue 7: with a batch recipient, the presences of one read reach the gateway as ONE
/// `StanzasIn`, in order (an element in between that is not presence does not split them); a
/// lone presence still comes as a plain `StanzaIn`.
#[actix_rt::test]
async fn presences_of_one_read_are_handed_over_as_one_batch() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = test_config(listener.local_addr().unwrap().to_string(), SECRET);
    let (ptx, mut got) = unbounded_channel();
    let (stx, mut status) = unbounded_channel();
    let batches = BatchCollector(ptx).start();
    let collector = Collector {
        presences: unbounded_channel().0,
        status: stx,
    }
    .start();
    let _comp = XmppComponent::start_batched(
        cfg,
        batches.clone().recipient(),
        Some(batches.recipient()),
        collector.recipient(),
    );
    let (mut c, value) = accept_header(&listener, "b1").await;
    assert_eq!(value, handshake_digest("b1", SECRET));
    c.send("<handshake/>").await;
    assert!(next(&mut status).await, "expected online status");

    let p = |id: &str| {
        format!("<presence type='subscribe' from='alice@xmpp.test' to='{id}*sip.test@sip.xmpp.test' id='{id}'/>")
    };
    c.send(&format!(
        "{}{}<message from='alice@xmpp.test' to='x@sip.xmpp.test' type='error'/>{}",
        p("a"),
        p("b"),
        p("c")
    ))
    .await;
    let some = |v: &[&str]| v.iter().map(|s| Some((*s).to_owned())).collect::<Vec<_>>();
    assert_eq!(next(&mut got).await, (true, some(&["a", "b", "c"])));
    c.send(&p("d")).await;
    assert_eq!(next(&mut got).await, (false, some(&["d"])));
}

#[actix_rt::test]
async fn case_037_presence_with_bad_show_is_forwarded_leniently_even_split_across_reads() {
    let mut h = start(|_| {}, SECRET).await;
    let mut c = accept_login(&mut h, "id1").await;
    let stanza = "<presence from='romeo@example.net/orchard' to='j*sip.test@sip.xmpp.test' id='p1' \
                  xml:lang='en'><show>busy</show><status>at &amp; work</status><priority>5</priority></presence>";
    for chunk in stanza.as_bytes().chunks(7) {
        c.sock.write_all(chunk).await.unwrap();
        c.sock.flush().await.unwrap();
    }
    let p = next(&mut h.presences).await;
    assert_eq!(
        p,
        InPresence {
            from: jid("romeo@example.net/orchard"),
            to: jid("j*sip.test@sip.xmpp.test"),
            kind: Ok(PresenceType::Available),
            id: Some("p1".into()),
            lang: Some("en".into()),
            body: Availability {
                show: None,
                statuses: vec![Status::new(None, "at & work")],
                priority: Some(5),
            },
            invalid_show: Some("busy".into()),
            invalid_priority: None,
            error: None,
        }
    );
}

#[actix_rt::test]
async fn case_047_presence_without_from_or_outside_domain_is_dropped_without_reply() {
    let mut h = start(|_| {}, SECRET).await;
    let mut c = accept_login(&mut h, "id47").await;
    c.send("<presence to='bob*sip.test@sip.xmpp.test'/>").await;
    c.send("<presence from='alice@xmpp.test' to='bob@other.test'/>")
        .await;
    c.send("<presence from='not a jid@@' to='bob*sip.test@sip.xmpp.test'/>")
        .await;
    c.send("<presence from='carol@xmpp.test' to='bob*sip.test@sip.xmpp.test' type='probe'/>")
        .await;
    let p = next(&mut h.presences).await;
    assert_eq!(p.from, jid("carol@xmpp.test"));
    assert_eq!(p.kind, Ok(PresenceType::Probe));
    // No reply was written for the dropped ones: the next bytes are the disco answer.
    c.send("<iq type='get' id='x' from='a@xmpp.test/r' to='sip.xmpp.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let reply = c.read_until("</iq>").await;
    assert!(reply.starts_with("<iq type='result'"), "{reply}");
}

#[actix_rt::test]
async fn send_presence_arrives_at_the_server_byte_exact() {
    let mut h = start(|_| {}, SECRET).await;
    let mut c = accept_login(&mut h, "idb").await;
    let out = OutPresence {
        body: Availability {
            show: Some(Show::Away),
            statuses: vec![Status::new(Some("en"), "Out <to> lunch")],
            priority: None,
        },
        ..OutPresence::new(
            jid("bob*sip.test@sip.xmpp.test/sip"),
            jid("alice@xmpp.test"),
            PresenceType::Available,
        )
    };
    h.comp.send(SendPresence(out)).await.unwrap();
    let got = c.read_until("</presence>").await;
    assert_eq!(
        got,
        "<presence from='bob*sip.test@sip.xmpp.test/sip' to='alice@xmpp.test'><show>away</show>\
         <status xml:lang='en'>Out &lt;to&gt; lunch</status></presence>"
    );
}

#[actix_rt::test]
async fn case_096_disco_info_answered_and_other_requests_get_service_unavailable() {
    let mut h = start(|_| {}, SECRET).await;
    let mut c = accept_login(&mut h, "id96").await;
    c.send(
        "<iq type='get' id='d1' from='alice@xmpp.test/pc' to='sip.xmpp.test'>\
         <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    assert_eq!(
        c.read_until("</iq>").await,
        "<iq type='result' from='sip.xmpp.test' to='alice@xmpp.test/pc' id='d1'>\
         <query xmlns='http://jabber.org/protocol/disco#info'>\
         <identity category='gateway' type='sip' name='SIP presence gateway'/>\
         <feature var='http://jabber.org/protocol/disco#info'/></query></iq>"
    );
    c.send(
        "<iq type='get' id='v1' from='alice@xmpp.test/pc' to='bob*sip.test@sip.xmpp.test'>\
         <vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert_eq!(
        c.read_until("</iq>").await,
        "<iq type='error' from='bob*sip.test@sip.xmpp.test' to='alice@xmpp.test/pc' id='v1'>\
         <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
         </error></iq>"
    );
    // Results and errors are ignored; a chat message gets service-unavailable.
    c.send("<iq type='result' id='r1' from='alice@xmpp.test/pc' to='sip.xmpp.test'/>")
        .await;
    c.send("<message type='error' from='alice@xmpp.test/pc' to='b*s@sip.xmpp.test'/>")
        .await;
    c.send(
        "<message id='m1' from='alice@xmpp.test/pc' to='b*s@sip.xmpp.test'><body>hi</body></message>",
    )
    .await;
    assert_eq!(
        c.read_until("</message>").await,
        "<message type='error' from='b*s@sip.xmpp.test' to='alice@xmpp.test/pc' id='m1'>\
         <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
         </error></message>"
    );
}

/// The server rejects the first login with `condition`; the component must not crash, must
/// wait at least the fatal backoff, then log in again.
async fn rejected_then_retried(condition: &str) {
    let mut h = start(|_| {}, "wrong-secret").await;
    let (mut c, value) = accept_header(&h.listener, "rej1").await;
    assert_ne!(value, handshake_digest("rej1", SECRET));
    assert_eq!(value, handshake_digest("rej1", "wrong-secret"));
    c.send(&format!(
        "<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
    ))
    .await;
    let rejected_at = Instant::now();
    drop(c);
    let (mut c2, value2) = accept_header(&h.listener, "rej2").await;
    let waited = rejected_at.elapsed();
    assert!(
        waited >= Duration::from_millis(290),
        "retried after {waited:?}, before the fatal backoff"
    );
    assert_eq!(value2, handshake_digest("rej2", "wrong-secret"));
    // This time the server accepts: the actor is alive and reports online (never offline
    // before, since it was never up).
    c2.send("<handshake/>").await;
    assert!(next(&mut h.status).await, "expected online status");
    assert!(h.comp.connected());
}

/// Captures log output of the current thread (the actix test runtime is single-threaded, so
/// the component's I/O task logs here too).
#[derive(Clone, Default)]
struct LogBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[actix_rt::test]
async fn case_094_not_authorized_is_logged_and_retried_after_backoff_without_crash() {
    let logs = LogBuf::default();
    let w = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_writer(move || w.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    rejected_then_retried("not-authorized").await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("not-authorized"))
        .unwrap_or_else(|| panic!("no not-authorized log line in {text:?}"));
    assert!(line.starts_with("ERROR XMPP server refused the component handshake (not-authorized): xmpp.secret does not match"), "{line}");
    assert!(line.contains("retry_secs=0.3"), "{line}");
    assert!(
        !text.contains("wrong-secret"),
        "the secret was logged: {text}"
    );
}

#[test]
fn backoff_doubles_to_the_cap_and_fatal_causes_wait_at_least_the_fatal_minimum() {
    let cfg = ComponentConfig {
        reconnect_initial: Duration::from_secs(1),
        reconnect_max: Duration::from_secs(60),
        fatal_backoff: Duration::from_secs(30),
        ..test_config("127.0.0.1:1".into(), SECRET)
    };
    let mut b = Backoff::new(&cfg);
    let got: Vec<u64> = (0..8).map(|_| b.next_delay(false).as_secs()).collect();
    assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60]);
    b.reset();
    assert_eq!(b.next_delay(true), Duration::from_secs(30));
    assert_eq!(b.next_delay(false), Duration::from_secs(2));
    // Case 94/95: even after reset, a rejection never retries within 30 s.
    b.reset();
    assert_eq!(b.next_delay(true), Duration::from_secs(30));
}

/// Issue 17: a lease holder retries a `conflict` after 1 s, doubling to 5 s, while the
/// other rejections keep the 30 s minimum and the normal delays their own scale.
#[test]
fn with_lease_a_conflict_is_retried_within_1_to_5_s() {
    let cfg = ComponentConfig {
        reconnect_initial: Duration::from_secs(1),
        reconnect_max: Duration::from_secs(60),
        fatal_backoff: Duration::from_secs(30),
        ..test_config("127.0.0.1:1".into(), SECRET)
    }
    .with_lease();
    let mut b = Backoff::new(&cfg);
    let got: Vec<u64> = (0..5)
        .map(|_| b.delay_after(true, true).as_secs())
        .collect();
    assert_eq!(got, [1, 2, 4, 5, 5]);
    assert_eq!(b.delay_after(false, true), Duration::from_secs(30));
    assert_eq!(b.delay_after(false, false), Duration::from_secs(2));
    b.reset();
    assert_eq!(b.delay_after(true, true), Duration::from_secs(1));
    // without the lease, a conflict is one of the fatal causes (case 95)
    let mut plain = Backoff::new(&ComponentConfig {
        conflict_retry: None,
        ..cfg
    });
    assert_eq!(plain.delay_after(true, true), Duration::from_secs(30));
}

#[actix_rt::test]
async fn case_095_conflict_backs_off_before_retrying() {
    rejected_then_retried("conflict").await;
}

#[actix_rt::test]
async fn server_close_queues_stanzas_and_delivers_them_after_reconnect() {
    let mut h = start(|_| {}, SECRET).await;
    let c = accept_login(&mut h, "e1").await;
    drop(c);
    assert!(!next(&mut h.status).await, "expected offline status");
    for user in ["a", "b", "c"] {
        let p = OutPresence::new(
            jid(&format!("{user}*sip.test@sip.xmpp.test")),
            jid("alice@xmpp.test"),
            PresenceType::Unavailable,
        );
        h.comp.send(SendPresence(p)).await.unwrap();
    }
    let mut c = accept_login(&mut h, "e2").await;
    let got = c
        .read_until("from='c*sip.test@sip.xmpp.test' to='alice@xmpp.test' type='unavailable'/>")
        .await;
    assert_eq!(
        got,
        "<presence from='a*sip.test@sip.xmpp.test' to='alice@xmpp.test' type='unavailable'/>\
         <presence from='b*sip.test@sip.xmpp.test' to='alice@xmpp.test' type='unavailable'/>\
         <presence from='c*sip.test@sip.xmpp.test' to='alice@xmpp.test' type='unavailable'/>"
    );
}

#[actix_rt::test]
async fn queue_limit_drops_the_oldest_presence_while_down() {
    let mut h = start(|c| c.queue_limit = 2, SECRET).await;
    // The server has not answered yet: the link is down while these are queued.
    for user in ["a", "b", "c"] {
        let p = OutPresence::new(
            jid(&format!("{user}*s@sip.xmpp.test")),
            jid("x@xmpp.test"),
            PresenceType::Subscribed,
        );
        h.comp.send(SendPresence(p)).await.unwrap();
    }
    let mut c = accept_login(&mut h, "q1").await;
    let got = c
        .read_until("from='c*s@sip.xmpp.test' to='x@xmpp.test' type='subscribed'/>")
        .await;
    assert_eq!(
        got,
        "<presence from='b*s@sip.xmpp.test' to='x@xmpp.test' type='subscribed'/>\
         <presence from='c*s@sip.xmpp.test' to='x@xmpp.test' type='subscribed'/>"
    );
}

#[actix_rt::test]
async fn case_097_bad_xml_from_server_gets_not_well_formed_then_reconnect() {
    let mut h = start(|_| {}, SECRET).await;
    let mut c = accept_login(&mut h, "x1").await;
    c.send("<presence from='a@b' to='c@sip.xmpp.test'><<oops")
        .await;
    assert_eq!(
        c.read_to_eof().await,
        "<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
    );
    assert!(!next(&mut h.status).await, "expected offline status");
    let _c2 = accept_login(&mut h, "x2").await;
}

#[actix_rt::test]
async fn whitespace_keepalive_is_sent_when_idle() {
    let mut h = start(|c| c.keepalive = Duration::from_millis(100), SECRET).await;
    let mut c = accept_login(&mut h, "k1").await;
    let t = Instant::now();
    assert_eq!(c.read_until(" ").await, " ");
    assert!(
        t.elapsed() >= Duration::from_millis(80),
        "{:?}",
        t.elapsed()
    );
}

#[actix_rt::test]
async fn server_stream_end_is_a_disconnect_and_the_link_comes_back() {
    let mut h = start(|_| {}, SECRET).await;
    let mut c = accept_login(&mut h, "s1").await;
    c.send("<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>").await;
    assert_eq!(c.read_to_eof().await, "</stream:stream>");
    assert!(!next(&mut h.status).await, "expected offline status");
    let _c2 = accept_login(&mut h, "s2").await;
}

#[test]
fn stream_parser_yields_header_elements_and_end_from_byte_chunks() {
    let input = "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
                 xmlns='jabber:component:accept' from='sip.xmpp.test' id='3BF96D32'>\n \
                 <handshake/> <presence from='a@b' to='c@d'><status>x</status></presence>\
                 <stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>";
    let mut p = StreamParser::new();
    for b in input.as_bytes().chunks(3) {
        p.feed(b).unwrap();
    }
    let mut got = Vec::new();
    while let Some(ev) = p.next_event() {
        got.push(match ev {
            StreamEvent::Header { id } => format!("header {id:?}"),
            StreamEvent::Element(e) => format!("{} {}", e.name(), e.ns()),
            StreamEvent::Presence(h) => format!("presence head {:?}", h.attr("from")),
            StreamEvent::End => "end".into(),
        });
    }
    assert_eq!(
        got,
        [
            "header Some(\"3BF96D32\")",
            "handshake jabber:component:accept",
            "presence jabber:component:accept",
            "error http://etherx.jabber.org/streams",
            "end"
        ]
    );
}

/// Issue 7 fast path: a childless top-level presence is read from its attributes (no tree);
/// it must give exactly what the tree gives, and anything else must still take the tree.
#[test]
fn childless_presences_read_without_a_tree_equal_the_tree_reading() {
    use pua_xmpp::stanza::StanzaError;
    let cases: &[(&str, bool)] = &[
        ("<presence from='w1@x.test/r' to='p1*s.test@gw.test' type='subscribe'/>", true),
        ("<presence from='w1@x.test' to='p1*s.test@gw.test' type='probe' id='a1' xml:lang='de'></presence>", true),
        ("<presence xmlns='jabber:component:accept' from='w@x.test' to='p@gw.test'/>", true),
        ("<presence from='w@x.test' to='p@gw.test' type='unavailable' xml:lang='en'/>", true),
        ("<presence to='p@gw.test' type='subscribe'/>", true),
        ("<presence from='w@x.test' type='subscribe'/>", true),
        ("<presence from='a&amp;b@x.test' to='p@gw.test'/>", true),
        ("<presence from='w@x.test' to='p@gw.test' type='bogus'/>", true),
        ("<presence from='w@x.test' to='p@gw.test'><show>away</show><status>n1</status></presence>", false),
        ("<presence from='w@x.test' to='p@gw.test'> </presence>", false),
        ("<presence xmlns:foo='urn:x' foo:bar='1' from='w@x.test' to='p@gw.test'/>", false),
        ("<presence from='w@x.test' to='p@gw.test' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>", false),
    ];
    let header = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:component:accept' id='1'>";
    for (xml, fast) in cases {
        let mut p = StreamParser::new();
        p.feed(header.as_bytes()).unwrap();
        // Byte by byte: the held head must survive any split.
        for b in xml.as_bytes().chunks(1) {
            p.feed(b).unwrap();
        }
        assert!(matches!(p.next_event(), Some(StreamEvent::Header { .. })));
        let (took_fast, got): (bool, Result<InPresence, StanzaError>) = match p.next_event() {
            Some(StreamEvent::Presence(h)) => (true, h.parse()),
            Some(StreamEvent::Element(e)) => (false, InPresence::from_element(&e)),
            other => panic!("{xml}: {other:?}"),
        };
        assert!(p.next_event().is_none());
        let wrapped = if xml.split('>').next().unwrap_or("").contains("xmlns=") {
            xml.to_string()
        } else {
            xml.replacen("<presence", "<presence xmlns='jabber:component:accept'", 1)
        };
        let tree: minidom::Element = wrapped.parse().unwrap();
        assert_eq!(got, InPresence::from_element(&tree), "{xml}");
        assert_eq!(took_fast, *fast, "{xml}");
    }
    // A duplicate attribute is left to the tree, which decides as before.
    let mut p = StreamParser::new();
    p.feed(header.as_bytes()).unwrap();
    let r = p.feed(b"<presence from='w@x.test' to='p@gw.test' from='v@x.test'/>");
    let _ = p.next_event();
    assert!(r.is_err() || !matches!(p.next_event(), Some(StreamEvent::Presence(_))));
    // The stream goes on after a fast presence: the next element and the end still come.
    let mut p = StreamParser::new();
    p.feed(header.as_bytes()).unwrap();
    p.feed(
        b"<presence from='w@x.test' to='p@gw.test' type='subscribe'/><handshake/></stream:stream>",
    )
    .unwrap();
    let _ = p.next_event();
    assert!(matches!(p.next_event(), Some(StreamEvent::Presence(_))));
    assert!(matches!(p.next_event(), Some(StreamEvent::Element(e)) if e.name() == "handshake"));
    assert!(matches!(p.next_event(), Some(StreamEvent::End)));
}

#[test]
fn stream_parser_rejects_doctype_and_undeclared_prefix() {
    let mut p = StreamParser::new();
    assert_eq!(
        p.feed(b"<!DOCTYPE x><stream:stream"),
        Err("invalid syntax: malformed cdata or comment section start".to_owned())
    );
    let mut p = StreamParser::new();
    p.feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:component:accept' id='1'>")
        .unwrap();
    let e = p.feed(b"<foo:bar/>").unwrap_err();
    assert_eq!(e, "the XML element is missing a namespace");
}

#[actix_rt::test]
async fn presence_from_outside_the_component_domain_is_not_sent() {
    let mut h = start(|_| {}, SECRET).await;
    let mut c = accept_login(&mut h, "f1").await;
    let bad = OutPresence::new(
        jid("bob@elsewhere.test"),
        jid("alice@xmpp.test"),
        PresenceType::Probe,
    );
    h.comp.send(SendPresence(bad)).await.unwrap();
    let sub = OutPresence::new(
        jid("bob@gw.sip.xmpp.test"),
        jid("alice@xmpp.test"),
        PresenceType::Probe,
    );
    h.comp.send(SendPresence(sub)).await.unwrap();
    assert_eq!(
        c.read_until("/>").await,
        "<presence from='bob@gw.sip.xmpp.test' to='alice@xmpp.test' type='probe'/>"
    );
}

/// Against a real XEP-0114 server (e.g. the reference lab's Prosody). Run with
/// `PUA_XMPP_LIVE_SERVER=127.0.0.2:5347 PUA_XMPP_LIVE_SECRET=gwsecret cargo test -p
/// pua-xmpp-actors --test component live_ -- --ignored`. Component name `sip.xmpp.test`.
#[actix_rt::test]
#[ignore = "needs a live XMPP server: set PUA_XMPP_LIVE_SERVER and PUA_XMPP_LIVE_SECRET"]
async fn live_server_rejects_wrong_secret_with_not_authorized_then_accepts_the_right_one() {
    let (Ok(server), Ok(secret)) = (
        std::env::var("PUA_XMPP_LIVE_SERVER"),
        std::env::var("PUA_XMPP_LIVE_SECRET"),
    ) else {
        panic!("set PUA_XMPP_LIVE_SERVER and PUA_XMPP_LIVE_SECRET");
    };
    let logs = LogBuf::default();
    let w = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_writer(move || w.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (ptx, _presences) = unbounded_channel();
    let (stx, mut status) = unbounded_channel();
    let collector = Collector {
        presences: ptx,
        status: stx,
    }
    .start();

    let wrong = XmppComponent::start(
        test_config(server.clone(), "definitely-wrong"),
        collector.clone().recipient(),
        collector.clone().recipient(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("ERROR XMPP server refused the component handshake (not-authorized)"),
        "{text}"
    );
    assert!(
        status.try_recv().is_err(),
        "wrong secret must never report online"
    );
    drop(wrong);

    let right = XmppComponent::start(
        test_config(server, &secret),
        collector.clone().recipient(),
        collector.recipient(),
    );
    assert!(next(&mut status).await, "expected online status");
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("INFO XMPP component link up"), "{text}");
    // The server accepts our stanzas: a burst of presences does not end the stream.
    for i in 0..20 {
        let mut p = OutPresence::new(
            jid(&format!("bob{i}*sip.test@sip.xmpp.test")),
            jid("alice@xmpp.test"),
            PresenceType::Available,
        );
        p.body
            .statuses
            .push(Status::new(None, "live <test> & more"));
        right.send(SendPresence(p)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        status.try_recv().is_err(),
        "the link went down after sending"
    );
}

/// Issue 6: an inbound stanza over `max_stanza` ends the session (the link goes down and comes
/// back); stanzas within the limit are delivered.
#[actix_rt::test]
async fn stanza_over_the_size_limit_ends_the_session_and_the_link_comes_back() {
    let mut h = start(|c| c.max_stanza = 2048, SECRET).await;
    let mut c = accept_login(&mut h, "big1").await;
    c.send("<presence from='alice@xmpp.test' to='bob*sip.test@sip.xmpp.test' type='probe'/>")
        .await;
    let p = h.presences.recv().await.expect("small stanza delivered");
    assert_eq!(p.from.as_str(), "alice@xmpp.test");
    let big = format!(
        "<presence from='alice@xmpp.test' to='bob*sip.test@sip.xmpp.test'><status>{}</status></presence>",
        "x".repeat(4096)
    );
    c.send(&big).await;
    assert!(!next(&mut h.status).await, "expected offline status");
    let _c2 = accept_login(&mut h, "big2").await;
}
