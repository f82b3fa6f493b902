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
fn tag_end(tag: &[u8]) -> Option<usize> {
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

impl Scanner {
    /// Feeds bytes and reports every complete event to `f`.
    pub fn feed<F: FnMut(Ev<'_>)>(&mut self, data: &[u8], mut f: F) -> Result<(), String> {
        self.buf.extend_from_slice(data);
        let buf = &self.buf;
        let mut p = self.scan;
        let mut depth = self.depth;
        let mut elem_start = self.elem_start;
        loop {
            let Some(off) = buf.get(p..).and_then(|r| r.iter().position(|&b| b == b'<')) else {
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
                    let Some(gt) = rest.iter().position(|&b| b == b'>') else {
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

/// Raw (still escaped) value of an attribute of the element's start tag.
pub fn attr<'a>(el: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let tag = el.get(..=tag_end(el)?)?;
    let mut i = 1 + name_of(el).len();
    loop {
        while tag.get(i)?.is_ascii_whitespace() {
            i += 1;
        }
        let n_start = i;
        while !matches!(tag.get(i)?, b'=' | b'>' | b'/') && !tag.get(i)?.is_ascii_whitespace() {
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

/// Attribute as text (JIDs in this tool never need unescaping).
pub fn attr_str<'a>(el: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(attr(el, name)?).ok()
}

/// Text of the first child element `child` (e.g. `status`), unescaped.
pub fn child_text<'a>(el: &'a [u8], child: &str) -> Option<Cow<'a, str>> {
    let body_start = tag_end(el)? + 1;
    let mut from = body_start;
    loop {
        let name_at = from + find(el.get(from..)?, child.as_bytes())?;
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

/// Escapes text for an attribute value or element text.
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
    fn digest_is_sha1_of_id_then_secret_in_lower_hex() {
        // FIPS 180 test vector "abc", split into id "ab" + secret "c".
        assert_eq!(
            handshake_digest("ab", "c"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }
}
