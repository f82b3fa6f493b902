//! Conformance tests of the subscriber state machine, named after the cases of §9 of the spec
//! digest (`../shared/docs/interworking.md`). Fixtures: romeo@example.net watches
//! sip:juliet@example.com through the component sip.example.net.

use super::*;
use crate::sip::parse::parse_message;
use crate::sip::SipMessage;
use crate::stanza::InPresence;

const PIDF_42: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
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
</presence>"#;

const DESK_DND: &str =
    "<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net'>\
<show>dnd</show><status xml:lang='en'>On the balcony</status><priority>80</priority></presence>";

fn pair() -> Pair {
    Pair {
        watcher: BareJid::new("romeo@example.net").unwrap(),
        watcher_uri: "sip:romeo*example.net@xmpp.example.com".into(),
        presentity: BareJid::new("juliet*example.com@sip.example.net").unwrap(),
        presentity_uri: "sip:juliet@example.com".into(),
    }
}

fn cfg() -> SubscriberConfig {
    SubscriberConfig::new(3600, "gw.xmpp.example.com:5060", "gw.xmpp.example.com")
}

fn stanza(kind: &str) -> InPresence {
    InPresence::from_xml(&format!(
        "<presence from='romeo@example.net' to='juliet*example.com@sip.example.net' type='{kind}' id='sub-7'/>"
    ))
    .unwrap()
}

struct T {
    sub: Subscription,
    now: Instant,
    t0: Instant,
}

impl T {
    fn new(relation: Relation) -> T {
        let now = Instant::now();
        T {
            sub: Subscription::new(cfg(), pair(), relation, 42),
            now,
            t0: now,
        }
    }
    fn input(&mut self, i: Input<'_>) -> Vec<Output> {
        self.sub.handle_input(i, self.now);
        std::iter::from_fn(|| self.sub.poll_output()).collect()
    }
    fn stanza(&mut self, kind: &str) -> Vec<Output> {
        let p = stanza(kind);
        self.input(Input::Stanza(&p))
    }
    fn advance_to_timeout(&mut self) -> Vec<Output> {
        let t = self.sub.poll_timeout().expect("a timer is armed");
        self.now = self.now.max(t);
        self.input(Input::Timeout)
    }
    fn dialog(&self) -> Dialog {
        self.sub.dialog().expect("dialog")
    }
    /// A NOTIFY in the current dialog from the presence server.
    fn notify(&mut self, cseq: u32, state: &str, body: Option<&str>) -> Vec<Output> {
        let d = self.dialog();
        let text = notify_text(
            &d.call_id,
            &d.local_tag,
            cseq,
            state,
            "application/pidf+xml",
            body,
        );
        self.notify_raw(&text)
    }
    fn notify_raw(&mut self, text: &str) -> Vec<Output> {
        let req = request(text);
        self.input(Input::Notify {
            req: &req,
            now_unix: 1_800_000_000,
        })
    }
    fn respond(&mut self, status: u16, extra: &str) -> Vec<Output> {
        let d = self.dialog();
        let text = format!(
            "SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP gw.xmpp.example.com:5060;branch=z9hG4bK-1\r\n\
             From: <sip:romeo*example.net@xmpp.example.com>;tag={}\r\nTo: <sip:juliet@example.com>;tag=ps-91aa07\r\n\
             Call-ID: {}\r\nCSeq: {} SUBSCRIBE\r\n{extra}Content-Length: 0\r\n\r\n",
            d.local_tag, d.call_id, d.local_cseq
        );
        let resp = match parse_message(text.as_bytes()) {
            Ok(SipMessage::Response(r)) => r,
            other => panic!("bad test response: {other:?}"),
        };
        self.input(Input::Response(&resp))
    }
    /// subscribe → SUBSCRIBE → 200 → NOTIFY active with the §4.2 PIDF.
    fn active(&mut self) {
        self.stanza("subscribe");
        self.respond(200, "Expires: 1800\r\n");
        self.notify(102, "active;expires=1740", Some(PIDF_42));
    }
}

fn notify_text(
    call_id: &str,
    local_tag: &str,
    cseq: u32,
    state: &str,
    ct: &str,
    body: Option<&str>,
) -> String {
    let body = body.unwrap_or("");
    let ct = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Type: {ct}\r\n")
    };
    format!(
        "NOTIFY sip:romeo*example.net@gw.xmpp.example.com:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP ps1.example.com:5060;branch=z9hG4bK-ps-{cseq}\r\nMax-Forwards: 70\r\n\
         From: <sip:juliet@example.com>;tag=ps-91aa07\r\nTo: <sip:romeo*example.net@xmpp.example.com>;tag={local_tag}\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} NOTIFY\r\nContact: <sip:ps1.example.com:5060;transport=tcp>\r\n\
         Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
         Event: presence\r\nSubscription-State: {state}\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn request(text: &str) -> SipRequest {
    match parse_message(text.as_bytes()) {
        Ok(SipMessage::Request(r)) => r,
        other => panic!("bad test request: {other:?}"),
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

fn responses(out: &[Output]) -> Vec<u16> {
    out.iter()
        .filter_map(|o| match o {
            Output::Response(r) => Some(r.status),
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

fn header<'a>(r: &'a OutRequest, name: &str) -> Option<&'a str> {
    r.header(name)
}

const SUBSCRIBED: &str =
    "<presence from='juliet*example.com@sip.example.net' to='romeo@example.net' type='subscribed'/>";
const UNSUBSCRIBED: &str =
    "<presence from='juliet*example.com@sip.example.net' to='romeo@example.net' type='unsubscribed'/>";

#[test]
fn case_018_subscribe_sends_one_subscribe_and_no_stanza() {
    let mut t = T::new(Relation::Pending);
    let out = t.stanza("subscribe");
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    let r = reqs[0];
    assert_eq!(r.method, Method::Subscribe);
    assert_eq!(r.uri, "sip:juliet@example.com");
    assert_eq!(header(r, "Event"), Some("presence"));
    assert_eq!(header(r, "Expires"), Some("3600"));
    assert_eq!(header(r, "Accept"), Some("application/pidf+xml"));
    assert_eq!(r.cseq, 1);
    assert_eq!(r.to.tag, None);
    assert!(r.from.tag.as_deref().is_some_and(|t| t.starts_with("gw-")));
    assert!(r.call_id.ends_with("@gw.xmpp.example.com"));
    assert_eq!(
        r.contact.as_deref(),
        Some("sip:romeo*example.net@gw.xmpp.example.com:5060")
    );
    assert_eq!(r.destination, Destination::OutboundProxy);
    assert!(stanzas(&out).is_empty());
    assert_eq!(t.sub.phase(), Phase::Waiting { fetch: false });
}

#[test]
fn case_019_no_notify_within_timer_n_retries_later_with_new_call_id() {
    let mut t = T::new(Relation::Pending);
    t.stanza("subscribe");
    let first = t.dialog().call_id;
    t.respond(200, "Expires: 1800\r\n");
    let out = t.advance_to_timeout();
    assert_eq!(t.now - t.t0, timers::TIMER_N);
    assert!(requests(&out).is_empty() && stanzas(&out).is_empty());
    assert_eq!(t.sub.phase(), Phase::Backoff);
    let out = t.advance_to_timeout();
    let waited = (t.now - t.t0 - timers::TIMER_N).as_secs_f64();
    assert!(
        (24.0..=36.0).contains(&waited),
        "retry after ≈30 s, got {waited}"
    );
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_ne!(reqs[0].call_id, first);
    assert_eq!(reqs[0].cseq, 1);
    assert!(stanzas(&out).is_empty());
}

#[test]
fn case_020_pending_notify_is_answered_without_stanza() {
    let mut t = T::new(Relation::Pending);
    t.stanza("subscribe");
    let out = t.notify(101, "pending;expires=1800", None);
    assert_eq!(responses(&out), vec![200]);
    assert!(stanzas(&out).is_empty());
    assert_eq!(t.sub.phase(), Phase::Pending);
}

#[test]
fn case_021_active_notify_gives_subscribed_then_presence() {
    let mut t = T::new(Relation::Pending);
    t.stanza("subscribe");
    t.respond(200, "Expires: 1800\r\n");
    t.notify(101, "pending;expires=1800", None);
    let out = t.notify(102, "active;expires=1740", Some(PIDF_42));
    assert_eq!(responses(&out), vec![200]);
    assert_eq!(
        stanzas(&out),
        vec![SUBSCRIBED.to_owned(), DESK_DND.to_owned()]
    );
    // The response precedes the stanzas.
    assert!(matches!(out[0], Output::Response(_)));
    assert_eq!(t.sub.relation(), Relation::Approved);
}

#[test]
fn case_022_identical_notify_is_deduplicated() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let out = t.notify(103, "active;expires=1700", Some(PIDF_42));
    assert_eq!(responses(&out), vec![200]);
    assert!(stanzas(&out).is_empty());
}

#[test]
fn case_023_subscribe_while_active_resends_subscribed_and_cached_presence() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let out = t.stanza("subscribe");
    assert!(requests(&out).is_empty());
    assert_eq!(
        stanzas(&out),
        vec![SUBSCRIBED.to_owned(), DESK_DND.to_owned()]
    );
}

#[test]
fn case_024_unsubscribe_ends_dialog_in_dialog_and_sends_unavailable() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let d = t.dialog();
    let out = t.stanza("unsubscribe");
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    let r = reqs[0];
    assert_eq!(r.to.tag.as_deref(), Some("ps-91aa07"));
    assert_eq!(r.cseq, d.local_cseq + 1);
    assert_eq!(header(r, "Expires"), Some("0"));
    assert_eq!(r.uri, "sip:ps1.example.com:5060;transport=tcp");
    assert_eq!(
        r.route,
        vec![
            "<sip:p1.example.com;lr>".to_owned(),
            "<sip:p2.example.com;lr>".to_owned()
        ]
    );
    assert_eq!(r.call_id, d.call_id);
    assert_eq!(
        stanzas(&out),
        vec!["<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net' type='unavailable'/>"]
    );
    assert!(out.contains(&Output::Forget));
    // The final NOTIFY ends the machine; no unsubscribed is ever sent.
    let out = t.notify(103, "terminated;reason=timeout", None);
    assert_eq!(responses(&out), vec![200]);
    assert!(stanzas(&out).is_empty());
    assert!(t.sub.is_done());
}

#[test]
fn case_026_probe_is_answered_from_cache_without_sip() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let probe = InPresence::from_xml(
        "<presence from='romeo@example.net/balcony' to='juliet*example.com@sip.example.net' type='probe'/>",
    )
    .unwrap();
    let out = t.input(Input::Stanza(&probe));
    assert!(requests(&out).is_empty());
    assert_eq!(
        stanzas(&out),
        vec!["<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net/balcony'>\
<show>dnd</show><status xml:lang='en'>On the balcony</status><priority>80</priority></presence>"]
    );
}

#[test]
fn case_027_probe_with_approved_relation_and_no_dialog_subscribes() {
    let mut t = T::new(Relation::Approved);
    let out = t.stanza("probe");
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(header(reqs[0], "Expires"), Some("3600"));
    let out = t.notify(1, "active;expires=3600", Some(PIDF_42));
    // Presence, and no second `subscribed` for an approved relation.
    assert_eq!(stanzas(&out), vec![DESK_DND.to_owned()]);
}

#[test]
fn case_028_probe_without_relation_fetches() {
    // 403 to the fetch: unsubscribed.
    let mut t = T::new(Relation::Unknown);
    let out = t.stanza("probe");
    assert_eq!(header(requests(&out)[0], "Expires"), Some("0"));
    let out = t.respond(403, "");
    assert_eq!(stanzas(&out), vec![UNSUBSCRIBED.to_owned()]);
    assert!(t.sub.is_done());

    // terminated;reason=timeout with an open PIDF: presence, then a 3600 s SUBSCRIBE.
    let mut t = T::new(Relation::Unknown);
    t.stanza("probe");
    let fetch_call = t.dialog().call_id;
    t.respond(200, "Expires: 0\r\n");
    let out = t.notify(1, "terminated;reason=timeout", Some(PIDF_42));
    assert_eq!(responses(&out), vec![200]);
    assert_eq!(stanzas(&out), vec![DESK_DND.to_owned()]);
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(header(reqs[0], "Expires"), Some("3600"));
    assert_ne!(reqs[0].call_id, fetch_call);
    assert_eq!(t.sub.relation(), Relation::Approved);
}

#[test]
fn case_029_404_gives_unsubscribed_and_no_retry() {
    let mut t = T::new(Relation::Pending);
    t.stanza("subscribe");
    let out = t.respond(404, "");
    assert_eq!(stanzas(&out), vec![UNSUBSCRIBED.to_owned()]);
    assert!(out.contains(&Output::Forget));
    assert!(t.sub.is_done());
    assert_eq!(t.sub.poll_timeout(), None);
}

#[test]
fn case_030_603_gives_unsubscribed_and_no_retry() {
    let mut t = T::new(Relation::Pending);
    t.stanza("subscribe");
    let out = t.respond(603, "");
    assert_eq!(stanzas(&out), vec![UNSUBSCRIBED.to_owned()]);
    assert!(t.sub.is_done());
}

#[test]
fn case_031_423_retries_with_min_expires_in_same_dialog() {
    let mut t = T::new(Relation::Pending);
    let out = t.stanza("subscribe");
    let first = requests(&out)[0].clone();
    let out = t.respond(423, "Min-Expires: 1800\r\n");
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].cseq, 2);
    assert_eq!(reqs[0].call_id, first.call_id);
    assert_eq!(reqs[0].from.tag, first.from.tag);
    assert_eq!(header(reqs[0], "Expires"), Some("1800"));
    assert!(stanzas(&out).is_empty());
}

#[test]
fn case_032_503_retry_after_then_error_after_five_failures() {
    let mut t = T::new(Relation::Pending);
    t.stanza("subscribe");
    for attempt in 1..=5 {
        let before = t.now;
        let out = t.respond(503, "Retry-After: 120\r\n");
        if attempt < 5 {
            assert!(stanzas(&out).is_empty(), "attempt {attempt}");
        } else {
            assert_eq!(
                stanzas(&out),
                vec!["<presence from='juliet*example.com@sip.example.net' to='romeo@example.net' type='error'>\
<error type='wait' by='sip.example.net'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>SIP 503 Service Unavailable</text></error></presence>"]
            );
        }
        let out = t.advance_to_timeout();
        assert_eq!(t.now - before, Duration::from_secs(120));
        assert_eq!(requests(&out).len(), 1);
    }
}

#[test]
fn case_033_489_gives_feature_not_implemented_and_no_retry() {
    let mut t = T::new(Relation::Pending);
    t.stanza("subscribe");
    let out = t.respond(489, "");
    assert_eq!(
        stanzas(&out),
        vec!["<presence from='juliet*example.com@sip.example.net' to='romeo@example.net' type='error'>\
<error type='cancel' by='sip.example.net'><feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>SIP 489 Bad Event</text></error></presence>"]
    );
    assert!(t.sub.is_done());
}

#[test]
fn case_068_069_bad_bodies_get_200_and_keep_state() {
    let mut t = T::new(Relation::Pending);
    t.active();
    for body in [
        "<presence><tuple>",
        "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"aaaa\">]><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:a@b\"/>",
    ] {
        let cseq = t.dialog().remote_cseq.unwrap() + 1;
        let out = t.notify(cseq, "active;expires=1700", Some(body));
        assert_eq!(responses(&out), vec![200]);
        assert!(stanzas(&out).is_empty());
        let problem = if body.contains("DOCTYPE") { "pidf_doctype" } else { "pidf_not_well_formed" };
        assert!(out.contains(&Output::Problem(problem)), "{out:?}");
    }
    // The previous state is still what a probe gets.
    let out = t.stanza("probe");
    assert_eq!(stanzas(&out), vec![DESK_DND.to_owned()]);
}

#[test]
fn case_070_wrong_content_type_gets_415_with_accept() {
    let mut t = T::new(Relation::Pending);
    t.stanza("subscribe");
    let d = t.dialog();
    let text = notify_text(
        &d.call_id,
        &d.local_tag,
        5,
        "active",
        "text/plain",
        Some("hello"),
    );
    let req = request(&text);
    t.sub.handle_input(
        Input::Notify {
            req: &req,
            now_unix: 0,
        },
        t.now,
    );
    match t.sub.poll_output() {
        Some(Output::Response(r)) => {
            assert_eq!(r.status, 415);
            assert_eq!(r.header("Accept"), Some("application/pidf+xml"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.sub.poll_output(), None);
}

#[test]
fn case_071_missing_subscription_state_gets_400() {
    let mut t = T::new(Relation::Pending);
    t.stanza("subscribe");
    let d = t.dialog();
    let text = notify_text(
        &d.call_id,
        &d.local_tag,
        5,
        "active",
        "application/pidf+xml",
        None,
    )
    .replace("Subscription-State: active\r\n", "");
    let out = t.notify_raw(&text);
    assert_eq!(responses(&out), vec![400]);
    assert!(stanzas(&out).is_empty());
}

#[test]
fn case_072_other_event_package_gets_489() {
    let mut t = T::new(Relation::Pending);
    t.stanza("subscribe");
    let d = t.dialog();
    let text = notify_text(
        &d.call_id,
        &d.local_tag,
        5,
        "active",
        "application/pidf+xml",
        None,
    )
    .replace("Event: presence", "Event: dialog");
    assert_eq!(responses(&t.notify_raw(&text)), vec![489]);
}

#[test]
fn case_074_old_cseq_gets_500() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let out = t.notify(100, "active;expires=1700", Some(PIDF_42));
    assert_eq!(responses(&out), vec![500]);
    assert!(stanzas(&out).is_empty());
}

#[test]
fn case_075_terminated_rejected_gives_unsubscribed_and_no_resubscribe() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let out = t.notify(103, "terminated;reason=rejected", None);
    assert_eq!(responses(&out), vec![200]);
    assert_eq!(stanzas(&out), vec![UNSUBSCRIBED.to_owned()]);
    assert!(requests(&out).is_empty());
    assert!(t.sub.is_done());
}

#[test]
fn case_076_077_terminated_timeout_or_deactivated_resubscribes_at_once() {
    for reason in ["timeout", "deactivated"] {
        let mut t = T::new(Relation::Pending);
        t.active();
        let old = t.dialog();
        let out = t.notify(103, &format!("terminated;reason={reason}"), None);
        assert_eq!(responses(&out), vec![200]);
        assert!(stanzas(&out).is_empty(), "{reason}");
        let reqs = requests(&out);
        assert_eq!(reqs.len(), 1);
        assert_ne!(reqs[0].call_id, old.call_id);
        assert_ne!(reqs[0].from.tag.as_deref(), Some(old.local_tag.as_str()));
        assert_eq!(reqs[0].cseq, 1);
        assert_eq!(reqs[0].to.tag, None);
    }
}

#[test]
fn case_078_probation_sends_unavailable_and_retries_after() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let out = t.notify(103, "terminated;reason=probation;retry-after=120", None);
    assert_eq!(
        stanzas(&out),
        vec!["<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net' type='unavailable'/>"]
    );
    assert!(requests(&out).is_empty());
    let before = t.now;
    let out = t.advance_to_timeout();
    assert_eq!(t.now - before, Duration::from_secs(120));
    assert_eq!(requests(&out).len(), 1);
}

#[test]
fn case_079_giveup_waits_retry_after_without_stanza() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let out = t.notify(103, "terminated;reason=giveup;retry-after=3600", None);
    assert!(stanzas(&out).is_empty());
    assert!(requests(&out).is_empty());
    let before = t.now;
    let out = t.advance_to_timeout();
    assert_eq!(t.now - before, Duration::from_secs(3600));
    assert_eq!(requests(&out).len(), 1);
}

#[test]
fn case_080_noresource_gives_unsubscribed() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let out = t.notify(103, "terminated;reason=noresource", None);
    assert_eq!(stanzas(&out), vec![UNSUBSCRIBED.to_owned()]);
    assert!(out.contains(&Output::Forget));
    assert!(t.sub.is_done());
}

#[test]
fn case_081_invariant_is_final_without_stanza_or_retry() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let out = t.notify(103, "terminated;reason=invariant", None);
    assert_eq!(responses(&out), vec![200]);
    assert!(stanzas(&out).is_empty() && requests(&out).is_empty());
    assert_eq!(t.sub.poll_timeout(), None);
    assert_eq!(t.sub.relation(), Relation::Approved);
}

#[test]
fn case_082_notify_before_the_2xx_creates_the_dialog() {
    let mut t = T::new(Relation::Pending);
    t.stanza("subscribe");
    let out = t.notify(1, "active;expires=3600", Some(PIDF_42));
    assert_eq!(responses(&out), vec![200]);
    assert_eq!(
        stanzas(&out),
        vec![SUBSCRIBED.to_owned(), DESK_DND.to_owned()]
    );
    assert_eq!(t.dialog().remote_tag.as_deref(), Some("ps-91aa07"));
    // The late 2xx changes nothing visible.
    let out = t.respond(200, "Expires: 3600\r\n");
    assert!(stanzas(&out).is_empty() && requests(&out).is_empty());
}

#[test]
fn case_083_oversize_body_gets_413() {
    let mut t = T::new(Relation::Pending);
    t.stanza("subscribe");
    let big = format!("<presence>{}</presence>", "x".repeat(200 * 1024));
    let out = t.notify(1, "active;expires=3600", Some(&big));
    assert_eq!(responses(&out), vec![413]);
    assert!(stanzas(&out).is_empty());
}

#[test]
fn case_084_refresh_in_dialog_at_the_refresh_point() {
    let mut t = T::new(Relation::Pending);
    t.stanza("subscribe");
    t.respond(200, "Expires: 600\r\n");
    let granted_at = t.now;
    t.notify(1, "active;expires=600", Some(PIDF_42));
    let d = t.dialog();
    let out = t.advance_to_timeout();
    let after = (t.now - granted_at).as_secs_f64();
    assert!(
        (427.5..=472.5).contains(&after),
        "refresh at 450 s ±5 %, got {after}"
    );
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    let r = reqs[0];
    assert_eq!(r.call_id, d.call_id);
    assert_eq!(r.from.tag.as_deref(), Some(d.local_tag.as_str()));
    assert_eq!(r.to.tag.as_deref(), Some("ps-91aa07"));
    assert_eq!(r.cseq, d.local_cseq + 1);
    assert_eq!(r.uri, "sip:ps1.example.com:5060;transport=tcp");
    assert_eq!(
        r.route,
        vec![
            "<sip:p1.example.com;lr>".to_owned(),
            "<sip:p2.example.com;lr>".to_owned()
        ]
    );
    assert_eq!(r.destination, Destination::InDialog);
    assert_eq!(header(r, "Expires"), Some("3600"));
}

#[test]
fn case_085_refresh_answered_481_starts_a_new_subscription() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let old = t.dialog().call_id;
    t.advance_to_timeout();
    let out = t.respond(481, "");
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_ne!(reqs[0].call_id, old);
    assert_eq!(reqs[0].cseq, 1);
    assert!(stanzas(&out).is_empty());
}

#[test]
fn case_086_restore_refreshes_live_dialog_and_resubscribes_expired_one() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let rec = t.sub.record(t.now);
    assert_eq!(rec.relation, Relation::Approved);
    let d = rec.dialog.clone().unwrap();
    let mut restored = Subscription::restore(cfg(), rec.clone(), 7, t.now);
    match restored.poll_output() {
        Some(Output::Request(r)) => {
            assert_eq!(r.call_id, d.call_id);
            assert_eq!(r.cseq, d.local_cseq + 1);
            assert_eq!(r.to.tag.as_deref(), Some("ps-91aa07"));
        }
        other => panic!("{other:?}"),
    }
    let expired = SubscriptionRecord {
        lease_left: Some(0),
        ..rec
    };
    let mut restored = Subscription::restore(cfg(), expired, 7, t.now);
    match restored.poll_output() {
        Some(Output::Request(r)) => {
            assert_ne!(r.call_id, d.call_id);
            assert_eq!(r.cseq, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn timeout_or_restart_never_sends_roster_changes() {
    // §6.3: transport events (lease lapse, 408s) never produce unsubscribe/unsubscribed.
    let mut t = T::new(Relation::Pending);
    t.active();
    let mut all = Vec::new();
    for _ in 0..10 {
        all.extend(t.advance_to_timeout());
        let _ = t.sub.dialog().map(|d| (d.call_id.clone(), d.local_cseq));
        if let Some(d) = t.sub.dialog() {
            let out = t.input(Input::RequestFailed {
                call_id: &d.call_id,
                cseq: d.local_cseq,
            });
            all.extend(out);
        }
    }
    for s in stanzas(&all) {
        assert!(!s.contains("unsubscribe"), "{s}");
    }
}

/// Issue 6: `limits.max_status_chars` cuts the `<status>` made from a PIDF note, on a char
/// boundary (5 characters of "Été au balcon" are "Été a").
#[test]
fn max_status_chars_cuts_the_status_made_from_the_pidf_note() {
    let mut cfg = cfg();
    cfg.max_status_chars = 5;
    let mut t = T::new(Relation::Approved);
    t.sub = Subscription::new(cfg, pair(), Relation::Approved, 42);
    t.stanza("subscribe");
    t.respond(200, "Expires: 1800\r\n");
    let pidf = PIDF_42.replace("On the balcony", "Été au balcon");
    let out = t.notify(102, "active;expires=1740", Some(&pidf));
    let stanzas: Vec<String> = out
        .iter()
        .filter_map(|o| match o {
            Output::Stanza(s) => Some(s.to_xml()),
            _ => None,
        })
        .collect();
    assert_eq!(
        stanzas,
        vec![
            "<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net'>\
<show>dnd</show><status xml:lang='en'>Été a</status><priority>80</priority></presence>"
                .to_owned()
        ]
    );
}

/// Case 25 and §4.1/§4.5: only `subscribe` (pending) and `probe` (unknown) start a pair.
#[test]
fn case_025_only_subscribe_and_probe_start_a_new_pair() {
    use crate::stanza::PresenceType as T;
    assert_eq!(
        Relation::for_new_pair(&Ok(T::Subscribe)),
        Some(Relation::Pending)
    );
    assert_eq!(
        Relation::for_new_pair(&Ok(T::Probe)),
        Some(Relation::Unknown)
    );
    for k in [
        T::Unsubscribe,
        T::Available,
        T::Unavailable,
        T::Subscribed,
        T::Error,
    ] {
        assert_eq!(Relation::for_new_pair(&Ok(k)), None, "{k:?}");
    }
    assert_eq!(Relation::for_new_pair(&Err("bogus".to_owned())), None);
}

const DESK_GONE: &str =
    "<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net' type='unavailable'/>";

/// Issue 14: Kamailio's NOTIFY once the presentity's publication expired: `active`, no body.
#[test]
fn active_notify_without_body_withdraws_what_was_announced() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let out = t.notify(103, "active;expires=1700", None);
    assert_eq!(responses(&out), vec![200]);
    assert_eq!(stanzas(&out), vec![DESK_GONE.to_owned()]);
    // Said once: the next empty NOTIFY adds nothing.
    let out = t.notify(104, "active;expires=1690", None);
    assert_eq!(responses(&out), vec![200]);
    assert!(stanzas(&out).is_empty());
    // A probe is answered from the (empty) state: unavailable, no SIP.
    let out = t.stanza("probe");
    assert!(requests(&out).is_empty());
    assert_eq!(
        stanzas(&out),
        vec![
            "<presence from='juliet*example.com@sip.example.net' to='romeo@example.net' type='unavailable'/>"
                .to_owned()
        ]
    );
    // And the next publication is announced again.
    let out = t.notify(105, "active;expires=1680", Some(PIDF_42));
    assert_eq!(stanzas(&out), vec![DESK_DND.to_owned()]);
}

#[test]
fn pidf_without_tuples_withdraws_what_was_announced() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let empty = r#"<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:juliet@example.com"/>"#;
    let out = t.notify(103, "active;expires=1700", Some(empty));
    assert_eq!(responses(&out), vec![200]);
    assert_eq!(stanzas(&out), vec![DESK_GONE.to_owned()]);
}

#[test]
fn back_to_pending_withdraws_what_was_announced() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let out = t.notify(103, "pending;expires=1700", None);
    assert_eq!(responses(&out), vec![200]);
    assert_eq!(stanzas(&out), vec![DESK_GONE.to_owned()]);
}

/// Issue 14, durable before acknowledged: the outputs that tell a peer about a set-up come
/// with a `Persist` (the runtime holds them until it is committed); a NOTIFY that changes only
/// the presence does not ask for a write, so it is never held.
#[test]
fn the_activating_notify_asks_for_a_write_and_later_updates_do_not() {
    let mut t = T::new(Relation::Pending);
    t.stanza("subscribe");
    t.respond(200, "Expires: 1800\r\n");
    let d = t.dialog();
    let text = notify_text(
        &d.call_id,
        &d.local_tag,
        102,
        "active;expires=1740",
        "application/pidf+xml",
        Some(PIDF_42),
    );
    let req = request(&text);
    t.sub.handle_input(
        Input::Notify {
            req: &req,
            now_unix: 1_800_000_000,
        },
        t.now,
    );
    assert!(t.sub.awaits_durable());
    let out: Vec<Output> = std::iter::from_fn(|| t.sub.poll_output()).collect();
    assert!(out.contains(&Output::Persist));
    assert_eq!(
        stanzas(&out),
        vec![SUBSCRIBED.to_owned(), DESK_DND.to_owned()]
    );
    let busy = PIDF_42.replace("On the balcony", "Busy");
    let text = notify_text(
        &d.call_id,
        &d.local_tag,
        103,
        "active;expires=1700",
        "application/pidf+xml",
        Some(&busy),
    );
    let req = request(&text);
    t.sub.handle_input(
        Input::Notify {
            req: &req,
            now_unix: 1_800_000_000,
        },
        t.now,
    );
    assert!(!t.sub.awaits_durable());
    let out: Vec<Output> = std::iter::from_fn(|| t.sub.poll_output()).collect();
    assert_eq!(responses(&out), vec![200]);
    assert_eq!(stanzas(&out).len(), 1);
}

/// Issue 14: a pair whose handling failed is ended cleanly: X told `unavailable`, the SIP
/// dialog unsubscribed, the record forgotten; nothing of the failed input leaks out.
#[test]
fn abort_ends_the_pair_cleanly() {
    let mut t = T::new(Relation::Pending);
    t.active();
    let d = t.dialog();
    t.sub.abort(t.now);
    let out: Vec<Output> = std::iter::from_fn(|| t.sub.poll_output()).collect();
    assert_eq!(stanzas(&out), vec![DESK_GONE.to_owned()]);
    assert!(out.contains(&Output::Forget));
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, Method::Subscribe);
    assert_eq!(reqs[0].call_id, d.call_id);
    assert_eq!(header(reqs[0], "Expires"), Some("0"));
}
