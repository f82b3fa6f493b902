//! Tests of PUA mode (§4.7, §7; cases 87, 90–92 at the level of one XMPP presentity).

use super::*;
use crate::address::MappingConfig;
use crate::sip::parse::parse_message;
use crate::sip::SipMessage;

fn machine() -> PuaPresentity {
    let cfg = PuaConfig {
        publisher: PublisherConfig::default(),
        winfo_expires: 3600,
        contact_host: "gw.xmpp.example.com:5060".into(),
        call_id_host: "gw.xmpp.example.com".into(),
        max_body: 65536,
    };
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
