//! XML text and attribute escaping for the documents and stanzas we write by hand.
//!
//! Output is built with `String` pushes rather than a DOM because it is on the hot path of
//! every presence update; escaping lives here, in one place, so no caller can forget it.

/// Appends `s` escaped for element content (`&`, `<`, `>`).
pub fn escape_text(out: &mut String, s: &str) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

/// Appends `s` escaped for an attribute value in either quote style.
pub fn escape_attr(out: &mut String, s: &str) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'\'' => "&apos;",
            b'"' => "&quot;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
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
    fn truncates_on_char_boundary() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("hi", 5), "hi");
    }
}
