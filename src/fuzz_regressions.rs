//! Every crash the fuzzers found (`fuzz/regressions/<target>/`), replayed as a unit test with
//! the property the fuzz target checks.

use crate::address::{AddressMapper, MappingConfig};
use crate::presence::{stanzas_for_pidf, view_pidf, Announced};
use crate::stanza::{BareJid, InPresence, Jid};

fn pidf_stanzas_parse_back(input: &[u8]) {
    let Ok(doc) = crate::pidf::parse(input, 65536) else {
        return;
    };
    let view = view_pidf(&doc, 0);
    let from = BareJid::new("bob*sip.example.net@sip.example.net").unwrap();
    let to = Jid::new("juliet@xmpp.example.com/balcony").unwrap();
    for s in stanzas_for_pidf(&view, &mut Announced::default(), &from, &to, true) {
        let xml = s.to_xml();
        assert!(
            InPresence::from_xml(&xml).is_ok(),
            "our own stanza does not parse back: {xml:?}"
        );
    }
}

#[test]
fn fuzz_pidf_nul_in_note() {
    pidf_stanzas_parse_back(include_bytes!("../fuzz/regressions/pidf/nul_in_note"));
}

#[test]
fn fuzz_pidf_charref_1_in_note() {
    pidf_stanzas_parse_back(include_bytes!("../fuzz/regressions/pidf/charref_1_in_note"));
}

#[test]
fn fuzz_pidf_u_fffe_in_note() {
    pidf_stanzas_parse_back(include_bytes!("../fuzz/regressions/pidf/u_fffe_in_note"));
}

fn address_round_trip(input: &[u8]) {
    let Ok(uri) = std::str::from_utf8(input) else {
        return;
    };
    let cfg = MappingConfig::encoded("sip.example.net", "xmpp.example.com");
    let mut m = AddressMapper::new(cfg.clone()).unwrap();
    if let Ok(jid) = m.sip_to_jid(uri) {
        let back = m.jid_to_sip(&jid).unwrap();
        assert_eq!(
            m.sip_to_jid(&back).ok(),
            Some(jid.clone()),
            "{uri:?} with the table"
        );
        let fresh = AddressMapper::new(cfg).unwrap();
        let back = fresh.jid_to_sip(&jid).unwrap();
        let mut again = AddressMapper::new(MappingConfig::encoded(
            "sip.example.net",
            "xmpp.example.com",
        ))
        .unwrap();
        assert_eq!(
            again.sip_to_jid(&back).ok(),
            Some(jid),
            "{uri:?} without the table"
        );
    }
}

#[test]
fn fuzz_address_nfkc_fraction_quarter() {
    address_round_trip(include_bytes!(
        "../fuzz/regressions/address/nfkc_fraction_quarter"
    ));
}

#[test]
fn fuzz_address_alabel_host_over_253() {
    address_round_trip(include_bytes!(
        "../fuzz/regressions/address/alabel_host_over_253"
    ));
}

#[test]
fn fuzz_sip_parse_folded_blank_line_call_id() {
    let input = include_bytes!("../fuzz/regressions/sip_parse/folded_blank_line_call_id");
    match crate::sip::parse::parse_message(input) {
        Ok(crate::sip::SipMessage::Request(r)) => assert_eq!(r.call_id, "a"),
        Ok(other) => panic!("{other:?}"),
        Err(e) => {
            if let Some(resp) = e.response {
                assert_eq!(resp.call_id, "a");
            }
        }
    }
}

/// The `winfo` target's round trip: what we parse, `winfo::write` writes back identically.
fn winfo_round_trip(input: &[u8]) -> Option<crate::winfo::WatcherInfo> {
    let doc = crate::winfo::parse(input, 65536).ok()?;
    let written = crate::winfo::write(&doc);
    assert_eq!(
        crate::winfo::parse(written.as_bytes(), usize::MAX).ok(),
        Some(doc.clone()),
        "{written}"
    );
    Some(doc)
}

#[test]
fn fuzz_winfo_control_char_in_resource() {
    let doc = winfo_round_trip(include_bytes!(
        "../fuzz/regressions/winfo/control_char_in_resource"
    ));
    let resource = doc.map(|d| d.lists[0].resource.clone());
    assert_eq!(
        resource.as_deref(),
        Some("sip:alice*xmpp\u{fffd}.test@gw.sip.test")
    );
}

#[test]
fn fuzz_winfo_char_refs_to_controls_and_line_ends_round_trip() {
    let doc = winfo_round_trip(
        b"<watcherinfo xmlns='urn:ietf:params:xml:ns:watcherinfo' version='1' state='full'>\
<watcher-list resource='sip:a&#9;b&#13;c' package='presence'>\
<watcher id='w&#1;' status='pending' event='subscribe'>sip:x&#13;y&#1;z</watcher>\
</watcher-list></watcherinfo>",
    );
    let l = doc.map(|d| d.lists[0].clone());
    let l = l.as_ref();
    assert_eq!(l.map(|l| l.resource.as_str()), Some("sip:a b c"));
    assert_eq!(l.map(|l| l.watchers[0].id.as_str()), Some("w\u{fffd}"));
    assert_eq!(
        l.map(|l| l.watchers[0].uri.as_str()),
        Some("sip:x\ny\u{fffd}z")
    );
}
