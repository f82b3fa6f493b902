//! PIDF body → `pidf::parse` → `presence::view_pidf` → `stanzas_for_pidf` → `write_xml`.
//! Beyond "no panic": every stanza we write must parse back as a presence with the same type,
//! show and priority (a stanza that is not well-formed would close the component stream), and
//! the same document sent again must produce nothing (duplicate suppression, §5.3 step 7).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pua_xmpp::pidf;
use pua_xmpp::presence::{stanzas_for_pidf, view_pidf, Announced};
use pua_xmpp::stanza::{BareJid, InPresence, Jid, OutPresence};

/// 2026-05-01T00:00:00Z: a fixed "now", so a run is reproducible.
const NOW: i64 = 1_777_593_600;

/// `PUA_FUZZ_SKIP_KNOWN=1` skips the reported bug (characters XML 1.0 forbids, taken from a
/// PIDF note into a stanza) so a run can look for other ones. scripts/fuzz.sh leaves it unset.
fn skip_known() -> bool {
    static SKIP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SKIP.get_or_init(|| std::env::var_os("PUA_FUZZ_SKIP_KNOWN").is_some())
}

/// XML 1.0 `Char` (surrogates cannot occur in a Rust string).
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{FFFD}' | '\u{10000}'..)
}

fn check_written(stanzas: &[OutPresence]) {
    for s in stanzas {
        let mut xml = String::new();
        s.write_xml(&mut xml);
        if skip_known() && !xml.chars().all(xml_char) {
            continue;
        }
        let back = match InPresence::from_xml(&xml) {
            Ok(p) => p,
            Err(e) => panic!("our own stanza does not parse back: {e}\n{xml}"),
        };
        assert_eq!(back.kind, Ok(s.kind), "type of {xml}");
        assert_eq!(back.body.show, s.body.show, "show of {xml}");
        assert_eq!(back.body.priority, s.body.priority, "priority of {xml}");
        assert_eq!(back.from, s.from, "from of {xml}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = pidf::parse(data, 65536) else {
        return;
    };
    let (Ok(from), Ok(to)) = (
        BareJid::new("bob*sip.example.net@sip.example.net"),
        Jid::new("juliet@xmpp.example.com/balcony"),
    ) else {
        return;
    };
    let view = view_pidf(&doc, NOW);
    let mut announced = Announced::default();
    let first = stanzas_for_pidf(&view, &mut announced, &from, &to, false);
    check_written(&first);
    let again = stanzas_for_pidf(&view, &mut announced, &from, &to, false);
    assert!(
        again.is_empty(),
        "the same document twice gave {} stanza(s) the second time",
        again.len()
    );
    let probe = stanzas_for_pidf(&view, &mut announced, &from, &to, true);
    check_written(&probe);
});
