//! The whole gateway runtime (`gateway::start`: SIP transport, registry, translators, XEP-0114
//! component) against scripted peers on loopback: a XEP-0114 server on TCP and a SIP proxy /
//! presence server on UDP. No Prosody, no Kamailio. Each test checks the exact bytes or parsed
//! values that come out on both sides (spec §4.2, §4.3, §4.5, §5.1, §9).

use pua_xmpp::sip::parse::parse_message;
use pua_xmpp::sip::{
    Event, Method, NameAddr, SipMessage, SipRequest, SipResponse, SubState, SubscriptionState,
};
use pua_xmpp_actors::config::Config;
use pua_xmpp_actors::gateway;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const COMPONENT: &str = "sip.example.net";
const GW_DOMAIN: &str = "xmpp.example.com";
const SECRET: &str = "gw-test-s3cr3t";
const STREAM_ID: &str = "gw-stream-3BF96D32";
/// `sha1(STREAM_ID + SECRET)` computed outside the code under test (`sha1sum`).
const HANDSHAKE: &str = "78645a4c7ee5eab11526f9e79d1408cf4d58910e";
/// How long we wait for something that must arrive.
const WAIT: Duration = Duration::from_secs(2);
/// How long "nothing arrives" is watched.
const QUIET_MS: u64 = 300;

const ROMEO: &str = "romeo@example.net";
const JULIET_JID: &str = "juliet*example.com@sip.example.net";
const JULIET_URI: &str = "sip:juliet@example.com";
const ROMEO_URI: &str = "sip:romeo*example.net@xmpp.example.com";
/// The presence server's tag in the gateway's subscriber dialog (D1).
const PS_TAG: &str = "ps-91aa07";

/// The PIDF of §4.2 (Juliet approved; on the phone on the balcony).
const PIDF_BALCONY: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
          xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
          xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"
          entity="pres:juliet@example.com">
  <tuple id="t-desk">
    <status><basic>open</basic></status>
    <contact priority="0.8">sip:juliet@ua7.example.com</contact>
    <note xml:lang="en">On the balcony</note>
  </tuple>
  <dm:person id="p1">
    <rpid:activities><rpid:on-the-phone/></rpid:activities>
  </dm:person>
</presence>
"#;

/// The stanzas §4.2 expects for `PIDF_BALCONY`, in order.
const SUBSCRIBED: &str = "<presence from='juliet*example.com@sip.example.net' \
     to='romeo@example.net' type='subscribed'/>";
const PRESENCE_BALCONY: &str = "<presence from='juliet*example.com@sip.example.net/t-desk' \
     to='romeo@example.net'><show>dnd</show><status xml:lang='en'>On the balcony</status>\
     <priority>80</priority></presence>";

// ---- the scripted XEP-0114 server -----------------------------------------------------------

/// The accepted component connection, seen from the XMPP server.
struct Xmpp {
    sock: TcpStream,
    buf: String,
}

/// Removes the first complete top-level element from `buf` (after whitespace keepalives).
fn take_element(buf: &mut String) -> Option<String> {
    let start = buf.len() - buf.trim_start().len();
    let rest = buf.get(start..)?;
    if rest.is_empty() {
        return None;
    }
    assert!(rest.starts_with('<'), "not an element: {rest:?}");
    let name_end = rest
        .find(|c: char| c.is_whitespace() || c == '/' || c == '>')
        .unwrap_or(rest.len());
    let name = &rest[1..name_end];
    // End of the start tag: the first '>' outside a quoted attribute value.
    let mut quote = None;
    let mut tag_end = None;
    for (i, c) in rest.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '>') => {
                tag_end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let tag_end = tag_end?;
    let end = if rest[..tag_end].ends_with('/') {
        tag_end + 1
    } else {
        let close = format!("</{name}>");
        rest.find(&close)? + close.len()
    };
    let el = rest[..end].to_owned();
    *buf = rest[end..].to_owned();
    Some(el)
}

impl Xmpp {
    /// Accepts the gateway's component connection and authenticates it (XEP-0114).
    async fn accept(listener: &TcpListener) -> Xmpp {
        let (sock, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("the gateway did not connect to the XMPP server")
            .expect("accept");
        let mut x = Xmpp {
            sock,
            buf: String::new(),
        };
        let header = x.read_until("'>").await;
        assert_eq!(
            header,
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' to='sip.example.net'>"
        );
        x.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
             xmlns='jabber:component:accept' from='{COMPONENT}' id='{STREAM_ID}' xml:lang='en'>"
        ))
        .await;
        let hs = x.read_until("</handshake>").await;
        assert_eq!(hs, format!("<handshake>{HANDSHAKE}</handshake>"));
        x.send("<handshake/>").await;
        x
    }

    async fn read_more(&mut self, deadline: Instant) -> bool {
        let mut b = [0u8; 8192];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.sock.read(&mut b)).await {
            Err(_) => false,
            Ok(Ok(0)) => panic!(
                "the gateway closed the component stream; have {:?}",
                self.buf
            ),
            Ok(Ok(n)) => {
                let text = std::str::from_utf8(&b[..n]).expect("component sent non-UTF-8");
                self.buf.push_str(text);
                true
            }
            Ok(Err(e)) => panic!("component stream read: {e}"),
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

    async fn send(&mut self, s: &str) {
        self.sock.write_all(s.as_bytes()).await.expect("write");
    }

    async fn next_within(&mut self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(el) = take_element(&mut self.buf) {
                return Some(el);
            }
            if !self.read_more(deadline).await {
                return None;
            }
        }
    }

    /// The next stanza the gateway sends; fails after `WAIT`.
    async fn stanza(&mut self) -> String {
        self.next_within(WAIT)
            .await
            .expect("timeout waiting for a stanza from the gateway")
    }

    /// Asserts the gateway sends no stanza for `QUIET_MS`.
    async fn quiet(&mut self) {
        let got = self.next_within(Duration::from_millis(QUIET_MS)).await;
        assert_eq!(got, None, "unexpected stanza");
    }
}

// ---- the scripted SIP proxy / presence server -----------------------------------------------

struct Proxy {
    sock: UdpSocket,
    addr: SocketAddr,
    /// The gateway's `sip.listen`.
    gw: SocketAddr,
}

/// Every value of header `name` in the head of a raw SIP message, in order.
fn header_values(raw: &str, name: &str) -> Vec<String> {
    raw.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .split("\r\n")
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
        .collect()
}

fn na(uri: &str, tag: Option<&str>) -> NameAddr {
    NameAddr {
        display: None,
        uri: uri.to_owned(),
        tag: tag.map(str::to_owned),
    }
}

impl Proxy {
    async fn recv_within(&self, wait: Duration) -> Option<String> {
        let mut buf = vec![0u8; 65536];
        let (n, from) = tokio::time::timeout(wait, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .expect("recv_from");
        assert_eq!(from, self.gw, "SIP message not sent from sip.listen");
        Some(String::from_utf8(buf[..n].to_vec()).expect("SIP message not UTF-8"))
    }

    async fn recv(&self) -> (SipMessage, String) {
        let raw = self
            .recv_within(WAIT)
            .await
            .expect("timeout waiting for a SIP message from the gateway");
        let msg = parse_message(raw.as_bytes())
            .unwrap_or_else(|e| panic!("gateway sent unparseable SIP ({e:?}):\n{raw}"));
        (msg, raw)
    }

    async fn request(&self, method: Method) -> (SipRequest, String) {
        match self.recv().await {
            (SipMessage::Request(r), raw) if r.method == method => (r, raw),
            (_, raw) => panic!("expected a {} request, got:\n{raw}", method.as_str()),
        }
    }

    async fn response(&self) -> (SipResponse, String) {
        match self.recv().await {
            (SipMessage::Response(r), raw) => (r, raw),
            (_, raw) => panic!("expected a response, got:\n{raw}"),
        }
    }

    async fn quiet(&self) {
        let got = self.recv_within(Duration::from_millis(QUIET_MS)).await;
        assert_eq!(got, None, "unexpected SIP message");
    }

    async fn send(&self, text: &str) {
        self.sock
            .send_to(text.as_bytes(), self.gw)
            .await
            .expect("send_to");
    }

    /// Answers a request of the gateway like a presence server would.
    async fn answer(&self, req: &SipRequest, status: u16, reason: &str, extra: &[&str]) {
        let mut s = format!("SIP/2.0 {status} {reason}\r\n");
        for v in &req.via {
            s.push_str(&format!("Via: {v}\r\n"));
        }
        let to_tag = req.to.tag.as_deref().unwrap_or(PS_TAG);
        s.push_str(&format!(
            "From: <{}>;tag={}\r\nTo: <{}>;tag={to_tag}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n",
            req.from.uri,
            req.from.tag.as_deref().unwrap_or(""),
            req.to.uri,
            req.call_id,
            req.cseq,
            req.method.as_str()
        ));
        for h in extra {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        self.send(&s).await;
    }

    /// A NOTIFY from the presence server in the dialog created by the gateway's `sub`.
    fn notify(&self, sub: &SipRequest, cseq: u32, state: &str, body: Option<&str>) -> String {
        let target = sub.contact.as_ref().map(|c| c.uri.as_str()).unwrap_or("");
        let mut s = format!(
            "NOTIFY {target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {proxy};branch=z9hG4bK-ps-{cseq}-{tag}\r\n\
             Max-Forwards: 70\r\n\
             From: <{JULIET_URI}>;tag={PS_TAG}\r\n\
             To: <{from}>;tag={tag}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} NOTIFY\r\n\
             Contact: <sip:{proxy}>\r\n\
             Event: presence\r\n\
             Subscription-State: {state}\r\n",
            proxy = self.addr,
            from = sub.from.uri,
            tag = sub.from.tag.as_deref().unwrap_or(""),
            call_id = sub.call_id,
        );
        match body {
            Some(b) => s.push_str(&format!(
                "Content-Type: application/pidf+xml\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )),
            None => s.push_str("Content-Length: 0\r\n\r\n"),
        }
        s
    }

    /// Sends `text` (a request) and returns the gateway's response to it.
    async fn transact(&self, text: &str) -> (SipResponse, String) {
        self.send(text).await;
        self.response().await
    }
}

// ---- the gateway under test -----------------------------------------------------------------

struct Gw {
    /// The XMPP server's listener, for reconnects.
    listener: TcpListener,
    xmpp: Xmpp,
    proxy: Proxy,
}

/// A free UDP port on loopback (bound, read, released) for `sip.listen`.
async fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    s.local_addr().expect("local_addr").port()
}

/// Starts the whole gateway against fresh scripted peers and waits for the handshake.
async fn start() -> Gw {
    start_with(|_| {}).await
}

/// [`start`] with a change to the configuration.
async fn start_with(tune: impl FnOnce(&mut Config)) -> Gw {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind xmpp");
    let proxy_sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind proxy");
    let proxy_addr = proxy_sock.local_addr().expect("proxy addr");
    let gw: SocketAddr = format!("127.0.0.1:{}", free_port().await)
        .parse()
        .expect("gw addr");
    let mut cfg = Config::default();
    cfg.xmpp.component_domain = COMPONENT.into();
    cfg.xmpp.server = listener.local_addr().expect("xmpp addr").to_string();
    cfg.xmpp.secret = SECRET.into();
    cfg.sip.gateway_domain = GW_DOMAIN.into();
    cfg.sip.server_address = format!("sip:{proxy_addr}");
    cfg.sip.listen = gw.to_string();
    cfg.presence.notify_min_interval_secs = 1;
    // Tests run in parallel: never the fixed default port (main's `start` serves HTTP).
    cfg.http.listen = "127.0.0.1:0".into();
    // Nor a shared store file, should `start` open one.
    cfg.store.path = std::env::temp_dir()
        .join(format!(
            "pua-xmpp-gwtest-{}-{}.db",
            std::process::id(),
            gw.port()
        ))
        .display()
        .to_string();
    tune(&mut cfg);
    assert_eq!(cfg.validate(), Ok(()));
    assert!(!cfg.uses_default_secret());
    // `sip.listen` was found free and released: another test's outgoing TCP connection may
    // take the port before the gateway binds it (UDP and TCP). Then try another port; the SIP
    // transport binds before the component connects, so the failed attempt left no connection.
    let mut gw = gw;
    for attempt in 1.. {
        match gateway::start(&cfg).await {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < 5 => {
                if cfg.sip.listen == gw.to_string() {
                    gw.set_port(free_port().await);
                    cfg.sip.listen = gw.to_string();
                }
            }
            Err(e) => panic!("gateway::start: {e}"),
        }
    }
    let xmpp = Xmpp::accept(&listener).await;
    Gw {
        listener,
        xmpp,
        proxy: Proxy {
            sock: proxy_sock,
            addr: proxy_addr,
            gw,
        },
    }
}

fn subscribe_stanza(kind: &str, id: &str) -> String {
    format!("<presence from='{ROMEO}' to='{JULIET_JID}' type='{kind}' id='{id}'/>")
}

/// Case 18: the SUBSCRIBE the gateway sends for romeo's `subscribe`, checked field by field.
fn check_initial_subscribe(gw: &Gw, sub: &SipRequest, raw: &str) {
    assert_eq!(sub.uri, JULIET_URI);
    assert_eq!(sub.via.len(), 1, "{raw}");
    let via = &sub.via[0];
    let prefix = format!("SIP/2.0/UDP {};branch=z9hG4bK", gw.proxy.gw);
    assert!(via.starts_with(&prefix), "Via {via:?}");
    assert_eq!(sub.max_forwards, Some(70));
    assert_eq!(sub.from.uri, ROMEO_URI);
    let from_tag = sub.from.tag.as_deref().unwrap_or("");
    assert!(from_tag.len() > 3, "From-tag {from_tag:?}");
    assert_eq!(sub.to, na(JULIET_URI, None));
    assert!(
        sub.call_id.ends_with("@127.0.0.1") && sub.call_id.len() > "@127.0.0.1".len(),
        "Call-ID {:?}",
        sub.call_id
    );
    assert_eq!((sub.cseq, &sub.cseq_method), (1, &Method::Subscribe));
    assert_eq!(
        sub.contact,
        Some(na(&format!("sip:romeo*example.net@{}", gw.proxy.gw), None))
    );
    assert_eq!(
        sub.event,
        Some(Event {
            package: "presence".into(),
            id: None
        })
    );
    assert_eq!(sub.accept, ["application/pidf+xml"]);
    assert_eq!(header_values(raw, "Allow-Events"), ["presence"]);
    assert_eq!(sub.expires, Some(3600));
    assert!(sub.route.is_empty());
    assert!(sub.body.is_empty());
}

/// Case 21: checks the gateway's 200 to a NOTIFY of ours.
fn check_notify_ok(resp: &SipResponse, raw: &str, notify: &str, cseq: u32) {
    let SipMessage::Request(n) = parse_message(notify.as_bytes()).expect("our NOTIFY parses")
    else {
        panic!("not a request")
    };
    assert_eq!((resp.status, resp.reason.as_str()), (200, "OK"), "{raw}");
    assert_eq!(resp.via, n.via, "Via copied");
    assert_eq!(resp.from, n.from);
    assert_eq!(resp.to, n.to, "the To-tag stays ours");
    assert_eq!(resp.call_id, n.call_id);
    assert_eq!((resp.cseq, &resp.cseq_method), (cseq, &Method::Notify));
    assert!(resp.body.is_empty());
}

/// Runs §4.2 / cases 18 and 21 to an active D1 and returns the gateway's SUBSCRIBE.
async fn establish_d1(gw: &mut Gw) -> SipRequest {
    gw.xmpp.send(&subscribe_stanza("subscribe", "s1")).await;
    let (sub, raw) = gw.proxy.request(Method::Subscribe).await;
    check_initial_subscribe(gw, &sub, &raw);
    gw.proxy.answer(&sub, 200, "OK", &["Expires: 1800"]).await;
    // Case 18: no stanza before the NOTIFY says active.
    gw.xmpp.quiet().await;
    let notify = gw
        .proxy
        .notify(&sub, 101, "active;expires=1740", Some(PIDF_BALCONY));
    let (resp, raw) = gw.proxy.transact(&notify).await;
    check_notify_ok(&resp, &raw, &notify, 101);
    assert_eq!(gw.xmpp.stanza().await, SUBSCRIBED);
    assert_eq!(gw.xmpp.stanza().await, PRESENCE_BALCONY);
    sub
}

// ---- 1, 2: XMPP watcher → SIP presentity ----------------------------------------------------

#[actix_rt::test]
async fn case_018_021_subscribe_gives_sip_subscribe_then_active_notify_gives_subscribed_and_presence(
) {
    let mut gw = start().await;
    establish_d1(&mut gw).await;
    gw.xmpp.quiet().await;
    gw.proxy.quiet().await;
}

#[actix_rt::test]
async fn case_022_identical_notify_is_deduplicated_and_a_changed_one_gives_the_new_presence() {
    let mut gw = start().await;
    let sub = establish_d1(&mut gw).await;
    let n2 = gw
        .proxy
        .notify(&sub, 102, "active;expires=1700", Some(PIDF_BALCONY));
    let (resp, raw) = gw.proxy.transact(&n2).await;
    check_notify_ok(&resp, &raw, &n2, 102);
    gw.xmpp.quiet().await;

    let garden = PIDF_BALCONY
        .replace("On the balcony", "In the garden")
        .replace("0.8", "0.5")
        .replace("rpid:on-the-phone", "rpid:away");
    let n3 = gw
        .proxy
        .notify(&sub, 103, "active;expires=1650", Some(&garden));
    let (resp, raw) = gw.proxy.transact(&n3).await;
    check_notify_ok(&resp, &raw, &n3, 103);
    assert_eq!(
        gw.xmpp.stanza().await,
        "<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net'>\
         <show>away</show><status xml:lang='en'>In the garden</status><priority>50</priority>\
         </presence>"
    );
    gw.xmpp.quiet().await;
    gw.proxy.quiet().await;
}

// ---- 3: probe and unsubscribe ---------------------------------------------------------------

#[actix_rt::test]
async fn case_026_024_probe_answered_from_cache_then_unsubscribe_ends_the_dialog() {
    let mut gw = start().await;
    let sub = establish_d1(&mut gw).await;

    // Case 26: cached presence, no SIP traffic. (The probe's id is not echoed: RFC 6121
    // presence broadcasts carry none.)
    gw.xmpp.send(&subscribe_stanza("probe", "p1")).await;
    assert_eq!(gw.xmpp.stanza().await, PRESENCE_BALCONY);
    gw.proxy.quiet().await;

    // Case 24: in-dialog SUBSCRIBE Expires: 0 to the NOTIFY's Contact, then unavailable.
    gw.xmpp.send(&subscribe_stanza("unsubscribe", "u1")).await;
    let (unsub, raw) = gw.proxy.request(Method::Subscribe).await;
    assert_eq!(
        unsub.uri,
        format!("sip:{}", gw.proxy.addr),
        "NOTIFY Contact"
    );
    assert_eq!(unsub.from, sub.from, "our tag kept");
    assert_eq!(unsub.to, na(JULIET_URI, Some(PS_TAG)));
    assert_eq!(unsub.call_id, sub.call_id);
    assert_eq!((unsub.cseq, &unsub.cseq_method), (2, &Method::Subscribe));
    assert_eq!(unsub.expires, Some(0));
    assert_eq!(unsub.event, sub.event);
    assert_eq!(unsub.contact, sub.contact);
    assert!(unsub.route.is_empty(), "no Record-Route was given: {raw}");
    assert_ne!(unsub.via, sub.via, "a new transaction has a new branch");
    // Answered at once, before T1 (500 ms) makes the gateway retransmit.
    gw.proxy.answer(&unsub, 200, "OK", &["Expires: 0"]).await;
    assert_eq!(
        gw.xmpp.stanza().await,
        "<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net' \
         type='unavailable'/>"
    );
    // §4.3: no `unsubscribed` to romeo.
    gw.xmpp.quiet().await;

    // The notifier's final NOTIFY: answered, no stanza, no re-SUBSCRIBE.
    let last = gw
        .proxy
        .notify(&sub, 102, "terminated;reason=timeout", None);
    let (resp, raw) = gw.proxy.transact(&last).await;
    check_notify_ok(&resp, &raw, &last, 102);
    gw.xmpp.quiet().await;
    gw.proxy.quiet().await;

    // The dialog is gone: a late NOTIFY on it is 481.
    let late = gw
        .proxy
        .notify(&sub, 103, "active;expires=100", Some(PIDF_BALCONY));
    let (resp, _) = gw.proxy.transact(&late).await;
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (481, "Call/Transaction Does Not Exist")
    );
    gw.xmpp.quiet().await;
}

// ---- 4: requests that belong to nobody, malformed input -------------------------------------

#[actix_rt::test]
async fn case_073_059_unknown_dialog_is_481_malformed_is_400_garbage_is_dropped() {
    let mut gw = start().await;
    let p = gw.proxy.addr;
    let unknown = format!(
        "NOTIFY sip:romeo*example.net@{gwa} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {p};branch=z9hG4bK-x1\r\n\
         Max-Forwards: 70\r\n\
         From: <{JULIET_URI}>;tag={PS_TAG}\r\n\
         To: <{ROMEO_URI}>;tag=gw-nosuch\r\n\
         Call-ID: no-such-call@127.0.0.1\r\n\
         CSeq: 5 NOTIFY\r\n\
         Event: presence\r\n\
         Subscription-State: active;expires=100\r\n\
         Content-Length: 0\r\n\r\n",
        gwa = gw.proxy.gw
    );
    let (resp, raw) = gw.proxy.transact(&unknown).await;
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (481, "Call/Transaction Does Not Exist"),
        "{raw}"
    );
    assert_eq!(resp.via, [format!("SIP/2.0/UDP {p};branch=z9hG4bK-x1")]);
    assert_eq!(resp.from, na(JULIET_URI, Some(PS_TAG)));
    assert_eq!(resp.to, na(ROMEO_URI, Some("gw-nosuch")));
    assert_eq!(resp.call_id, "no-such-call@127.0.0.1");
    assert_eq!((resp.cseq, &resp.cseq_method), (5, &Method::Notify));

    // Case 59: Via present, no Call-ID: 400 sent back along the Via.
    let no_call_id = format!(
        "SUBSCRIBE sip:romeo*example.net@{GW_DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {p};branch=z9hG4bK-x2\r\n\
         Max-Forwards: 70\r\n\
         From: <{JULIET_URI}>;tag=ua-1\r\n\
         To: <{ROMEO_URI}>\r\n\
         CSeq: 1 SUBSCRIBE\r\n\
         Event: presence\r\n\
         Content-Length: 0\r\n\r\n"
    );
    gw.proxy.send(&no_call_id).await;
    let raw = gw
        .proxy
        .recv_within(WAIT)
        .await
        .expect("a 400 for the request without Call-ID");
    assert!(raw.starts_with("SIP/2.0 400 Missing Call-ID\r\n"), "{raw}");
    assert_eq!(
        header_values(&raw, "Via"),
        [format!("SIP/2.0/UDP {p};branch=z9hG4bK-x2")]
    );
    assert_eq!(header_values(&raw, "Call-ID"), Vec::<String>::new());
    assert_eq!(header_values(&raw, "CSeq"), ["1 SUBSCRIBE"]);

    // Garbage: nothing comes back, and the gateway still serves.
    gw.proxy.send("\u{1}\u{2}garbage \r\n\r\n").await;
    gw.proxy.send("NOTIFY\r\n\r\n").await;
    gw.proxy.quiet().await;
    gw.xmpp.quiet().await;
    establish_d1(&mut gw).await;
}

// ---- 5: stanza to an address that does not map ----------------------------------------------

#[actix_rt::test]
async fn case_011_subscribe_to_unmappable_jid_gets_item_not_found_and_no_sip() {
    let mut gw = start().await;
    gw.xmpp
        .send("<presence from='romeo@example.net' to='bob@sip.example.net' type='subscribe' id='e1'/>")
        .await;
    assert_eq!(
        gw.xmpp.stanza().await,
        "<presence from='bob@sip.example.net' to='romeo@example.net' type='error' id='e1'>\
         <error type='cancel' by='sip.example.net'>\
         <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>\
         Address has no domain separator</text></error></presence>"
    );
    gw.proxy.quiet().await;
    gw.xmpp.quiet().await;
}

// ---- 6: SIP watcher → XMPP presentity (notifier mode) ---------------------------------------

/// An out-of-dialog SUBSCRIBE from juliet through the proxy.
fn juliet_subscribe(proxy: SocketAddr, uri: &str, branch: &str, event: &str) -> String {
    format!(
        "SUBSCRIBE {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {proxy};branch={branch}\r\n\
         Record-Route: <sip:{proxy};lr>\r\n\
         Max-Forwards: 69\r\n\
         From: \"Juliet\" <{JULIET_URI}>;tag=ua-77aa31\r\n\
         To: <{uri}>\r\n\
         Call-ID: 3f9a0c55e1@ua7.example.com\r\n\
         CSeq: 20 SUBSCRIBE\r\n\
         Contact: <sip:juliet@{proxy}>\r\n\
         Event: {event}\r\n\
         Accept: application/pidf+xml\r\n\
         Expires: 3600\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The closed document of §4.6 for romeo when nothing is known of him yet.
const PIDF_ROMEO_CLOSED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"pres:romeo*example.net@xmpp.example.com\">\n  \
<tuple id=\"ID-offline\"><status><basic>closed</basic></status></tuple>\n\
</presence>";

/// The PIDF of §4.4, byte for byte (the gateway writes no newline after the root element).
const PIDF_ROMEO_ORCHARD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
          xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
          xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"
          entity="pres:romeo*example.net@xmpp.example.com">
  <tuple id="ID-orchard">
    <status><basic>open</basic></status>
    <contact priority="0.05">sip:romeo*example.net@xmpp.example.com</contact>
    <note xml:lang="en">Walking in the orchard</note>
  </tuple>
  <note xml:lang="en">Walking in the orchard</note>
  <dm:person id="p-1">
    <rpid:activities><rpid:away/></rpid:activities>
  </dm:person>
</presence>
"#;

/// Checks a NOTIFY the gateway sends on D2 (juliet watches romeo) and answers it 200.
async fn d2_notify(gw: &Gw, gw_tag: &str, cseq: u32) -> (SipRequest, SubscriptionState) {
    let (n, raw) = gw.proxy.request(Method::Notify).await;
    let p = gw.proxy.addr;
    assert_eq!(n.uri, format!("sip:juliet@{p}"), "remote target = Contact");
    assert_eq!(
        n.route,
        [format!("<sip:{p};lr>")],
        "route set = Record-Route"
    );
    assert_eq!(n.max_forwards, Some(70));
    assert_eq!(n.from, na(ROMEO_URI, Some(gw_tag)));
    assert_eq!(
        n.to,
        NameAddr {
            display: Some("Juliet".into()),
            uri: JULIET_URI.into(),
            tag: Some("ua-77aa31".into()),
        }
    );
    assert_eq!(n.call_id, "3f9a0c55e1@ua7.example.com");
    assert_eq!((n.cseq, &n.cseq_method), (cseq, &Method::Notify));
    assert_eq!(
        n.contact,
        Some(na(&format!("sip:romeo*example.net@{}", gw.proxy.gw), None))
    );
    assert_eq!(
        n.event,
        Some(Event {
            package: "presence".into(),
            id: None
        })
    );
    let state = match &n.subscription_state {
        Some(Ok(s)) => s.clone(),
        other => panic!("Subscription-State {other:?} in\n{raw}"),
    };
    gw.proxy.answer(&n, 200, "OK", &[]).await;
    (n, state)
}

fn sub_state(state: SubState, reason: Option<&str>, expires: Option<u32>) -> SubscriptionState {
    SubscriptionState {
        state,
        reason: reason.map(str::to_owned),
        expires,
        retry_after: None,
    }
}

/// `active;expires=N` with N the remaining lifetime: 3600 minus the seconds elapsed so far.
fn assert_active_remaining(s: &SubscriptionState) {
    assert_eq!(
        (&s.state, &s.reason, s.retry_after),
        (&SubState::Active, &None, None)
    );
    let e = s.expires.unwrap_or(0);
    assert!((3597..=3600).contains(&e), "expires={e}");
}

#[actix_rt::test]
async fn case_049_050_034_053_sip_watcher_pending_then_approved_then_presence_then_unsubscribe() {
    let mut gw = start().await;
    let p = gw.proxy.addr;
    let gw_contact = format!("sip:romeo*example.net@{}", gw.proxy.gw);

    // Case 49: 200 with our To-tag, Expires, Record-Route copied.
    let first = juliet_subscribe(p, ROMEO_URI, "z9hG4bK-ua-4411", "presence");
    let (resp, raw) = gw.proxy.transact(&first).await;
    assert_eq!((resp.status, resp.reason.as_str()), (200, "OK"), "{raw}");
    assert_eq!(
        resp.via,
        [format!("SIP/2.0/UDP {p};branch=z9hG4bK-ua-4411")]
    );
    assert_eq!(
        resp.from,
        NameAddr {
            display: Some("Juliet".into()),
            uri: JULIET_URI.into(),
            tag: Some("ua-77aa31".into()),
        }
    );
    assert_eq!(resp.to.uri, ROMEO_URI);
    let gw_tag = resp.to.tag.clone().unwrap_or_default();
    assert!(
        gw_tag.starts_with("gw-") && gw_tag.len() > 3,
        "To-tag {gw_tag:?}"
    );
    assert_eq!(resp.call_id, "3f9a0c55e1@ua7.example.com");
    assert_eq!((resp.cseq, &resp.cseq_method), (20, &Method::Subscribe));
    assert_eq!(resp.contact, Some(na(&gw_contact, None)));
    assert_eq!(resp.record_route, [format!("<sip:{p};lr>")]);
    assert_eq!(resp.expires, Some(3600));
    assert_eq!(header_values(&raw, "Allow-Events"), ["presence"]);
    assert!(resp.body.is_empty());

    // Then NOTIFY pending, no body, through the proxy (Route), and `subscribe` to romeo.
    let (n, state) = d2_notify(&gw, &gw_tag, 1).await;
    assert_eq!(state, sub_state(SubState::Pending, None, Some(3600)));
    assert_eq!((n.content_type, n.body.len()), (None, 0));
    assert_eq!(
        gw.xmpp.stanza().await,
        "<presence from='juliet*example.com@sip.example.net' to='romeo@example.net' \
         type='subscribe'/>"
    );
    gw.xmpp.quiet().await;

    // Case 50: romeo approves → NOTIFY active with the closed document (nothing cached).
    gw.xmpp
        .send(&format!(
            "<presence from='{ROMEO}' to='{JULIET_JID}' type='subscribed'/>"
        ))
        .await;
    let (n, state) = d2_notify(&gw, &gw_tag, 2).await;
    assert_active_remaining(&state);
    assert_eq!(n.content_type.as_deref(), Some("application/pidf+xml"));
    assert_eq!(String::from_utf8_lossy(&n.body), PIDF_ROMEO_CLOSED);

    // Case 34 (with §4.4's stanza): romeo's pushed presence → NOTIFY open + note + rpid:away.
    // It comes at the trailing edge of the 1 s rate limit (notify_min_interval_secs = 1).
    gw.xmpp
        .send(&format!(
            "<presence from='{ROMEO}/orchard' to='{JULIET_JID}' xml:lang='en'><show>away</show>\
             <status>Walking in the orchard</status><priority>5</priority></presence>"
        ))
        .await;
    let (n, state) = d2_notify(&gw, &gw_tag, 3).await;
    assert_active_remaining(&state);
    assert_eq!(n.content_type.as_deref(), Some("application/pidf+xml"));
    assert_eq!(
        String::from_utf8_lossy(&n.body),
        PIDF_ROMEO_ORCHARD.trim_end_matches('\n')
    );
    gw.xmpp.quiet().await;

    // Case 53: in-dialog SUBSCRIBE Expires: 0 → 200 Expires: 0, NOTIFY terminated;reason=timeout,
    // no stanza (the XMPP relation is kept).
    let unsub = format!(
        "SUBSCRIBE {gw_contact} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {p};branch=z9hG4bK-ua-4412\r\n\
         Max-Forwards: 69\r\n\
         From: \"Juliet\" <{JULIET_URI}>;tag=ua-77aa31\r\n\
         To: <{ROMEO_URI}>;tag={gw_tag}\r\n\
         Call-ID: 3f9a0c55e1@ua7.example.com\r\n\
         CSeq: 21 SUBSCRIBE\r\n\
         Contact: <sip:juliet@{p}>\r\n\
         Event: presence\r\n\
         Expires: 0\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let (resp, raw) = gw.proxy.transact(&unsub).await;
    assert_eq!((resp.status, resp.reason.as_str()), (200, "OK"), "{raw}");
    assert_eq!(resp.to, na(ROMEO_URI, Some(&gw_tag)));
    assert_eq!((resp.cseq, &resp.cseq_method), (21, &Method::Subscribe));
    assert_eq!(resp.expires, Some(0));
    let (n, state) = d2_notify(&gw, &gw_tag, 4).await;
    assert_eq!(
        state,
        sub_state(SubState::Terminated, Some("timeout"), None)
    );
    // §5.1: the body is optional; the gateway sends the final state.
    assert_eq!(n.content_type.as_deref(), Some("application/pidf+xml"));
    assert_eq!(
        String::from_utf8_lossy(&n.body),
        PIDF_ROMEO_ORCHARD.trim_end_matches('\n')
    );
    gw.xmpp.quiet().await;
    gw.proxy.quiet().await;
}

// ---- 7: SUBSCRIBEs the notifier refuses -----------------------------------------------------

#[actix_rt::test]
async fn case_056_015_bad_event_is_489_and_unknown_presentity_is_404() {
    let mut gw = start().await;
    let p = gw.proxy.addr;
    let dialog = juliet_subscribe(p, ROMEO_URI, "z9hG4bK-ua-1", "dialog");
    let (resp, raw) = gw.proxy.transact(&dialog).await;
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (489, "Bad Event"),
        "{raw}"
    );
    assert_eq!(header_values(&raw, "Allow-Events"), ["presence"]);
    assert_eq!(resp.via, [format!("SIP/2.0/UDP {p};branch=z9hG4bK-ua-1")]);
    assert_eq!(resp.to.uri, ROMEO_URI);
    assert_eq!((resp.cseq, &resp.cseq_method), (20, &Method::Subscribe));

    // Case 15. The reason phrase names the mapping failure instead of "Not Found": reason
    // phrases are free text (RFC 3261 §21), and this one tells the operator why.
    let nobody = juliet_subscribe(p, "sip:nobody@xmpp.example.com", "z9hG4bK-ua-2", "presence");
    let (resp, raw) = gw.proxy.transact(&nobody).await;
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (404, "Address has no domain separator"),
        "{raw}"
    );
    assert_eq!(resp.via, [format!("SIP/2.0/UDP {p};branch=z9hG4bK-ua-2")]);
    assert_eq!(resp.to.uri, "sip:nobody@xmpp.example.com");
    // No NOTIFY and no stanza for either.
    gw.proxy.quiet().await;
    gw.xmpp.quiet().await;
}

/// RFC 3261 §8.2.6.2: a UAS MUST add a To-tag to every response (except 100) to a request
/// without one (the gateway derives a stable one from Call-ID and From-tag).
#[actix_rt::test]
async fn error_responses_to_requests_without_to_tag_carry_a_to_tag() {
    let gw = start().await;
    let p = gw.proxy.addr;
    let dialog = juliet_subscribe(p, ROMEO_URI, "z9hG4bK-ua-1", "dialog");
    let (resp, _) = gw.proxy.transact(&dialog).await;
    assert_eq!(resp.status, 489);
    assert!(resp.to.tag.is_some(), "489 without To-tag");
    let nobody = juliet_subscribe(p, "sip:nobody@xmpp.example.com", "z9hG4bK-ua-2", "presence");
    let (resp, _) = gw.proxy.transact(&nobody).await;
    assert_eq!(resp.status, 404);
    assert!(resp.to.tag.is_some(), "404 without To-tag");
    let options = format!(
        "OPTIONS sip:{gwa} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {p};branch=z9hG4bK-opt2\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{p}>;tag=o2\r\n\
         To: <sip:{gwa}>\r\n\
         Call-ID: opt-2@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        gwa = gw.proxy.gw
    );
    let (resp, _) = gw.proxy.transact(&options).await;
    assert_eq!(resp.status, 200);
    assert!(resp.to.tag.is_some(), "200 to OPTIONS without To-tag");
}

// ---- more of §9 on the same harness ---------------------------------------------------------

#[actix_rt::test]
async fn case_023_025_046_resubscribe_replays_cache_unknown_unsubscribe_is_silent_bad_type_errors()
{
    let mut gw = start().await;
    establish_d1(&mut gw).await;

    // Case 23: `subscribe` again while D1 is active: no SIP, `subscribed` and cached presence.
    gw.xmpp.send(&subscribe_stanza("subscribe", "s2")).await;
    assert_eq!(gw.xmpp.stanza().await, SUBSCRIBED);
    assert_eq!(gw.xmpp.stanza().await, PRESENCE_BALCONY);
    gw.proxy.quiet().await;

    // Case 25: `unsubscribe` for a pair with no state: no output at all.
    gw.xmpp
        .send(
            "<presence from='romeo@example.net' to='nurse*example.com@sip.example.net' \
             type='unsubscribe'/>",
        )
        .await;
    gw.xmpp.quiet().await;
    gw.proxy.quiet().await;

    // Case 46: unknown type → bad-request (modify), id echoed.
    gw.xmpp
        .send(&format!(
            "<presence from='{ROMEO}/orchard' to='{JULIET_JID}' type='foo' id='f1'/>"
        ))
        .await;
    assert_eq!(
        gw.xmpp.stanza().await,
        "<presence from='juliet*example.com@sip.example.net' to='romeo@example.net/orchard' \
         type='error' id='f1'><error type='modify' by='sip.example.net'>\
         <bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>\
         unknown presence type 'foo'</text></error></presence>"
    );
    gw.proxy.quiet().await;

    // OPTIONS (keepalive pings of proxies): 200 with what we support.
    let p = gw.proxy.addr;
    let options = format!(
        "OPTIONS sip:{gwa} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {p};branch=z9hG4bK-opt1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{p}>;tag=o1\r\n\
         To: <sip:{gwa}>\r\n\
         Call-ID: opt-1@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        gwa = gw.proxy.gw
    );
    let (resp, raw) = gw.proxy.transact(&options).await;
    assert_eq!((resp.status, resp.reason.as_str()), (200, "OK"), "{raw}");
    assert_eq!(resp.via, [format!("SIP/2.0/UDP {p};branch=z9hG4bK-opt1")]);
    assert_eq!((resp.cseq, &resp.cseq_method), (1, &Method::Options));
    // Instant messaging is on by default: MESSAGE is allowed.
    assert_eq!(
        header_values(&raw, "Allow"),
        ["SUBSCRIBE, NOTIFY, OPTIONS, MESSAGE"]
    );
    assert_eq!(header_values(&raw, "Allow-Events"), ["presence"]);
    assert_eq!(header_values(&raw, "Accept"), ["application/pidf+xml"]);
    gw.xmpp.quiet().await;
}

/// Juliet's SUBSCRIBE to romeo in dialog `call_id` with `to_tag`.
fn juliet_in_dialog(gw: &Gw, call_id: &str, to_tag: &str, cseq: u32, expires: u32) -> String {
    let p = gw.proxy.addr;
    format!(
        "SUBSCRIBE sip:romeo*example.net@{gwa} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {p};branch=z9hG4bK-ua-{cseq}-{to_tag}\r\n\
         Max-Forwards: 69\r\n\
         From: \"Juliet\" <{JULIET_URI}>;tag=ua-77aa31\r\n\
         To: <{ROMEO_URI}>;tag={to_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} SUBSCRIBE\r\n\
         Contact: <sip:juliet@{p}>\r\n\
         Event: presence\r\n\
         Expires: {expires}\r\n\
         Content-Length: 0\r\n\r\n",
        gwa = gw.proxy.gw
    )
}

/// Case 49 up to the pending NOTIFY and the `subscribe` stanza; returns our To-tag.
async fn establish_d2_pending(gw: &mut Gw) -> String {
    let first = juliet_subscribe(gw.proxy.addr, ROMEO_URI, "z9hG4bK-ua-4411", "presence");
    let (resp, raw) = gw.proxy.transact(&first).await;
    assert_eq!(resp.status, 200, "{raw}");
    let gw_tag = resp.to.tag.clone().unwrap_or_default();
    let (_, state) = d2_notify(gw, &gw_tag, 1).await;
    assert_eq!(state, sub_state(SubState::Pending, None, Some(3600)));
    assert_eq!(
        gw.xmpp.stanza().await,
        "<presence from='juliet*example.com@sip.example.net' to='romeo@example.net' \
         type='subscribe'/>"
    );
    gw_tag
}

#[actix_rt::test]
async fn case_052_058_060_refresh_then_unknown_tag_481_then_unsubscribed_rejects() {
    let mut gw = start().await;
    let call_id = "3f9a0c55e1@ua7.example.com";
    let gw_tag = establish_d2_active(&mut gw).await;

    // Case 52: in-dialog refresh, Expires 600 → 200 Expires 600, full state active;expires=600.
    let refresh = juliet_in_dialog(&gw, call_id, &gw_tag, 21, 600);
    let (resp, raw) = gw.proxy.transact(&refresh).await;
    assert_eq!((resp.status, resp.reason.as_str()), (200, "OK"), "{raw}");
    assert_eq!(resp.to, na(ROMEO_URI, Some(&gw_tag)));
    assert_eq!(resp.expires, Some(600));
    let (n, state) = d2_notify(&gw, &gw_tag, 3).await;
    assert_eq!(state.state, SubState::Active);
    assert!(
        matches!(state.expires, Some(599 | 600)),
        "expires {:?}",
        state.expires
    );
    assert_eq!(String::from_utf8_lossy(&n.body), PIDF_ROMEO_CLOSED);
    gw.xmpp.quiet().await;

    // Case 58: a To-tag that matches no dialog.
    let stray = juliet_in_dialog(&gw, "stray@ua7.example.com", "zzz", 5, 600);
    let (resp, raw) = gw.proxy.transact(&stray).await;
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (481, "Call/Transaction Does Not Exist"),
        "{raw}"
    );
    assert_eq!(resp.to, na(ROMEO_URI, Some("zzz")));

    // Case 60: romeo revokes → NOTIFY terminated;reason=rejected, no body; dialog removed.
    gw.xmpp
        .send(&format!(
            "<presence from='{ROMEO}' to='{JULIET_JID}' type='unsubscribed'/>"
        ))
        .await;
    let (n, state) = d2_notify(&gw, &gw_tag, 4).await;
    assert_eq!(
        state,
        sub_state(SubState::Terminated, Some("rejected"), None)
    );
    assert_eq!((n.content_type, n.body.len()), (None, 0));
    gw.xmpp.quiet().await;
    let late = juliet_in_dialog(&gw, call_id, &gw_tag, 22, 600);
    let (resp, raw) = gw.proxy.transact(&late).await;
    assert_eq!(resp.status, 481, "{raw}");

    // Case 60, second half: a new SUBSCRIBE within 24 h gets 200 + pending, and no new
    // `subscribe` stanza (rate limit).
    let again = juliet_subscribe(gw.proxy.addr, ROMEO_URI, "z9hG4bK-ua-5000", "presence")
        .replace(call_id, "second@ua7.example.com");
    let (resp, raw) = gw.proxy.transact(&again).await;
    assert_eq!((resp.status, resp.reason.as_str()), (200, "OK"), "{raw}");
    let tag2 = resp.to.tag.clone().unwrap_or_default();
    assert_ne!(tag2, gw_tag);
    let (n, raw) = gw.proxy.request(Method::Notify).await;
    assert_eq!(n.call_id, "second@ua7.example.com");
    assert_eq!(n.from, na(ROMEO_URI, Some(&tag2)));
    assert_eq!(
        n.subscription_state,
        Some(Ok(sub_state(SubState::Pending, None, Some(3600)))),
        "{raw}"
    );
    gw.proxy.answer(&n, 200, "OK", &[]).await;
    gw.xmpp.quiet().await;
}

#[actix_rt::test]
async fn case_048_error_bounce_of_our_subscribe_terminates_the_pending_dialog() {
    let mut gw = start().await;
    let gw_tag = establish_d2_pending(&mut gw).await;
    gw.xmpp
        .send(&format!(
            "<presence from='{ROMEO}' to='{JULIET_JID}' type='error'>\
             <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             </error></presence>"
        ))
        .await;
    let (n, state) = d2_notify(&gw, &gw_tag, 2).await;
    assert_eq!(
        state,
        sub_state(SubState::Terminated, Some("noresource"), None)
    );
    assert_eq!(n.body.len(), 0);
    // Never an error in answer to an error.
    gw.xmpp.quiet().await;
    let late = juliet_in_dialog(&gw, "3f9a0c55e1@ua7.example.com", &gw_tag, 21, 600);
    let (resp, raw) = gw.proxy.transact(&late).await;
    assert_eq!(resp.status, 481, "dialog removed: {raw}");
}

#[actix_rt::test]
async fn case_082_active_notify_before_the_2xx_is_accepted_and_retransmissions_are_absorbed() {
    let mut gw = start().await;
    gw.xmpp.send(&subscribe_stanza("subscribe", "s1")).await;
    let (sub, raw) = gw.proxy.request(Method::Subscribe).await;
    check_initial_subscribe(&gw, &sub, &raw);
    // The NOTIFY overtakes the 200 (it may: different paths through the proxy).
    let notify = gw
        .proxy
        .notify(&sub, 101, "active;expires=1740", Some(PIDF_BALCONY));
    let (resp, raw) = gw.proxy.transact(&notify).await;
    check_notify_ok(&resp, &raw, &notify, 101);
    assert_eq!(gw.xmpp.stanza().await, SUBSCRIBED);
    assert_eq!(gw.xmpp.stanza().await, PRESENCE_BALCONY);
    gw.proxy.answer(&sub, 200, "OK", &["Expires: 1800"]).await;
    // A retransmission of the NOTIFY (same branch): the same 200 again, no stanza.
    let (again, raw_again) = gw.proxy.transact(&notify).await;
    assert_eq!(
        raw_again, raw,
        "the server transaction replays its response"
    );
    check_notify_ok(&again, &raw_again, &notify, 101);
    gw.xmpp.quiet().await;
    gw.proxy.quiet().await;
}

#[actix_rt::test]
async fn case_076_terminated_timeout_resubscribes_at_once_in_a_new_dialog() {
    let mut gw = start().await;
    let old = establish_d1(&mut gw).await;
    let end = gw
        .proxy
        .notify(&old, 102, "terminated;reason=timeout", None);
    let (resp, raw) = gw.proxy.transact(&end).await;
    check_notify_ok(&resp, &raw, &end, 102);
    let (sub, raw) = gw.proxy.request(Method::Subscribe).await;
    check_initial_subscribe(&gw, &sub, &raw);
    assert_ne!(sub.call_id, old.call_id, "new Call-ID");
    assert_ne!(sub.from.tag, old.from.tag, "new From-tag");
    gw.proxy.answer(&sub, 200, "OK", &["Expires: 1800"]).await;
    gw.xmpp.quiet().await;

    // The old dialog is gone, the new one is served.
    let late = gw
        .proxy
        .notify(&old, 103, "active;expires=100", Some(PIDF_BALCONY));
    let (resp, raw) = gw.proxy.transact(&late).await;
    assert_eq!(resp.status, 481, "{raw}");
    let garden = PIDF_BALCONY.replace("On the balcony", "Back inside");
    let first = gw
        .proxy
        .notify(&sub, 1, "active;expires=1800", Some(&garden));
    let (resp, raw) = gw.proxy.transact(&first).await;
    check_notify_ok(&resp, &raw, &first, 1);
    // Case 27's rule: the relation is already approved, so no second `subscribed`; the
    // changed state is presence.
    assert_eq!(
        gw.xmpp.stanza().await,
        PRESENCE_BALCONY.replace("On the balcony", "Back inside")
    );
    gw.xmpp.quiet().await;
}

#[actix_rt::test]
async fn two_xmpp_watchers_of_one_sip_user_get_separate_dialogs_and_only_their_stanzas() {
    let mut gw = start().await;
    let romeo = establish_d1(&mut gw).await;
    gw.xmpp
        .send(&format!(
            "<presence from='benvolio@example.net' to='{JULIET_JID}' type='subscribe'/>"
        ))
        .await;
    let (ben, raw) = gw.proxy.request(Method::Subscribe).await;
    assert_eq!(ben.uri, JULIET_URI);
    assert_eq!(
        ben.from.uri, "sip:benvolio*example.net@xmpp.example.com",
        "{raw}"
    );
    assert_ne!(ben.call_id, romeo.call_id);
    assert_eq!(ben.cseq, 1);
    gw.proxy.answer(&ben, 200, "OK", &["Expires: 1800"]).await;
    let pending = gw.proxy.notify(&ben, 7, "pending;expires=1800", None);
    let (resp, raw) = gw.proxy.transact(&pending).await;
    check_notify_ok(&resp, &raw, &pending, 7);
    gw.xmpp.quiet().await;
    let active = gw
        .proxy
        .notify(&ben, 8, "active;expires=1700", Some(PIDF_BALCONY));
    let (resp, raw) = gw.proxy.transact(&active).await;
    check_notify_ok(&resp, &raw, &active, 8);
    assert_eq!(
        gw.xmpp.stanza().await,
        SUBSCRIBED.replace("romeo@example.net", "benvolio@example.net")
    );
    assert_eq!(
        gw.xmpp.stanza().await,
        PRESENCE_BALCONY.replace("romeo@example.net", "benvolio@example.net")
    );
    gw.xmpp.quiet().await;
}

#[actix_rt::test]
async fn case_097_stanzas_are_queued_while_the_component_link_is_down_and_dialogs_kept() {
    let mut gw = start().await;
    let sub = establish_d1(&mut gw).await;
    // The XMPP server goes away (restart): the gateway sees EOF.
    gw.xmpp.sock.shutdown().await.expect("shutdown");
    drop(gw.xmpp);
    // Let the gateway read the EOF first: a stanza written before it knows the link is gone
    // is lost with the connection (XEP-0114 has no acknowledgements), which is not the case
    // under test.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SIP keeps working meanwhile: the NOTIFY is answered and its stanza is queued.
    let garden = PIDF_BALCONY
        .replace("On the balcony", "In the garden")
        .replace("rpid:on-the-phone", "rpid:away");
    let n = gw
        .proxy
        .notify(&sub, 102, "active;expires=1700", Some(&garden));
    let (resp, raw) = gw.proxy.transact(&n).await;
    check_notify_ok(&resp, &raw, &n, 102);
    // The component reconnects (1 s backoff) and delivers the queued stanza first.
    let mut xmpp = Xmpp::accept(&gw.listener).await;
    assert_eq!(
        xmpp.stanza().await,
        "<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net'>\
         <show>away</show><status xml:lang='en'>In the garden</status><priority>80</priority>\
         </presence>"
    );
    // The dialog was kept: a probe is answered from it without SIP.
    xmpp.send(&subscribe_stanza("probe", "p2")).await;
    assert_eq!(
        xmpp.stanza().await,
        "<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net'>\
         <show>away</show><status xml:lang='en'>In the garden</status><priority>80</priority>\
         </presence>"
    );
    gw.proxy.quiet().await;
}

/// (what, request text, status, reason phrase, a header the response must carry).
type Refusal<'a> = (&'a str, String, u16, &'a str, Option<(&'a str, &'a str)>);

#[actix_rt::test]
async fn case_013_055_057_and_other_refusals_of_initial_subscribes() {
    let mut gw = start().await;
    let p = gw.proxy.addr;
    let base = juliet_subscribe(p, ROMEO_URI, "z9hG4bK-r1", "presence");
    let cases: [Refusal; 6] = [
        (
            "case 13: tel: watcher",
            base.replace(
                "From: \"Juliet\" <sip:juliet@example.com>",
                "From: <tel:+15551234567>",
            ),
            416,
            // The mapping error's text (free text, RFC 3261 §21).
            "Unsupported URI scheme",
            None,
        ),
        (
            "case 55: Expires 30",
            base.replace("Expires: 3600", "Expires: 30"),
            423,
            "Interval Too Brief",
            Some(("Min-Expires", "60")),
        ),
        (
            "case 57: xpidf only",
            base.replace(
                "Accept: application/pidf+xml",
                "Accept: application/xpidf+xml",
            ),
            406,
            "Not Acceptable",
            None,
        ),
        (
            "Max-Forwards 0",
            base.replace("Max-Forwards: 69", "Max-Forwards: 0"),
            483,
            "Too Many Hops",
            None,
        ),
        (
            "Require",
            base.replace("Event: presence", "Event: presence\r\nRequire: foo"),
            420,
            "Bad Extension",
            Some(("Unsupported", "foo")),
        ),
        (
            "PUBLISH",
            base.replace("SUBSCRIBE", "PUBLISH"),
            405,
            "Method Not Allowed",
            Some(("Allow", "SUBSCRIBE, NOTIFY, OPTIONS, MESSAGE")),
        ),
    ];
    for (i, (what, text, code, reason, header)) in cases.into_iter().enumerate() {
        let text = text.replace("z9hG4bK-r1", &format!("z9hG4bK-r1-{i}"));
        let (resp, raw) = gw.proxy.transact(&text).await;
        assert_eq!(
            (resp.status, resp.reason.as_str()),
            (code, reason),
            "{what}: {raw}"
        );
        if let Some((name, value)) = header {
            assert_eq!(header_values(&raw, name), [value], "{what}");
        }
    }
    gw.proxy.quiet().await;
    gw.xmpp.quiet().await;
}

const UNSUBSCRIBED: &str = "<presence from='juliet*example.com@sip.example.net' \
     to='romeo@example.net' type='unsubscribed'/>";

#[actix_rt::test]
async fn case_028_probe_without_relation_fetches_then_subscribes_for_real() {
    let mut gw = start().await;
    gw.xmpp.send(&subscribe_stanza("probe", "p1")).await;
    let (fetch, raw) = gw.proxy.request(Method::Subscribe).await;
    assert_eq!(fetch.uri, JULIET_URI);
    assert_eq!(fetch.to, na(JULIET_URI, None));
    assert_eq!(fetch.expires, Some(0), "a fetch: {raw}");
    assert_eq!(fetch.cseq, 1);
    gw.proxy.answer(&fetch, 200, "OK", &["Expires: 0"]).await;
    let n = gw
        .proxy
        .notify(&fetch, 1, "terminated;reason=timeout", Some(PIDF_BALCONY));
    let (resp, raw) = gw.proxy.transact(&n).await;
    check_notify_ok(&resp, &raw, &n, 1);
    // The fetch result answers the probe (no `subscribed`: the relation was not asked for).
    assert_eq!(gw.xmpp.stanza().await, PRESENCE_BALCONY);
    // Then the long-lived subscription, in a new dialog.
    let (sub, raw) = gw.proxy.request(Method::Subscribe).await;
    check_initial_subscribe(&gw, &sub, &raw);
    assert_ne!(sub.call_id, fetch.call_id);
    gw.xmpp.quiet().await;
}

#[actix_rt::test]
async fn case_028_probe_fetch_answered_403_gives_unsubscribed() {
    let mut gw = start().await;
    gw.xmpp.send(&subscribe_stanza("probe", "p1")).await;
    let (fetch, raw) = gw.proxy.request(Method::Subscribe).await;
    assert_eq!(fetch.expires, Some(0), "a fetch: {raw}");
    gw.proxy.answer(&fetch, 403, "Forbidden", &[]).await;
    assert_eq!(gw.xmpp.stanza().await, UNSUBSCRIBED);
    gw.xmpp.quiet().await;
    gw.proxy.quiet().await;
}

#[actix_rt::test]
async fn case_029_subscribe_answered_404_gives_unsubscribed_and_no_retry() {
    let mut gw = start().await;
    gw.xmpp.send(&subscribe_stanza("subscribe", "s1")).await;
    let (sub, raw) = gw.proxy.request(Method::Subscribe).await;
    check_initial_subscribe(&gw, &sub, &raw);
    gw.proxy.answer(&sub, 404, "Not Found", &[]).await;
    assert_eq!(gw.xmpp.stanza().await, UNSUBSCRIBED);
    gw.xmpp.quiet().await;
    gw.proxy.quiet().await;
}

#[actix_rt::test]
async fn case_075_terminated_rejected_gives_unsubscribed_and_no_resubscribe() {
    let mut gw = start().await;
    let sub = establish_d1(&mut gw).await;
    let n = gw
        .proxy
        .notify(&sub, 102, "terminated;reason=rejected", None);
    let (resp, raw) = gw.proxy.transact(&n).await;
    check_notify_ok(&resp, &raw, &n, 102);
    assert_eq!(gw.xmpp.stanza().await, UNSUBSCRIBED);
    gw.xmpp.quiet().await;
    gw.proxy.quiet().await;
}

#[actix_rt::test]
async fn case_024_018_subscribe_again_after_unsubscribe_starts_a_new_dialog() {
    let mut gw = start().await;
    let old = establish_d1(&mut gw).await;
    gw.xmpp.send(&subscribe_stanza("unsubscribe", "u1")).await;
    let (unsub, _) = gw.proxy.request(Method::Subscribe).await;
    assert_eq!(unsub.expires, Some(0));
    gw.proxy.answer(&unsub, 200, "OK", &["Expires: 0"]).await;
    assert_eq!(
        gw.xmpp.stanza().await,
        "<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net' \
         type='unavailable'/>"
    );
    let last = gw
        .proxy
        .notify(&old, 102, "terminated;reason=timeout", None);
    let (resp, raw) = gw.proxy.transact(&last).await;
    check_notify_ok(&resp, &raw, &last, 102);
    // Romeo changes his mind: a fresh subscription, from scratch.
    let sub = establish_d1(&mut gw).await;
    assert_ne!(sub.call_id, old.call_id);
    assert_ne!(sub.from.tag, old.from.tag);
    gw.xmpp.quiet().await;
}

// ---- SIP over TCP ---------------------------------------------------------------------------

/// Reads one Content-Length framed SIP message from a TCP stream.
async fn read_tcp_message(s: &mut TcpStream, pending: &mut Vec<u8>) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let cl: usize = header_values(&format!("{head}\r\n\r\n"), "Content-Length")
                .first()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if pending.len() >= end + 4 + cl {
                let msg: Vec<u8> = pending.drain(..end + 4 + cl).collect();
                return String::from_utf8(msg).expect("SIP message not UTF-8");
            }
        }
        let mut buf = [0u8; 8192];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut buf))
            .await
            .expect("timeout reading SIP over TCP")
            .expect("read");
        assert!(n > 0, "the gateway closed the TCP connection");
        pending.extend_from_slice(&buf[..n]);
    }
}

#[actix_rt::test]
async fn case_018_021_over_tcp_requests_use_tcp_and_notifies_on_the_same_connection_work() {
    let mut gw = start_with(|c| c.sip.transport = "tcp".into()).await;
    let tcp = TcpListener::bind(gw.proxy.addr)
        .await
        .expect("bind proxy TCP");
    gw.xmpp.send(&subscribe_stanza("subscribe", "s1")).await;
    let (mut conn, _) = tokio::time::timeout(WAIT, tcp.accept())
        .await
        .expect("the gateway did not connect over TCP")
        .expect("accept");
    let mut pending = Vec::new();
    let raw = read_tcp_message(&mut conn, &mut pending).await;
    let SipMessage::Request(sub) = parse_message(raw.as_bytes()).expect("parse") else {
        panic!("not a request: {raw}")
    };
    assert_eq!(sub.method, Method::Subscribe);
    assert_eq!(sub.uri, JULIET_URI);
    let prefix = format!("SIP/2.0/TCP {};branch=z9hG4bK", gw.proxy.gw);
    assert!(sub.via[0].starts_with(&prefix), "Via {:?}", sub.via);
    assert_eq!((sub.cseq, sub.expires), (1, Some(3600)));
    assert_eq!(sub.from.uri, ROMEO_URI);
    assert_eq!(sub.to, na(JULIET_URI, None));
    let mut ok = "SIP/2.0 200 OK\r\n".to_owned();
    for v in &sub.via {
        ok.push_str(&format!("Via: {v}\r\n"));
    }
    ok.push_str(&format!(
        "From: <{}>;tag={}\r\nTo: <{JULIET_URI}>;tag={PS_TAG}\r\nCall-ID: {}\r\n\
         CSeq: 1 SUBSCRIBE\r\nExpires: 1800\r\nContent-Length: 0\r\n\r\n",
        sub.from.uri,
        sub.from.tag.as_deref().unwrap_or(""),
        sub.call_id
    ));
    conn.write_all(ok.as_bytes()).await.expect("write");
    // The presence server reuses the connection for its NOTIFY (like Kamailio's TCP aliases).
    let notify = gw
        .proxy
        .notify(&sub, 101, "active;expires=1740", Some(PIDF_BALCONY))
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    conn.write_all(notify.as_bytes()).await.expect("write");
    let raw = read_tcp_message(&mut conn, &mut pending).await;
    let SipMessage::Response(resp) = parse_message(raw.as_bytes()).expect("parse") else {
        panic!("not a response: {raw}")
    };
    check_notify_ok(&resp, &raw, &notify, 101);
    assert_eq!(gw.xmpp.stanza().await, SUBSCRIBED);
    assert_eq!(gw.xmpp.stanza().await, PRESENCE_BALCONY);
    // Nothing went over UDP.
    gw.proxy.quiet().await;
}

/// With `sip.transport = "tcp"` the Contact we send must say so, or the notifier sends its
/// NOTIFYs to it over UDP (RFC 3263 §4.1: a numeric host with no `transport` means UDP), which
/// defeats the TCP choice (large PIDF bodies, case 39) and breaks TCP-only paths. §4.2's
/// example Contact carries `;transport=tcp`.
#[actix_rt::test]
async fn contact_says_transport_tcp_when_requests_use_tcp() {
    let mut gw = start_with(|c| c.sip.transport = "tcp".into()).await;
    let tcp = TcpListener::bind(gw.proxy.addr)
        .await
        .expect("bind proxy TCP");
    gw.xmpp.send(&subscribe_stanza("subscribe", "s1")).await;
    let (mut conn, _) = tokio::time::timeout(WAIT, tcp.accept())
        .await
        .expect("the gateway did not connect over TCP")
        .expect("accept");
    let raw = read_tcp_message(&mut conn, &mut Vec::new()).await;
    let SipMessage::Request(sub) = parse_message(raw.as_bytes()).expect("parse") else {
        panic!("not a request: {raw}")
    };
    assert_eq!(
        sub.contact,
        Some(na(
            &format!("sip:romeo*example.net@{};transport=tcp", gw.proxy.gw),
            None
        ))
    );
}

// ---- more notifier and subscriber outcomes --------------------------------------------------

/// Cases 49 and 50: D2 pending, then approved; returns our To-tag once NOTIFY 2 is answered.
async fn establish_d2_active(gw: &mut Gw) -> String {
    let gw_tag = establish_d2_pending(gw).await;
    gw.xmpp
        .send(&format!(
            "<presence from='{ROMEO}' to='{JULIET_JID}' type='subscribed'/>"
        ))
        .await;
    let (n, state) = d2_notify(gw, &gw_tag, 2).await;
    assert_active_remaining(&state);
    assert_eq!(String::from_utf8_lossy(&n.body), PIDF_ROMEO_CLOSED);
    gw_tag
}

#[actix_rt::test]
async fn case_045_044_presence_bursts_are_coalesced_and_last_unavailable_gives_closed_note() {
    let mut gw = start().await;
    let gw_tag = establish_d2_active(&mut gw).await;
    let t0 = Instant::now();
    for (show, status) in [("away", "a"), ("dnd", "b"), ("xa", "c")] {
        gw.xmpp
            .send(&format!(
                "<presence from='{ROMEO}/orchard' to='{JULIET_JID}'><show>{show}</show>\
                 <status>{status}</status></presence>"
            ))
            .await;
    }
    // One NOTIFY, at the trailing edge of the 1 s interval, with the last state only.
    let (n, state) = d2_notify(&gw, &gw_tag, 3).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(600),
        "sent after {waited:?}"
    );
    assert_active_remaining(&state);
    // Case 35: xa → rpid:away + user-input idle; no <priority> → no priority attribute.
    assert_eq!(
        String::from_utf8_lossy(&n.body),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>
<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"
          xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\"
          xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\"
          entity=\"pres:romeo*example.net@xmpp.example.com\">
  <tuple id=\"ID-orchard\">
    <status><basic>open</basic></status>
    <contact>sip:romeo*example.net@xmpp.example.com</contact>
    <note>c</note>
  </tuple>
  <note>c</note>
  <dm:person id=\"p-1\">
    <rpid:activities><rpid:away/></rpid:activities>
    <rpid:user-input>idle</rpid:user-input>
  </dm:person>
</presence>"
    );
    gw.proxy.quiet().await;

    // Case 44: the last resource leaves with a status.
    gw.xmpp
        .send(&format!(
            "<presence from='{ROMEO}/orchard' to='{JULIET_JID}' type='unavailable'>\
             <status>Gone to Mantua</status></presence>"
        ))
        .await;
    let (n, state) = d2_notify(&gw, &gw_tag, 4).await;
    assert_active_remaining(&state);
    assert_eq!(
        String::from_utf8_lossy(&n.body),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>
<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"pres:romeo*example.net@xmpp.example.com\">
  <tuple id=\"ID-offline\"><status><basic>closed</basic></status><note>Gone to Mantua</note></tuple>
</presence>"
    );
    gw.xmpp.quiet().await;
}

#[actix_rt::test]
async fn notify_answered_481_removes_the_watcher_dialog() {
    let mut gw = start().await;
    let gw_tag = establish_d2_pending(&mut gw).await;
    gw.xmpp
        .send(&format!(
            "<presence from='{ROMEO}' to='{JULIET_JID}' type='subscribed'/>"
        ))
        .await;
    let (n, _) = gw.proxy.request(Method::Notify).await;
    // §5.1: 481 to a NOTIFY means the watcher is gone.
    gw.proxy
        .answer(&n, 481, "Call/Transaction Does Not Exist", &[])
        .await;
    gw.xmpp
        .send(&format!(
            "<presence from='{ROMEO}/orchard' to='{JULIET_JID}'><show>away</show></presence>"
        ))
        .await;
    gw.proxy.quiet().await;
    let late = juliet_in_dialog(&gw, "3f9a0c55e1@ua7.example.com", &gw_tag, 21, 600);
    let (resp, raw) = gw.proxy.transact(&late).await;
    assert_eq!(resp.status, 481, "{raw}");
    gw.xmpp.quiet().await;
}

#[actix_rt::test]
async fn case_031_033_subscribe_answered_423_retries_and_489_gives_an_error() {
    let mut gw = start().await;
    gw.xmpp.send(&subscribe_stanza("subscribe", "s1")).await;
    let (sub, _) = gw.proxy.request(Method::Subscribe).await;
    gw.proxy
        .answer(&sub, 423, "Interval Too Brief", &["Min-Expires: 1800"])
        .await;
    let (again, raw) = gw.proxy.request(Method::Subscribe).await;
    assert_eq!(again.call_id, sub.call_id, "{raw}");
    assert_eq!(again.from, sub.from);
    assert_eq!(again.to, na(JULIET_URI, None));
    assert_eq!((again.cseq, again.expires), (2, Some(1800)));
    gw.xmpp.quiet().await;
    gw.proxy.answer(&again, 489, "Bad Event", &[]).await;
    // Case 33 (⚠ in the spec). The error carries no id: the subscriber does not keep the id of
    // romeo's `subscribe` (RFC 6120 §8.3.1 asks for the generating stanza's id).
    assert_eq!(
        gw.xmpp.stanza().await,
        "<presence from='juliet*example.com@sip.example.net' to='romeo@example.net' \
         type='error'><error type='cancel' by='sip.example.net'>\
         <feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>SIP 489 Bad Event</text>\
         </error></presence>"
    );
    // No retry.
    gw.xmpp.quiet().await;
    gw.proxy.quiet().await;
}

/// A plain HTTP/1.1 GET on loopback; returns (status, body).
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect http");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
        .await
        .expect("http timeout")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Issue 5: `/health`, `/subscriptions?user=` and `/metrics` on the HTTP listener, with a live
/// XMPP → SIP subscription behind them.
#[actix_rt::test]
async fn http_health_subscriptions_and_metrics() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let http = format!("127.0.0.1:{port}");
    let h = http.clone();
    let mut gw = start_with(move |c| c.http.listen = h).await;
    let sub = establish_d1(&mut gw).await;

    let (status, body) = http_get(&http, "/health").await;
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "ok", "{body}");
    assert_eq!(health["checks"]["xmpp"], "up", "{body}");
    assert_eq!(health["checks"]["store"], "ok", "{body}");
    assert_eq!(health["checks"]["actors"], "ok", "{body}");

    let (status, body) = http_get(&http, &format!("/subscriptions?user={ROMEO}")).await;
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    let entries = list.as_array().expect("array");
    assert_eq!(entries.len(), 1, "{body}");
    let e = &entries[0];
    assert_eq!(e["direction"], "xmpp_to_sip");
    assert_eq!(e["watcher"], ROMEO);
    assert_eq!(e["presentity"], JULIET_URI);
    assert_eq!(e["relation"], "approved");
    assert_eq!(e["state"], "active");
    assert_eq!(e["call_id"], sub.call_id.as_str());
    assert!(
        e["expires_in"]
            .as_u64()
            .is_some_and(|s| s > 1700 && s <= 1740),
        "{body}"
    );
    // The same subscription seen from the SIP presentity's side.
    let (_, body) = http_get(&http, &format!("/subscriptions?user={JULIET_URI}")).await;
    assert!(body.contains(&sub.call_id), "{body}");
    // A user with nothing, and a bad one.
    assert_eq!(
        http_get(&http, "/subscriptions?user=nobody@example.net").await,
        (200, "[]".to_owned())
    );
    assert_eq!(http_get(&http, "/subscriptions").await.0, 400);

    let (status, metrics) = http_get(&http, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "pua_xmpp_sip_requests_out_total{method=\"SUBSCRIBE\"}",
        "pua_xmpp_sip_requests_in_total{method=\"NOTIFY\"}",
        "pua_xmpp_sip_responses_out_total{code=\"200\"}",
        "pua_xmpp_stanzas_in_total{type=\"subscribe\"}",
        "pua_xmpp_stanzas_out_total{type=\"subscribed\"}",
        "pua_xmpp_subscriptions{direction=\"xmpp_to_sip\",state=\"active\"}",
        "pua_xmpp_subscribe_latency_seconds_bucket",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
}

/// Issue 6: with `sip.trusted_peers` set, a request from any other address gets 403.
#[actix_rt::test]
async fn requests_from_untrusted_peers_get_403() {
    let mut gw = start_with(|c| c.sip.trusted_peers = vec!["127.0.0.2".into()]).await;
    let p = gw.proxy.addr;
    let (resp, raw) = gw
        .proxy
        .transact(&juliet_subscribe(
            p,
            ROMEO_URI,
            "z9hG4bK-untrusted",
            "presence",
        ))
        .await;
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (403, "Untrusted Peer"),
        "{raw}"
    );
    gw.xmpp.quiet().await;
}

/// Issue 6: one XMPP user may hold at most `limits.max_subscriptions_per_user` subscriptions;
/// the next one is refused with `resource-constraint` and no SIP.
#[actix_rt::test]
async fn subscriptions_beyond_the_per_user_limit_get_resource_constraint() {
    let mut gw = start_with(|c| c.limits.max_subscriptions_per_user = 1).await;
    establish_d1(&mut gw).await;
    gw.xmpp
        .send(&format!(
            "<presence from='{ROMEO}' to='nurse*example.com@{COMPONENT}' type='subscribe' id='s2'/>"
        ))
        .await;
    let err = gw.xmpp.stanza().await;
    assert_eq!(
        err,
        format!(
            "<presence from='nurse*example.com@{COMPONENT}' to='{ROMEO}' type='error' id='s2'>\
<error type='wait' by='{COMPONENT}'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>too many subscriptions</text></error></presence>"
        )
    );
    gw.proxy.quiet().await;
}

/// Issue 6, SIP side: one SIP watcher may watch at most `max_subscriptions_per_user` XMPP
/// users at a time; the next is refused 503 with Retry-After. A subscription that ended no
/// longer counts: after an unsubscribe the same watcher may watch someone else.
#[actix_rt::test]
async fn sip_watcher_beyond_the_per_user_limit_gets_503_until_one_subscription_ends() {
    let mut gw = start_with(|c| c.limits.max_subscriptions_per_user = 1).await;
    let p = gw.proxy.addr;
    let gw_tag = establish_d2_pending(&mut gw).await;
    let mercutio_uri = "sip:mercutio*example.net@xmpp.example.com";
    let second = |branch: &str| {
        juliet_subscribe(p, mercutio_uri, branch, "presence")
            .replace("3f9a0c55e1@ua7.example.com", "6d2b90c4@ua7.example.com")
    };
    let (resp, raw) = gw.proxy.transact(&second("z9hG4bK-ua-5501")).await;
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (503, "Too Many Subscriptions"),
        "{raw}"
    );
    assert_eq!(header_values(&raw, "Retry-After"), ["3600"]);
    gw.xmpp.quiet().await;

    // Juliet unsubscribes from romeo: 200 Expires: 0, NOTIFY terminated.
    let unsub = juliet_in_dialog(&gw, "3f9a0c55e1@ua7.example.com", &gw_tag, 21, 0);
    let (resp, raw) = gw.proxy.transact(&unsub).await;
    assert_eq!((resp.status, resp.expires), (200, Some(0)), "{raw}");
    let (_, state) = d2_notify(&gw, &gw_tag, 2).await;
    assert_eq!(state.state, SubState::Terminated);

    // Now the subscription to mercutio is accepted: 200, pending NOTIFY, `subscribe` stanza.
    let (resp, raw) = gw.proxy.transact(&second("z9hG4bK-ua-5502")).await;
    assert_eq!((resp.status, resp.reason.as_str()), (200, "OK"), "{raw}");
    assert_eq!(resp.call_id, "6d2b90c4@ua7.example.com");
    let (n, _) = gw.proxy.request(Method::Notify).await;
    assert_eq!(n.call_id, "6d2b90c4@ua7.example.com");
    assert_eq!(
        gw.xmpp.stanza().await,
        "<presence from='juliet*example.com@sip.example.net' to='mercutio@example.net' \
         type='subscribe'/>"
    );
}

#[actix_rt::test]
async fn case_097_component_link_back_after_a_drop_probes_xmpp_presentities_again() {
    let mut gw = start().await;
    let gw_tag = establish_d2_pending(&mut gw).await;
    gw.xmpp
        .send(&format!(
            "<presence from='{ROMEO}' to='{JULIET_JID}' type='subscribed'/>"
        ))
        .await;
    let (_, state) = d2_notify(&gw, &gw_tag, 2).await;
    assert_active_remaining(&state);
    gw.xmpp.quiet().await;
    // The XMPP server restarts: it forgot romeo's presence, so the gateway must ask again.
    gw.xmpp.sock.shutdown().await.expect("shutdown");
    drop(gw.xmpp);
    let mut xmpp = Xmpp::accept(&gw.listener).await;
    assert_eq!(
        xmpp.stanza().await,
        "<presence from='juliet*example.com@sip.example.net' to='romeo@example.net' \
         type='probe'/>"
    );
    xmpp.quiet().await;
    gw.proxy.quiet().await;
}

/// Issue 6: a SIP peer that never answers. The SUBSCRIBE is retransmitted over UDP (Timer E,
/// identical copies), the transaction times out after 64*T1 (Timer F), and the pair backs off
/// (state `retrying`) without any stanza to the watcher (an error comes only after 5 failures);
/// the gateway keeps serving.
#[actix_rt::test]
async fn unanswered_subscribe_is_retransmitted_times_out_and_the_pair_backs_off() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let http = format!("127.0.0.1:{port}");
    let h = http.clone();
    let mut gw = start_with(move |c| {
        c.sip.t1_ms = 20;
        c.http.listen = h;
    })
    .await;
    gw.xmpp.send(&subscribe_stanza("subscribe", "s1")).await;
    let (first, first_raw) = gw.proxy.request(Method::Subscribe).await;
    let started = Instant::now();
    let mut copies = 0;
    // Timer F = 64 * T1 = 1.28 s; collect what arrives until a little after it.
    while let Some(raw) = gw
        .proxy
        .recv_within(Duration::from_millis(1600).saturating_sub(started.elapsed()))
        .await
    {
        assert_eq!(raw, first_raw, "a retransmission is an identical copy");
        copies += 1;
    }
    // T1 doubling: 20, 40, 80, 160, 320, 640 ms → 6 copies before 1.28 s.
    assert!((4..=7).contains(&copies), "{copies} retransmissions");
    let (status, body) = http_get(&http, &format!("/subscriptions?user={ROMEO}")).await;
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(list[0]["state"], "retrying", "{body}");
    assert_eq!(list[0]["relation"], "pending", "{body}");
    assert_ne!(list[0]["call_id"], serde_json::Value::Null);
    assert_eq!(first.call_id, list[0]["call_id"].as_str().unwrap_or(""));
    // No stanza to romeo for a transport failure (§6.3), and the gateway still serves.
    gw.xmpp.quiet().await;
    let (status, _) = http_get(&http, "/health").await;
    assert_eq!(status, 200);
}

/// Issue 7 (subscriber shards): NOTIFYs are routed to the shard of their To URI, our own From
/// (X'). A proxy that rewrites that URI (here: a `;transport` parameter, or the host in capitals)
/// must still reach the pair: the shard that does not know the Call-ID passes the NOTIFY on, and
/// the presence comes out exactly as for an untouched To. Both spellings are chosen so that at
/// least one of them hashes to the other shard (the in-process gateway runs two).
#[actix_rt::test]
async fn notify_with_a_rewritten_to_uri_still_reaches_its_pair_through_the_shards() {
    use pua_xmpp_actors::shard::shard_for;
    let mut gw = start().await;
    let sub = establish_d1(&mut gw).await;
    let home = shard_for(ROMEO_URI, 2);
    let rewritten = [
        format!("{ROMEO_URI};transport=udp"),
        ROMEO_URI.replace("xmpp.example.com", "XMPP.EXAMPLE.COM"),
        format!("{ROMEO_URI};lr"),
        format!("{ROMEO_URI};x=1"),
    ];
    let away = rewritten
        .iter()
        .find(|u| shard_for(u, 2) != home)
        .expect("one spelling hashes to the other shard");
    let garden = PIDF_BALCONY.replace("On the balcony", "In the garden");
    let n2 = gw
        .proxy
        .notify(&sub, 102, "active;expires=1700", Some(&garden))
        .replace(&format!("To: <{ROMEO_URI}>"), &format!("To: <{away}>"));
    assert!(n2.contains(&format!("To: <{away}>")), "{n2}");
    let (resp, raw) = gw.proxy.transact(&n2).await;
    check_notify_ok(&resp, &raw, &n2, 102);
    assert_eq!(
        gw.xmpp.stanza().await,
        PRESENCE_BALCONY.replace("On the balcony", "In the garden")
    );
    // A NOTIFY that no shard knows is still 481 (case 73), whatever its To.
    let stray = n2
        .replace(&sub.call_id, "no-such-call@127.0.0.1")
        .replace("branch=z9hG4bK-ps-102", "branch=z9hG4bK-ps-stray");
    let (resp, raw) = gw.proxy.transact(&stray).await;
    assert_eq!(resp.status, 481, "{raw}");
    gw.xmpp.quiet().await;
}

/// Issue 6: `limits.max_status_chars` governs the `<status>` made from a PIDF note: with 5,
/// "On the balcony" reaches romeo as "On th".
#[actix_rt::test]
async fn limits_max_status_chars_cuts_the_status_of_the_presence_stanza() {
    let mut gw = start_with(|c| c.limits.max_status_chars = 5).await;
    gw.xmpp.send(&subscribe_stanza("subscribe", "s1")).await;
    let (sub, _) = gw.proxy.request(Method::Subscribe).await;
    gw.proxy.answer(&sub, 200, "OK", &["Expires: 1800"]).await;
    let notify = gw
        .proxy
        .notify(&sub, 101, "active;expires=1740", Some(PIDF_BALCONY));
    let (resp, raw) = gw.proxy.transact(&notify).await;
    check_notify_ok(&resp, &raw, &notify, 101);
    assert_eq!(gw.xmpp.stanza().await, SUBSCRIBED);
    assert_eq!(
        gw.xmpp.stanza().await,
        "<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net'>\
         <show>dnd</show><status xml:lang='en'>On th</status><priority>80</priority></presence>"
    );
    gw.xmpp.quiet().await;
}

/// Issue 6, PUA mode, restart: the store holds romeo's publication (ETag, Call-ID, CSeq, the
/// document last sent, 20 min of lease left). At start the gateway refreshes it at once with
/// `SIP-If-Match` and no body (RFC 3903 §4.3), without any stanza from romeo; the server has
/// forgotten it (412), so the stored document is published anew; its new ETag is stored.
#[actix_rt::test]
async fn issue_6_pua_restart_refreshes_the_stored_publication_and_republishes_on_412() {
    use pua_xmpp::publisher::PublicationRecord;
    use pua_xmpp::stanza::BareJid;
    use pua_xmpp_actors::store::{load_snapshot, SqliteStore, Store, StoreOp};
    const DOC: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence \
        xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"pres:romeo*example.net@xmpp.example.com\">\n  \
        <tuple id=\"ID-orchard\"><status><basic>open</basic></status></tuple>\n</presence>";
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("pua.db");
    let romeo = BareJid::new(ROMEO).expect("jid");
    let stored = PublicationRecord {
        uri: ROMEO_URI.to_owned(),
        etag: Some("etag-5".to_owned()),
        call_id: "pub-1@127.0.0.1".to_owned(),
        cseq: 4,
        body: Some(DOC.to_owned()),
        available: true,
        lease_left: Some(3600),
    };
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    {
        let mut s = SqliteStore::open(&db).expect("open store");
        s.apply(&[StoreOp::PutPublication {
            presentity: romeo.clone(),
            rec: stored.clone(),
            expires_at_unix: Some(now_unix + 1200),
        }])
        .expect("apply");
    }
    let path = db.display().to_string();
    let gw = start_with(move |c| {
        c.presence.mode = "pua".into();
        c.store.path = path;
    })
    .await;
    let (refresh, raw) = gw.proxy.request(Method::Publish).await;
    assert_eq!(refresh.uri, ROMEO_URI);
    assert_eq!(
        (refresh.call_id.as_str(), refresh.cseq),
        ("pub-1@127.0.0.1", 5)
    );
    assert_eq!(header_values(&raw, "SIP-If-Match"), ["etag-5"]);
    assert_eq!(header_values(&raw, "Event"), ["presence"]);
    assert_eq!(refresh.expires, Some(3600));
    assert!(refresh.body.is_empty(), "{raw}");
    gw.proxy
        .answer(&refresh, 412, "Conditional Request Failed", &[])
        .await;
    let (anew, raw) = gw.proxy.request(Method::Publish).await;
    assert_eq!((anew.call_id.as_str(), anew.cseq), ("pub-1@127.0.0.1", 6));
    assert_eq!(header_values(&raw, "SIP-If-Match"), Vec::<String>::new());
    assert_eq!(
        header_values(&raw, "Content-Type"),
        ["application/pidf+xml"]
    );
    assert_eq!(std::str::from_utf8(&anew.body).expect("utf-8"), DOC);
    gw.proxy
        .answer(&anew, 200, "OK", &["SIP-ETag: etag-9", "Expires: 3600"])
        .await;
    gw.proxy.quiet().await;
    let snap = load_snapshot(&db).expect("load");
    let (x, rec, end) = snap.publications.first().cloned().expect("a publication");
    assert_eq!(x, romeo);
    assert_eq!(
        rec,
        PublicationRecord {
            etag: Some("etag-9".to_owned()),
            cseq: 6,
            ..stored
        }
    );
    let end = end.expect("an end");
    assert!((now_unix + 3600..=now_unix + 3610).contains(&end), "{end}");
}

// ---- issue 14: the gateway's promises -------------------------------------------------------

/// Issue 14, part 1: neighbouring pairs (watchers created one after the other, in one shard or
/// the next) that open new dialogs again and again never share a Call-ID or a From-tag, and
/// every NOTIFY reaches its own watcher only.
#[actix_rt::test]
async fn issue_14_neighbouring_pairs_resubscribing_never_share_dialog_ids() {
    let mut gw = start().await;
    let watchers: Vec<String> = (0..6).map(|i| format!("w{i}@example.net")).collect();
    let mut subs = Vec::new();
    for w in &watchers {
        gw.xmpp
            .send(&format!(
                "<presence from='{w}' to='{JULIET_JID}' type='subscribe'/>"
            ))
            .await;
        let (sub, _) = gw.proxy.request(Method::Subscribe).await;
        gw.proxy.answer(&sub, 200, "OK", &["Expires: 1800"]).await;
        subs.push(sub);
    }
    let mut call_ids = std::collections::HashSet::new();
    let mut tags = std::collections::HashSet::new();
    for s in &subs {
        assert!(call_ids.insert(s.call_id.clone()), "Call-ID reused");
        assert!(tags.insert(s.from.tag.clone()), "From-tag reused");
    }
    // Three rounds: each dialog is ended by the notifier (`deactivated`) and the gateway opens
    // a new one (case 76): new identifiers every time, none shared with any other pair.
    for round in 0..3u32 {
        for s in subs.iter_mut() {
            let end = gw
                .proxy
                .notify(s, 10 + round, "terminated;reason=deactivated", None);
            let (resp, raw) = gw.proxy.transact(&end).await;
            assert_eq!(resp.status, 200, "{raw}");
            let (next, _) = gw.proxy.request(Method::Subscribe).await;
            assert_eq!(next.from.uri, s.from.uri, "the same watcher re-subscribes");
            gw.proxy.answer(&next, 200, "OK", &["Expires: 1800"]).await;
            assert!(
                call_ids.insert(next.call_id.clone()),
                "Call-ID reused: {}",
                next.call_id
            );
            assert!(tags.insert(next.from.tag.clone()), "From-tag reused");
            *s = next;
        }
    }
    assert_eq!(call_ids.len(), 6 * 4);
    // Each dialog's NOTIFY reaches its own watcher, and only it.
    for (i, (s, w)) in subs.iter().zip(&watchers).enumerate() {
        let body = PIDF_BALCONY.replace("On the balcony", &format!("Status {i}"));
        let n = gw.proxy.notify(s, 100, "active;expires=1700", Some(&body));
        let (resp, raw) = gw.proxy.transact(&n).await;
        assert_eq!(resp.status, 200, "{raw}");
        assert_eq!(
            gw.xmpp.stanza().await,
            SUBSCRIBED.replace("romeo@example.net", w)
        );
        assert_eq!(
            gw.xmpp.stanza().await,
            PRESENCE_BALCONY
                .replace("romeo@example.net", w)
                .replace("On the balcony", &format!("Status {i}"))
        );
    }
    gw.xmpp.quiet().await;
}

const NURSE_JID: &str = "nurse*example.com@sip.example.net";

/// Issue 14, part 4: a fault while handling one pair ends that pair cleanly (the NOTIFY gets
/// 500, romeo is told `unavailable` for what he was shown, the dialog is unsubscribed) and is
/// counted; the other pair of the same watcher (so of the same shard) keeps delivering and the
/// gateway stays healthy.
#[actix_rt::test]
async fn issue_14_a_fault_in_one_pair_stays_in_that_pair() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let http = format!("127.0.0.1:{port}");
    let h = http.clone();
    let mut gw = start_with(move |c| c.http.listen = h).await;
    let juliet = establish_d1(&mut gw).await;
    gw.xmpp
        .send(&format!(
            "<presence from='{ROMEO}' to='{NURSE_JID}' type='subscribe'/>"
        ))
        .await;
    let (nurse, _) = gw.proxy.request(Method::Subscribe).await;
    assert_eq!(nurse.uri, "sip:nurse@example.com");
    gw.proxy.answer(&nurse, 200, "OK", &["Expires: 1800"]).await;
    let n = gw
        .proxy
        .notify(&nurse, 1, "active;expires=1700", Some(PIDF_BALCONY));
    let (resp, _) = gw.proxy.transact(&n).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        gw.xmpp.stanza().await,
        SUBSCRIBED.replace(JULIET_JID, NURSE_JID)
    );
    assert_eq!(
        gw.xmpp.stanza().await,
        PRESENCE_BALCONY.replace(JULIET_JID, NURSE_JID)
    );

    pua_xmpp_actors::fault::inject(NURSE_JID);
    let busy = PIDF_BALCONY.replace("On the balcony", "Busy");
    let n = gw
        .proxy
        .notify(&nurse, 2, "active;expires=1700", Some(&busy));
    let (resp, raw) = gw.proxy.transact(&n).await;
    assert_eq!(resp.status, 500, "{raw}");
    assert_eq!(
        gw.xmpp.stanza().await,
        format!("<presence from='{NURSE_JID}/t-desk' to='{ROMEO}' type='unavailable'/>")
    );
    let (unsub, raw) = gw.proxy.request(Method::Subscribe).await;
    assert_eq!(unsub.call_id, nurse.call_id, "{raw}");
    assert_eq!(unsub.expires, Some(0), "{raw}");
    gw.proxy.answer(&unsub, 200, "OK", &["Expires: 0"]).await;

    // The other pair of the same shard carries on.
    let n = gw
        .proxy
        .notify(&juliet, 102, "active;expires=1700", Some(&busy));
    let (resp, raw) = gw.proxy.transact(&n).await;
    check_notify_ok(&resp, &raw, &n, 102);
    assert_eq!(
        gw.xmpp.stanza().await,
        PRESENCE_BALCONY.replace("On the balcony", "Busy")
    );
    let (status, body) = http_get(&http, "/health").await;
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = http_get(&http, "/metrics").await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("pua_xmpp_faults_contained_total{kind=\"subscriber\"}"))
        .unwrap_or("");
    assert!(
        line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(1.0),
        "{line}"
    );
    gw.xmpp.quiet().await;
}

/// Issue 14: every metric family is exported, with HELP and TYPE, from the first scrape.
#[actix_rt::test]
async fn issue_14_every_metric_family_is_listed_right_after_start() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let http = format!("127.0.0.1:{port}");
    let h = http.clone();
    let _gw = start_with(move |c| c.http.listen = h).await;
    let (status, metrics) = http_get(&http, "/metrics").await;
    assert_eq!(status, 200);
    for (kind, name) in [
        ("gauge", "pua_xmpp_subscriptions"),
        ("counter", "pua_xmpp_sip_requests_in_total"),
        ("counter", "pua_xmpp_sip_requests_out_total"),
        ("counter", "pua_xmpp_sip_responses_in_total"),
        ("counter", "pua_xmpp_sip_responses_out_total"),
        ("counter", "pua_xmpp_stanzas_in_total"),
        ("counter", "pua_xmpp_stanzas_out_total"),
        ("counter", "pua_xmpp_translation_errors_total"),
        ("counter", "pua_xmpp_component_reconnects_total"),
        ("gauge", "pua_xmpp_component_up"),
        ("gauge", "pua_xmpp_xmpp_outbox_stanzas"),
        ("counter", "pua_xmpp_xmpp_stanzas_dropped_total"),
        ("counter", "pua_xmpp_limit_refusals_total"),
        ("counter", "pua_xmpp_store_refusals_total"),
        ("counter", "pua_xmpp_sip_read_pauses_total"),
        ("counter", "pua_xmpp_faults_contained_total"),
        ("counter", "pua_xmpp_actor_restarts_total"),
        ("counter", "pua_xmpp_im_messages_total"),
        ("gauge", "pua_xmpp_store_queue_depth"),
        ("gauge", "pua_xmpp_store_writable"),
        ("counter", "pua_xmpp_store_failures_total"),
        ("histogram", "pua_xmpp_store_commit_seconds"),
        ("histogram", "pua_xmpp_notify_latency_seconds"),
        ("histogram", "pua_xmpp_publish_latency_seconds"),
        ("histogram", "pua_xmpp_subscribe_latency_seconds"),
    ] {
        let t = format!("# TYPE {name} {kind}");
        assert!(metrics.contains(&t), "{t} missing in\n{metrics}");
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "HELP of {name}"
        );
    }
}

/// Issue 14, part 2: durable before acknowledged. Even with a long coalescing wait, by the
/// time romeo holds `subscribed` and the first presence (and the presence server the 200 to
/// the NOTIFY that activated the dialog), the pair and its dialog are committed to the file:
/// a `kill -9` at that instant loses nothing.
#[actix_rt::test]
async fn issue_14_the_pair_is_in_the_file_before_the_watcher_hears_of_it() {
    let path =
        std::env::temp_dir().join(format!("pua-xmpp-gwtest-durable-{}.db", std::process::id()));
    let p = path.display().to_string();
    let mut gw = start_with(move |c| {
        c.store.path = p;
        c.store.coalesce_ms = 10_000;
    })
    .await;
    let sub = establish_d1(&mut gw).await;
    // Read at once, from another connection, as a restarted gateway would.
    let snap = pua_xmpp_actors::store::load_snapshot(&path).expect("load");
    let stored: Vec<(String, String, Option<String>)> = snap
        .subscriptions
        .iter()
        .map(|(rec, _)| {
            (
                rec.pair.watcher.to_string(),
                rec.pair.presentity.to_string(),
                rec.dialog.as_ref().map(|d| d.call_id.clone()),
            )
        })
        .collect();
    assert_eq!(
        stored,
        [(
            ROMEO.to_owned(),
            JULIET_JID.to_owned(),
            Some(sub.call_id.clone())
        )]
    );
    assert_eq!(
        snap.subscriptions[0].0.relation,
        pua_xmpp::subscriber::Relation::Approved
    );
    let _ = std::fs::remove_file(&path);
}

/// Issue 14, part 4: a fault that ends a whole subscriber shard actor (outside the per-pair
/// containment; injected on one NOTIFY) is noticed by the registry's supervisor, which starts
/// the shard again and gives it back its pairs from the store: the dialog is refreshed with its
/// own Call-ID, the retransmitted NOTIFY is answered and delivered, `/health` is 200 again and
/// the restart is counted.
#[actix_rt::test]
async fn issue_14_a_dead_shard_is_restarted_and_restores_its_pairs_from_the_store() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let http = format!("127.0.0.1:{port}");
    let h = http.clone();
    let mut gw = start_with(move |c| c.http.listen = h).await;
    let sub = establish_d1(&mut gw).await;

    pua_xmpp_actors::fault::inject(&sub.call_id);
    let busy = PIDF_BALCONY.replace("On the balcony", "Busy");
    let n = gw
        .proxy
        .notify(&sub, 102, "active;expires=1700", Some(&busy));
    gw.proxy.send(&n).await;
    // The shard died with the NOTIFY: no answer. The supervisor restarts it (within 0.5 s)
    // and the restored pair refreshes its dialog in-dialog.
    let (refresh, raw) = gw.proxy.request(Method::Subscribe).await;
    assert_eq!(refresh.call_id, sub.call_id, "{raw}");
    assert_eq!(refresh.from.tag, sub.from.tag, "{raw}");
    assert_eq!(refresh.to.tag.as_deref(), Some(PS_TAG), "{raw}");
    assert!(refresh.cseq > sub.cseq, "{raw}");
    gw.proxy
        .answer(&refresh, 200, "OK", &["Expires: 1800"])
        .await;
    // The refresh makes the presence server send the current state (RFC 6665 §4.2.1.2): it is
    // answered and the change delivered. (The NOTIFY lost with the shard is left to the SIP
    // transaction layer: its retransmissions are absorbed until 64*T1 drops it.)
    let n = gw
        .proxy
        .notify(&sub, 103, "active;expires=1800", Some(&busy));
    let (resp, raw) = gw.proxy.transact(&n).await;
    check_notify_ok(&resp, &raw, &n, 103);
    assert_eq!(
        gw.xmpp.stanza().await,
        PRESENCE_BALCONY.replace("On the balcony", "Busy")
    );
    let (status, body) = http_get(&http, "/health").await;
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = http_get(&http, "/metrics").await;
    assert!(
        metrics.contains("pua_xmpp_actor_restarts_total{actor=\"subscriber_shard\"}"),
        "{metrics}"
    );
    gw.xmpp.quiet().await;
}

// ---- instant messaging (issue 15, §10-11) ------------------------------------------------------

/// The gateway with the IM fixtures of §11.0: `sip_domains = ["example.com"]`,
/// `xmpp_domains = ["example.net"]`; the XMPP link is up when it returns.
async fn start_im() -> Gw {
    start_im_with(|_| {}).await.0
}

/// [`start_im`] with a change to the configuration; also returns `http.listen`.
async fn start_im_with(tune: impl FnOnce(&mut Config)) -> (Gw, String) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let http = format!("127.0.0.1:{port}");
    let h = http.clone();
    let gw = start_with(move |c| {
        c.mapping.allowed_sip_domains = vec!["example.com".into()];
        c.mapping.allowed_xmpp_domains = vec!["example.net".into()];
        c.http.listen = h;
        tune(c);
    })
    .await;
    // The link state travels component → link status → registry → messenger: once /health
    // says the link is up, the registry has the news queued before anything we send next.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = http_get(&http, "/health").await;
        if body.contains("\"xmpp\":\"up\"") {
            break;
        }
        assert!(Instant::now() < deadline, "XMPP link not up: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (gw, http)
}

const ROMEO_FULL: &str = "romeo@example.net/orchard";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// The error stanza of §10.2.3 / 3.4 for `id`, from `from` to romeo's resource.
fn im_error(from: &str, id: &str, condition: &str, kind: &str, text: &str) -> String {
    format!(
        "<message from='{from}' to='{ROMEO_FULL}' type='error' id='{id}'>\
         <error type='{kind}' by='{COMPONENT}'><{condition} xmlns='{NS_STANZAS}'/>\
         <text xmlns='{NS_STANZAS}' xml:lang='en'>{text}</text></error></message>"
    )
}

/// A MESSAGE from the proxy (juliet's UA behind it) to `uri`.
fn juliet_message(proxy: SocketAddr, uri: &str, branch: &str, extra: &str, body: &str) -> String {
    format!(
        "MESSAGE {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {proxy};branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <{JULIET_URI}>;tag=ua7-1\r\n\
         To: <{uri}>\r\n\
         Call-ID: 7f1c9e02@ua7.example.com\r\n\
         CSeq: 1 MESSAGE\r\n\
         {extra}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The MESSAGE as sent, with the values the gateway picks (branch, From-tag, CSeq) replaced
/// by placeholders.
fn normalized(raw: &str, req: &SipRequest) -> String {
    let branch = req.via[0]
        .split(";branch=")
        .nth(1)
        .and_then(|b| b.split(';').next())
        .expect("branch");
    let tag = req.from.tag.as_deref().expect("From-tag");
    raw.replace(branch, "BRANCH")
        .replace(tag, "TAG")
        .replace(&format!("CSeq: {} MESSAGE", req.cseq), "CSeq: N MESSAGE")
}

/// §11.1 cases 98 (without the receipt request), 100 and 101: the exact MESSAGE the proxy
/// receives, its 200 ends silently, a 404 comes back as the exact error with the stanza's id.
#[actix_rt::test]
async fn im_case_098_100_101_stanza_becomes_the_exact_message_200_is_silent_404_is_an_error() {
    let mut gw = start_im().await;
    gw.xmpp
        .send(&format!(
            "<message from='{ROMEO_FULL}' to='{JULIET_JID}' type='chat' id='m-101' xml:lang='en'>\
             <body>Meet me at the orchard wall at nine.</body>\
             <thread>e2b4c6a0-5f7d-4c1a-9d3b-6a1f0c9e2d11</thread>\
             <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        ))
        .await;
    let (req, raw) = gw.proxy.request(Method::Message).await;
    assert!(
        req.from
            .tag
            .as_deref()
            .is_some_and(|t| t.starts_with("im-")),
        "{raw}"
    );
    assert_eq!(
        normalized(&raw, &req),
        format!(
            "MESSAGE {JULIET_URI} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {gw};branch=BRANCH;rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{ROMEO_URI}>;tag=TAG\r\n\
             To: <{JULIET_URI}>\r\n\
             Call-ID: e2b4c6a0-5f7d-4c1a-9d3b-6a1f0c9e2d11\r\n\
             CSeq: N MESSAGE\r\n\
             Content-Language: en\r\n\
             Content-Type: text/plain;charset=UTF-8\r\n\
             Content-Length: 36\r\n\r\n\
             Meet me at the orchard wall at nine.",
            gw = gw.proxy.gw
        )
    );
    assert!(header_values(&raw, "Contact").is_empty());
    gw.proxy.answer(&req, 200, "OK", &[]).await;
    // No receipt was asked for: the 200 ends it silently.
    gw.xmpp.quiet().await;
    gw.proxy.quiet().await;

    gw.xmpp
        .send(&format!(
            "<message from='{ROMEO_FULL}' to='{JULIET_JID}' id='m-102'><body>hi</body></message>"
        ))
        .await;
    let (req2, raw2) = gw.proxy.request(Method::Message).await;
    assert!(req2.cseq > req.cseq, "{raw2}");
    assert_ne!(req2.call_id, req.call_id);
    assert!(header_values(&raw2, "Content-Language").is_empty());
    gw.proxy.answer(&req2, 404, "Not Found", &[]).await;
    assert_eq!(
        gw.xmpp.stanza().await,
        im_error(
            JULIET_JID,
            "m-102",
            "item-not-found",
            "cancel",
            "SIP 404 Not Found"
        )
    );
    gw.proxy.quiet().await;
}

/// Case 100: a 200 to a stanza that asked for a receipt gives the receipt.
#[actix_rt::test]
async fn im_case_100_a_200_gives_the_receipt_asked_for() {
    let mut gw = start_im().await;
    gw.xmpp
        .send(&format!(
            "<message from='{ROMEO_FULL}' to='{JULIET_JID}' type='chat' id='m-101'>\
             <body>x</body><request xmlns='urn:xmpp:receipts'/></message>"
        ))
        .await;
    let (req, _) = gw.proxy.request(Method::Message).await;
    gw.proxy.answer(&req, 200, "OK", &[]).await;
    assert_eq!(
        gw.xmpp.stanza().await,
        format!(
            "<message from='{JULIET_JID}' to='{ROMEO_FULL}'>\
             <received xmlns='urn:xmpp:receipts' id='m-101'/></message>"
        )
    );
}

/// §11.2 case 117: a MESSAGE from the proxy becomes the exact stanza at the XMPP server at
/// once, and is answered 202 after the bounce wait.
#[actix_rt::test]
async fn im_case_117_message_becomes_the_exact_stanza_then_202() {
    let mut gw = start_im().await;
    let body = "A domani, amore mio. 🌙";
    let text = juliet_message(
        gw.proxy.addr,
        ROMEO_URI,
        "z9hG4bK-m117",
        "Content-Type: text/plain;charset=UTF-8\r\nContent-Language: it\r\nSubject: Stasera\r\n",
        body,
    );
    let sent = Instant::now();
    gw.proxy.send(&text).await;
    let stanza = gw.xmpp.stanza().await;
    let id = stanza
        .split(" id='")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("id")
        .to_owned();
    assert!(id.starts_with("sipm-") && id.len() > 8, "{stanza}");
    assert_eq!(
        stanza,
        format!(
            "<message from='{JULIET_JID}' to='{ROMEO}' type='chat' id='{id}' xml:lang='it'>\
             <subject>Stasera</subject><body>{body}</body>\
             <thread>7f1c9e02@ua7.example.com</thread></message>"
        )
    );
    let (resp, raw) = gw.proxy.response().await;
    let waited = sent.elapsed();
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (202, "Accepted"),
        "{raw}"
    );
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_millis(1500),
        "202 after {waited:?}"
    );
    assert_eq!(
        resp.via,
        [format!("SIP/2.0/UDP {};branch=z9hG4bK-m117", gw.proxy.addr)]
    );
    assert_eq!((resp.cseq, &resp.cseq_method), (1, &Method::Message));
    assert!(resp.to.tag.is_some(), "{raw}");
    assert!(header_values(&raw, "Contact").is_empty(), "{raw}");
    assert_eq!(header_values(&raw, "Content-Length"), ["0"]);
    gw.xmpp.quiet().await;
}

/// Case 119: an error stanza within the bounce wait becomes the MESSAGE's final response.
#[actix_rt::test]
async fn im_case_119_a_bounce_within_the_wait_becomes_480() {
    let mut gw = start_im().await;
    let text = juliet_message(
        gw.proxy.addr,
        ROMEO_URI,
        "z9hG4bK-m119",
        "Content-Type: text/plain\r\n",
        "hi",
    );
    gw.proxy.send(&text).await;
    let stanza = gw.xmpp.stanza().await;
    let id = stanza
        .split(" id='")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("id")
        .to_owned();
    gw.xmpp
        .send(&format!(
            "<message from='{ROMEO}' to='{JULIET_JID}' type='error' id='{id}'>\
             <error type='cancel'><service-unavailable xmlns='{NS_STANZAS}'/></error></message>"
        ))
        .await;
    let (resp, raw) = gw.proxy.response().await;
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (480, "Temporarily Unavailable"),
        "{raw}"
    );
    gw.proxy.quiet().await;
}

/// Case 123: a body that is not text gets 415 with the digest's Accept; no stanza.
#[actix_rt::test]
async fn im_case_123_non_text_body_gets_415_with_accept() {
    let mut gw = start_im().await;
    let text = juliet_message(
        gw.proxy.addr,
        ROMEO_URI,
        "z9hG4bK-m123",
        "Content-Type: image/jpeg\r\n",
        "JFIF",
    );
    let (resp, raw) = gw.proxy.transact(&text).await;
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (415, "Unsupported Media Type"),
        "{raw}"
    );
    assert_eq!(
        header_values(&raw, "Accept"),
        ["text/plain, message/cpim, application/im-iscomposing+xml"]
    );
    let text = juliet_message(
        gw.proxy.addr,
        ROMEO_URI,
        "z9hG4bK-m123b",
        "Content-Type: text/plain\r\nContent-Encoding: gzip\r\n",
        "xx",
    );
    let (resp, raw) = gw.proxy.transact(&text).await;
    assert_eq!(resp.status, 415, "{raw}");
    assert_eq!(header_values(&raw, "Accept-Encoding"), ["identity"]);
    gw.xmpp.quiet().await;
}

/// Cases 115 and 130: no open relay, both ways.
#[actix_rt::test]
async fn im_case_115_130_addresses_outside_the_served_domains_are_refused() {
    let mut gw = start_im().await;
    gw.xmpp
        .send(&format!(
            "<message from='{ROMEO_FULL}' to='mallory*evil.example@{COMPONENT}' id='r1'>\
             <body>hi</body></message>"
        ))
        .await;
    assert_eq!(
        gw.xmpp.stanza().await,
        im_error(
            &format!("mallory*evil.example@{COMPONENT}"),
            "r1",
            "not-allowed",
            "cancel",
            "SIP domain not served"
        )
    );
    let text = juliet_message(
        gw.proxy.addr,
        &format!("sip:eve*evil.example@{GW_DOMAIN}"),
        "z9hG4bK-m130",
        "Content-Type: text/plain\r\n",
        "hi",
    );
    let (resp, raw) = gw.proxy.transact(&text).await;
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (403, "Forbidden"),
        "{raw}"
    );
    gw.proxy.quiet().await;
    gw.xmpp.quiet().await;
}

/// Cases 106 and 107: a chat state alone sends nothing; groupchat gets `service-unavailable`;
/// an error stanza matching nothing is never answered.
#[actix_rt::test]
async fn im_case_106_107_chat_state_sends_nothing_and_groupchat_gets_an_error() {
    let (mut gw, http) = start_im_with(|_| {}).await;
    gw.xmpp
        .send(&format!(
            "<message from='{ROMEO_FULL}' to='{JULIET_JID}' type='chat' id='c1'>\
             <composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
        ))
        .await;
    gw.proxy.quiet().await;
    gw.xmpp.quiet().await;
    gw.xmpp
        .send(&format!(
            "<message from='{ROMEO_FULL}' to='{JULIET_JID}' type='groupchat' id='g1'>\
             <body>hi all</body></message>"
        ))
        .await;
    assert_eq!(
        gw.xmpp.stanza().await,
        format!(
            "<message from='{JULIET_JID}' to='{ROMEO_FULL}' type='error' id='g1'>\
             <error type='cancel' by='{COMPONENT}'><service-unavailable xmlns='{NS_STANZAS}'/>\
             <text xmlns='{NS_STANZAS}' xml:lang='en'>Groupchat is not supported</text></error></message>"
        )
    );
    // Counted (the metrics are the process's, shared with the other tests: presence only).
    let (status, metrics) = http_get(&http, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "pua_xmpp_im_messages_total{direction=\"xmpp_to_sip\",result=\"refused\"}",
        "pua_xmpp_translation_errors_total{kind=\"im_xmpp_no_body\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }
    gw.xmpp
        .send(&format!(
            "<message from='{ROMEO_FULL}' to='{JULIET_JID}' type='error' id='nothing'>\
             <error type='cancel'><item-not-found xmlns='{NS_STANZAS}'/></error></message>"
        ))
        .await;
    gw.proxy.quiet().await;
    gw.xmpp.quiet().await;
}

/// Case 112: a MESSAGE over 1300 bytes goes to the proxy over TCP (same Via sent-by), with
/// UDP as the configured transport; nothing over UDP.
#[actix_rt::test]
async fn im_case_112_a_body_over_1300_bytes_goes_over_tcp() {
    let mut gw = start_im().await;
    let tcp = TcpListener::bind(gw.proxy.addr)
        .await
        .expect("bind proxy TCP");
    let body = "a".repeat(1500);
    gw.xmpp
        .send(&format!(
            "<message from='{ROMEO_FULL}' to='{JULIET_JID}' id='big'><body>{body}</body></message>"
        ))
        .await;
    let (mut conn, _) = tokio::time::timeout(WAIT, tcp.accept())
        .await
        .expect("the gateway did not connect over TCP")
        .expect("accept");
    let mut pending = Vec::new();
    let raw = read_tcp_message(&mut conn, &mut pending).await;
    let SipMessage::Request(req) = parse_message(raw.as_bytes()).expect("parse") else {
        panic!("not a request: {raw}")
    };
    assert_eq!(req.method, Method::Message);
    assert_eq!(req.uri, JULIET_URI);
    let prefix = format!("SIP/2.0/TCP {};branch=z9hG4bK", gw.proxy.gw);
    assert!(req.via[0].starts_with(&prefix), "Via {:?}", req.via);
    assert_eq!(header_values(&raw, "Content-Length"), ["1500"]);
    assert_eq!(req.body, body.as_bytes());
    gw.proxy.quiet().await;
    let mut ok = "SIP/2.0 200 OK\r\n".to_owned();
    for v in &req.via {
        ok.push_str(&format!("Via: {v}\r\n"));
    }
    ok.push_str(&format!(
        "From: <{}>;tag={}\r\nTo: <{JULIET_URI}>;tag=ua-1\r\nCall-ID: {}\r\n\
         CSeq: {} MESSAGE\r\nContent-Length: 0\r\n\r\n",
        req.from.uri,
        req.from.tag.as_deref().unwrap_or(""),
        req.call_id,
        req.cseq
    ));
    conn.write_all(ok.as_bytes()).await.expect("write");
    gw.xmpp.quiet().await;
}

/// `[im] enabled = false`: MESSAGE gets 405 without MESSAGE in `Allow`, and `<message/>` is
/// answered `service-unavailable` at the component's edge (the behaviour before issue 15).
#[actix_rt::test]
async fn im_disabled_message_gets_405_and_stanzas_service_unavailable() {
    let (mut gw, _) = start_im_with(|c| c.im.enabled = false).await;
    let text = juliet_message(
        gw.proxy.addr,
        ROMEO_URI,
        "z9hG4bK-off",
        "Content-Type: text/plain\r\n",
        "hi",
    );
    let (resp, raw) = gw.proxy.transact(&text).await;
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (405, "Method Not Allowed"),
        "{raw}"
    );
    assert_eq!(header_values(&raw, "Allow"), ["SUBSCRIBE, NOTIFY, OPTIONS"]);
    gw.xmpp
        .send(&format!(
            "<message from='{ROMEO_FULL}' to='{JULIET_JID}' id='off1'><body>hi</body></message>"
        ))
        .await;
    assert_eq!(
        gw.xmpp.stanza().await,
        format!(
            "<message type='error' from='{JULIET_JID}' to='{ROMEO_FULL}' id='off1'>\
             <error type='cancel'><service-unavailable xmlns='{NS_STANZAS}'/></error></message>"
        )
    );
    gw.proxy.quiet().await;
}

/// §10.3.1: the gateway takes MESSAGE over TCP as well (the proxy forwards one over 1300
/// bytes over TCP); the stanza goes out and the 202 comes back on the same connection.
#[actix_rt::test]
async fn im_a_message_over_tcp_is_delivered_and_answered_on_its_connection() {
    let mut gw = start_im().await;
    let mut conn = TcpStream::connect(gw.proxy.gw).await.expect("connect");
    let body = "é".repeat(1000);
    let text = juliet_message(
        conn.local_addr().expect("addr"),
        ROMEO_URI,
        "z9hG4bK-tcp1",
        "Content-Type: text/plain;charset=UTF-8\r\n",
        &body,
    )
    .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    conn.write_all(text.as_bytes()).await.expect("write");
    let stanza = gw.xmpp.stanza().await;
    assert!(
        stanza.starts_with(&format!(
            "<message from='{JULIET_JID}' to='{ROMEO}' type='chat' id='sipm-"
        )) && stanza.ends_with(&format!(
            "><body>{body}</body><thread>7f1c9e02@ua7.example.com</thread></message>"
        )),
        "{stanza}"
    );
    let mut pending = Vec::new();
    let raw = read_tcp_message(&mut conn, &mut pending).await;
    let SipMessage::Response(resp) = parse_message(raw.as_bytes()).expect("parse") else {
        panic!("not a response: {raw}")
    };
    assert_eq!(
        (resp.status, resp.cseq_method),
        (202, Method::Message),
        "{raw}"
    );
    gw.proxy.quiet().await;
}

/// Issue 14's containment for IM: a fault while the core handles one MESSAGE answers that
/// MESSAGE 500; the next one is handled normally.
#[actix_rt::test]
async fn im_a_fault_on_one_message_answers_it_500_and_the_next_is_served() {
    let mut gw = start_im().await;
    let text = juliet_message(
        gw.proxy.addr,
        ROMEO_URI,
        "z9hG4bK-f1",
        "Content-Type: text/plain\r\n",
        "boom",
    )
    .replace("7f1c9e02@ua7.example.com", "fault-im-7c1d@ua7.example.com");
    pua_xmpp_actors::fault::inject("fault-im-7c1d@ua7.example.com");
    let (resp, raw) = gw.proxy.transact(&text).await;
    assert_eq!(resp.status, 500, "{raw}");
    gw.xmpp.quiet().await;
    let text = juliet_message(
        gw.proxy.addr,
        ROMEO_URI,
        "z9hG4bK-f2",
        "Content-Type: text/plain\r\n",
        "fine",
    )
    .replace("7f1c9e02@ua7.example.com", "fault-im-7c1e@ua7.example.com");
    gw.proxy.send(&text).await;
    assert!(gw.xmpp.stanza().await.contains("<body>fine</body>"));
    let (resp, raw) = gw.proxy.response().await;
    assert_eq!(resp.status, 202, "{raw}");
}

/// Case 134: while the component link is down, a MESSAGE gets 503 with `Retry-After: 30` at
/// once, and nothing of it is delivered once the link is back.
#[actix_rt::test]
async fn im_case_134_message_while_the_link_is_down_gets_503_retry_after_30() {
    let (gw, http) = start_im_with(|_| {}).await;
    let Gw {
        listener,
        xmpp,
        proxy,
    } = gw;
    let mut sock = xmpp.sock;
    sock.shutdown().await.expect("shutdown");
    drop(sock);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = http_get(&http, "/health").await;
        if body.contains("\"xmpp\":\"down\"") {
            break;
        }
        assert!(Instant::now() < deadline, "XMPP link not down: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = juliet_message(
        proxy.addr,
        ROMEO_URI,
        "z9hG4bK-down",
        "Content-Type: text/plain\r\n",
        "anyone?",
    );
    let (resp, raw) = proxy.transact(&text).await;
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (503, "Service Unavailable"),
        "{raw}"
    );
    assert_eq!(header_values(&raw, "Retry-After"), ["30"]);
    let mut xmpp = Xmpp::accept(&listener).await;
    xmpp.quiet().await;
}

/// Case 105: a MESSAGE that must go over TCP, to a proxy that refuses the connection, gives
/// `service-unavailable` at once; no retry, nothing over UDP.
#[actix_rt::test]
async fn im_case_105_tcp_refused_gives_service_unavailable() {
    let mut gw = start_im().await;
    let body = "b".repeat(1400);
    gw.xmpp
        .send(&format!(
            "<message from='{ROMEO_FULL}' to='{JULIET_JID}' id='t1'><body>{body}</body></message>"
        ))
        .await;
    assert_eq!(
        gw.xmpp.stanza().await,
        im_error(
            JULIET_JID,
            "t1",
            "service-unavailable",
            "cancel",
            "SIP transport failure"
        )
    );
    gw.proxy.quiet().await;
}
