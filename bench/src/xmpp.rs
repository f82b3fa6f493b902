//! Just enough XML for the server side of a XEP-0114 stream: an incremental scanner that cuts
//! the stream into top-level elements without building trees, and readers for the few
//! attributes and texts the tool needs (`from`, `to`, `type`, `<status>`, `<handshake>`).

use std::borrow::Cow;

/// A single top-level element larger than this ends the session.
const MAX_ELEMENT: usize = 1 << 20;

/// What the scanner found.
#[derive(Debug, PartialEq, Eq)]
pub enum Ev<'a> {
    /// The peer's `<stream:stream ...>` start tag.
    Start(&'a [u8]),
    /// One complete top-level element (a stanza, `<handshake>`, `<stream:error>`).
    Element(&'a [u8]),
    /// `</stream:stream>`.
    End,
}

/// Incremental scanner state: bytes not yet consumed and the element depth.
#[derive(Default)]
pub struct Scanner {
    buf: Vec<u8>,
    /// Where to resume scanning in `buf`.
    scan: usize,
    depth: u32,
    /// Start of the top-level element being read (valid when `depth >= 2`).
    elem_start: usize,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Index of the `>` closing the tag that starts at `tag[0] == '<'`, skipping quoted values.
/// Jumps between the bytes that matter with memchr instead of a state machine per byte.
fn tag_end(tag: &[u8]) -> Option<usize> {
    let mut i = 1;
    loop {
        let k = i + memchr::memchr3(b'>', b'"', b'\'', tag.get(i..)?)?;
        let q = *tag.get(k)?;
        if q == b'>' {
            return Some(k);
        }
        i = k + 1 + memchr::memchr(q, tag.get(k + 1..)?)? + 1;
    }
}

impl Scanner {
    /// Feeds bytes and reports every complete event to `f`.
    pub fn feed<F: FnMut(Ev<'_>)>(&mut self, data: &[u8], mut f: F) -> Result<(), String> {
        self.buf.extend_from_slice(data);
        let buf = &self.buf;
        let mut p = self.scan;
        let mut depth = self.depth;
        let mut elem_start = self.elem_start;
        loop {
            let Some(off) = buf.get(p..).and_then(|r| memchr::memchr(b'<', r)) else {
                p = buf.len();
                break;
            };
            let lt = p + off;
            let rest = buf.get(lt..).unwrap_or_default();
            let Some(&second) = rest.get(1) else {
                p = lt;
                break;
            };
            match second {
                b'?' | b'!' => {
                    let term: &[u8] = if second == b'?' {
                        b"?>"
                    } else if rest.starts_with(b"<!--") {
                        b"-->"
                    } else if rest.starts_with(b"<![CDATA[") {
                        b"]]>"
                    } else if rest.len() < 9 {
                        // Could still become a comment or CDATA: wait for more.
                        p = lt;
                        break;
                    } else {
                        b">"
                    };
                    match find(rest, term) {
                        Some(e) => p = lt + e + term.len(),
                        None => {
                            p = lt;
                            break;
                        }
                    }
                }
                b'/' => {
                    let Some(gt) = memchr::memchr(b'>', rest) else {
                        p = lt;
                        break;
                    };
                    let end = lt + gt + 1;
                    depth = depth.saturating_sub(1);
                    if depth == 1 {
                        f(Ev::Element(buf.get(elem_start..end).unwrap_or_default()));
                    } else if depth == 0 {
                        f(Ev::End);
                    }
                    p = end;
                }
                _ => {
                    let Some(gt) = tag_end(rest) else {
                        p = lt;
                        break;
                    };
                    let end = lt + gt + 1;
                    let self_closing = gt > 0 && rest.get(gt - 1) == Some(&b'/');
                    match depth {
                        0 => {
                            f(Ev::Start(buf.get(lt..end).unwrap_or_default()));
                            depth = 1;
                        }
                        1 => {
                            elem_start = lt;
                            if self_closing {
                                f(Ev::Element(buf.get(lt..end).unwrap_or_default()));
                            } else {
                                depth = 2;
                            }
                        }
                        _ => {
                            if !self_closing {
                                depth += 1;
                            }
                        }
                    }
                    p = end;
                }
            }
        }
        // Drop what is consumed, keeping an element in progress.
        let keep = if depth >= 2 { elem_start.min(p) } else { p };
        self.buf.drain(..keep);
        self.scan = p - keep;
        self.elem_start = elem_start.saturating_sub(keep);
        self.depth = depth;
        if self.buf.len() > MAX_ELEMENT {
            return Err(format!("element larger than {MAX_ELEMENT} bytes"));
        }
        Ok(())
    }
}

/// Name of an element or start tag (`presence`, `stream:stream`).
pub fn name_of(el: &[u8]) -> &[u8] {
    let rest = el.get(1..).unwrap_or_default();
    let end = rest
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b'/' || b == b'>')
        .unwrap_or(rest.len());
    rest.get(..end).unwrap_or_default()
}

/// Raw (still escaped) value of an attribute of the element's start tag (the tool reads
/// several at once with [`attrs`]).
#[cfg(test)]
pub fn attr<'a>(el: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let [v] = attrs(el, [name]);
    v
}

/// Raw values of several attributes of the start tag in one pass over it: entry `k` is what
/// `attr(el, names[k])` gives (the first occurrence; nothing past a syntax error or in an
/// unterminated tag). One pass instead of one per attribute: reading `from`, `to` and
/// `type` separately was the largest single cost of the tool's XMPP side.
pub fn attrs<'a, const K: usize>(el: &'a [u8], names: [&str; K]) -> [Option<&'a [u8]>; K] {
    let mut found = [None; K];
    let Some(tag) = tag_end(el).and_then(|e| el.get(..=e)) else {
        return found;
    };
    let mut i = 1 + name_of(el).len();
    let mut missing = K;
    while missing > 0 {
        let Some((n, v, next)) = next_attr(tag, i) else {
            break;
        };
        for (slot, want) in found.iter_mut().zip(names) {
            if slot.is_none() && n == want.as_bytes() {
                *slot = Some(v);
                missing -= 1;
            }
        }
        i = next;
    }
    found
}

/// The attribute at `i` (after optional white space) of a start tag that ends at its last
/// byte: name, raw value, and where to look for the next one. `None` at the end of the
/// attributes or at a syntax error.
fn next_attr(tag: &[u8], mut i: usize) -> Option<(&[u8], &[u8], usize)> {
    while tag.get(i)?.is_ascii_whitespace() {
        i += 1;
    }
    let n_start = i;
    i += tag
        .get(i..)?
        .iter()
        .position(|&b| matches!(b, b'=' | b'>' | b'/') || b.is_ascii_whitespace())?;
    let n = tag.get(n_start..i)?;
    while tag.get(i)?.is_ascii_whitespace() {
        i += 1;
    }
    if *tag.get(i)? != b'=' {
        return None;
    }
    i += 1;
    while tag.get(i)?.is_ascii_whitespace() {
        i += 1;
    }
    let q = *tag.get(i)?;
    if q != b'\'' && q != b'"' {
        return None;
    }
    let v_start = i + 1;
    let v_len = memchr::memchr(q, tag.get(v_start..)?)?;
    Some((n, tag.get(v_start..v_start + v_len)?, v_start + v_len + 1))
}

/// Attribute as text (JIDs in this tool never need unescaping).
#[cfg(test)]
pub fn attr_str<'a>(el: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(attr(el, name)?).ok()
}

/// Text of the first child element `child` (e.g. `status`), unescaped.
pub fn child_text<'a>(el: &'a [u8], child: &str) -> Option<Cow<'a, str>> {
    let body_start = tag_end(el)? + 1;
    let name = child.as_bytes();
    let mut from = body_start;
    // Each `<` followed by the name (memchr, not a substring finder built per call).
    loop {
        let at = from + memchr::memchr(b'<', el.get(from..)?)?;
        from = at + 1;
        if !el.get(at + 1..)?.starts_with(name) {
            continue;
        }
        let after = *el.get(at + 1 + name.len())?;
        if !(after == b'>' || after == b'/' || after.is_ascii_whitespace()) {
            continue;
        }
        let gt = at + tag_end(el.get(at..)?)?;
        if el.get(gt - 1) == Some(&b'/') {
            return Some(Cow::Borrowed(""));
        }
        let text = el.get(gt + 1..)?;
        let end = memchr::memchr(b'<', text)?;
        return Some(unescape(std::str::from_utf8(text.get(..end)?).ok()?));
    }
}

/// The start of the text of the first `<body>` child: its raw bytes up to the next `<`
/// (not unescaped: the IM scenario only reads the number at its start, and a 4 KB body is
/// not copied for that).
pub fn body_raw(el: &[u8]) -> Option<&[u8]> {
    let mut from = tag_end(el)? + 1;
    loop {
        let at = from + find(el.get(from..)?, b"<body")?;
        from = at + 5;
        match *el.get(at + 5)? {
            b'>' | b'/' => {}
            b if b.is_ascii_whitespace() => {}
            _ => continue,
        }
        let gt = at + tag_end(el.get(at..)?)?;
        if el.get(gt - 1) == Some(&b'/') {
            return Some(&[]);
        }
        let text = el.get(gt + 1..)?;
        return text.get(..memchr::memchr(b'<', text)?);
    }
}

/// The defined condition of an error stanza: the name of the first child element of its
/// `<error>` that is not `<text>` (`item-not-found`, `resource-constraint`, ...).
pub fn error_condition(el: &[u8]) -> Option<&[u8]> {
    let start = tag_end(el)? + 1;
    let at = start + find(el.get(start..)?, b"<error")?;
    let mut from = at + tag_end(el.get(at..)?)? + 1;
    loop {
        let lt = from + memchr::memchr(b'<', el.get(from..)?)?;
        let rest = el.get(lt + 1..)?;
        if rest.first() == Some(&b'/') {
            if rest.starts_with(b"/error") {
                return None;
            }
            from = lt + 1;
            continue;
        }
        let len = rest
            .iter()
            .position(|&b| b == b'>' || b == b'/' || b.is_ascii_whitespace())?;
        let name = rest.get(..len)?;
        if len == 0 {
            return None;
        }
        if name != b"text" {
            return Some(name);
        }
        from = lt + 1 + tag_end(el.get(lt..)?)?;
    }
}

/// Text content of an element without children (`<handshake>hex</handshake>`).
pub fn text_of(el: &[u8]) -> Option<Cow<'_, str>> {
    let gt = tag_end(el)?;
    let text = el.get(gt + 1..)?;
    let end = text.iter().position(|&b| b == b'<')?;
    Some(unescape(std::str::from_utf8(text.get(..end)?).ok()?))
}

/// The five predefined entities and numeric references.
pub fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(rest.get(..i).unwrap_or_default());
        let after = rest.get(i..).unwrap_or_default();
        let Some(semi) = after.find(';') else {
            out.push_str(after);
            return Cow::Owned(out);
        };
        let ent = after.get(1..semi).unwrap_or_default();
        let c = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "apos" => Some('\''),
            "quot" => Some('"'),
            e => e
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| e.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => out.push(c),
            None => out.push_str(after.get(..=semi).unwrap_or_default()),
        }
        rest = after.get(semi + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Lower-case hex SHA-1 of `id + secret` (XEP-0114 handshake).
pub fn handshake_digest(id: &str, secret: &str) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(id.as_bytes());
    h.update(secret.as_bytes());
    let mut out = String::with_capacity(40);
    for b in h.finalize().iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether `b` must be escaped in attribute values and text.
fn is_special(b: u8) -> bool {
    matches!(b, b'&' | b'<' | b'>' | b'\'' | b'"')
}

/// The entity for a special byte, the byte itself otherwise.
fn entity(b: u8) -> Option<&'static str> {
    match b {
        b'&' => Some("&amp;"),
        b'<' => Some("&lt;"),
        b'>' => Some("&gt;"),
        b'\'' => Some("&apos;"),
        b'"' => Some("&quot;"),
        _ => None,
    }
}

/// Escapes text for an attribute value or element text.
pub fn escape(out: &mut String, s: &str) {
    // Most text has nothing to escape: copy it whole.
    if !s.bytes().any(is_special) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match u8::try_from(c).ok().and_then(entity) {
            Some(e) => out.push_str(e),
            None => out.push(c),
        }
    }
}

/// [`escape`] into bytes. The special characters are ASCII, so escaping byte by byte gives
/// the same UTF-8 as escaping character by character.
pub fn escape_into(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let mut from = 0;
    for (i, &c) in b.iter().enumerate() {
        if let Some(e) = entity(c) {
            out.extend_from_slice(b.get(from..i).unwrap_or_default());
            out.extend_from_slice(e.as_bytes());
            from = i + 1;
        }
    }
    out.extend_from_slice(b.get(from..).unwrap_or_default());
}

/// Length of `s` once escaped.
pub fn escaped_len(s: &str) -> usize {
    s.bytes()
        .map(|c| entity(c).map_or(1, str::len))
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(sc: &mut Scanner, data: &[u8]) -> Vec<String> {
        let mut v = Vec::new();
        let r = sc.feed(data, |e| {
            v.push(match e {
                Ev::Start(s) => format!("S:{}", String::from_utf8_lossy(s)),
                Ev::Element(s) => format!("E:{}", String::from_utf8_lossy(s)),
                Ev::End => "END".to_owned(),
            })
        });
        assert_eq!(r, Ok(()));
        v
    }

    #[test]
    fn splits_a_stream_fed_byte_by_byte() {
        let stream = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' to='c'>\
<handshake>ab</handshake> <presence from='a' to='b' type='subscribe'/>\
<presence from='x/r' to='y'><status xml:lang='en'>n5 &amp; more</status><x a='>'/></presence></stream:stream>";
        let mut sc = Scanner::default();
        let mut got = Vec::new();
        for b in stream.as_bytes() {
            got.extend(collect(&mut sc, std::slice::from_ref(b)));
        }
        assert_eq!(
            got,
            vec![
                "S:<stream:stream xmlns='jabber:component:accept' to='c'>".to_owned(),
                "E:<handshake>ab</handshake>".to_owned(),
                "E:<presence from='a' to='b' type='subscribe'/>".to_owned(),
                "E:<presence from='x/r' to='y'><status xml:lang='en'>n5 &amp; more</status><x a='>'/></presence>".to_owned(),
                "END".to_owned(),
            ]
        );
    }

    #[test]
    fn reads_attributes_and_status() {
        let el = b"<presence from=\"x*y@c/t1\" to='w1@xmpp.bench'><show>dnd</show><status xml:lang='en'>n5 &amp; more</status></presence>";
        assert_eq!(name_of(el), b"presence");
        assert_eq!(attr_str(el, "from"), Some("x*y@c/t1"));
        assert_eq!(attr_str(el, "to"), Some("w1@xmpp.bench"));
        assert_eq!(attr_str(el, "type"), None);
        assert_eq!(child_text(el, "status").as_deref(), Some("n5 & more"));
        assert_eq!(child_text(el, "priority"), None);
        // The name as text or as a longer element name is not the child.
        let el =
            b"<presence><x>status</x><statusx>a</statusx><status/><status>b</status></presence>";
        assert_eq!(child_text(el, "status").as_deref(), Some(""));
        let el = b"<presence><x>status</x><statusx>a</statusx><status>b</status></presence>";
        assert_eq!(child_text(el, "status").as_deref(), Some("b"));
        assert_eq!(
            text_of(b"<handshake>abc</handshake>").as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn reads_the_raw_body_of_a_message() {
        let el = b"<message from='s1*sip.bench@c' to='u1@xmpp.bench' type='chat' id='sipm-1'><body>n42 xx&amp;</body><thread>m42.r@bench</thread></message>";
        assert_eq!(body_raw(el), Some(&b"n42 xx&amp;"[..]));
        let el = b"<message a='<body>n1</body>'><bodyx>n2</bodyx><body xml:lang='en'>n3</body></message>";
        assert_eq!(body_raw(el), Some(&b"n3"[..]));
        assert_eq!(body_raw(b"<message><body/></message>"), Some(&b""[..]));
        assert_eq!(body_raw(b"<message><subject>n1</subject></message>"), None);
        assert_eq!(body_raw(b"<message><body>n1"), None);
    }

    #[test]
    fn reads_the_condition_of_an_error_stanza() {
        let el = b"<message from='s1*sip.bench@c' to='u1@xmpp.bench/r' type='error' id='x4'><error type='wait' by='c'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>Too many messages queued</text></error></message>";
        assert_eq!(error_condition(el), Some(&b"resource-constraint"[..]));
        let el = b"<message type='error'><body>n1</body><error type='cancel'><text>t</text><item-not-found/></error></message>";
        assert_eq!(error_condition(el), Some(&b"item-not-found"[..]));
        assert_eq!(
            error_condition(b"<message type='error'><error/></message>"),
            None
        );
        assert_eq!(error_condition(b"<message type='error'/>"), None);
    }

    #[test]
    fn digest_is_sha1_of_id_then_secret_in_lower_hex() {
        // FIPS 180 test vector "abc", split into id "ab" + secret "c".
        assert_eq!(
            handshake_digest("ab", "c"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    /// The readers this module used before its memchr-based ones: the tests check that both
    /// give the same results.
    mod reference {
        use super::super::{name_of, unescape};
        use std::borrow::Cow;

        pub fn tag_end(tag: &[u8]) -> Option<usize> {
            let mut quote = 0u8;
            for (i, &b) in tag.iter().enumerate().skip(1) {
                match (quote, b) {
                    (0, b'"') | (0, b'\'') => quote = b,
                    (0, b'>') => return Some(i),
                    (q, c) if q != 0 && c == q => quote = 0,
                    _ => {}
                }
            }
            None
        }

        pub fn attr<'a>(el: &'a [u8], name: &str) -> Option<&'a [u8]> {
            let tag = el.get(..=tag_end(el)?)?;
            let mut i = 1 + name_of(el).len();
            loop {
                while tag.get(i)?.is_ascii_whitespace() {
                    i += 1;
                }
                let n_start = i;
                while !matches!(tag.get(i)?, b'=' | b'>' | b'/')
                    && !tag.get(i)?.is_ascii_whitespace()
                {
                    i += 1;
                }
                let n = tag.get(n_start..i)?;
                while tag.get(i)?.is_ascii_whitespace() {
                    i += 1;
                }
                if *tag.get(i)? != b'=' {
                    return None;
                }
                i += 1;
                while tag.get(i)?.is_ascii_whitespace() {
                    i += 1;
                }
                let q = *tag.get(i)?;
                if q != b'\'' && q != b'"' {
                    return None;
                }
                let v_start = i + 1;
                let v_len = tag.get(v_start..)?.iter().position(|&b| b == q)?;
                if n == name.as_bytes() {
                    return tag.get(v_start..v_start + v_len);
                }
                i = v_start + v_len + 1;
            }
        }

        pub fn child_text<'a>(el: &'a [u8], child: &str) -> Option<Cow<'a, str>> {
            let body_start = tag_end(el)? + 1;
            let mut from = body_start;
            loop {
                let name_at = from + memchr::memmem::find(el.get(from..)?, child.as_bytes())?;
                from = name_at + 1;
                let after = *el.get(name_at + child.len())?;
                if name_at == 0 || el.get(name_at - 1) != Some(&b'<') {
                    continue;
                }
                if !(after == b'>' || after == b'/' || after.is_ascii_whitespace()) {
                    continue;
                }
                let at = name_at - 1;
                let gt = at + tag_end(el.get(at..)?)?;
                if el.get(gt - 1) == Some(&b'/') {
                    return Some(Cow::Borrowed(""));
                }
                let text = el.get(gt + 1..)?;
                let end = text.iter().position(|&b| b == b'<')?;
                return Some(unescape(std::str::from_utf8(text.get(..end)?).ok()?));
            }
        }

        pub fn escape(out: &mut String, s: &str) {
            for c in s.chars() {
                match c {
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '\'' => out.push_str("&apos;"),
                    '"' => out.push_str("&quot;"),
                    c => out.push(c),
                }
            }
        }
    }

    /// Start tags and elements with the corners an attribute reader can get wrong.
    const STANZAS: &[&[u8]] = &[
        b"<presence from='p1*sip.bench@sip.bench.local' to='w1@xmpp.bench' type='subscribed'/>",
        b"<presence from=\"x*y@c/t1\" to='w1@xmpp.bench'><status>n5</status></presence>",
        b"<presence to = 'a' \n\t from\t=\"b\" type='unavailable'></presence>",
        b"<presence from='a&apos;b&amp;c' to=\"d&quot;e\" type='error'/>",
        b"<presence from='has \"double\" inside' to=\"has 'single' inside\"/>",
        b"<presence xml:lang='en' id='x>y' from='f' to='t'><status>a</status></presence>",
        b"<presence type='a' type='b' from='1' from='2'/>",
        b"<presence/>",
        b"<presence>",
        b"<presence >",
        b"<presence from='a' to='b'",
        b"<presence from='a to='b'>",
        b"<presence from=a to='b'>",
        b"<presence from to='b'>",
        b"<presence from='a' / to='b'>",
        b"<presence b\"c='1' from='x'>",
        b"<presence from='\xff\xfe' to='w'/>",
        b"<presence totype='x' to='y' ='z'/>",
        b"<message from='a' to='b'><body>to='c'</body></message>",
        b"<p",
        b"<",
        b"",
    ];

    #[test]
    fn one_pass_attribute_reader_equals_the_one_at_a_time_reader() {
        for el in STANZAS {
            let names = ["type", "from", "to", "id", "xml:lang", "", "missing"];
            let got = attrs(el, names);
            for (n, g) in names.iter().zip(got) {
                let text = String::from_utf8_lossy(el);
                assert_eq!(g, reference::attr(el, n), "{n} in {text:?}");
                assert_eq!(attr(el, n), reference::attr(el, n), "{n} in {text:?}");
            }
            assert_eq!(tag_end(el), reference::tag_end(el));
        }
        // Repeated names in one request each get the first occurrence.
        let el = b"<presence type='a' type='b' from='1'/>";
        assert_eq!(
            attrs(el, ["type", "type", "from"]),
            [Some(&b"a"[..]), Some(&b"a"[..]), Some(&b"1"[..])]
        );
        assert_eq!(attr_str(STANZAS[3], "from"), Some("a&apos;b&amp;c"));
        assert_eq!(attr_str(STANZAS[16], "from"), None);
    }

    #[test]
    fn child_text_equals_the_substring_search() {
        let mut els: Vec<&[u8]> = STANZAS.to_vec();
        els.extend([
            &b"<presence><x>status</x><statusx>a</statusx><status/><status>b</status></presence>"[..],
            b"<presence><x>status</x><statusx>a</statusx><status>b</status></presence>",
            b"<presence><status xml:lang='en'>n5 &amp; more</status></presence>",
            b"<presence><p:status>q</p:status><status\t>r</status></presence>",
            b"<presence><status>unterminated",
            b"<presence>status",
            b"<presence><status",
            b"<presence><status a='>'>x</status></presence>",
        ]);
        for el in els {
            for child in ["status", "show", "x"] {
                assert_eq!(
                    child_text(el, child),
                    reference::child_text(el, child),
                    "{child} in {:?}",
                    String::from_utf8_lossy(el)
                );
            }
        }
    }

    #[test]
    fn escapes_equal_the_char_by_char_escape() {
        for t in ["plain", "a&b<c>d'e\"f", "é&ü — 日本'", "", "&&", "n\u{1}"] {
            let mut old = String::from("x");
            reference::escape(&mut old, t);
            let mut new = String::from("x");
            escape(&mut new, t);
            assert_eq!(new, old);
            let mut bytes = b"x".to_vec();
            escape_into(&mut bytes, t);
            assert_eq!(bytes, old.as_bytes());
            assert_eq!(escaped_len(t) + 1, old.len());
        }
    }
}
