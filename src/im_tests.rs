//! Conformance tests of instant messaging, named after the cases of §11 of the spec digest
//! (`../shared/docs/interworking.md`, cases 98–137). Fixtures (§11.0): X =
//! romeo@example.net/orchard, S = sip:juliet@example.com, S' =
//! juliet*example.com@sip.example.net, X' = sip:romeo*example.net@xmpp.example.com, P =
//! 192.0.2.10; `sip_domains = ["example.com"]`, `xmpp_domains = ["example.net"]`, every other
//! setting the default of §10.5.

use super::*;
use crate::address::MappingConfig;
use crate::sip::encode::encode_response;
use crate::sip::parse::{header_values, parse_message};
use crate::sip::SipMessage;
use proptest::prelude::*;
use std::net::Ipv4Addr;

const P: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const VIA: &str = "SIP/2.0/TCP gw.xmpp.example.com:5060;branch=z9hG4bK-im-7d41c2";
const X: &str = "romeo@example.net/orchard";
const S_PRIME: &str = "juliet*example.com@sip.example.net";

/// The stanza of §10.2.2.
const STANZA_98: &str = "<message from='romeo@example.net/orchard' \
    to='juliet*example.com@sip.example.net' type='chat' id='m-101' xml:lang='en'>\
    <body>Meet me at the orchard wall at nine.</body>\
    <thread>e2b4c6a0-5f7d-4c1a-9d3b-6a1f0c9e2d11</thread>\
    <active xmlns='http://jabber.org/protocol/chatstates'/>\
    <request xmlns='urn:xmpp:receipts'/></message>";

fn mapper() -> AddressMapper {
    let mut c = MappingConfig::encoded("sip.example.net", "xmpp.example.com");
    c.allowed_sip_domains = vec!["example.com".into()];
    c.allowed_xmpp_domains = vec!["example.net".into()];
    AddressMapper::new(c).unwrap()
}

fn cfg() -> ImConfig {
    ImConfig {
        trusted_sources: vec![P],
        call_id_host: "gw.xmpp.example.com".into(),
        ..ImConfig::default()
    }
}

struct T {
    gw: ImGateway,
    now: Instant,
    t0: Instant,
    next_key: u64,
}

impl T {
    fn new() -> T {
        T::with(cfg())
    }

    fn with(cfg: ImConfig) -> T {
        let now = Instant::now();
        let mut gw = ImGateway::new(cfg, mapper(), 42, 4711);
        gw.handle_input(Input::XmppLink { up: true }, now);
        T {
            gw,
            now,
            t0: now,
            next_key: 1,
        }
    }

    fn input(&mut self, i: Input<'_>) -> Vec<Output> {
        self.gw.handle_input(i, self.now);
        std::iter::from_fn(|| self.gw.poll_output()).collect()
    }

    fn stanza(&mut self, xml: &str) -> Vec<Output> {
        let m = InMessage::from_xml(xml).unwrap();
        self.input(Input::Stanza(&m))
    }

    fn sip(&mut self, m: &Msg) -> Vec<Output> {
        self.sip_bytes(&m.bytes(), P)
    }

    fn sip_bytes(&mut self, bytes: &[u8], source: IpAddr) -> Vec<Output> {
        let req = match parse_message(bytes) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("bad test request: {other:?}"),
        };
        let headers = MessageHeaders::from_raw(bytes);
        let key = self.next_key;
        self.next_key += 1;
        self.input(Input::Message {
            req: &req,
            headers: &headers,
            source,
            key,
        })
    }

    /// Moves the clock forward by `d`, firing every timer due on the way.
    fn advance(&mut self, d: Duration) -> Vec<Output> {
        let until = self.now + d;
        let mut out = Vec::new();
        while let Some(t) = self.gw.poll_timeout().filter(|&t| t <= until) {
            self.now = self.now.max(t);
            out.extend(self.input(Input::Timeout));
        }
        self.now = until;
        out
    }

    /// The final response `status` to one of our MESSAGEs.
    fn respond(&mut self, req: &OutRequest, status: u16, reason: &str, extra: &str) -> Vec<Output> {
        let text = format!(
            "SIP/2.0 {status} {reason}\r\nVia: {VIA}\r\nFrom: <{}>;tag={}\r\nTo: <{}>;tag=ua-1\r\n\
             Call-ID: {}\r\nCSeq: {} MESSAGE\r\n{extra}Content-Length: 0\r\n\r\n",
            req.from.uri,
            req.from.tag.as_deref().unwrap_or(""),
            req.to.uri,
            req.call_id,
            req.cseq
        );
        let resp = match parse_message(text.as_bytes()) {
            Ok(SipMessage::Response(r)) => r,
            other => panic!("bad test response: {other:?}"),
        };
        self.input(Input::Response(&resp))
    }

    fn fail(&mut self, req: &OutRequest, failure: Failure) -> Vec<Output> {
        self.input(Input::RequestFailed {
            call_id: &req.call_id,
            cseq: req.cseq,
            failure,
        })
    }

    /// The one MESSAGE `xml` gives.
    fn message(&mut self, xml: &str) -> OutRequest {
        let out = self.stanza(xml);
        only_request(&out).0
    }
}

/// A SIP MESSAGE from P; by default the MESSAGE of §10.3.3.
#[derive(Clone)]
struct Msg {
    uri: String,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
    branch: String,
    /// Header lines between CSeq and Content-Length.
    headers: Vec<String>,
    body: Vec<u8>,
}

fn msg() -> Msg {
    Msg {
        uri: "sip:romeo*example.net@xmpp.example.com".into(),
        from: "\"Juliet\" <sip:juliet@example.com>;tag=ua-m1a".into(),
        to: "<sip:romeo*example.net@xmpp.example.com>".into(),
        call_id: "7f1c9e02@ua7.example.com".into(),
        cseq: 12,
        branch: "z9hG4bK-ps-m001".into(),
        headers: vec![
            "Max-Forwards: 69".into(),
            "Subject: Stasera".into(),
            "Content-Type: text/plain;charset=UTF-8".into(),
            "Content-Language: it".into(),
        ],
        body: "A domani, amore mio. 🌙".as_bytes().to_vec(),
    }
}

impl Msg {
    fn bytes(&self) -> Vec<u8> {
        let mut b = format!(
            "MESSAGE {} SIP/2.0\r\nVia: SIP/2.0/TCP ps1.example.com:5060;branch={}\r\n\
             Via: SIP/2.0/TLS ua7.example.com:5061;branch=z9hG4bK-ua-m001\r\n\
             From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} MESSAGE\r\n",
            self.uri, self.branch, self.from, self.to, self.call_id, self.cseq
        );
        for h in &self.headers {
            b.push_str(h);
            b.push_str("\r\n");
        }
        b.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = b.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    fn content_type(mut self, ct: &str) -> Msg {
        self.headers.retain(|h| !h.starts_with("Content-Type"));
        self.headers.push(format!("Content-Type: {ct}"));
        self
    }

    fn header(mut self, line: &str) -> Msg {
        self.headers.push(line.to_owned());
        self
    }

    fn body(mut self, b: &[u8]) -> Msg {
        self.body = b.to_vec();
        self
    }
}

fn requests(out: &[Output]) -> Vec<(OutRequest, bool)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Request { req, reliable } => Some((req.clone(), *reliable)),
            _ => None,
        })
        .collect()
}

fn only_request(out: &[Output]) -> (OutRequest, bool) {
    let r = requests(out);
    assert_eq!(r.len(), 1, "exactly one MESSAGE expected: {out:?}");
    assert!(stanzas(out).is_empty(), "no stanza expected: {out:?}");
    r.into_iter().next().unwrap()
}

fn stanzas(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Stanza(s) => Some(s.to_xml()),
            _ => None,
        })
        .collect()
}

fn only_stanza(out: &[Output]) -> String {
    let s = stanzas(out);
    assert_eq!(s.len(), 1, "exactly one stanza expected: {out:?}");
    assert!(requests(out).is_empty(), "no MESSAGE expected: {out:?}");
    s.into_iter().next().unwrap()
}

fn responses(out: &[Output]) -> Vec<(u64, OutResponse)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Response { key, resp } => Some((*key, resp.clone())),
            _ => None,
        })
        .collect()
}

fn only_response(out: &[Output]) -> OutResponse {
    let r = responses(out);
    assert_eq!(r.len(), 1, "exactly one response expected: {out:?}");
    r.into_iter().next().unwrap().1
}

/// No SIP request, no stanza, no response (metric labels allowed).
fn assert_no_output(out: &[Output]) {
    assert!(
        out.iter().all(|o| matches!(o, Output::Problem(_))),
        "no output expected: {out:?}"
    );
}

/// The request as it goes on the wire with [`VIA`].
fn wire(req: &OutRequest) -> String {
    let mut out = Vec::new();
    encode_request(req, VIA, &mut out);
    String::from_utf8(out).unwrap()
}

fn wire_response(resp: &OutResponse) -> String {
    let mut out = Vec::new();
    encode_response(resp, &mut out);
    String::from_utf8(out).unwrap()
}

fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn from_tag(req: &OutRequest) -> &str {
    let tag = req.from.tag.as_deref().unwrap();
    assert!(
        tag.strip_prefix("im-").is_some_and(|h| is_hex(h, 12)),
        "fresh From-tag: {tag}"
    );
    tag
}

/// An error stanza from S' to X for `id`.
fn error_xml(id: &str, condition: &str, kind: &str, text: &str) -> String {
    format!(
        "<message from='{S_PRIME}' to='{X}' type='error' id='{id}'>\
         <error type='{kind}' by='sip.example.net'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>{text}</text></error></message>"
    )
}

/// The condition and error type of an error stanza.
fn condition_of(xml: &str) -> (String, String) {
    let m = InMessage::from_xml(xml).unwrap();
    assert_eq!(m.kind, MessageType::Error, "{xml}");
    let e = m.error.unwrap();
    let kind = xml
        .split("<error type='")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap()
        .to_owned();
    (crate::stanza::condition_name(&e).to_owned(), kind)
}

/// `<message from=X to=S' …>` with `attrs` and `children`.
fn from_x(attrs: &str, children: &str) -> String {
    format!("<message from='{X}' to='{S_PRIME}' {attrs}>{children}</message>")
}

/// The stanza our answer to `id` would bounce with.
fn bounce(id: &str, condition: &str) -> String {
    format!(
        "<message from='romeo@example.net' to='{S_PRIME}' type='error' id='{id}'>\
         <error type='cancel'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
    )
}

/// The id of a stanza we sent.
fn stanza_id(xml: &str) -> String {
    let id = InMessage::from_xml(xml).unwrap().id.unwrap();
    assert!(
        id.strip_prefix("sipm-").is_some_and(|h| is_hex(h, 16)),
        "fresh stanza id: {id}"
    );
    id
}

// ---- 11.1 XMPP → SIP --------------------------------------------------------------------

#[test]
fn case_098_stanza_becomes_the_message_of_10_2_2() {
    let mut t = T::new();
    let out = t.stanza(STANZA_98);
    let (req, reliable) = only_request(&out);
    assert!(!reliable);
    assert_eq!(req.destination, Destination::OutboundProxy);
    assert_eq!(req.contact, None);
    let tag = from_tag(&req);
    assert_eq!(
        wire(&req),
        format!(
            "MESSAGE sip:juliet@example.com SIP/2.0\r\n\
             Via: {VIA}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:romeo*example.net@xmpp.example.com>;tag={tag}\r\n\
             To: <sip:juliet@example.com>\r\n\
             Call-ID: e2b4c6a0-5f7d-4c1a-9d3b-6a1f0c9e2d11\r\n\
             CSeq: 4711 MESSAGE\r\n\
             Content-Language: en\r\n\
             Content-Type: text/plain;charset=UTF-8\r\n\
             Content-Length: 36\r\n\
             \r\n\
             Meet me at the orchard wall at nine."
        )
    );
    assert_eq!(t.gw.in_flight(), 1);
}

#[test]
fn case_099_fresh_call_ids_tags_and_rising_cseq() {
    let stanza = from_x("id='m-102'", "<body>hi</body>");
    let mut t = T::new();
    let a = t.message(&stanza);
    t.respond(&a, 200, "OK", "");
    let b = t.message(&stanza);
    assert_ne!(a.call_id, b.call_id);
    assert_ne!(from_tag(&a), from_tag(&b));
    assert!(b.cseq > a.cseq);
    for r in [&a, &b] {
        assert!(r.call_id.ends_with("@gw.xmpp.example.com"), "{}", r.call_id);
        assert!(is_hex(r.call_id.split('@').next().unwrap(), 24));
        assert_eq!(r.header("Content-Language"), None);
        assert_eq!(r.from.uri, "sip:romeo*example.net@xmpp.example.com");
    }
    let mut g = T::with(ImConfig {
        from_gruu: true,
        ..cfg()
    });
    let r = g.message(&stanza);
    let tag = from_tag(&r);
    assert!(wire(&r).contains(&format!(
        "\r\nFrom: <sip:romeo*example.net@xmpp.example.com;gr=orchard>;tag={tag}\r\n"
    )));
}

#[test]
fn case_100_receipt_on_200_only() {
    let mut t = T::new();
    let req = t.message(STANZA_98);
    let out = t.respond(&req, 200, "OK", "");
    assert_eq!(
        only_stanza(&out),
        format!(
            "<message from='{S_PRIME}' to='{X}'><received xmlns='urn:xmpp:receipts' id='m-101'/></message>"
        )
    );
    // 202: a relay took it; delivery unknown.
    let mut t = T::new();
    let req = t.message(STANZA_98);
    assert_no_output(&t.respond(&req, 202, "Accepted", ""));
    // No receipt asked for.
    let mut t = T::new();
    let req = t.message(&STANZA_98.replace("<request xmlns='urn:xmpp:receipts'/>", ""));
    assert_no_output(&t.respond(&req, 200, "OK", ""));
    // Receipts off by config.
    let mut t = T::with(ImConfig {
        receipts: false,
        ..cfg()
    });
    let req = t.message(STANZA_98);
    assert_no_output(&t.respond(&req, 200, "OK", ""));
}

#[test]
fn case_101_404_is_item_not_found() {
    let mut t = T::new();
    let req = t.message(STANZA_98);
    let out = t.respond(&req, 404, "Not Found", "");
    assert_eq!(
        only_stanza(&out),
        error_xml("m-101", "item-not-found", "cancel", "SIP 404 Not Found")
    );
    assert_eq!(t.gw.in_flight(), 0);
    assert_no_output(&t.advance(Duration::from_secs(120)));
}

#[test]
fn case_102_failures_map_per_3_4() {
    let rows = [
        (
            480,
            "Temporarily Unavailable",
            "recipient-unavailable",
            "wait",
        ),
        (486, "Busy Here", "recipient-unavailable", "wait"),
        (403, "Forbidden", "forbidden", "auth"),
        (603, "Decline", "forbidden", "auth"),
        (415, "Unsupported Media Type", "bad-request", "modify"),
        (
            500,
            "Server Internal Error",
            "internal-server-error",
            "cancel",
        ),
        (503, "Service Unavailable", "service-unavailable", "cancel"),
    ];
    for (code, reason, condition, kind) in rows {
        let mut t = T::new();
        let req = t.message(STANZA_98);
        let out = t.respond(&req, code, reason, "");
        assert_eq!(
            only_stanza(&out),
            error_xml("m-101", condition, kind, &format!("SIP {code} {reason}")),
            "SIP {code}"
        );
        assert_no_output(&t.advance(Duration::from_secs(120)));
    }
}

#[test]
fn case_103_413_and_513_are_policy_violation() {
    for (code, reason) in [
        (413, "Request Entity Too Large"),
        (513, "Message Too Large"),
    ] {
        let mut t = T::new();
        let req = t.message(STANZA_98);
        let out = t.respond(&req, code, reason, "");
        assert_eq!(
            condition_of(&only_stanza(&out)),
            ("policy-violation".into(), "modify".into())
        );
    }
}

#[test]
fn case_104_timeout_is_remote_server_timeout() {
    // Timer F: the transport reports the timeout (its retransmissions are its own).
    let mut t = T::new();
    let req = t.message(STANZA_98);
    assert_no_output(&t.advance(Duration::from_secs(32)));
    let out = t.fail(&req, Failure::Timeout);
    assert_eq!(
        only_stanza(&out),
        error_xml(
            "m-101",
            "remote-server-timeout",
            "wait",
            "SIP request timed out"
        )
    );
    assert_no_output(&t.advance(Duration::from_secs(120)));
    // A 408 after 30 s: the same error at that moment.
    let mut t = T::new();
    let req = t.message(STANZA_98);
    assert_no_output(&t.advance(Duration::from_secs(30)));
    let out = t.respond(&req, 408, "Request Timeout", "");
    assert_eq!(
        condition_of(&only_stanza(&out)),
        ("remote-server-timeout".into(), "wait".into())
    );
    // An outcome the runtime never reports ends after the guard, so the queue moves on.
    let mut t = T::new();
    let _ = t.message(STANZA_98);
    let out = t.advance(Duration::from_secs(64));
    assert!(out.contains(&Output::Problem("im_sip_outcome_missing")));
    assert_eq!(
        condition_of(&only_stanza(&out)),
        ("remote-server-timeout".into(), "wait".into())
    );
}

#[test]
fn case_105_transport_failure_is_service_unavailable() {
    let mut t = T::new();
    let req = t.message(STANZA_98);
    let out = t.fail(&req, Failure::Transport);
    assert_eq!(
        only_stanza(&out),
        error_xml(
            "m-101",
            "service-unavailable",
            "cancel",
            "SIP transport failure"
        )
    );
    assert_no_output(&t.advance(Duration::from_secs(120)));
}

#[test]
fn case_106_body_less_stanzas_are_not_carried() {
    for children in [
        "<composing xmlns='http://jabber.org/protocol/chatstates'/>",
        "<received xmlns='urn:xmpp:receipts' id='x'/>",
        "<body></body>",
        "<subject>Hi</subject>",
    ] {
        let mut t = T::new();
        let out = t.stanza(&from_x("type='chat' id='c1'", children));
        assert_no_output(&out);
        assert_eq!(out, [Output::Problem("im_xmpp_no_body")], "{children}");
    }
}

#[test]
fn case_107_groupchat_refused_unmatched_error_ignored() {
    let mut t = T::new();
    let out = t.stanza(&from_x("type='groupchat' id='g1'", "<body>hi</body>"));
    assert_eq!(
        only_stanza(&out),
        error_xml(
            "g1",
            "service-unavailable",
            "cancel",
            "Groupchat is not supported"
        )
    );
    let out = t.stanza(&from_x(
        "type='error' id='nothing-of-ours'",
        "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>",
    ));
    assert_eq!(out, []);
}

#[test]
fn case_108_headline_and_unknown_types_go_as_chat() {
    let build = |typ: &str| {
        let mut t = T::new();
        let req = t.message(&from_x(
            &format!("type='{typ}' id='h1'"),
            "<body>news</body>",
        ));
        let tag = from_tag(&req).to_owned();
        wire(&req)
            .replace(&tag, "TAG")
            .replace(&req.call_id, "CALLID")
    };
    let chat = build("chat");
    assert_eq!(build("headline"), chat);
    assert_eq!(build("urgent"), chat);
    assert!(chat.ends_with("Content-Length: 4\r\n\r\nnews"));
}

#[test]
fn case_109_body_and_language_choice() {
    let rows = [
        (
            "xml:lang='en'",
            "<body xml:lang='de'>Hallo</body><body>Hello</body>",
            "Hello",
            "en",
        ),
        (
            "xml:lang='fr'",
            "<body xml:lang='de'>Hallo</body><body xml:lang='fr'>Salut</body>",
            "Salut",
            "fr",
        ),
        ("", "<body xml:lang='de'>Hallo</body>", "Hallo", "de"),
    ];
    for (attrs, children, body, lang) in rows {
        let mut t = T::new();
        let req = t.message(&from_x(&format!("id='l1' {attrs}"), children));
        assert_eq!(req.body, body.as_bytes(), "{children}");
        assert_eq!(req.header("Content-Language"), Some(lang), "{children}");
    }
}

#[test]
fn case_110_no_header_injection_and_thread_call_id() {
    let stanza =
        "<message from='romeo@example.net/orchard' to='juliet*example.com@sip.example.net' \
        id='i1' xml:lang='en&#10;X-Injected: 1'><body>x</body>\
        <subject>Tonight&#10;X-Injected: 1</subject><thread>a b&lt;c&gt;</thread></message>";
    let mut t = T::new();
    let a = t.message(stanza);
    let text = wire(&a);
    assert_eq!(
        text.matches("\r\nSubject: Tonight X-Injected: 1\r\n")
            .count(),
        1
    );
    assert!(!text.contains("\r\nX-Injected"));
    assert!(!text.contains("Content-Language"));
    assert_eq!(a.call_id, "xt-ec1407284342029f2f8a4f46875496ae");
    t.respond(&a, 200, "OK", "");
    let b = t.message(stanza);
    assert_eq!(b.call_id, a.call_id);
    assert!(b.cseq > a.cseq);
}

#[test]
fn case_111_body_is_unescaped_utf8() {
    let mut t = T::new();
    let req = t.message(&from_x(
        "id='u1'",
        "<body>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt; 🌹 東京</body>",
    ));
    assert_eq!(req.body, "<b>Tom & Jerry</b> 🌹 東京".as_bytes());
    assert!(wire(&req).ends_with("Content-Length: 30\r\n\r\n<b>Tom & Jerry</b> 🌹 東京"));
}

#[test]
fn case_112_large_message_goes_over_tcp() {
    let stanza = from_x("id='big'", &format!("<body>{}</body>", "a".repeat(1500)));
    let mut t = T::new();
    let (req, reliable) = only_request(&t.stanza(&stanza));
    assert!(reliable, "over 1300 octets: TCP whatever the default");
    assert!(wire(&req).contains("\r\nContent-Length: 1500\r\n"));
    let mut t = T::with(ImConfig {
        tcp_available: false,
        ..cfg()
    });
    let out = t.stanza(&stanza);
    assert_eq!(
        condition_of(&only_stanza(&out)),
        ("policy-violation".into(), "modify".into())
    );
}

#[test]
fn case_113_body_size_limit() {
    let mut t = T::new();
    let out = t.stanza(&from_x(
        "id='e'",
        &format!("<body>{}</body>", "€".repeat(2731)),
    ));
    assert_eq!(
        only_stanza(&out),
        error_xml(
            "e",
            "policy-violation",
            "modify",
            "Message over 8192 octets"
        )
    );
    let (req, reliable) = only_request(&t.stanza(&from_x(
        "id='a'",
        &format!("<body>{}</body>", "a".repeat(8192)),
    )));
    assert!(reliable);
    assert_eq!(req.body.len(), 8192);
}

#[test]
fn case_114_undecodable_targets() {
    for to in [
        "juliet@sip.example.net",
        "juliet*@sip.example.net",
        "*example.com@sip.example.net",
        "juliet*xmpp.example.com@sip.example.net",
    ] {
        let mut t = T::new();
        let out = t.stanza(&format!(
            "<message from='{X}' to='{to}' id='n1'><body>hi</body></message>"
        ));
        let xml = only_stanza(&out);
        assert_eq!(
            condition_of(&xml),
            ("item-not-found".into(), "cancel".into()),
            "{to}"
        );
        assert!(xml.starts_with(&format!(
            "<message from='{to}' to='{X}' type='error' id='n1'>"
        )));
    }
    let mut t = T::new();
    let out = t.stanza(&format!(
        "<message from='{X}' to='sip.example.net' id='n2'><body>hi</body></message>"
    ));
    assert_eq!(
        condition_of(&only_stanza(&out)),
        ("service-unavailable".into(), "cancel".into())
    );
}

#[test]
fn case_115_no_open_relay() {
    let mut t = T::new();
    let out = t.stanza(&format!(
        "<message from='{X}' to='mallory*evil.example@sip.example.net' id='r1'><body>hi</body></message>"
    ));
    assert_eq!(
        condition_of(&only_stanza(&out)),
        ("not-allowed".into(), "cancel".into())
    );
    let out = t.stanza(&format!(
        "<message from='eve@evil.example/x' to='{S_PRIME}' id='r2'><body>hi</body></message>"
    ));
    let xml = only_stanza(&out);
    assert_eq!(condition_of(&xml), ("forbidden".into(), "auth".into()));
    assert!(xml.contains("to='eve@evil.example/x'"));
}

/// Case 116's proxy: answers each MESSAGE with 200 after 50 ms, and records what it saw.
#[derive(Default)]
struct Proxy {
    due: VecDeque<(Instant, OutRequest)>,
    outstanding: usize,
    bodies: Vec<String>,
    refused: Vec<String>,
}

impl Proxy {
    fn take(&mut self, out: Vec<Output>, now: Instant) {
        for o in out {
            match o {
                Output::Request { req, .. } => {
                    self.outstanding += 1;
                    assert!(self.outstanding <= 1, "two MESSAGEs outstanding at once");
                    self.bodies
                        .push(String::from_utf8(req.body.clone()).unwrap());
                    self.due.push_back((now + Duration::from_millis(50), req));
                }
                Output::Stanza(s) => {
                    assert_eq!(
                        condition_of(&s.to_xml()),
                        ("resource-constraint".into(), "wait".into())
                    );
                    self.refused.push(s.id.unwrap());
                }
                Output::Problem(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn answer_until(&mut self, t: &mut T, until: Instant) {
        while self.due.front().is_some_and(|(at, _)| *at <= until) {
            let Some((at, req)) = self.due.pop_front() else {
                break;
            };
            t.now = at;
            self.outstanding -= 1;
            let out = t.respond(&req, 200, "OK", "");
            self.take(out, at);
        }
    }
}

#[test]
fn case_116_rate_and_order_one_in_flight() {
    let mut t = T::new();
    let t0 = t.t0;
    let mut p = Proxy::default();
    for i in 0..30u64 {
        let at = t0 + Duration::from_micros(i * 200_000 / 30);
        p.answer_until(&mut t, at);
        t.now = at;
        let out = t.stanza(&from_x(
            &format!("type='chat' id='m{i}'"),
            &format!("<body>line {i}</body>"),
        ));
        p.take(out, at);
    }
    p.answer_until(&mut t, t0 + Duration::from_secs(10));
    assert!(
        (20..=22).contains(&p.bodies.len()),
        "{} MESSAGEs",
        p.bodies.len()
    );
    assert_eq!(p.bodies.len() + p.refused.len(), 30, "none lost silently");
    let numbers: Vec<u64> = p
        .bodies
        .iter()
        .map(|b| b.trim_start_matches("line ").parse().unwrap())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "in stanza order: {numbers:?}"
    );
    for id in &p.refused {
        let n: u64 = id.trim_start_matches('m').parse().unwrap();
        assert!(!numbers.contains(&n));
    }
    assert_eq!(t.gw.in_flight(), 0);
    assert_eq!(t.gw.queued(), 0);
}

// ---- 11.2 SIP → XMPP --------------------------------------------------------------------

/// The stanza of §10.3.3 with our id.
fn stanza_117(id: &str) -> String {
    format!(
        "<message from='{S_PRIME}' to='romeo@example.net' type='chat' id='{id}' xml:lang='it'>\
         <subject>Stasera</subject><body>A domani, amore mio. 🌙</body>\
         <thread>7f1c9e02@ua7.example.com</thread></message>"
    )
}

#[test]
fn case_117_message_becomes_the_stanza_of_10_3_3_then_202() {
    let mut t = T::new();
    let out = t.sip(&msg());
    let xml = only_stanza(&out);
    assert!(
        responses(&out).is_empty(),
        "no answer before the bounce wait"
    );
    let id = stanza_id(&xml);
    assert_eq!(xml, stanza_117(&id));
    assert_eq!(t.gw.waiting(), 1);
    assert_no_output(&t.advance(Duration::from_millis(499)));
    let out = t.advance(Duration::from_millis(1));
    let resp = only_response(&out);
    assert!(stanzas(&out).is_empty());
    assert_eq!(responses(&out)[0].0, 1, "the key of the request");
    let tag = resp.to.tag.clone().unwrap();
    assert_eq!(
        wire_response(&resp),
        format!(
            "SIP/2.0 202 Accepted\r\n\
             Via: SIP/2.0/TCP ps1.example.com:5060;branch=z9hG4bK-ps-m001\r\n\
             Via: SIP/2.0/TLS ua7.example.com:5061;branch=z9hG4bK-ua-m001\r\n\
             From: \"Juliet\" <sip:juliet@example.com>;tag=ua-m1a\r\n\
             To: <sip:romeo*example.net@xmpp.example.com>;tag={tag}\r\n\
             Call-ID: 7f1c9e02@ua7.example.com\r\n\
             CSeq: 12 MESSAGE\r\n\
             Content-Length: 0\r\n\
             \r\n"
        )
    );
    // Ids are fresh.
    let mut m2 = msg();
    m2.call_id = "other@ua7.example.com".into();
    let id2 = stanza_id(&only_stanza(&t.sip(&m2)));
    assert_ne!(id, id2);
}

#[test]
fn case_118_inbound_type_normal_omits_type() {
    let mut t = T::with(ImConfig {
        inbound_type: InboundType::Normal,
        ..cfg()
    });
    let xml = only_stanza(&t.sip(&msg()));
    let id = stanza_id(&xml);
    assert_eq!(xml, stanza_117(&id).replace(" type='chat'", ""));
}

#[test]
fn case_119_quick_bounce_gives_480() {
    let mut t = T::new();
    let mut m = msg();
    m.uri = "sip:nobody*example.net@xmpp.example.com".into();
    m.to = "<sip:nobody*example.net@xmpp.example.com>".into();
    let xml = only_stanza(&t.sip(&m));
    assert!(xml.contains(" to='nobody@example.net' "));
    let id = stanza_id(&xml);
    t.advance(Duration::from_millis(50));
    let out = t.stanza(
        &bounce(&id, "service-unavailable").replace("romeo@example.net", "nobody@example.net"),
    );
    let resp = only_response(&out);
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (480, "Temporarily Unavailable")
    );
    assert_no_output(&t.advance(Duration::from_secs(120)));
}

#[test]
fn case_120_bounce_conditions() {
    for (condition, status) in [
        ("item-not-found", 404),
        ("remote-server-not-found", 404),
        ("forbidden", 403),
        ("not-allowed", 403),
        ("remote-server-timeout", 408),
    ] {
        let mut t = T::new();
        let id = stanza_id(&only_stanza(&t.sip(&msg())));
        t.advance(Duration::from_millis(400));
        let out = t.stanza(&bounce(&id, condition));
        assert_eq!(only_response(&out).status, status, "{condition}");
        assert_no_output(&t.advance(Duration::from_secs(1)));
    }
    // A bounce from someone else than the stanza's recipient answers nothing.
    let mut t = T::new();
    let id = stanza_id(&only_stanza(&t.sip(&msg())));
    let out = t.stanza(&bounce(&id, "item-not-found").replace("from='romeo@", "from='mallory@"));
    assert_eq!(out, []);
    assert_eq!(
        only_response(&t.advance(Duration::from_millis(500))).status,
        202
    );
}

#[test]
fn case_121_late_bounce_is_only_logged() {
    let mut t = T::new();
    let id = stanza_id(&only_stanza(&t.sip(&msg())));
    assert_eq!(
        only_response(&t.advance(Duration::from_millis(500))).status,
        202
    );
    t.advance(Duration::from_millis(1500));
    let out = t.stanza(&bounce(&id, "service-unavailable"));
    assert_eq!(out, [Output::Problem("im_late_bounce")]);
    // After the memory ends, nothing at all.
    t.advance(Duration::from_secs(60));
    assert_eq!(t.stanza(&bounce(&id, "service-unavailable")), []);
}

#[test]
fn case_122_retransmissions_reaching_the_core_give_one_stanza() {
    // The transport's server transaction absorbs retransmissions; copies that reach the core
    // anyway are answered with the one final response, and deliver nothing again.
    let mut t = T::new();
    let m = msg();
    let out = t.sip(&m);
    assert_eq!(stanzas(&out).len(), 1);
    t.advance(Duration::from_millis(100));
    assert_no_output(&t.sip(&m));
    t.advance(Duration::from_millis(200));
    assert_no_output(&t.sip(&m));
    let out = t.advance(Duration::from_millis(200));
    let answers = responses(&out);
    assert_eq!(
        answers
            .iter()
            .map(|(k, r)| (*k, r.status))
            .collect::<Vec<_>>(),
        [(1, 202), (2, 202), (3, 202)]
    );
    assert!(stanzas(&out).is_empty());
    t.advance(Duration::from_millis(1000));
    let out = t.sip(&m);
    assert!(stanzas(&out).is_empty());
    assert_eq!(
        responses(&out)
            .iter()
            .map(|(k, r)| (*k, r.status))
            .collect::<Vec<_>>(),
        [(4, 202)]
    );
}

#[test]
fn case_123_unsupported_types_and_encodings() {
    for ct in ["text/html", "image/jpeg", "multipart/mixed;boundary=b1"] {
        let mut t = T::new();
        let out = t.sip(&msg().content_type(ct));
        let resp = only_response(&out);
        assert!(stanzas(&out).is_empty());
        assert_eq!(resp.status, 415, "{ct}");
        assert_eq!(
            resp.header("Accept"),
            Some("text/plain, message/cpim, application/im-iscomposing+xml")
        );
    }
    let mut t = T::new();
    let resp = only_response(&t.sip(&msg().header("Content-Encoding: gzip")));
    assert_eq!(resp.status, 415);
    assert_eq!(resp.header("Accept-Encoding"), Some("identity"));
    let mut t = T::new();
    let out = t.sip(&msg().header("Content-Encoding: identity"));
    assert_eq!(stanzas(&out).len(), 1);
}

#[test]
fn case_124_cpim_is_unwrapped_identity_from_sip() {
    let body = "From: <sip:eve@evil.example>\r\nTo: <sip:romeo*example.net@xmpp.example.com>\r\n\
                DateTime: 2024-05-01T10:00:00Z\r\n\r\nContent-Type: text/plain;charset=UTF-8\r\n\r\nHi there";
    let mut t = T::new();
    let out = t.sip(&msg().content_type("message/cpim").body(body.as_bytes()));
    let xml = only_stanza(&out);
    let m = InMessage::from_xml(&xml).unwrap();
    assert_eq!(m.from.unwrap().as_str(), S_PRIME);
    assert_eq!(m.bodies[0].text, "Hi there");
    assert_eq!(
        only_response(&t.advance(Duration::from_millis(500))).status,
        202
    );
    let png = "From: <sip:juliet@example.com>\r\n\r\nContent-Type: image/png\r\n\r\nPNG";
    let mut t = T::new();
    let resp = only_response(&t.sip(&msg().content_type("message/cpim").body(png.as_bytes())));
    assert_eq!(resp.status, 415);
}

#[test]
fn case_125_is_composing_is_200_at_once() {
    let doc = "<?xml version='1.0' encoding='UTF-8'?>\
        <isComposing xmlns='urn:ietf:params:xml:ns:im-iscomposing'><state>active</state>\
        <contenttype>text/plain</contenttype></isComposing>";
    let mut t = T::new();
    let out = t.sip(
        &msg()
            .content_type("application/im-iscomposing+xml")
            .body(doc.as_bytes()),
    );
    let resp = only_response(&out);
    assert_eq!((resp.status, resp.reason.as_str()), (200, "OK"));
    assert!(resp.body.is_empty() && resp.contact.is_none());
    assert!(stanzas(&out).is_empty());
}

#[test]
fn case_126_charsets() {
    let mut t = T::new();
    let out = t.sip(
        &msg()
            .content_type("text/plain;charset=ISO-8859-1")
            .body(&[0x43, 0x61, 0x66, 0xE9]),
    );
    assert!(only_stanza(&out).contains("<body>Café</body>"));
    assert_eq!(
        only_response(&t.advance(Duration::from_millis(500))).status,
        202
    );
    let mut t = T::new();
    assert_eq!(
        only_response(&t.sip(&msg().content_type("text/plain;charset=KOI8-R"))).status,
        415
    );
    let mut t = T::new();
    let out = t.sip(
        &msg()
            .content_type("text/plain;charset=UTF-8")
            .body(&[0xC3, 0x28]),
    );
    assert_eq!(only_response(&out).status, 400);
    assert!(stanzas(&out).is_empty());
}

#[test]
fn case_127_markup_is_escaped_and_text_cleaned() {
    let mut t = T::new();
    let out = t.sip(&msg().body(b"<b>\"Tom & Jerry\"</b>\x07\r\nok"));
    let xml = only_stanza(&out);
    assert!(xml.contains("<body>&lt;b&gt;\"Tom &amp; Jerry\"&lt;/b&gt;\u{FFFD}\nok</body>"));
    let m = InMessage::from_xml(&xml).unwrap();
    assert_eq!(m.bodies[0].text, "<b>\"Tom & Jerry\"</b>\u{FFFD}\nok");
}

#[test]
fn case_128_body_sizes() {
    let mut t = T::new();
    let out = t.sip(&msg().body(&[b'a'; 8193]));
    let resp = only_response(&out);
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (413, "Request Entity Too Large")
    );
    assert!(stanzas(&out).is_empty());
    let out = t.sip(&msg().body(&[b'a'; 8192]));
    let m = InMessage::from_xml(&only_stanza(&out)).unwrap();
    assert_eq!(m.bodies[0].text.len(), 8192);
    let mut t = T::new();
    let out = t.sip(&msg().body(b""));
    assert_eq!(only_response(&out).status, 400);
    assert!(stanzas(&out).is_empty());
}

#[test]
fn case_129_request_uris_we_do_not_serve() {
    for (uri, status) in [
        ("sip:nobody@xmpp.example.com", 404),
        ("sip:romeo*example.net@other.example", 404),
        ("sip:bob*sip.example.net@xmpp.example.com", 404),
        ("im:romeo*example.net@xmpp.example.com", 416),
    ] {
        let mut t = T::new();
        let mut m = msg();
        m.uri = uri.into();
        let out = t.sip(&m);
        assert_eq!(only_response(&out).status, status, "{uri}");
        assert!(stanzas(&out).is_empty());
    }
}

#[test]
fn case_130_no_relay_outside_xmpp_domains() {
    let mut t = T::new();
    let mut m = msg();
    m.uri = "sip:eve*evil.example@xmpp.example.com".into();
    let out = t.sip(&m);
    assert_eq!(only_response(&out).status, 403);
    assert!(stanzas(&out).is_empty());
}

#[test]
fn case_131_senders_we_do_not_serve() {
    for (from, status) in [
        ("<sip:mallory@evil.example>;tag=f1", 403),
        ("<sip:romeo*example.net@xmpp.example.com>;tag=f2", 403),
        ("<tel:+15551234567>;tag=f3", 416),
    ] {
        let mut t = T::new();
        let mut m = msg();
        m.from = from.into();
        let out = t.sip(&m);
        assert_eq!(only_response(&out).status, status, "{from}");
        assert!(stanzas(&out).is_empty());
    }
}

#[test]
fn case_132_to_tag_max_forwards_require() {
    let mut t = T::new();
    let mut m = msg();
    m.to = "<sip:romeo*example.net@xmpp.example.com>;tag=x1".into();
    assert_eq!(only_response(&t.sip(&m)).status, 481);
    let mut m = msg();
    m.headers[0] = "Max-Forwards: 0".into();
    assert_eq!(only_response(&t.sip(&m)).status, 483);
    let resp = only_response(&t.sip(&msg().header("Require: foo")));
    assert_eq!(resp.status, 420);
    assert_eq!(resp.header("Unsupported"), Some("foo"));
    assert_eq!(t.gw.waiting(), 0);
}

#[test]
fn case_133_untrusted_source() {
    let mut t = T::new();
    let out = t.sip_bytes(&msg().bytes(), IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)));
    assert_eq!(only_response(&out).status, 403);
    assert!(stanzas(&out).is_empty());
    // An empty list trusts any source (as for presence).
    let mut t = T::with(ImConfig {
        trusted_sources: Vec::new(),
        ..cfg()
    });
    let out = t.sip_bytes(&msg().bytes(), IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)));
    assert_eq!(stanzas(&out).len(), 1);
}

#[test]
fn case_134_component_down_is_503_and_nothing_later() {
    let mut t = T::new();
    t.input(Input::XmppLink { up: false });
    let resp = only_response(&t.sip(&msg()));
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("Retry-After"), Some("30"));
    assert_no_output(&t.input(Input::XmppLink { up: true }));
    assert_no_output(&t.advance(Duration::from_secs(120)));
}

#[test]
fn case_135_sender_rate() {
    let mut t = T::new();
    let t0 = t.t0;
    let (mut handled, mut limited) = (0, 0);
    for i in 0..30u64 {
        t.now = t0 + Duration::from_micros(i * 200_000 / 30);
        let mut m = msg();
        m.call_id = format!("c{i}@ua7.example.com");
        m.branch = format!("z9hG4bK-p{i}");
        let out = t.sip(&m);
        match (stanzas(&out).len(), responses(&out).as_slice()) {
            (1, []) => handled += 1,
            (0, [(_, r)]) => {
                assert_eq!(r.status, 503);
                assert_eq!(r.header("Retry-After"), Some("2"));
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((20..=22).contains(&handled), "{handled} handled");
    assert_eq!(handled + limited, 30);
    let out = t.advance(Duration::from_secs(1));
    assert_eq!(responses(&out).len(), handled);
    assert!(responses(&out).iter().all(|(_, r)| r.status == 202));
}

// ---- 11.3 Round trip ----------------------------------------------------------------------

#[test]
fn case_136_reply_reuses_the_call_id_as_thread() {
    let mut t = T::new();
    only_stanza(&t.sip(&msg()));
    t.advance(Duration::from_millis(500));
    let req = t.message(
        "<message from='romeo@example.net/orchard' to='juliet*example.com@sip.example.net' \
         type='chat' id='r1'><body>Sì</body><thread>7f1c9e02@ua7.example.com</thread></message>",
    );
    assert_eq!(req.uri, "sip:juliet@example.com");
    assert_eq!(req.call_id, "7f1c9e02@ua7.example.com");
    from_tag(&req);
    assert_eq!(req.cseq, 4711);
    assert!(wire(&req).ends_with("Content-Length: 3\r\n\r\nSì"));
}

#[test]
fn case_137_core_part_large_mixed_script_both_ways() {
    // The lab run needs the runtime; here: a 4000-octet mixed-script text crosses the core
    // byte-exact both ways, and the MESSAGE is flagged for TCP.
    let unit = "Hello Привет 你好 🌹 مرحبا ";
    let mut text = String::new();
    while text.len() + unit.len() <= 4000 {
        text.push_str(unit);
    }
    while text.len() < 4000 {
        text.push('a');
    }
    assert_eq!(text.len(), 4000);
    let mut t = T::new();
    let mut escaped = String::new();
    crate::xml::escape_text(&mut escaped, &text);
    let (req, reliable) =
        only_request(&t.stanza(&from_x("id='big'", &format!("<body>{escaped}</body>"))));
    assert!(reliable);
    assert_eq!(req.body, text.as_bytes());
    let out = t.respond(&req, 404, "Not Found", "");
    assert_eq!(
        condition_of(&only_stanza(&out)),
        ("item-not-found".into(), "cancel".into())
    );
    let out = t.sip(&msg().body(text.as_bytes()));
    let m = InMessage::from_xml(&only_stanza(&out)).unwrap();
    assert_eq!(m.bodies[0].text, text);
}

// ---- beyond the numbered cases -----------------------------------------------------------

#[test]
fn messages_to_one_target_wait_in_order_and_expire() {
    let mut t = T::with(ImConfig {
        rate_per_sender: 0,
        ..cfg()
    });
    let first = t.message(&from_x("id='q0'", "<body>0</body>"));
    for i in 1..=50 {
        assert_no_output(&t.stanza(&from_x(&format!("id='q{i}'"), &format!("<body>{i}</body>"))));
    }
    assert_eq!(t.gw.queued(), 50);
    // The 51st waiting one does not fit.
    let out = t.stanza(&from_x("id='q51'", "<body>51</body>"));
    assert_eq!(
        condition_of(&only_stanza(&out)),
        ("resource-constraint".into(), "wait".into())
    );
    // Another target has its own queue.
    let other = "<message from='romeo@example.net/orchard' to='tybalt*example.com@sip.example.net' id='o1'><body>x</body></message>";
    let (req, _) = only_request(&t.stanza(other));
    assert_eq!(req.uri, "sip:tybalt@example.com");
    // The first answer sends the next, in order.
    assert_no_output(&t.advance(Duration::from_secs(1)));
    let out = t.respond(&first, 200, "OK", "");
    assert_eq!(only_request(&out).0.body, b"1");
    assert_no_output(&t.respond(&req, 200, "OK", ""));
    // Still queued 64 s after they came: remote-server-timeout, each with its id.
    let out = t.advance(Duration::from_secs(63));
    let errors = stanzas(&out);
    assert_eq!(errors.len(), 49);
    assert!(errors[0].contains(" id='q2'"));
    assert!(errors
        .iter()
        .all(|e| condition_of(e) == ("remote-server-timeout".into(), "wait".into())));
    assert_eq!(t.gw.queued(), 0);
}

#[test]
fn redirects_are_followed_up_to_three_times() {
    let mut t = T::new();
    let mut req = t.message(STANZA_98);
    for hop in 1..=3 {
        let out = t.respond(
            &req,
            302,
            "Moved Temporarily",
            &format!("Contact: <sip:juliet@ua{hop}.example.com>\r\n"),
        );
        let (next, _) = only_request(&out);
        assert_eq!(next.uri, format!("sip:juliet@ua{hop}.example.com"));
        assert_eq!(next.to.uri, "sip:juliet@example.com");
        assert_eq!(next.call_id, req.call_id);
        assert!(next.cseq > req.cseq);
        req = next;
    }
    let out = t.respond(
        &req,
        302,
        "Moved Temporarily",
        "Contact: <sip:juliet@ua4.example.com>\r\n",
    );
    assert_eq!(
        condition_of(&only_stanza(&out)),
        ("redirect".into(), "modify".into())
    );
    // A 3xx without a SIP Contact is an error at once.
    let mut t = T::new();
    let req = t.message(STANZA_98);
    let out = t.respond(
        &req,
        302,
        "Moved Temporarily",
        "Contact: <tel:+15551234567>\r\n",
    );
    assert_eq!(condition_of(&only_stanza(&out)).0, "redirect");
}

#[test]
fn stale_and_foreign_responses_are_ignored() {
    let mut t = T::new();
    let req = t.message(STANZA_98);
    let mut other = req.clone();
    other.call_id = "someone-else".into();
    assert_eq!(t.respond(&other, 404, "Not Found", ""), []);
    assert_eq!(t.respond(&req, 180, "Ringing", ""), []);
    assert_eq!(t.fail(&other, Failure::Timeout), []);
    assert_eq!(t.gw.in_flight(), 1);
    assert!(!only_stanza(&t.respond(&req, 404, "Not Found", "")).is_empty());
    assert_eq!(t.respond(&req, 404, "Not Found", ""), [], "answered once");
}

#[test]
fn drops_without_answer() {
    let mut t = T::new();
    let out = t.stanza(&format!(
        "<message to='{S_PRIME}' id='a'><body>x</body></message>"
    ));
    assert_eq!(out, [Output::Problem("im_xmpp_no_from")]);
    let out = t.stanza(&format!(
        "<message from='mercutio*example.com@sip.example.net' to='{S_PRIME}' id='b'><body>x</body></message>"
    ));
    assert_eq!(out, [Output::Problem("im_xmpp_from_component")]);
}

#[test]
fn disabled_im_refuses_both_ways() {
    let mut t = T::with(ImConfig {
        enabled: false,
        ..cfg()
    });
    let out = t.stanza(STANZA_98);
    assert_eq!(
        condition_of(&only_stanza(&out)),
        ("service-unavailable".into(), "cancel".into())
    );
    let resp = only_response(&t.sip(&msg()));
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("Allow"), Some("SUBSCRIBE, NOTIFY, OPTIONS"));
    // Chat states stay silent.
    assert_no_output(&t.stanza(&from_x(
        "id='c'",
        "<composing xmlns='http://jabber.org/protocol/chatstates'/>",
    )));
}

#[test]
fn bounce_wait_zero_answers_at_once() {
    let mut t = T::with(ImConfig {
        bounce_wait: Duration::ZERO,
        ..cfg()
    });
    let out = t.sip(&msg());
    assert_eq!(stanzas(&out).len(), 1);
    assert_eq!(only_response(&out).status, 202);
    assert!(matches!(out[0], Output::Stanza(_)), "stanza first");
}

#[test]
fn request_uri_at_the_gateway_address_and_gruu_resource() {
    let mut t = T::with(ImConfig {
        local_hosts: vec!["192.0.2.50".into()],
        from_gruu: true,
        ..cfg()
    });
    let mut m = msg();
    m.uri = "sip:romeo*example.net@192.0.2.50:5060;transport=tcp;gr=orchard".into();
    let xml = only_stanza(&t.sip(&m));
    assert!(xml.contains(" to='romeo@example.net/orchard' "), "{xml}");
    let mut t = T::new();
    let out = t.sip(&m);
    assert_eq!(only_response(&out).status, 404);
}

#[test]
fn no_subject_language_or_type_when_absent() {
    let mut t = T::new();
    let mut m = msg();
    m.headers = vec![
        "Content-Type: text/plain".into(),
        "Content-Language: i t".into(),
    ];
    let xml = only_stanza(&t.sip(&m));
    let id = stanza_id(&xml);
    assert_eq!(
        xml,
        format!(
            "<message from='{S_PRIME}' to='romeo@example.net' type='chat' id='{id}'>\
             <body>A domani, amore mio. 🌙</body><thread>7f1c9e02@ua7.example.com</thread></message>"
        )
    );
}

#[test]
fn cseq_counter_wraps_below_2_31() {
    let mut g = ImGateway::new(cfg(), mapper(), 1, u32::MAX);
    assert_eq!(g.cseq(), MAX_CSEQ);
    assert_eq!(g.cseq(), 1);
    let mut g = ImGateway::new(cfg(), mapper(), 1, 0);
    assert_eq!(g.cseq(), 1);
}

// ---- escape correctness, both directions ------------------------------------------------

use crate::message::tests::xml_safe;

fn message_with(body: &str, subject: &str, thread: &str, lang: &str) -> InMessage {
    let mut m = InMessage::from_xml(&from_x("type='chat' id='p'", "")).unwrap();
    m.bodies = vec![crate::message::LangText::new(None, body)];
    m.subjects = vec![crate::message::LangText::new(None, subject)];
    m.thread = Some(thread.to_owned());
    m.lang = Some(lang.to_owned());
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// XMPP → SIP: any body, subject, thread and language (controls, `]]>`, markup, CR/LF)
    /// gives either nothing or one MESSAGE whose body is the text's exact octets and whose
    /// header section has only the headers we write, one line each.
    #[test]
    fn xmpp_to_sip_never_injects(
        body in any::<String>(),
        subject in any::<String>(),
        thread in "(?s).{0,30}",
        lang in "(?s).{0,12}",
    ) {
        let mut t = T::new();
        let m = message_with(&body, &subject, &thread, &lang);
        let out = t.input(Input::Stanza(&m));
        let reqs = requests(&out);
        if body.is_empty() {
            prop_assert!(out.iter().all(|o| matches!(o, Output::Problem(_))));
            return Ok(());
        }
        prop_assert_eq!(reqs.len(), 1);
        let (req, _) = &reqs[0];
        prop_assert_eq!(&req.body, &body.as_bytes().to_vec());
        let mut bytes = Vec::new();
        encode_request(req, VIA, &mut bytes);
        let back = match parse_message(&bytes) {
            Ok(SipMessage::Request(r)) => r,
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(&back.body, &req.body);
        prop_assert_eq!(&back.call_id, &req.call_id);
        let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(bytes[..head_end].to_vec()).unwrap();
        for line in head.split("\r\n").skip(1) {
            let name = line.split(':').next().unwrap();
            prop_assert!(
                ["Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Subject",
                 "Content-Language", "Content-Type", "Content-Length"].contains(&name),
                "unexpected header line {:?}", line
            );
        }
        if let Some(s) = header_values(&bytes, "Subject").first() {
            prop_assert!(!s.chars().any(char::is_control));
            prop_assert!(s.len() <= 255);
        }
    }

    /// XMPP → SIP through the XML reader: a body we escape, parsed as a stanza, arrives in
    /// the MESSAGE as the text an XML reader gives back.
    #[test]
    fn xmpp_body_through_xml(body in any::<String>()) {
        let mut escaped = String::new();
        crate::xml::escape_text_exact(&mut escaped, &body);
        let mut t = T::new();
        let xml = from_x("id='p'", &format!("<body>{escaped}</body>"));
        let m = InMessage::from_xml(&xml).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&m.bodies[0].text, &xml_safe(&body));
        let out = t.input(Input::Stanza(&m));
        if let Some((req, _)) = requests(&out).first() {
            prop_assert_eq!(&req.body, &xml_safe(&body).into_bytes());
        }
    }

    /// SIP → XMPP: any body octets under any content type, any Subject and Call-ID text:
    /// no panic, and a stanza, when there is one, parses back to exactly the decoded and
    /// cleaned text.
    #[test]
    fn sip_to_xmpp_stanzas_parse_back(
        body in proptest::collection::vec(any::<u8>(), 0..400),
        ct in prop_oneof![
            Just("text/plain"),
            Just("text/plain;charset=UTF-8"),
            Just("text/plain;charset=iso-8859-1"),
            Just("text/plain;charset=koi8-r"),
            Just("message/cpim"),
            Just("text/html"),
            Just("application/im-iscomposing+xml"),
        ],
        text in any::<String>(),
        subject in "[^\r\n]{0,40}",
        call_id in "[A-Za-z0-9<>\"&'@.%]{1,24}",
    ) {
        let body = if body.len() % 2 == 0 { body } else { text.clone().into_bytes() };
        let mut m = msg().content_type(ct).body(&body);
        m.call_id = call_id.clone();
        m.headers.retain(|h| !h.starts_with("Subject"));
        m.headers.push(format!("Subject: {subject}"));
        let bytes = m.bytes();
        let Ok(SipMessage::Request(req)) = parse_message(&bytes) else {
            return Ok(());
        };
        let headers = MessageHeaders::from_raw(&bytes);
        let mut t = T::new();
        let out = t.input(Input::Message { req: &req, headers: &headers, source: P, key: 9 });
        let out: Vec<Output> = out.into_iter().chain(t.advance(Duration::from_secs(1))).collect();
        prop_assert_eq!(responses(&out).len(), 1, "one answer: {:?}", out);
        for xml in stanzas(&out) {
            let back = InMessage::from_xml(&xml).map_err(TestCaseError::fail)?;
            let expected = match im_content::classify(Some(ct), &body) {
                Ok(Payload::Text { charset, octets }) => im_content::decode_text(charset, octets).unwrap(),
                other => return Err(TestCaseError::fail(format!("stanza for {other:?}"))),
            };
            prop_assert_eq!(&back.bodies[0].text, &expected);
            prop_assert_eq!(back.thread.as_deref(), Some(req.call_id.as_str()));
            let subject = im_content::clean_text(headers.subject.as_deref().unwrap_or(""));
            let want: Vec<crate::message::LangText> = if subject.is_empty() {
                vec![]
            } else {
                vec![crate::message::LangText::new(None, subject)]
            };
            prop_assert_eq!(back.subjects, want);
        }
    }
}

#[test]
fn gateway_wide_queue_limit_counts_messages_in_flight() {
    let mut t = T::with(ImConfig {
        queue_total: 2,
        rate_per_sender: 0,
        ..cfg()
    });
    for user in ["a", "b"] {
        let out = t.stanza(&format!(
            "<message from='{X}' to='{user}*example.com@sip.example.net' id='{user}'><body>x</body></message>"
        ));
        only_request(&out);
    }
    let out = t.stanza(&from_x("id='c'", "<body>x</body>"));
    assert_eq!(
        condition_of(&only_stanza(&out)),
        ("resource-constraint".into(), "wait".into())
    );
}

#[test]
fn other_methods_get_405_listing_message() {
    let mut t = T::new();
    let text = String::from_utf8(msg().bytes())
        .unwrap()
        .replacen("MESSAGE sip:", "INFO sip:", 1)
        .replace("CSeq: 12 MESSAGE", "CSeq: 12 INFO");
    let resp = only_response(&t.sip_bytes(text.as_bytes(), P));
    assert_eq!(resp.status, 405);
    assert_eq!(
        resp.header("Allow"),
        Some("SUBSCRIBE, NOTIFY, OPTIONS, MESSAGE")
    );
}
