//! watcherinfo body → `winfo::parse` → `WinfoTracker::apply`. Beyond "no panic": RFC 3858
//! §4.4 rules (a partial document before any full state asks for full state; a full document
//! is always taken; the same document twice reports no watcher again), every reported watcher
//! is pending/waiting/active and reported once, and `winfo::write` parses back to the same
//! document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pua_xmpp::winfo::{self, WatcherStatus, WinfoOutcome, WinfoState, WinfoTracker};
use std::collections::HashSet;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = winfo::parse(data, 65536) else {
        return;
    };
    let mut t = WinfoTracker::new();
    let first = t.apply(&doc);
    match (doc.state, &first) {
        (WinfoState::Partial, WinfoOutcome::NeedFullState) => {}
        (WinfoState::Full, WinfoOutcome::NewWatchers(ws)) => {
            let mut uris = HashSet::new();
            for w in ws {
                assert!(
                    matches!(
                        w.status,
                        WatcherStatus::Pending | WatcherStatus::Waiting | WatcherStatus::Active
                    ),
                    "reported a {:?} watcher",
                    w.status
                );
                assert!(
                    uris.insert(w.uri.as_str()),
                    "watcher {:?} reported twice",
                    w.uri
                );
            }
            assert_eq!(t.version(), Some(doc.version));
            assert_eq!(
                t.apply(&doc),
                WinfoOutcome::NewWatchers(Vec::new()),
                "same full document twice"
            );
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    // A partial document right after a full one with the previous version is taken.
    if doc.state == WinfoState::Partial {
        if let Some(prev) = doc.version.checked_sub(1) {
            let mut t = WinfoTracker::new();
            let mut full = doc.clone();
            full.state = WinfoState::Full;
            full.version = prev;
            full.lists.clear();
            let _ = t.apply(&full);
            assert!(
                matches!(t.apply(&doc), WinfoOutcome::NewWatchers(_)),
                "partial version {} after full {prev} refused",
                doc.version
            );
        }
    }

    let written = winfo::write(&doc);
    match winfo::parse(written.as_bytes(), usize::MAX) {
        Ok(back) => assert_eq!(back, doc, "write/parse round trip\n{written}"),
        Err(e) => panic!("our own watcherinfo does not parse back: {e}\n{written}"),
    }
});
