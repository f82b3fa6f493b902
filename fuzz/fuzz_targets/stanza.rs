//! XMPP stanza XML → minidom → `InPresence::from_element` → `XmppAggregate::apply` →
//! `pidf::write_from_xmpp` → `pidf::parse`. The PIDF we write must always parse (and have the
//! tuples the aggregate says), whatever the stanzas contained.
//!
//! The root may be one `<presence/>` or any element whose children are presences (so one input
//! can feed several stanzas into the aggregate).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pua_xmpp::pidf::{self, Basic};
use pua_xmpp::presence::XmppAggregate;
use pua_xmpp::stanza::InPresence;

fn feed(agg: &mut XmppAggregate, e: &minidom::Element) {
    let Ok(p) = InPresence::from_element(e) else {
        return;
    };
    let Ok(kind) = p.kind else {
        return;
    };
    let resource = p.from.resource().map(|r| r.as_str().to_owned());
    agg.apply(resource.as_deref(), kind, &p.body, p.lang.as_deref());
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(root) = text.parse::<minidom::Element>() else {
        return;
    };
    let mut agg = XmppAggregate::new();
    if root.name() == "presence" {
        feed(&mut agg, &root);
    } else {
        for child in root.children() {
            feed(&mut agg, child);
        }
    }

    let mut out = String::new();
    pidf::write_from_xmpp(
        "pres:romeo*xmpp.example.com@sip.example.net",
        "sip:romeo*xmpp.example.com@sip.example.net",
        &agg,
        &mut out,
    );
    let doc = match pidf::parse(out.as_bytes(), usize::MAX) {
        Ok(d) => d,
        Err(e) => panic!("our own PIDF does not parse back: {e}\n{out}"),
    };
    if agg.is_available() {
        assert_eq!(doc.tuples.len(), agg.resources().count(), "tuples\n{out}");
        assert!(
            doc.tuples.iter().all(|t| t.basic == Basic::Open),
            "basic\n{out}"
        );
    } else {
        assert_eq!(doc.tuples.len(), 1, "offline tuple\n{out}");
        assert_eq!(
            doc.tuples.first().map(|t| t.basic),
            Some(Basic::Closed),
            "{out}"
        );
    }
});
