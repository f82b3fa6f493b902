//! `sip::framing`: a `StreamFramer` fed the stream in chunks whose sizes come from the input,
//! compared with the same stream pushed in one piece (the chunking must not change what is
//! framed), plus `frame_datagram` on the whole stream and on every framed message.
//!
//! Input layout: byte 0 = `n | (m << 4)`: `n` chunk-size bytes follow (0 = one push), `m`
//! picks the size limit (0 = `DEFAULT_MAX_MESSAGE`, else `m * 128`, to reach the limits).
//! The rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pua_xmpp::sip::framing::{frame_datagram, FrameError, StreamFramer, DEFAULT_MAX_MESSAGE};
use pua_xmpp::sip::parse::parse_message;

type Framed = Result<Vec<u8>, FrameError>;

/// Pulls messages until more bytes are needed or an error (which is sticky).
fn drain(f: &mut StreamFramer, out: &mut Vec<Framed>) -> bool {
    while let Some(r) = f.next_message() {
        let failed = r.is_err();
        out.push(r);
        if failed {
            // Sticky: asking again gives the same error.
            let again = f.next_message();
            assert_eq!(again.as_ref(), out.last(), "error is not sticky");
            return true;
        }
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(ctl & 0x0f);
    let m = usize::from(ctl >> 4);
    let max = if m == 0 { DEFAULT_MAX_MESSAGE } else { m * 128 };
    let (sizes, stream) = rest.split_at(n.min(rest.len()));

    // Chunked.
    let mut chunked = Vec::new();
    let mut f = StreamFramer::new(max);
    let mut pos = 0;
    let mut i = 0;
    let mut failed = false;
    while pos < stream.len() && !failed {
        let size = match sizes.get(i % sizes.len().max(1)) {
            Some(&s) => usize::from(s).max(1),
            None => stream.len(),
        };
        i += 1;
        let end = pos.saturating_add(size).min(stream.len());
        f.push(&stream[pos..end]);
        pos = end;
        failed = drain(&mut f, &mut chunked);
    }
    if !failed {
        assert!(f.buffered() <= stream.len(), "buffered more than pushed");
    }

    // One piece.
    let mut whole = Vec::new();
    let mut g = StreamFramer::new(max);
    g.push(stream);
    drain(&mut g, &mut whole);
    assert_eq!(chunked, whole, "chunking changed the framing");

    for msg in whole.iter().filter_map(|r| r.as_ref().ok()) {
        assert!(msg.len() <= max, "framed message over the limit");
        // A stream-framed message is exact: as a datagram it frames to itself.
        assert_eq!(
            frame_datagram(msg, max),
            Ok(&msg[..]),
            "stream message does not frame to itself as a datagram"
        );
        let _ = parse_message(msg);
    }

    if let Ok(d) = frame_datagram(stream, max) {
        assert!(d.len() <= stream.len());
        let _ = parse_message(d);
    }
});
