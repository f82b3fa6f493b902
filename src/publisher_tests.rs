//! Conformance tests of the PUBLISH client (PUA mode, RFC 3903, §4.7), named after the cases of
//! §9 of the spec digest. Fixture: romeo@example.net published as
//! X' = sip:romeo*example.net@xmpp.example.com.

use super::*;
use crate::sip::encode::encode_request;
use crate::sip::parse::parse_message;
use crate::sip::SipMessage;

const X_SIP: &str = "sip:romeo*example.net@xmpp.example.com";

/// The body of the §4.7 example (216 octets).
const OPEN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:romeo*example.net@xmpp.example.com">
  <tuple id="ID-orchard"><status><basic>open</basic></status></tuple>
</presence>"#;

const AWAY: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:romeo*example.net@xmpp.example.com">
  <tuple id="ID-orchard"><status><basic>open</basic></status><note>away</note></tuple>
</presence>"#;

const CLOSED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:romeo*example.net@xmpp.example.com">
  <tuple id="ID-offline"><status><basic>closed</basic></status></tuple>
</presence>"#;

fn cfg() -> PublisherConfig {
    PublisherConfig {
        call_id_host: "gw.xmpp.example.com".to_owned(),
        ..PublisherConfig::default()
    }
}

fn requests(out: &[Output]) -> Vec<&OutRequest> {
    out.iter()
        .filter_map(|o| match o {
            Output::Request(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn only_request(out: &[Output]) -> OutRequest {
    let reqs = requests(out);
    assert_eq!(reqs.len(), 1, "{out:?}");
    reqs[0].clone()
}

fn body(r: &OutRequest) -> &str {
    std::str::from_utf8(&r.body).unwrap()
}

fn wire(r: &OutRequest, via: &str) -> String {
    let mut out = Vec::new();
    encode_request(r, via, &mut out);
    String::from_utf8(out).unwrap()
}

struct T {
    p: Publication,
    now: Instant,
    t0: Instant,
}

impl T {
    fn new() -> T {
        let now = Instant::now();
        T {
            p: Publication::new(cfg(), X_SIP.to_owned(), 42),
            now,
            t0: now,
        }
    }
    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.p.poll_output()).collect()
    }
    fn update(&mut self, pidf: &str, available: bool) -> Vec<Output> {
        self.p.handle_input(
            Input::Update {
                pidf: pidf.to_owned(),
                available,
            },
            self.now,
        );
        self.drain()
    }
    /// The presence server's answer to `r`; `extra` are header lines ending in CRLF.
    fn answer(&mut self, r: &OutRequest, status: u16, extra: &str) -> Vec<Output> {
        let text = format!(
            "SIP/2.0 {status} X\r\nVia: SIP/2.0/TCP gw.xmpp.example.com:5060;branch=z9hG4bK-pub\r\n\
             From: <{X_SIP}>;tag={}\r\nTo: <{X_SIP}>;tag=ps-1\r\nCall-ID: {}\r\nCSeq: {} PUBLISH\r\n\
             {extra}Content-Length: 0\r\n\r\n",
            r.from.tag.as_deref().unwrap(),
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
    fn ok(&mut self, r: &OutRequest, etag: &str) -> Vec<Output> {
        self.answer(r, 200, &format!("SIP-ETag: {etag}\r\nExpires: 3600\r\n"))
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
    /// Case 87 done: the initial PUBLISH answered with `kwj449x`.
    fn published(&mut self) -> OutRequest {
        let out = self.update(OPEN, true);
        let r = only_request(&out);
        self.ok(&r, "kwj449x");
        r
    }
}

#[test]
fn case_087_initial_publish_has_body_and_no_if_match_then_etag_is_stored() {
    let mut t = T::new();
    let out = t.update(OPEN, true);
    let r = only_request(&out);
    let tag = r.from.tag.clone().unwrap();
    assert!(tag.starts_with("pub-"), "{tag}");
    assert!(r.call_id.ends_with("@gw.xmpp.example.com"), "{}", r.call_id);
    assert_eq!(r.destination, Destination::OutboundProxy);
    assert_eq!(r.header("SIP-If-Match"), None);
    // The §4.7 example, byte for byte (our Call-ID and tag in place of the example's).
    let via = "SIP/2.0/TCP gw.xmpp.example.com:5060;branch=z9hG4bK-pub-0001";
    assert_eq!(
        wire(&r, via),
        format!(
            "PUBLISH sip:romeo*example.net@xmpp.example.com SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
             From: <sip:romeo*example.net@xmpp.example.com>;tag={tag}\r\n\
             To: <sip:romeo*example.net@xmpp.example.com>\r\nCall-ID: {}\r\nCSeq: 1 PUBLISH\r\n\
             Event: presence\r\nExpires: 3600\r\nContent-Type: application/pidf+xml\r\n\
             Content-Length: 216\r\n\r\n{OPEN}",
            r.call_id
        )
    );
    assert_eq!(
        t.p.poll_timeout(),
        None,
        "nothing to do while the PUBLISH is outstanding"
    );
    let out = t.ok(&r, "kwj449x");
    assert_eq!(t.p.etag(), Some("kwj449x"));
    assert_eq!(
        out,
        vec![Output::Persist(PublicationRecord {
            uri: X_SIP.to_owned(),
            etag: Some("kwj449x".to_owned()),
            call_id: r.call_id.clone(),
            cseq: 1,
            body: Some(OPEN.to_owned()),
            available: true,
            lease_left: Some(3600),
        })]
    );
}

#[test]
fn case_088_modify_carries_if_match_and_full_body_and_new_etag_replaces() {
    let mut t = T::new();
    let first = t.published();
    let out = t.update(AWAY, true);
    let r = only_request(&out);
    assert_eq!(r.cseq, 2);
    assert_eq!(r.call_id, first.call_id);
    assert_eq!(r.from.tag, first.from.tag);
    assert_eq!(
        r.headers,
        vec![
            ("Event", "presence".to_owned()),
            ("SIP-If-Match", "kwj449x".to_owned()),
            ("Expires", "3600".to_owned()),
        ]
    );
    assert_eq!(r.content_type, Some("application/pidf+xml"));
    assert_eq!(body(&r), AWAY);
    t.ok(&r, "8sd2x1");
    assert_eq!(t.p.etag(), Some("8sd2x1"));
    // The next one matches the new etag.
    let r = only_request(&t.update(OPEN, true));
    assert_eq!(r.header("SIP-If-Match"), Some("8sd2x1"));
}

#[test]
fn case_089_412_to_a_refresh_restarts_with_initial_full_body() {
    let mut t = T::new();
    t.published();
    let refresh = only_request(&t.advance_to_timeout());
    assert_eq!(refresh.header("SIP-If-Match"), Some("kwj449x"));
    let out = t.answer(&refresh, 412, "");
    let r = only_request(&out);
    assert_eq!(r.cseq, 3);
    assert_eq!(r.header("SIP-If-Match"), None);
    assert_eq!(r.header("Expires"), Some("3600"));
    assert_eq!(body(&r), OPEN);
    assert_eq!(t.p.etag(), None);
    t.ok(&r, "n3w");
    assert_eq!(t.p.etag(), Some("n3w"));
}

#[test]
fn case_089_412_to_a_modify_restarts_with_the_latest_body() {
    let mut t = T::new();
    t.published();
    let r = only_request(&t.update(AWAY, true));
    let out = t.answer(&r, 412, "");
    let r = only_request(&out);
    assert_eq!(r.header("SIP-If-Match"), None);
    assert_eq!(body(&r), AWAY);
}

#[test]
fn refresh_has_no_body_and_goes_at_the_refresh_point() {
    let mut t = T::new();
    let first = t.published();
    let out = t.advance_to_timeout();
    let after = (t.now - t.t0).as_secs_f64();
    assert!(
        (2850.0..=3150.0).contains(&after),
        "refresh at 3000 s ±5 %, got {after}"
    );
    let r = only_request(&out);
    let via = "SIP/2.0/TCP gw.xmpp.example.com:5060;branch=z9hG4bK-pub-0002";
    assert_eq!(
        wire(&r, via),
        format!(
            "PUBLISH sip:romeo*example.net@xmpp.example.com SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
             From: <sip:romeo*example.net@xmpp.example.com>;tag={}\r\n\
             To: <sip:romeo*example.net@xmpp.example.com>\r\nCall-ID: {}\r\nCSeq: 2 PUBLISH\r\n\
             Event: presence\r\nSIP-If-Match: kwj449x\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n",
            first.from.tag.as_deref().unwrap(),
            first.call_id
        )
    );
    // Its 2xx may rotate the etag too; the server still holds OPEN, so OPEN again is no change.
    t.ok(&r, "r0t");
    assert_eq!(t.p.etag(), Some("r0t"));
    assert!(t.update(OPEN, true).is_empty());
}

#[test]
fn remove_60_s_after_the_closed_document() {
    let mut t = T::new();
    t.published();
    t.now += Duration::from_secs(100);
    // The closed document first (watchers see "offline", not "unknown").
    let r = only_request(&t.update(CLOSED, false));
    assert_eq!(r.header("SIP-If-Match"), Some("kwj449x"));
    assert_eq!(body(&r), CLOSED);
    let closed_at = t.now;
    t.now += Duration::from_secs(1);
    t.ok(&r, "c1");
    // Prosody's further copies of the same unavailable do not push the removal back.
    t.now += Duration::from_secs(10);
    assert!(t.update(CLOSED, false).is_empty());
    let out = t.advance_to_timeout();
    assert_eq!(t.now - closed_at, Duration::from_secs(60));
    let r = only_request(&out);
    assert_eq!(
        r.headers,
        vec![
            ("Event", "presence".to_owned()),
            ("SIP-If-Match", "c1".to_owned()),
            ("Expires", "0".to_owned()),
        ]
    );
    assert!(r.body.is_empty());
    assert_eq!(r.content_type, None);
    t.ok(&r, "gone");
    assert_eq!(t.p.etag(), None);
    assert_eq!(t.p.poll_timeout(), None);
    // Back online: a new initial publication.
    let r = only_request(&t.update(OPEN, true));
    assert_eq!(r.header("SIP-If-Match"), None);
    assert_eq!(body(&r), OPEN);
}

#[test]
fn availability_within_60_s_cancels_the_removal() {
    let mut t = T::new();
    t.published();
    let r = only_request(&t.update(CLOSED, false));
    t.ok(&r, "c1");
    t.now += Duration::from_secs(30);
    let r = only_request(&t.update(OPEN, true));
    t.ok(&r, "o1");
    // The next timer is the refresh, not a removal.
    let out = t.advance_to_timeout();
    let r = only_request(&out);
    assert_eq!(r.header("Expires"), Some("3600"));
    assert!(r.body.is_empty());
}

#[test]
fn removal_that_fails_is_retried_as_a_removal() {
    let mut t = T::new();
    t.published();
    let r = only_request(&t.update(CLOSED, false));
    t.ok(&r, "c1");
    let remove = only_request(&t.advance_to_timeout());
    assert_eq!(remove.header("Expires"), Some("0"));
    t.answer(&remove, 503, "Retry-After: 20\r\n");
    let before = t.now;
    let r = only_request(&t.advance_to_timeout());
    assert_eq!(t.now - before, Duration::from_secs(20));
    assert_eq!(r.header("Expires"), Some("0"));
    assert!(r.body.is_empty());
}

#[test]
fn case_423_retries_with_min_expires_and_keeps_it() {
    let mut t = T::new();
    let r = only_request(&t.update(OPEN, true));
    let out = t.answer(&r, 423, "Min-Expires: 7200\r\n");
    let r = only_request(&out);
    assert_eq!(r.cseq, 2);
    assert_eq!(r.header("SIP-If-Match"), None);
    assert_eq!(r.header("Expires"), Some("7200"));
    assert_eq!(body(&r), OPEN);
    t.answer(&r, 200, "SIP-ETag: kwj449x\r\nExpires: 7200\r\n");
    // Refresh at 6600 s ±5 %, still asking for 7200.
    let out = t.advance_to_timeout();
    let after = (t.now - t.t0).as_secs_f64();
    assert!((6270.0..=6930.0).contains(&after), "{after}");
    assert_eq!(only_request(&out).header("Expires"), Some("7200"));
}

#[test]
fn case_423_without_usable_min_expires_backs_off_instead_of_looping() {
    let mut t = T::new();
    let r = only_request(&t.update(OPEN, true));
    let out = t.answer(&r, 423, "");
    assert!(requests(&out).is_empty());
    let before = t.now;
    let r = only_request(&t.advance_to_timeout());
    let waited = (t.now - before).as_secs_f64();
    assert!((24.0..=36.0).contains(&waited), "{waited}");
    assert_eq!(body(&r), OPEN);
}

#[test]
fn identical_body_many_times_gives_one_publish() {
    // Prosody delivers one copy of each presence per contact.
    let mut t = T::new();
    let out = t.update(OPEN, true);
    let r = only_request(&out);
    for _ in 0..5 {
        assert!(t.update(OPEN, true).is_empty());
    }
    t.ok(&r, "kwj449x");
    for _ in 0..5 {
        assert!(t.update(OPEN, true).is_empty());
    }
}

#[test]
fn change_while_outstanding_is_queued_and_sent_after_the_2xx() {
    let mut t = T::new();
    let first = only_request(&t.update(OPEN, true));
    // Never two outstanding.
    assert!(t.update(AWAY, true).is_empty());
    assert!(t.update(CLOSED, false).is_empty());
    let out = t.ok(&first, "kwj449x");
    // The 2xx of OPEN: then one modify with the latest state, on the new etag.
    let r = only_request(&out);
    assert_eq!(r.cseq, 2);
    assert_eq!(r.header("SIP-If-Match"), Some("kwj449x"));
    assert_eq!(body(&r), CLOSED);
}

#[test]
fn change_and_back_while_outstanding_sends_nothing_more() {
    let mut t = T::new();
    let first = only_request(&t.update(OPEN, true));
    assert!(t.update(AWAY, true).is_empty());
    assert!(t.update(OPEN, true).is_empty());
    let out = t.ok(&first, "kwj449x");
    assert!(requests(&out).is_empty());
}

#[test]
fn failure_backs_off_then_resends_the_current_document() {
    let mut t = T::new();
    let r = only_request(&t.update(OPEN, true));
    t.p.handle_input(
        Input::RequestFailed {
            call_id: &r.call_id,
            cseq: r.cseq,
        },
        t.now,
    );
    assert!(t.drain().is_empty());
    let before = t.now;
    let r = only_request(&t.advance_to_timeout());
    let waited = (t.now - before).as_secs_f64();
    assert!((24.0..=36.0).contains(&waited), "{waited}");
    assert_eq!(r.header("SIP-If-Match"), None);
    assert_eq!(body(&r), OPEN);
}

#[test]
fn bad_event_disables_the_publication() {
    let mut t = T::new();
    let r = only_request(&t.update(OPEN, true));
    assert!(t.answer(&r, 489, "").is_empty());
    assert!(!t.p.is_enabled());
    assert!(t.update(AWAY, true).is_empty());
    assert_eq!(t.p.poll_timeout(), None);
}

#[test]
fn responses_for_other_requests_are_ignored() {
    let mut t = T::new();
    let r = only_request(&t.update(OPEN, true));
    let stale = OutRequest {
        cseq: 7,
        ..r.clone()
    };
    assert!(t.ok(&stale, "zzz").is_empty());
    assert_eq!(t.p.etag(), None);
    t.ok(&r, "kwj449x");
    assert_eq!(t.p.etag(), Some("kwj449x"));
}

// ---- restore after a restart (issue 6) --------------------------------------------------------

const STORED_CALL_ID: &str = "p7a3c1e09@gw.xmpp.example.com";

fn stored(etag: Option<&str>, body: Option<&str>, available: bool, left: u32) -> PublicationRecord {
    PublicationRecord {
        uri: X_SIP.to_owned(),
        etag: etag.map(str::to_owned),
        call_id: STORED_CALL_ID.to_owned(),
        cseq: 4,
        body: body.map(str::to_owned),
        available,
        lease_left: Some(left),
    }
}

impl T {
    fn restored(rec: PublicationRecord) -> (T, Vec<Output>) {
        let now = Instant::now();
        let mut t = T {
            p: Publication::restore(cfg(), rec, 42, now),
            now,
            t0: now,
        };
        let out = t.drain();
        (t, out)
    }
}

#[test]
fn restore_of_a_live_publication_refreshes_it_at_once_with_the_stored_etag() {
    let (mut t, out) = T::restored(stored(Some("kwj449x"), Some(OPEN), true, 1200));
    let r = only_request(&out);
    let via = "SIP/2.0/UDP gw.xmpp.example.com:5060;branch=z9hG4bK-pub-0005";
    assert_eq!(
        wire(&r, via),
        format!(
            "PUBLISH sip:romeo*example.net@xmpp.example.com SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
             From: <sip:romeo*example.net@xmpp.example.com>;tag={}\r\n\
             To: <sip:romeo*example.net@xmpp.example.com>\r\nCall-ID: {STORED_CALL_ID}\r\nCSeq: 5 PUBLISH\r\n\
             Event: presence\r\nSIP-If-Match: kwj449x\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n",
            r.from.tag.as_deref().unwrap(),
        )
    );
    assert_eq!(
        t.ok(&r, "r0t"),
        vec![Output::Persist(PublicationRecord {
            uri: X_SIP.to_owned(),
            etag: Some("r0t".to_owned()),
            call_id: STORED_CALL_ID.to_owned(),
            cseq: 5,
            body: Some(OPEN.to_owned()),
            available: true,
            lease_left: Some(3600),
        })]
    );
    // The server holds the stored document: the same presence again is no change, a new one
    // is a modify of the refreshed entity-tag.
    assert!(t.update(OPEN, true).is_empty());
    let r = only_request(&t.update(AWAY, true));
    assert_eq!(r.cseq, 6);
    assert_eq!(r.header("SIP-If-Match"), Some("r0t"));
    assert_eq!(body(&r), AWAY);
}

#[test]
fn case_089_restored_refresh_answered_412_publishes_the_stored_body_anew() {
    let (mut t, out) = T::restored(stored(Some("kwj449x"), Some(AWAY), true, 1200));
    let refresh = only_request(&out);
    assert_eq!(refresh.header("SIP-If-Match"), Some("kwj449x"));
    let r = only_request(&t.answer(&refresh, 412, ""));
    assert_eq!((r.call_id.as_str(), r.cseq), (STORED_CALL_ID, 6));
    assert_eq!(
        r.headers,
        vec![
            ("Event", "presence".to_owned()),
            ("Expires", "3600".to_owned()),
        ]
    );
    assert_eq!(r.content_type, Some("application/pidf+xml"));
    assert_eq!(body(&r), AWAY);
    t.ok(&r, "n3w");
    assert_eq!(t.p.etag(), Some("n3w"));
}

#[test]
fn restore_of_an_expired_publication_publishes_the_stored_body_anew() {
    let (_, out) = T::restored(stored(Some("kwj449x"), Some(OPEN), true, 0));
    let r = only_request(&out);
    assert_eq!(r.cseq, 5);
    assert_eq!(r.header("SIP-If-Match"), None);
    assert_eq!(r.header("Expires"), Some("3600"));
    assert_eq!(body(&r), OPEN);
}

#[test]
fn restore_of_an_unavailable_publication_refreshes_then_removes_it_after_60_s() {
    let (mut t, out) = T::restored(stored(Some("kwj449x"), Some(CLOSED), false, 1200));
    let r = only_request(&out);
    assert_eq!(r.header("SIP-If-Match"), Some("kwj449x"));
    t.ok(&r, "c10");
    let restored_at = t.now;
    let r = only_request(&t.advance_to_timeout());
    assert_eq!(t.now - restored_at, Duration::from_secs(60));
    assert_eq!(r.header("SIP-If-Match"), Some("c10"));
    assert_eq!(r.header("Expires"), Some("0"));
    assert!(r.body.is_empty());
}

#[test]
fn restore_sends_nothing_for_a_removed_or_expired_unavailable_publication() {
    let (t, out) = T::restored(stored(None, None, true, 0));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(t.p.poll_timeout(), None);
    let (t, out) = T::restored(stored(Some("kwj449x"), Some(CLOSED), false, 0));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(t.p.poll_timeout(), None);
}
