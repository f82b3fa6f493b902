//! XML text and attribute escaping for the documents and stanzas we write by hand.
//!
//! Output is built with `String` pushes rather than a DOM because it is on the hot path of
//! every presence update; escaping lives here, in one place, so no caller can forget it.

/// U+FFFD, written for characters XML 1.0 cannot carry.
const REPLACEMENT: &str = "\u{FFFD}";

/// Appends `s` escaped for element content (`&`, `<`, `>`). Characters outside XML 1.0's
/// `Char` (controls other than tab/LF/CR, U+FFFE, U+FFFF) become U+FFFD: a SIP peer must never
/// be able to make us write a document the XMPP server rejects (that ends the whole stream).
pub fn escape_text(out: &mut String, s: &str) {
    escape(out, s, false)
}

/// Appends `s` escaped for an attribute value in either quote style (and sanitized as above).
pub fn escape_attr(out: &mut String, s: &str) {
    escape(out, s, true)
}

/// Octets that may need a replacement: the markup characters, C0 controls, and 0xEF (the
/// first octet of U+FFFE/U+FFFF). Everything else is copied without a look at the `match`.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'&' as usize] = true;
    t[b'<' as usize] = true;
    t[b'>' as usize] = true;
    t[b'\'' as usize] = true;
    t[b'"' as usize] = true;
    t[0xef] = true;
    t
};

/// The index of the first octet at or after `i` that [`SPECIAL`] flags, or `b.len()`: eight
/// octets at a time (the text between specials is most of every stanza).
fn next_special(b: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // A zero octet of `v ^ c` is an octet equal to `c`.
    let eq = |v: u64, c: u8| {
        let t = v ^ (LO * u64::from(c));
        t.wrapping_sub(LO) & !t
    };
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let v = u64::from_le_bytes(w);
        // Octets below 0x20, and the six markup/0xEF octets. In each test the lowest flagged
        // octet is exact (borrows only run upwards), so the lowest of all of them is too.
        let hit = (v.wrapping_sub(LO * 0x20) & !v
            | eq(v, b'&')
            | eq(v, b'<')
            | eq(v, b'>')
            | eq(v, b'\'')
            | eq(v, b'"')
            | eq(v, 0xef))
            & HI;
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while b.get(i).is_some_and(|&c| !SPECIAL[usize::from(c)]) {
        i += 1;
    }
    i.min(b.len())
}

fn escape(out: &mut String, s: &str, attr: bool) {
    let bytes = s.as_bytes();
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !SPECIAL[usize::from(b)] {
            i = next_special(bytes, i + 1);
            continue;
        }
        let (rep, len) = match b {
            b'&' => ("&amp;", 1),
            b'<' => ("&lt;", 1),
            b'>' => ("&gt;", 1),
            b'\'' if attr => ("&apos;", 1),
            b'"' if attr => ("&quot;", 1),
            b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            0..=0x1f => (REPLACEMENT, 1),
            // U+FFFE and U+FFFF are EF BF BE / EF BF BF in UTF-8.
            0xef if bytes.get(i + 1) == Some(&0xbf)
                && matches!(bytes.get(i + 2), Some(0xbe | 0xbf)) =>
            {
                (REPLACEMENT, 3)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        i += len;
        last = i;
    }
    out.push_str(&s[last..]);
}

/// [`escape_text`], except that CR is written as `&#13;`: a parser reads a literal CR in
/// content as LF (XML 1.0 §2.11), so only the reference gives the same text back.
pub fn escape_text_exact(out: &mut String, s: &str) {
    let mut parts = s.split('\r');
    escape_text(out, parts.next().unwrap_or_default());
    for p in parts {
        out.push_str("&#13;");
        escape_text(out, p);
    }
}

/// [`escape_attr`], except that tab, LF and CR are written as character references:
/// attribute-value normalization (XML 1.0 §3.3.3) turns the literal characters into spaces,
/// so only the references give the same value back (a stanza `id` echoed in an error reply
/// must match what the client sent).
pub fn escape_attr_exact(out: &mut String, s: &str) {
    let mut last = 0;
    for (i, c) in s.char_indices() {
        let rep = match c {
            '\t' => "&#9;",
            '\n' => "&#10;",
            '\r' => "&#13;",
            _ => continue,
        };
        escape_attr(out, s.get(last..i).unwrap_or_default());
        out.push_str(rep);
        last = i + 1;
    }
    escape_attr(out, s.get(last..).unwrap_or_default());
}

/// Truncates to at most `max` characters, on a character boundary (§4.6: status ≤ 1024 chars).
pub fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut s = String::new();
        escape_text(&mut s, "<b>\"Tom & Jerry\"</b>");
        assert_eq!(s, "&lt;b&gt;\"Tom &amp; Jerry\"&lt;/b&gt;");
        let mut s = String::new();
        escape_attr(&mut s, "a'b\"c");
        assert_eq!(s, "a&apos;b&quot;c");
    }

    #[test]
    fn characters_xml_cannot_carry_are_replaced() {
        let mut s = String::new();
        escape_text(&mut s, "\u{0}a\u{1}b\tc\u{FFFE}d\u{FFFF}e\u{FFFD}");
        assert_eq!(s, "\u{FFFD}a\u{FFFD}b\tc\u{FFFD}d\u{FFFD}e\u{FFFD}");
        let mut s = String::new();
        escape_attr(&mut s, "x\u{7}'");
        assert_eq!(s, "x\u{FFFD}&apos;");
    }

    #[test]
    fn next_special_finds_the_first() {
        let b = b"abcdefghijklmnop&qrs";
        assert_eq!(next_special(b, 0), 16);
        assert_eq!(next_special(b, 17), b.len());
        assert_eq!(next_special(b"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xef", 0), 8);
        assert_eq!(next_special(b"12345678\x1f", 0), 8);
        assert_eq!(next_special(b"1234567\x7f ", 0), 9);
        assert_eq!(next_special(b"a\"", 0), 1);
    }

    proptest::proptest! {
        /// The octet-at-a-time scan finds the same octets as the table alone.
        #[test]
        fn next_special_is_the_table(
            s in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"&<>'\"\x00\x1f\x20\t\xef\xbf\xbeaZ".to_vec()),
                    proptest::prelude::any::<u8>(),
                ],
                0..40,
            ),
            from in 0usize..40,
        ) {
            let want = (from..s.len())
                .find(|&i| SPECIAL[usize::from(s[i])])
                .unwrap_or(s.len().max(from.min(s.len())));
            proptest::prop_assert_eq!(next_special(&s, from.min(s.len())), want);
        }
    }

    #[test]
    fn exact_escapes_keep_whitespace_references() {
        let mut s = String::new();
        escape_text_exact(&mut s, "a\r\nb\rc<");
        assert_eq!(s, "a&#13;\nb&#13;c&lt;");
        let mut s = String::new();
        escape_attr_exact(&mut s, "\tx\ny\r'");
        assert_eq!(s, "&#9;x&#10;y&#13;&apos;");
    }

    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("hi", 5), "hi");
    }
}
