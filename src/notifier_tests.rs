//! Conformance tests of the notifier state machine, named after the cases of §9 of the spec
//! digest (`../shared/docs/interworking.md`). Fixtures: romeo@example.net is the XMPP
//! presentity X (X' = sip:romeo*example.net@xmpp.example.com); juliet (sip:juliet@example.com,
//! S' = juliet*example.com@sip.example.net) watches him over dialog D2, the SUBSCRIBE of §5.1.
//!
//! Cases 46–47 (unknown presence type, missing `from`/foreign `to`) are decided by the registry
//! before a stanza reaches a `Presentity`; case 59 (missing Call-ID/CSeq → 400) by the SIP
//! parser: both are tested there, not here.

use super::*;
use crate::sip::encode::{encode_request, encode_response};
use crate::sip::parse::parse_message;
use crate::sip::SipMessage;

const X: &str = "romeo@example.net";
const X_SIP: &str = "sip:romeo*example.net@xmpp.example.com";
const S: &str = "juliet*example.com@sip.example.net";

/// The initial SUBSCRIBE of §5.1 (dialog D2).
const D2: &str = "SUBSCRIBE sip:romeo*example.net@xmpp.example.com SIP/2.0
Via: SIP/2.0/TLS ua7.example.com:5061;branch=z9hG4bK-ua-4411
Max-Forwards: 69
From: \"Juliet\" <sip:juliet@example.com>;tag=ua-77aa31
To: <sip:romeo*example.net@xmpp.example.com>
Call-ID: 3f9a0c55e1@ua7.example.com
CSeq: 20 SUBSCRIBE
Contact: <sip:juliet@ua7.example.com:5061;transport=tls>
Event: presence
Accept: application/pidf+xml
Expires: 3600
Content-Length: 0

";

/// The Via the transport would put on our NOTIFYs in the §5.1 / §4.4 examples.
const GW_VIA: &str = "SIP/2.0/TLS gw.xmpp.example.com:5061;branch=z9hG4bK-gw-n0001";

const HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"pres:romeo*example.net@xmpp.example.com\">\n";
const HEAD_NS: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"\n          \
xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\"\n          \
xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\"\n          \
entity=\"pres:romeo*example.net@xmpp.example.com\">\n";
/// The closed document of §4.6 with no status.
const CLOSED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"pres:romeo*example.net@xmpp.example.com\">\n  \
<tuple id=\"ID-offline\"><status><basic>closed</basic></status></tuple>\n</presence>";

const SUBSCRIBE_STANZA: &str =
    "<presence from='juliet*example.com@sip.example.net' to='romeo@example.net' type='subscribe'/>";
const PROBE_STANZA: &str =
    "<presence from='juliet*example.com@sip.example.net' to='romeo@example.net' type='probe'/>";

fn cfg() -> NotifierConfig {
    NotifierConfig {
        contact_host: "gw.xmpp.example.com:5061;transport=tls".to_owned(),
        ..NotifierConfig::default()
    }
}

fn jid(s: &str) -> BareJid {
    BareJid::new(s).unwrap()
}

/// `text` with LF line ends turned into CRLF, parsed as a request.
fn request(text: &str) -> SipRequest {
    let wire = text.replace("\r\n", "\n").replace('\n', "\r\n");
    match parse_message(wire.as_bytes()) {
        Ok(SipMessage::Request(r)) => r,
        other => panic!("bad test request: {other:?}"),
    }
}

/// D2 with one header line replaced (or removed when `to` is empty).
fn d2_with(from: &str, to: &str) -> String {
    assert!(D2.contains(from), "{from}");
    if to.is_empty() {
        D2.replace(&format!("{from}\n"), "")
    } else {
        D2.replace(from, to)
    }
}

/// An in-dialog refresh of D2 with our tag, `cseq` and `expires`.
fn refresh_text(local_tag: &str, cseq: u32, expires: u32) -> String {
    D2.replace(
        "To: <sip:romeo*example.net@xmpp.example.com>",
        &format!("To: <sip:romeo*example.net@xmpp.example.com>;tag={local_tag}"),
    )
    .replace("CSeq: 20 SUBSCRIBE", &format!("CSeq: {cseq} SUBSCRIBE"))
    .replace("Expires: 3600", &format!("Expires: {expires}"))
}

/// A SUBSCRIBE like D2 from another dialog (another Call-ID and From-tag), from `from_uri`.
fn other_dialog(n: u32, from_uri: &str) -> String {
    D2.replace(
        "3f9a0c55e1@ua7.example.com",
        &format!("call-{n}@ua.example.com"),
    )
    .replace("tag=ua-77aa31", &format!("tag=ua-{n}"))
    .replace("<sip:juliet@example.com>", &format!("<{from_uri}>"))
}

fn requests(out: &[Output]) -> Vec<&OutRequest> {
    out.iter()
        .filter_map(|o| match o {
            Output::Request(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn responses(out: &[Output]) -> Vec<&OutResponse> {
    out.iter()
        .filter_map(|o| match o {
            Output::Response(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn stanzas(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Stanza(s) => Some(s.to_xml()),
            _ => None,
        })
        .collect()
}

fn body(r: &OutRequest) -> &str {
    std::str::from_utf8(&r.body).unwrap()
}

fn state(r: &OutRequest) -> &str {
    r.header("Subscription-State").unwrap()
}

/// The request as the transport writes it with `via`.
fn wire(r: &OutRequest, via: &str) -> String {
    let mut out = Vec::new();
    encode_request(r, via, &mut out);
    String::from_utf8(out).unwrap()
}

fn wire_response(r: &OutResponse) -> String {
    let mut out = Vec::new();
    encode_response(r, &mut out);
    String::from_utf8(out).unwrap()
}

/// Spec text (LF) as wire text (CRLF).
fn crlf(s: &str) -> String {
    s.replace('\n', "\r\n")
}

struct T {
    p: Presentity,
    now: Instant,
    t0: Instant,
}

impl T {
    fn new() -> T {
        let now = Instant::now();
        T {
            p: Presentity::new(cfg(), jid(X), X_SIP.to_owned(), 42),
            now,
            t0: now,
        }
    }
    fn approved() -> T {
        let mut t = T::new();
        t.p.restore_relation(jid(S), WatcherRelation::Approved);
        t
    }
    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.p.poll_output()).collect()
    }
    fn subscribe_as(&mut self, text: &str, watcher: &str) -> Vec<Output> {
        let req = request(text);
        let w = jid(watcher);
        self.p.handle_input(
            Input::Subscribe {
                req: &req,
                watcher: &w,
            },
            self.now,
        );
        self.drain()
    }
    fn subscribe(&mut self, text: &str) -> Vec<Output> {
        self.subscribe_as(text, S)
    }
    fn stanza(&mut self, xml: &str) -> Vec<Output> {
        let p = InPresence::from_xml(xml).unwrap();
        self.p.handle_input(Input::Stanza(&p), self.now);
        self.drain()
    }
    /// A presence of romeo's resource `res` (to S'), with `children`.
    fn presence(&mut self, res: &str, children: &str) -> Vec<Output> {
        self.stanza(&format!(
            "<presence from='{X}/{res}' to='{S}'>{children}</presence>"
        ))
    }
    fn decision(&mut self, kind: &str) -> Vec<Output> {
        self.stanza(&format!("<presence from='{X}' to='{S}' type='{kind}'/>"))
    }
    /// The final response of the watcher to one of our NOTIFYs.
    fn answer(&mut self, r: &OutRequest, status: u16) -> Vec<Output> {
        let text = format!(
            "SIP/2.0 {status} X\r\nVia: {GW_VIA}\r\nFrom: <{X_SIP}>;tag={}\r\nTo: <sip:juliet@example.com>;tag={}\r\n\
             Call-ID: {}\r\nCSeq: {} NOTIFY\r\nContent-Length: 0\r\n\r\n",
            r.from.tag.as_deref().unwrap(),
            r.to.tag.as_deref().unwrap(),
            r.call_id,
            r.cseq
        );
        let resp = match parse_message(text.as_bytes()) {
            Ok(SipMessage::Response(r)) => r,
            other => panic!("bad test response: {other:?}"),
        };
        self.p.handle_input(Input::Response(&resp), self.now);
        self.drain()
    }
    fn advance(&mut self, d: Duration) -> Vec<Output> {
        self.now += d;
        self.p.handle_input(Input::Timeout, self.now);
        self.drain()
    }
    fn advance_to_timeout(&mut self) -> Vec<Output> {
        let t = self.p.poll_timeout().expect("a timer is armed");
        assert!(
            t >= self.now,
            "poll_timeout in the past: a runtime would spin"
        );
        self.now = t;
        self.p.handle_input(Input::Timeout, self.now);
        self.drain()
    }
    /// D2 for an approved relation, its first NOTIFY answered 200; returns that NOTIFY.
    fn active(&mut self) -> OutRequest {
        let out = self.subscribe(D2);
        let n = requests(&out)[0].clone();
        assert!(state(&n).starts_with("active;"), "{}", state(&n));
        self.answer(&n, 200);
        n
    }
    fn local_tag(&self) -> String {
        self.p.dialogs()[0].local_tag.clone()
    }
}

// ---- 9.4 SIP → XMPP (inbound SUBSCRIBE) ---------------------------------------------------------

#[test]
fn case_049_first_subscribe_gets_200_pending_notify_and_subscribe_stanza() {
    let mut t = T::new();
    let out = t.subscribe(D2);
    let tag = t.local_tag();
    assert!(tag.starts_with("gw-"), "{tag}");
    // The 200 of §5.1, byte for byte (our tag in place of gw-e01b44).
    let resps = responses(&out);
    assert_eq!(resps.len(), 1);
    assert_eq!(
        wire_response(resps[0]),
        crlf(&format!(
            "SIP/2.0 200 OK
Via: SIP/2.0/TLS ua7.example.com:5061;branch=z9hG4bK-ua-4411
From: \"Juliet\" <sip:juliet@example.com>;tag=ua-77aa31
To: <sip:romeo*example.net@xmpp.example.com>;tag={tag}
Call-ID: 3f9a0c55e1@ua7.example.com
CSeq: 20 SUBSCRIBE
Contact: <sip:romeo*example.net@gw.xmpp.example.com:5061;transport=tls>
Expires: 3600
Allow-Events: presence
Content-Length: 0

"
        ))
    );
    // Then the immediate pending NOTIFY of §5.1, no body.
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].destination, Destination::InDialog);
    assert_eq!(
        wire(reqs[0], GW_VIA),
        crlf(&format!(
            "NOTIFY sip:juliet@ua7.example.com:5061;transport=tls SIP/2.0
Via: SIP/2.0/TLS gw.xmpp.example.com:5061;branch=z9hG4bK-gw-n0001
Max-Forwards: 70
From: <sip:romeo*example.net@xmpp.example.com>;tag={tag}
To: \"Juliet\" <sip:juliet@example.com>;tag=ua-77aa31
Call-ID: 3f9a0c55e1@ua7.example.com
CSeq: 1 NOTIFY
Contact: <sip:romeo*example.net@gw.xmpp.example.com:5061;transport=tls>
Event: presence
Subscription-State: pending;expires=3600
Content-Length: 0

"
        ))
    );
    // Response first, then the NOTIFY, then the stanza.
    let pos = |f: &dyn Fn(&Output) -> bool| out.iter().position(f).unwrap();
    let r = pos(&|o| matches!(o, Output::Response(_)));
    let n = pos(&|o| matches!(o, Output::Request(_)));
    let s = pos(&|o| matches!(o, Output::Stanza(_)));
    assert!(r < n && n < s);
    assert_eq!(stanzas(&out), vec![SUBSCRIBE_STANZA]);
    assert_eq!(t.p.relation(&jid(S)), Some(WatcherRelation::Pending));
    assert!(out.contains(&Output::Persist(PersistOp::Relation {
        watcher: jid(S),
        state: WatcherRelation::Pending
    })));
}

#[test]
fn case_050_subscribed_gives_active_notify_with_closed_document() {
    let mut t = T::new();
    let out = t.subscribe(D2);
    t.answer(requests(&out)[0], 200);
    t.now += Duration::from_secs(59);
    let out = t.decision("subscribed");
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].cseq, 2);
    assert_eq!(state(reqs[0]), "active;expires=3541");
    assert_eq!(reqs[0].content_type, Some("application/pidf+xml"));
    assert_eq!(body(reqs[0]), CLOSED);
    assert!(stanzas(&out).is_empty());
    assert_eq!(t.p.relation(&jid(S)), Some(WatcherRelation::Approved));
    assert!(out.contains(&Output::Persist(PersistOp::Relation {
        watcher: jid(S),
        state: WatcherRelation::Approved
    })));
}

#[test]
fn case_050_spec_4_4_active_notify_with_cached_presence_byte_exact() {
    let mut t = T::new();
    // Romeo's presence is cached before juliet subscribes (§4.4 "as here").
    t.stanza(
        "<presence from='romeo@example.net/orchard' to='juliet*example.com@sip.example.net' xml:lang='en'>\
         <show>away</show><status>Walking in the orchard</status><priority>5</priority></presence>",
    );
    let out = t.subscribe(D2);
    let tag = t.local_tag();
    t.answer(requests(&out)[0], 200);
    t.now += Duration::from_secs(59);
    let out = t.decision("subscribed");
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        wire(
            reqs[0],
            "SIP/2.0/TLS gw.xmpp.example.com:5061;branch=z9hG4bK-gw-n0002"
        ),
        crlf(&format!(
            r#"NOTIFY sip:juliet@ua7.example.com:5061;transport=tls SIP/2.0
Via: SIP/2.0/TLS gw.xmpp.example.com:5061;branch=z9hG4bK-gw-n0002
Max-Forwards: 70
From: <sip:romeo*example.net@xmpp.example.com>;tag={tag}
To: "Juliet" <sip:juliet@example.com>;tag=ua-77aa31
Call-ID: 3f9a0c55e1@ua7.example.com
CSeq: 2 NOTIFY
Contact: <sip:romeo*example.net@gw.xmpp.example.com:5061;transport=tls>
Event: presence
Subscription-State: active;expires=3541
Content-Type: application/pidf+xml
Content-Length: 624

"#
        )) + r#"<?xml version="1.0" encoding="UTF-8"?>
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
</presence>"#
    );
}

#[test]
fn case_051_approved_relation_goes_active_at_once_without_subscribe_stanza() {
    // Nothing cached: the closed document, and a probe to romeo.
    let mut t = T::approved();
    let out = t.subscribe(D2);
    assert_eq!(responses(&out)[0].status, 200);
    assert_eq!(responses(&out)[0].header("Expires"), Some("3600"));
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].cseq, 1);
    assert_eq!(state(reqs[0]), "active;expires=3600");
    assert_eq!(body(reqs[0]), CLOSED);
    assert_eq!(stanzas(&out), vec![PROBE_STANZA]);

    // Cached: the cached state, and no probe.
    let mut t = T::approved();
    t.presence(
        "orchard",
        "<show>dnd</show><status>Busy!</status><priority>10</priority>",
    );
    let out = t.subscribe(D2);
    let reqs = requests(&out);
    assert_eq!(state(reqs[0]), "active;expires=3600");
    assert_eq!(body(reqs[0]), case_034_body());
    assert!(stanzas(&out).is_empty());
}

#[test]
fn case_052_refresh_gets_200_and_full_state_with_new_expiry() {
    let mut t = T::approved();
    t.presence(
        "orchard",
        "<show>dnd</show><status>Busy!</status><priority>10</priority>",
    );
    t.active();
    let tag = t.local_tag();
    t.now += Duration::from_secs(100);
    let out = t.subscribe(&refresh_text(&tag, 21, 600));
    let resps = responses(&out);
    assert_eq!(resps.len(), 1);
    assert_eq!(resps[0].status, 200);
    assert_eq!(resps[0].header("Expires"), Some("600"));
    assert_eq!(resps[0].to.tag.as_deref(), Some(tag.as_str()));
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].cseq, 2);
    assert_eq!(state(reqs[0]), "active;expires=600");
    assert_eq!(body(reqs[0]), case_034_body());
    assert!(stanzas(&out).is_empty());
    // The lease now ends 600 s after the refresh.
    assert_eq!(
        t.p.dialogs()[0].expires_at,
        t.now + Duration::from_secs(600)
    );
    // A refresh with an old CSeq is out of order.
    let out = t.subscribe(&refresh_text(&tag, 21, 600));
    assert_eq!(responses(&out)[0].status, 500);
    assert!(requests(&out).is_empty());
}

#[test]
fn case_053_unsubscribe_ends_dialog_without_stanza_and_keeps_relation() {
    let mut t = T::approved();
    t.active();
    assert!(t.p.watched_by(&jid(S)));
    let tag = t.local_tag();
    let out = t.subscribe(&refresh_text(&tag, 21, 0));
    assert!(
        !t.p.watched_by(&jid(S)),
        "the ended dialog no longer counts"
    );
    assert_eq!(responses(&out)[0].status, 200);
    assert_eq!(responses(&out)[0].header("Expires"), Some("0"));
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(state(reqs[0]), "terminated;reason=timeout");
    // §5.1: body optional; the active dialog gets its final state.
    assert_eq!(body(reqs[0]), CLOSED);
    assert!(stanzas(&out).is_empty());
    assert!(t.p.dialogs().is_empty());
    assert!(out.contains(&Output::Persist(PersistOp::DialogGone {
        call_id: "3f9a0c55e1@ua7.example.com".to_owned(),
        watcher: jid(S),
    })));
    assert_eq!(t.p.relation(&jid(S)), Some(WatcherRelation::Approved));
    // The dialog is gone: a further refresh is 481.
    let out = t.subscribe(&refresh_text(&tag, 22, 600));
    assert_eq!(responses(&out)[0].status, 481);
}

#[test]
fn case_054_fetch_probes_and_answers_within_2_s() {
    // X answers the probe: the NOTIFY follows at once with that state.
    let mut t = T::approved();
    let out = t.subscribe(&d2_with("Expires: 3600", "Expires: 0"));
    assert_eq!(responses(&out)[0].status, 200);
    assert_eq!(responses(&out)[0].header("Expires"), Some("0"));
    assert!(requests(&out).is_empty());
    assert_eq!(stanzas(&out), vec![PROBE_STANZA]);
    // The only timer is the 2 s fetch deadline (the lease, 0 s, is not a timer: no spinning).
    assert_eq!(t.p.poll_timeout(), Some(t.t0 + Duration::from_secs(2)));
    t.now += Duration::from_millis(300);
    let out = t.presence(
        "orchard",
        "<show>dnd</show><status>Busy!</status><priority>10</priority>",
    );
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(state(reqs[0]), "terminated;reason=timeout");
    assert_eq!(body(reqs[0]), case_034_body());
    assert!(t.p.dialogs().is_empty());
    assert_eq!(t.p.poll_timeout(), None);

    // No answer: after 2 s, from the cache (here: the closed document).
    let mut t = T::approved();
    t.subscribe(&d2_with("Expires: 3600", "Expires: 0"));
    let out = t.advance_to_timeout();
    assert_eq!(t.now - t.t0, Duration::from_secs(2));
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(state(reqs[0]), "terminated;reason=timeout");
    assert_eq!(body(reqs[0]), CLOSED);
    assert!(t.p.dialogs().is_empty());
}

#[test]
fn case_054_fetch_without_approval_asks_and_answers_without_body() {
    let mut t = T::new();
    let out = t.subscribe(&d2_with("Expires: 3600", "Expires: 0"));
    assert!(requests(&out).is_empty());
    assert_eq!(stanzas(&out), vec![SUBSCRIBE_STANZA]);
    // Presence of X is no answer to a not-approved fetch: still waiting.
    let out = t.presence("orchard", "");
    assert!(requests(&out).is_empty());
    let out = t.advance_to_timeout();
    assert_eq!(t.now - t.t0, Duration::from_secs(2));
    let reqs = requests(&out);
    assert_eq!(state(reqs[0]), "terminated;reason=timeout");
    assert!(reqs[0].body.is_empty());
    assert_eq!(reqs[0].content_type, None);
}

#[test]
fn case_055_expires_30_gets_423_with_min_expires() {
    let mut t = T::new();
    let out = t.subscribe(&d2_with("Expires: 3600", "Expires: 30"));
    let resps = responses(&out);
    assert_eq!(resps.len(), 1);
    assert_eq!(
        (resps[0].status, resps[0].reason.as_str()),
        (423, "Interval Too Brief")
    );
    assert_eq!(resps[0].header("Min-Expires"), Some("60"));
    assert!(requests(&out).is_empty() && stanzas(&out).is_empty());
    assert!(t.p.dialogs().is_empty());
}

#[test]
fn expires_above_7200_is_granted_7200_and_missing_expires_3600() {
    let mut t = T::approved();
    let out = t.subscribe(&d2_with("Expires: 3600", "Expires: 86400"));
    assert_eq!(responses(&out)[0].header("Expires"), Some("7200"));
    assert_eq!(state(requests(&out)[0]), "active;expires=7200");
    let mut t = T::approved();
    let out = t.subscribe(&d2_with("Expires: 3600", ""));
    assert_eq!(responses(&out)[0].header("Expires"), Some("3600"));
}

#[test]
fn case_056_other_or_missing_event_gets_489_with_allow_events() {
    for text in [
        d2_with("Event: presence", "Event: dialog"),
        d2_with("Event: presence", ""),
    ] {
        let resp = pre_checks(&request(&text)).expect("rejected");
        assert_eq!((resp.status, resp.reason.as_str()), (489, "Bad Event"));
        assert_eq!(resp.headers, vec![("Allow-Events", "presence".to_owned())]);
    }
    // Event packages compare case-sensitively (§5.1 check 4).
    let resp = pre_checks(&request(&d2_with("Event: presence", "Event: Presence"))).unwrap();
    assert_eq!(resp.status, 489);
    assert_eq!(pre_checks(&request(D2)), None);
    assert_eq!(
        pre_checks(&request(&d2_with(
            "Event: presence",
            "Event: presence;id=7"
        ))),
        None
    );
}

#[test]
fn pre_checks_max_forwards_and_require() {
    let resp = pre_checks(&request(&d2_with("Max-Forwards: 69", "Max-Forwards: 0"))).unwrap();
    assert_eq!((resp.status, resp.reason.as_str()), (483, "Too Many Hops"));
    let resp = pre_checks(&request(&d2_with(
        "Event: presence",
        "Event: presence\nRequire: foo, bar",
    )))
    .unwrap();
    assert_eq!(resp.status, 420);
    assert_eq!(resp.header("Unsupported"), Some("foo, bar"));
}

#[test]
fn case_057_accept_without_pidf_gets_406() {
    let mut t = T::new();
    let out = t.subscribe(&d2_with(
        "Accept: application/pidf+xml",
        "Accept: application/xpidf+xml",
    ));
    let resps = responses(&out);
    assert_eq!(
        (resps[0].status, resps[0].reason.as_str()),
        (406, "Not Acceptable")
    );
    assert!(requests(&out).is_empty() && stanzas(&out).is_empty());
    // */* and application/* are fine.
    let mut t = T::new();
    let out = t.subscribe(&d2_with(
        "Accept: application/pidf+xml",
        "Accept: application/*",
    ));
    assert_eq!(responses(&out)[0].status, 200);
}

#[test]
fn case_058_unknown_to_tag_gets_481_before_content_checks() {
    let mut t = T::new();
    let out = t.subscribe(&refresh_text("zzz", 21, 3600));
    let resps = responses(&out);
    assert_eq!(
        (resps[0].status, resps[0].reason.as_str()),
        (481, "Call/Transaction Does Not Exist")
    );
    assert!(requests(&out).is_empty() && stanzas(&out).is_empty());
    // §5.1 order: check 5 (481) decides before check 8 (406) and check 10 (423).
    let text =
        refresh_text("zzz", 21, 30).replace("Accept: application/pidf+xml", "Accept: text/plain");
    let out = t.subscribe(&text);
    assert_eq!(responses(&out)[0].status, 481);
}

#[test]
fn case_060_unsubscribed_rejects_and_resubscribe_within_24h_is_not_reasked() {
    let mut t = T::new();
    let out = t.subscribe(D2);
    t.answer(requests(&out)[0], 200);
    let out = t.decision("subscribed");
    t.answer(requests(&out)[0], 200);
    let out = t.decision("unsubscribed");
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].cseq, 3);
    assert_eq!(state(reqs[0]), "terminated;reason=rejected");
    assert!(reqs[0].body.is_empty());
    assert_eq!(reqs[0].content_type, None);
    assert!(stanzas(&out).is_empty());
    assert!(t.p.dialogs().is_empty());
    assert_eq!(t.p.relation(&jid(S)), Some(WatcherRelation::Denied));

    // juliet subscribes again an hour later: 200 + pending, no new subscribe stanza.
    t.now += Duration::from_secs(3600);
    let out = t.subscribe(&other_dialog(2, "sip:juliet@example.com"));
    assert_eq!(responses(&out)[0].status, 200);
    let reqs = requests(&out);
    assert_eq!(state(reqs[0]), "pending;expires=3600");
    assert!(reqs[0].body.is_empty());
    assert!(stanzas(&out).is_empty());
    // A day after the first ask, romeo is asked again.
    t.now = t.t0 + Duration::from_secs(24 * 3600);
    let out = t.subscribe(&other_dialog(3, "sip:juliet@example.com"));
    assert_eq!(stanzas(&out), vec![SUBSCRIBE_STANZA]);
}

#[test]
fn lease_expiry_sends_terminated_timeout_and_no_stanza() {
    // §6.3: the SIP watcher's lease ends without refresh: final NOTIFY, relation stays Approved.
    let mut t = T::approved();
    let out = t.subscribe(&d2_with("Expires: 3600", "Expires: 60"));
    t.answer(requests(&out)[0], 200);
    let out = t.advance_to_timeout();
    assert_eq!(t.now - t.t0, Duration::from_secs(60));
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].cseq, 2);
    assert_eq!(state(reqs[0]), "terminated;reason=timeout");
    assert!(stanzas(&out).is_empty());
    assert!(t.p.dialogs().is_empty());
    assert_eq!(t.p.relation(&jid(S)), Some(WatcherRelation::Approved));
    assert_eq!(t.p.poll_timeout(), None);
}

#[test]
fn lease_expiry_while_a_notify_is_outstanding_waits_for_its_response() {
    let mut t = T::new();
    let out = t.subscribe(&d2_with("Expires: 3600", "Expires: 60"));
    let pending = requests(&out)[0].clone();
    let out = t.advance(Duration::from_secs(60));
    // Never two NOTIFYs outstanding on one dialog.
    assert!(requests(&out).is_empty());
    assert_eq!(t.p.poll_timeout(), None, "nothing to do until the response");
    // A late refresh of the ending dialog gets no new lease.
    let tag = t.local_tag();
    let out = t.subscribe(&refresh_text(&tag, 21, 600));
    assert_eq!(responses(&out)[0].status, 481);
    assert!(requests(&out).is_empty());
    let out = t.answer(&pending, 200);
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(state(reqs[0]), "terminated;reason=timeout");
    assert!(t.p.dialogs().is_empty());
}

#[test]
fn notify_answered_481_or_timing_out_removes_the_dialog_silently() {
    let mut t = T::approved();
    let out = t.subscribe(D2);
    let out = t.answer(requests(&out)[0], 481);
    assert!(requests(&out).is_empty() && stanzas(&out).is_empty());
    assert_eq!(
        out,
        vec![Output::Persist(PersistOp::DialogGone {
            call_id: "3f9a0c55e1@ua7.example.com".to_owned(),
            watcher: jid(S),
        })]
    );
    assert!(t.p.dialogs().is_empty());
    assert_eq!(t.p.relation(&jid(S)), Some(WatcherRelation::Approved));

    let mut t = T::approved();
    let out = t.subscribe(D2);
    let n = requests(&out)[0].clone();
    t.p.handle_input(
        Input::RequestFailed {
            call_id: &n.call_id,
            cseq: n.cseq,
        },
        t.now,
    );
    let out = t.drain();
    assert!(requests(&out).is_empty() && stanzas(&out).is_empty());
    assert!(t.p.dialogs().is_empty());
}

#[test]
fn notify_answered_other_failure_keeps_the_dialog() {
    let mut t = T::approved();
    let out = t.subscribe(D2);
    let out = t.answer(requests(&out)[0], 500);
    assert!(out.is_empty());
    assert_eq!(t.p.dialogs().len(), 1);
}

#[test]
fn record_route_is_copied_to_the_200_and_used_as_route_in_order() {
    let text = d2_with(
        "Max-Forwards: 69",
        "Max-Forwards: 69\nRecord-Route: <sip:p1.example.com;lr>\nRecord-Route: <sip:p2.example.com;lr>",
    );
    let rr = vec![
        "<sip:p1.example.com;lr>".to_owned(),
        "<sip:p2.example.com;lr>".to_owned(),
    ];
    let mut t = T::approved();
    let out = t.subscribe(&text);
    assert_eq!(responses(&out)[0].record_route, rr);
    let n = requests(&out)[0].clone();
    // UAS rule (RFC 3261 §12.1.1): the Record-Route order as received; target = their Contact.
    assert_eq!(n.route, rr);
    assert_eq!(n.uri, "sip:juliet@ua7.example.com:5061;transport=tls");
    assert!(wire(&n, GW_VIA).contains(
        "Via: SIP/2.0/TLS gw.xmpp.example.com:5061;branch=z9hG4bK-gw-n0001\r\n\
         Route: <sip:p1.example.com;lr>\r\nRoute: <sip:p2.example.com;lr>\r\nMax-Forwards: 70\r\n"
    ));
    t.answer(&n, 200);
    // Later NOTIFYs keep the route; a refresh with a new Contact moves the target.
    let tag = t.local_tag();
    let refresh = refresh_text(&tag, 21, 600).replace(
        "Contact: <sip:juliet@ua7.example.com:5061;transport=tls>",
        "Contact: <sip:juliet@198.51.100.9:5061;transport=tls>",
    );
    let out = t.subscribe(&refresh);
    assert!(responses(&out)[0].record_route.is_empty());
    let n = requests(&out)[0];
    assert_eq!(n.route, rr);
    assert_eq!(n.uri, "sip:juliet@198.51.100.9:5061;transport=tls");
}

#[test]
fn event_id_is_echoed_in_every_notify() {
    let mut t = T::new();
    let out = t.subscribe(&d2_with("Event: presence", "Event: presence;id=7"));
    assert_eq!(requests(&out)[0].header("Event"), Some("presence;id=7"));
    t.answer(requests(&out)[0], 200);
    let out = t.decision("subscribed");
    assert_eq!(requests(&out)[0].header("Event"), Some("presence;id=7"));
    // The final NOTIFY waits for the answer to the previous one (never two outstanding).
    let active = requests(&out)[0].clone();
    assert!(requests(&t.decision("unsubscribed")).is_empty());
    let out = t.answer(&active, 200);
    assert_eq!(requests(&out)[0].header("Event"), Some("presence;id=7"));
}

const NURSE: &str = "nurse*example.com@sip.example.net";

#[test]
fn one_presence_change_reaches_every_active_dialog_once_despite_copies() {
    let mut t = T::approved();
    t.p.restore_relation(jid(NURSE), WatcherRelation::Approved);
    let a = t.subscribe(D2);
    t.answer(requests(&a)[0], 200);
    let b = t.subscribe_as(&other_dialog(2, "sip:nurse@example.com"), NURSE);
    t.answer(requests(&b)[0], 200);
    // A pending third watcher gets no presence.
    let c = t.subscribe_as(
        &other_dialog(3, "sip:tybalt@example.com"),
        "tybalt*example.com@sip.example.net",
    );
    t.answer(requests(&c)[0], 200);
    t.now += Duration::from_secs(10);
    // Prosody sends the one change once per contact: to juliet, to the nurse, to tybalt.
    let mut all = Vec::new();
    for to in [S, NURSE, "tybalt*example.com@sip.example.net"] {
        all.extend(t.stanza(&format!(
            "<presence from='{X}/orchard' to='{to}'><show>dnd</show><status>Busy!</status><priority>10</priority></presence>"
        )));
    }
    let reqs = requests(&all);
    let calls: Vec<&str> = reqs.iter().map(|r| r.call_id.as_str()).collect();
    assert_eq!(
        calls,
        vec!["3f9a0c55e1@ua7.example.com", "call-2@ua.example.com"]
    );
    for r in &reqs {
        assert_eq!(r.cseq, 2);
        assert_eq!(state(r), "active;expires=3590");
        assert_eq!(body(r), case_034_body());
    }
    assert!(stanzas(&all).is_empty());
    // Long after the rate limit, the same presence again is still no change.
    for r in reqs {
        t.answer(r, 200);
    }
    let out = t.advance(Duration::from_secs(30));
    assert!(out.is_empty());
    let out = t.presence(
        "orchard",
        "<show>dnd</show><status>Busy!</status><priority>10</priority>",
    );
    assert!(out.is_empty());
}

#[test]
fn unsubscribed_ends_every_dialog_of_the_watcher() {
    // Two UAs of juliet: both dialogs end (this used to index past the removed dialog).
    let mut t = T::approved();
    let a = t.subscribe(D2);
    t.answer(requests(&a)[0], 200);
    let b = t.subscribe(&other_dialog(2, "sip:juliet@example.com"));
    t.answer(requests(&b)[0], 200);
    let out = t.decision("unsubscribed");
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].call_id, "3f9a0c55e1@ua7.example.com");
    assert_eq!(reqs[1].call_id, "call-2@ua.example.com");
    for r in reqs {
        assert_eq!(state(r), "terminated;reason=rejected");
    }
    assert!(t.p.dialogs().is_empty());
}

#[test]
fn two_fetches_answered_by_one_presence() {
    // Several final NOTIFYs in one input (this used to index past a removed dialog).
    let mut t = T::approved();
    t.subscribe(&d2_with("Expires: 3600", "Expires: 0"));
    t.subscribe(&other_dialog(2, "sip:juliet@example.com").replace("Expires: 3600", "Expires: 0"));
    let out = t.presence("orchard", "");
    assert_eq!(requests(&out).len(), 2);
    assert!(t.p.dialogs().is_empty());
}

// ---- 9.3 XMPP presence → PIDF (notifier mode, D2 active) ---------------------------------------

fn case_034_body() -> String {
    format!(
        "{HEAD_NS}  <tuple id=\"ID-orchard\">\n    <status><basic>open</basic></status>\n    \
         <contact priority=\"0.1\">{X_SIP}</contact>\n    <note>Busy!</note>\n  </tuple>\n  \
         <note>Busy!</note>\n  <dm:person id=\"p-1\">\n    \
         <rpid:activities><rpid:busy/></rpid:activities>\n  </dm:person>\n</presence>"
    )
}

fn plain_open(tuple_id: &str, contact_attr: &str) -> String {
    format!(
        "{HEAD}  <tuple id=\"{tuple_id}\">\n    <status><basic>open</basic></status>\n    \
         <contact{contact_attr}>{X_SIP}</contact>\n  </tuple>\n</presence>"
    )
}

/// D2 active; then each presence in turn, 10 s apart (past the rate limit), each NOTIFY
/// answered. Returns the body of the NOTIFY each produced (`None`: no NOTIFY).
fn bodies_for(presences: &[(&str, &str)]) -> Vec<Option<String>> {
    let mut t = T::approved();
    t.active();
    let mut out = Vec::new();
    for (res, children) in presences {
        t.now += Duration::from_secs(10);
        let o = t.presence(res, children);
        let reqs = requests(&o);
        assert!(reqs.len() <= 1);
        out.push(reqs.first().map(|r| {
            assert!(state(r).starts_with("active;expires="), "{}", state(r));
            assert_eq!(r.content_type, Some("application/pidf+xml"));
            body(r).to_owned()
        }));
        if let Some(r) = reqs.first() {
            let r = (*r).clone();
            t.answer(&r, 200);
        }
    }
    out
}

fn one_body(res: &str, children: &str) -> String {
    bodies_for(&[(res, children)]).remove(0).expect("a NOTIFY")
}

#[test]
fn case_034_dnd_status_priority_10() {
    let mut t = T::approved();
    t.active();
    t.now += Duration::from_secs(59);
    let out = t.presence(
        "orchard",
        "<show>dnd</show><status>Busy!</status><priority>10</priority>",
    );
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].cseq, 2);
    assert_eq!(state(reqs[0]), "active;expires=3541");
    assert_eq!(body(reqs[0]), case_034_body());
    assert!(stanzas(&out).is_empty());
}

#[test]
fn case_035_xa_is_away_plus_idle() {
    assert_eq!(
        one_body("orchard", "<show>xa</show>"),
        format!(
            "{HEAD_NS}  <tuple id=\"ID-orchard\">\n    <status><basic>open</basic></status>\n    \
             <contact>{X_SIP}</contact>\n  </tuple>\n  <dm:person id=\"p-1\">\n    \
             <rpid:activities><rpid:away/></rpid:activities>\n    \
             <rpid:user-input>idle</rpid:user-input>\n  </dm:person>\n</presence>"
        )
    );
}

#[test]
fn case_036_chat_has_no_activities() {
    assert_eq!(
        one_body("orchard", "<show>chat</show>"),
        plain_open("ID-orchard", "")
    );
}

#[test]
fn case_037_invalid_show_is_no_show_and_no_error() {
    let mut t = T::approved();
    t.active();
    t.now += Duration::from_secs(10);
    let out = t.presence("orchard", "<show>busy</show>");
    assert_eq!(body(requests(&out)[0]), plain_open("ID-orchard", ""));
    assert!(stanzas(&out).is_empty());
}

#[test]
fn case_038_priority_forms() {
    let bodies = bodies_for(&[
        ("orchard", "<priority>abc</priority>"),
        ("orchard", "<priority>300</priority>"),
        ("orchard", "<priority>-5</priority>"),
    ]);
    assert_eq!(
        bodies,
        vec![
            Some(plain_open("ID-orchard", "")),
            Some(plain_open("ID-orchard", " priority=\"1\"")),
            Some(plain_open("ID-orchard", " priority=\"0\"")),
        ]
    );
}

#[test]
fn case_039_long_status_is_truncated_and_escaped() {
    // The transport picks TCP/TLS for a body this size; here the target keeps transport=tls.
    let long = "é&".repeat(50_000);
    let mut t = T::approved();
    t.active();
    t.now += Duration::from_secs(10);
    let out = t.presence(
        "orchard",
        &format!("<status>{}</status>", long.replace('&', "&amp;")),
    );
    let r = requests(&out)[0];
    assert_eq!(r.uri, "sip:juliet@ua7.example.com:5061;transport=tls");
    let note = format!("<note>{}</note>", "é&amp;".repeat(512));
    assert_eq!(
        body(r),
        format!(
            "{HEAD}  <tuple id=\"ID-orchard\">\n    <status><basic>open</basic></status>\n    \
             <contact>{X_SIP}</contact>\n    {note}\n  </tuple>\n  {note}\n</presence>"
        )
    );
}

#[test]
fn case_040_markup_in_status_is_escaped() {
    let note = "<note>&lt;b&gt;\"Tom &amp; Jerry\"&lt;/b&gt;</note>";
    assert_eq!(
        one_body(
            "orchard",
            "<status>&lt;b&gt;\"Tom &amp; Jerry\"&lt;/b&gt;</status>"
        ),
        format!(
            "{HEAD}  <tuple id=\"ID-orchard\">\n    <status><basic>open</basic></status>\n    \
             <contact>{X_SIP}</contact>\n    {note}\n  </tuple>\n  {note}\n</presence>"
        )
    );
}

#[test]
fn case_041_tuple_ids() {
    assert_eq!(
        one_body("phone 2", ""),
        plain_open("ID-x47e56c9eababcf48", "")
    );
    assert_eq!(one_body("123", ""), plain_open("ID-123", ""));
}

const ORCHARD_AWAY_5: &str =
    "  <tuple id=\"ID-orchard\">\n    <status><basic>open</basic></status>\n    \
    <contact priority=\"0.05\">sip:romeo*example.net@xmpp.example.com</contact>\n  </tuple>\n";

#[test]
fn case_042_043_044_resources_come_and_go() {
    let bodies = bodies_for(&[
        ("orchard", "<show>away</show><priority>5</priority>"),
        ("balcony", "<show>dnd</show><priority>10</priority>"),
    ]);
    // 42: two open tuples, balcony first; the person's activity from the top resource.
    assert_eq!(
        bodies[1].as_deref(),
        Some(
            format!(
                "{HEAD_NS}  <tuple id=\"ID-balcony\">\n    <status><basic>open</basic></status>\n    \
                 <contact priority=\"0.1\">{X_SIP}</contact>\n  </tuple>\n{ORCHARD_AWAY_5}  \
                 <dm:person id=\"p-1\">\n    <rpid:activities><rpid:busy/></rpid:activities>\n  \
                 </dm:person>\n</presence>"
            )
            .as_str()
        )
    );

    let mut t = T::approved();
    t.active();
    t.presence("orchard", "<show>away</show><priority>5</priority>");
    t.presence("balcony", "<show>dnd</show><priority>10</priority>");
    // Let the coalesced NOTIFY go out and be answered.
    let out = t.advance(Duration::from_secs(10));
    if let Some(r) = requests(&out).first() {
        let r = (*r).clone();
        t.answer(&r, 200);
    }
    t.now += Duration::from_secs(10);
    // 43: balcony leaves; orchard stays.
    let out = t.stanza(&format!(
        "<presence from='{X}/balcony' to='{S}' type='unavailable'/>"
    ));
    let r = requests(&out)[0].clone();
    assert_eq!(
        body(&r),
        format!(
            "{HEAD_NS}{ORCHARD_AWAY_5}  <dm:person id=\"p-1\">\n    \
             <rpid:activities><rpid:away/></rpid:activities>\n  </dm:person>\n</presence>"
        )
    );
    t.answer(&r, 200);
    t.now += Duration::from_secs(10);
    // 44: the last resource leaves with a status: the closed document of §4.6.
    let out = t.stanza(&format!(
        "<presence from='{X}/orchard' to='{S}' type='unavailable'><status>Gone to Mantua</status></presence>"
    ));
    let r = requests(&out)[0];
    assert!(state(r).starts_with("active;"));
    assert_eq!(
        body(r),
        r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:romeo*example.net@xmpp.example.com">
  <tuple id="ID-offline"><status><basic>closed</basic></status><note>Gone to Mantua</note></tuple>
</presence>"#
    );
}

#[test]
fn case_045_three_changes_in_1_s_give_one_notify_now_and_one_after_5_s() {
    let mut t = T::approved();
    t.active();
    t.now += Duration::from_secs(10);
    let start = t.now;
    // First change: at once.
    let out = t.presence("orchard", "<show>away</show>");
    let first = requests(&out)[0].clone();
    assert_eq!(first.cseq, 2);
    // Two more within the second: nothing while the first is outstanding and rate-limited.
    t.now += Duration::from_millis(400);
    assert!(t.presence("orchard", "<show>dnd</show>").is_empty());
    t.now += Duration::from_millis(400);
    assert!(t.presence("orchard", "<show>xa</show>").is_empty());
    // The answer to the first does not release the second before 5 s.
    t.now += Duration::from_millis(100);
    assert!(requests(&t.answer(&first, 200)).is_empty());
    let out = t.advance_to_timeout();
    assert_eq!(t.now - start, Duration::from_secs(5));
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].cseq, 3);
    // The final state (xa).
    assert!(body(reqs[0]).contains("<rpid:user-input>idle</rpid:user-input>"));
    assert_eq!(t.p.poll_timeout(), Some(t.t0 + Duration::from_secs(3600)));
}

#[test]
fn case_045_changes_wait_for_the_outstanding_notify_even_after_5_s() {
    let mut t = T::approved();
    t.active();
    t.now += Duration::from_secs(10);
    let out = t.presence("orchard", "<show>away</show>");
    let first = requests(&out)[0].clone();
    t.now += Duration::from_millis(500);
    assert!(t.presence("orchard", "<show>dnd</show>").is_empty());
    // 8 s later the first is still unanswered: still nothing (never two outstanding).
    let out = t.advance(Duration::from_secs(8));
    assert!(requests(&out).is_empty());
    // Its answer releases the coalesced change at once.
    let out = t.answer(&first, 200);
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert!(body(reqs[0]).contains("<rpid:busy/>"));
}

#[test]
fn case_048_error_bounce_ends_pending_dialog_with_noresource() {
    let mut t = T::new();
    let out = t.subscribe(D2);
    t.answer(requests(&out)[0], 200);
    let out = t.stanza(&format!(
        "<presence from='{X}' to='{S}' type='error'><error type='cancel'>\
         <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
    ));
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].cseq, 2);
    assert_eq!(state(reqs[0]), "terminated;reason=noresource");
    assert!(reqs[0].body.is_empty());
    assert!(stanzas(&out).is_empty());
    assert!(t.p.dialogs().is_empty());
    assert!(out.contains(&Output::Persist(PersistOp::DialogGone {
        call_id: "3f9a0c55e1@ua7.example.com".to_owned(),
        watcher: jid(S),
    })));
}

#[test]
fn error_bounce_with_temporary_condition_gives_probation_retry_after() {
    // §5.4: the retry-after of the probation row is sent, not dropped.
    let mut t = T::new();
    let out = t.subscribe(D2);
    t.answer(requests(&out)[0], 200);
    let out = t.stanza(&format!(
        "<presence from='{X}' to='{S}' type='error'><error type='wait'>\
         <remote-server-timeout xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
    ));
    assert_eq!(
        state(requests(&out)[0]),
        "terminated;reason=probation;retry-after=300"
    );
}

#[test]
fn error_bounce_of_probe_ends_active_dialog_too() {
    // §5.4 applies to S's "pending or active" dialog: an approved watcher whose probe bounces
    // (romeo's account is gone) learns noresource.
    let mut t = T::approved();
    t.active();
    let out = t.stanza(&format!(
        "<presence from='{X}' to='{S}' type='error'><error type='cancel'>\
         <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
    ));
    let reqs = requests(&out);
    assert_eq!(state(reqs[0]), "terminated;reason=noresource");
    assert!(reqs[0].body.is_empty());
    assert!(t.p.dialogs().is_empty());
}

/// Issue 7: a drained presentity keeps no spare room (the runtime calls `shrink` after every
/// drain), and behaves the same afterwards: the next change is NOTIFYed in the same dialog.
#[test]
fn shrink_after_drain_keeps_dialogs_and_behaviour() {
    let mut t = T::approved();
    let n = t.active();
    let mut spare = std::collections::VecDeque::new();
    t.p.shrink(&mut spare);
    assert!(
        spare.capacity() > 0,
        "the drained buffer is handed to the spare"
    );
    assert_eq!(t.p.dialogs().len(), 1);
    t.advance(Duration::from_secs(10));
    let out = t.presence("balcony", "<show>away</show>");
    let r = requests(&out);
    assert_eq!(r.len(), 1, "{out:?}");
    assert_eq!(
        (r[0].call_id.as_str(), r[0].cseq),
        (n.call_id.as_str(), n.cseq + 1)
    );
}

/// Issue 6: `limits.max_status_chars` cuts X's `<status>` in the PIDF of the NOTIFY, on a char
/// boundary (5 characters of "Déjeuner" are "Déjeu").
#[test]
fn max_status_chars_cuts_the_note_made_from_the_xmpp_status() {
    let mut t = T::approved();
    t.p = Presentity::new(
        NotifierConfig {
            max_status_chars: 5,
            ..cfg()
        },
        jid(X),
        X_SIP.to_owned(),
        42,
    );
    t.p.restore_relation(jid(S), WatcherRelation::Approved);
    t.active();
    t.now += Duration::from_secs(10);
    let out = t.presence("orchard", "<status>Déjeuner</status>");
    let r = requests(&out)[0];
    let note = "<note>Déjeu</note>";
    assert_eq!(
        body(r),
        format!(
            "{HEAD}  <tuple id=\"ID-orchard\">\n    <status><basic>open</basic></status>\n    \
             <contact>{X_SIP}</contact>\n    {note}\n  </tuple>\n  {note}\n</presence>"
        )
    );
}

/// Issue 14, durable before acknowledged: the inputs that persist (a new dialog, X's
/// approval) hold everything they queue, the `active` NOTIFY of the approval included; a
/// presence change of an active dialog persists nothing, so its NOTIFY is never held.
#[test]
fn approval_awaits_durable_and_presence_changes_do_not() {
    let mut t = T::new();
    let req = request(D2);
    let w = jid(S);
    t.p.handle_input(
        Input::Subscribe {
            req: &req,
            watcher: &w,
        },
        t.now,
    );
    assert!(t.p.awaits_durable(), "a new dialog and its 200");
    let out = t.drain();
    let pending = requests(&out)[0].clone();
    t.answer(&pending, 200);
    let p = InPresence::from_xml(&format!(
        "<presence from='{X}' to='{S}' type='subscribed'/>"
    ))
    .unwrap();
    t.p.handle_input(Input::Stanza(&p), t.now);
    assert!(t.p.awaits_durable(), "the approval and its active NOTIFY");
    let out = t.drain();
    let active = requests(&out)[0].clone();
    assert!(state(&active).starts_with("active;"), "{}", state(&active));
    assert!(out.iter().any(|o| matches!(o, Output::Persist(_))));
    t.answer(&active, 200);
    t.now += Duration::from_secs(10);
    let p = InPresence::from_xml(&format!(
        "<presence from='{X}/balcony' to='{S}'><show>away</show></presence>"
    ))
    .unwrap();
    t.p.handle_input(Input::Stanza(&p), t.now);
    assert!(!t.p.awaits_durable(), "a presence change");
    let out = t.drain();
    assert_eq!(requests(&out).len(), 1, "{out:?}");
}

/// Issue 14: a gateway killed after the 200 to a SIP watcher's SUBSCRIBE but before the
/// `subscribe` stanza or the pending NOTIFY left restores the dialog and the pending relation;
/// it then asks X again and tells the watcher its state, instead of leaving both waiting until
/// the watcher's refresh.
#[test]
fn restart_asks_again_for_a_watcher_still_waiting_and_notifies_it() {
    let mut t = T::new();
    let out = t.subscribe(D2);
    assert_eq!(
        stanzas(&out),
        vec![format!("<presence from='{S}' to='{X}' type='subscribe'/>")]
    );
    let before = t.p.dialogs()[0].clone();
    // The restarted gateway: a new machine with what the store held.
    t.p = Presentity::new(cfg(), jid(X), X_SIP.to_owned(), 43);
    t.p.restore_relation(jid(S), WatcherRelation::Pending);
    t.p.restore_dialog(before.clone(), Duration::from_secs(1800), t.now);
    t.p.resume_after_restart(t.now);
    let out = t.drain();
    assert_eq!(
        stanzas(&out),
        vec![format!("<presence from='{S}' to='{X}' type='subscribe'/>")]
    );
    let n = requests(&out);
    assert_eq!(n.len(), 1, "{out:?}");
    assert_eq!(n[0].call_id, before.call_id);
    assert!(
        n[0].cseq > before.local_cseq,
        "a CSeq the watcher has not seen"
    );
    assert!(state(n[0]).starts_with("pending;"), "{}", state(n[0]));
    // An approved watcher is not asked again: X is probed instead.
    let mut t = T::approved();
    t.active();
    let d = t.p.dialogs()[0].clone();
    t.p = Presentity::new(cfg(), jid(X), X_SIP.to_owned(), 44);
    t.p.restore_relation(jid(S), WatcherRelation::Approved);
    t.p.restore_dialog(d, Duration::from_secs(1800), t.now);
    t.p.resume_after_restart(t.now);
    let out = t.drain();
    assert_eq!(
        stanzas(&out),
        vec![format!("<presence from='{S}' to='{X}' type='probe'/>")]
    );
    assert!(requests(&out).is_empty(), "{out:?}");
}
