//! Tests of PUA mode (§4.7, §7; cases 87, 90–92 at the level of one XMPP presentity).

use super::*;
use crate::address::MappingConfig;
use crate::sip::parse::parse_message;
use crate::sip::SipMessage;

fn cfg() -> PuaConfig {
    PuaConfig {
        publisher: PublisherConfig::default(),
        winfo_expires: 3600,
        contact_host: "gw.xmpp.example.com:5060".into(),
        call_id_host: "gw.xmpp.example.com".into(),
        max_body: 65536,
        max_status_chars: crate::pidf::MAX_STATUS_CHARS,
    }
}

fn machine() -> PuaPresentity {
    machine_with(cfg())
}

fn machine_with(cfg: PuaConfig) -> PuaPresentity {
    let mapper = AddressMapper::new(MappingConfig::encoded(
        "sip.example.net",
        "xmpp.example.com",
    ))
    .unwrap();
    PuaPresentity::new(
        cfg,
        BareJid::new("romeo@example.net").unwrap(),
        "sip:romeo*example.net@xmpp.example.com".into(),
        mapper,
        9,
    )
}

fn drain(m: &mut PuaPresentity) -> Vec<Output> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

fn stanzas(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Stanza(s) => Some(s.to_xml()),
            _ => None,
        })
        .collect()
}

fn requests(out: &[Output]) -> Vec<&OutRequest> {
    out.iter()
        .filter_map(|o| match o {
            Output::Request(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn winfo_notify(m: &PuaPresentity, cseq: u32, state: &str, body: &str) -> SipRequest {
    let d = m.winfo.as_ref().unwrap();
    let text = format!(
        "NOTIFY sip:romeo*example.net@gw.xmpp.example.com:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP ps1.example.com:5060;branch=z9hG4bK-w{cseq}\r\n\
         From: <sip:romeo*example.net@xmpp.example.com>;tag=ps-w1\r\n\
         To: <sip:romeo*example.net@xmpp.example.com>;tag={}\r\n\
         Call-ID: {}\r\nCSeq: {cseq} NOTIFY\r\nContact: <sip:ps1.example.com:5060>\r\n\
         Event: presence.winfo\r\nSubscription-State: {state}\r\n\
         Content-Type: application/watcherinfo+xml\r\nContent-Length: {}\r\n\r\n{body}",
        d.local_tag,
        d.call_id,
        body.len()
    );
    match parse_message(text.as_bytes()) {
        Ok(SipMessage::Request(r)) => r,
        other => panic!("{other:?}"),
    }
}

fn winfo_doc(version: u32, state: &str, watchers: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<watcherinfo xmlns=\"urn:ietf:params:xml:ns:watcherinfo\" version=\"{version}\" state=\"{state}\">\
<watcher-list resource=\"sip:romeo*example.net@xmpp.example.com\" package=\"presence\">{watchers}</watcher-list></watcherinfo>"
    )
}

const JULIET_SUBSCRIBE: &str =
    "<presence from='juliet*example.com@sip.example.net' to='romeo@example.net' type='subscribe'/>";

#[test]
fn req_winfo_subscribes_to_winfo_and_asks_the_watcher_once() {
    let mut m = machine();
    let now = Instant::now();
    m.handle_input(
        Input::ReqWinfo {
            expires: 600,
            watcher: Some("sip:juliet@example.com"),
        },
        now,
    );
    let out = drain(&mut m);
    assert_eq!(stanzas(&out), vec![JULIET_SUBSCRIBE.to_owned()]);
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    let r = reqs[0];
    assert_eq!(r.uri, "sip:romeo*example.net@xmpp.example.com");
    assert_eq!(r.from.uri, r.to.uri);
    assert_eq!(r.header("Event"), Some("presence.winfo"));
    assert_eq!(r.header("Accept"), Some("application/watcherinfo+xml"));
    assert_eq!(r.header("Expires"), Some("3600"));
    // A second call for the same watcher asks nothing and sends no second SUBSCRIBE.
    m.handle_input(
        Input::ReqWinfo {
            expires: 600,
            watcher: Some("sip:juliet@example.com"),
        },
        now,
    );
    assert!(drain(&mut m).is_empty());
}

#[test]
fn case_090_winfo_pending_watcher_becomes_one_subscribe() {
    let mut m = machine();
    let now = Instant::now();
    m.handle_input(
        Input::ReqWinfo {
            expires: 600,
            watcher: None,
        },
        now,
    );
    drain(&mut m);
    let body = winfo_doc(0, "full", "<watcher id=\"w1\" status=\"pending\" event=\"subscribe\">sip:juliet@example.com</watcher>");
    let n = winfo_notify(&m, 1, "active;expires=3600", &body);
    m.handle_input(Input::Notify(&n), now);
    let out = drain(&mut m);
    assert!(matches!(&out[0], Output::Response(r) if r.status == 200));
    assert_eq!(stanzas(&out), vec![JULIET_SUBSCRIBE.to_owned()]);
    // The same watcher in the next full document: not asked again.
    let n = winfo_notify(&m, 2, "active;expires=3600", &winfo_doc(1, "full", "<watcher id=\"w1\" status=\"pending\" event=\"subscribe\">sip:juliet@example.com</watcher>"));
    m.handle_input(Input::Notify(&n), now);
    assert!(stanzas(&drain(&mut m)).is_empty());
}

#[test]
fn kamailio_active_watcher_in_partial_document_is_asked() {
    // Kamailio with force_active: version 1 full and empty, then version 2 partial, active.
    let mut m = machine();
    let now = Instant::now();
    m.handle_input(
        Input::ReqWinfo {
            expires: 600,
            watcher: None,
        },
        now,
    );
    drain(&mut m);
    let n = winfo_notify(&m, 1, "active;expires=600", &winfo_doc(1, "full", ""));
    m.handle_input(Input::Notify(&n), now);
    assert!(stanzas(&drain(&mut m)).is_empty());
    let n = winfo_notify(&m, 2, "active;expires=600", &winfo_doc(2, "partial", "<watcher id=\"x\" event=\"subscribe\" status=\"active\">sip:juliet@example.com</watcher>"));
    m.handle_input(Input::Notify(&n), now);
    assert_eq!(stanzas(&drain(&mut m)), vec![JULIET_SUBSCRIBE.to_owned()]);
}

#[test]
fn case_091_version_gap_refreshes_instead_of_translating() {
    let mut m = machine();
    let now = Instant::now();
    m.handle_input(
        Input::ReqWinfo {
            expires: 600,
            watcher: None,
        },
        now,
    );
    drain(&mut m);
    let n = winfo_notify(&m, 1, "active;expires=600", &winfo_doc(3, "full", ""));
    m.handle_input(Input::Notify(&n), now);
    drain(&mut m);
    let n = winfo_notify(&m, 2, "active;expires=600", &winfo_doc(5, "partial", "<watcher id=\"w1\" status=\"pending\" event=\"subscribe\">sip:juliet@example.com</watcher>"));
    m.handle_input(Input::Notify(&n), now);
    let out = drain(&mut m);
    assert!(stanzas(&out).is_empty());
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].header("Event"), Some("presence.winfo"));
    assert_eq!(reqs[0].to.tag.as_deref(), Some("ps-w1"));
}

#[test]
fn case_092_terminated_watcher_gives_no_stanza() {
    let mut m = machine();
    let now = Instant::now();
    m.handle_input(
        Input::ReqWinfo {
            expires: 600,
            watcher: None,
        },
        now,
    );
    drain(&mut m);
    let n = winfo_notify(&m, 1, "active;expires=600", &winfo_doc(0, "full", "<watcher id=\"w1\" status=\"terminated\" event=\"timeout\">sip:juliet@example.com</watcher>"));
    m.handle_input(Input::Notify(&n), now);
    assert!(stanzas(&drain(&mut m)).is_empty());
}

#[test]
fn one_publish_per_change_however_many_copies_arrive() {
    let mut m = machine();
    let now = Instant::now();
    let p = InPresence::from_xml(
        "<presence from='romeo@example.net/orchard' to='juliet*example.com@sip.example.net'><show>away</show><status>Lunch</status></presence>",
    )
    .unwrap();
    m.handle_input(Input::Stanza(&p), now);
    let out = drain(&mut m);
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    let r = reqs[0];
    assert_eq!(r.method, Method::Publish);
    assert_eq!(r.header("SIP-If-Match"), None);
    let body = String::from_utf8(r.body.clone()).unwrap();
    assert!(
        body.contains("<note xml:lang=\"en\">Lunch</note>") || body.contains("<note>Lunch</note>"),
        "{body}"
    );
    assert!(body.contains("<rpid:away/>"), "{body}");
    // Prosody's copies of the same presence to other contacts: no new PUBLISH.
    for to in [
        "nurse*example.com@sip.example.net",
        "tybalt*example.com@sip.example.net",
    ] {
        let copy = InPresence::from_xml(&format!(
            "<presence from='romeo@example.net/orchard' to='{to}'><show>away</show><status>Lunch</status></presence>"
        ))
        .unwrap();
        m.handle_input(Input::Stanza(&copy), now);
        assert!(drain(&mut m).is_empty());
    }
}

/// Issue 6: `limits.max_status_chars` cuts X's `<status>` in the PUBLISHed PIDF, on a char
/// boundary (5 characters of "Déjeuner" are "Déjeu").
#[test]
fn max_status_chars_cuts_the_note_in_the_publish() {
    let mut m = machine_with(PuaConfig {
        max_status_chars: 5,
        ..cfg()
    });
    let p = InPresence::from_xml(
        "<presence from='romeo@example.net/orchard' to='juliet*example.com@sip.example.net'><status>Déjeuner</status></presence>",
    )
    .unwrap();
    m.handle_input(Input::Stanza(&p), Instant::now());
    let out = drain(&mut m);
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        String::from_utf8(reqs[0].body.clone()).unwrap(),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"pres:romeo*example.net@xmpp.example.com\">\n  \
<tuple id=\"ID-orchard\">\n    <status><basic>open</basic></status>\n    \
<contact>sip:romeo*example.net@xmpp.example.com</contact>\n    <note>Déjeu</note>\n  </tuple>\n  \
<note>Déjeu</note>\n</presence>"
    );
}

/// Issue 6: after a restart the stored publication is refreshed without any stanza from X,
/// and its 2xx is persisted again.
#[test]
fn restored_publication_is_refreshed_at_once_and_persisted() {
    let mut m = machine();
    let now = Instant::now();
    let rec = PublicationRecord {
        uri: "sip:romeo*example.net@xmpp.example.com".into(),
        etag: Some("kwj449x".into()),
        call_id: "p7a3c1e09@gw.xmpp.example.com".into(),
        cseq: 4,
        body: Some("<presence/>".into()),
        available: true,
        lease_left: Some(1200),
    };
    m.restore_publication(rec.clone(), now);
    let out = drain(&mut m);
    let reqs = requests(&out);
    assert_eq!(reqs.len(), 1, "{out:?}");
    let r = reqs[0].clone();
    assert_eq!(r.method, Method::Publish);
    assert_eq!(
        (r.call_id.as_str(), r.cseq),
        ("p7a3c1e09@gw.xmpp.example.com", 5)
    );
    assert_eq!(
        r.headers,
        vec![
            ("Event", "presence".to_owned()),
            ("SIP-If-Match", "kwj449x".to_owned()),
            ("Expires", "3600".to_owned()),
        ]
    );
    assert!(r.body.is_empty());
    let text = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP gw.xmpp.example.com:5060;branch=z9hG4bK-p\r\n\
         From: <{0}>;tag={1}\r\nTo: <{0}>;tag=ps-1\r\nCall-ID: {2}\r\nCSeq: 5 PUBLISH\r\n\
         SIP-ETag: r0t\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n",
        r.uri,
        r.from.tag.as_deref().unwrap(),
        r.call_id
    );
    let Ok(SipMessage::Response(resp)) = parse_message(text.as_bytes()) else {
        panic!("bad test response")
    };
    m.handle_input(Input::Response(&resp), now);
    assert_eq!(
        drain(&mut m),
        vec![Output::Persist(PublicationRecord {
            etag: Some("r0t".into()),
            cseq: 5,
            lease_left: Some(3600),
            ..rec.clone()
        })]
    );
    // A second restore (a late message) does not replace the live publication.
    m.restore_publication(rec, now);
    assert!(drain(&mut m).is_empty());
}
