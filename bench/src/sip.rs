//! Just enough SIP for a load peer: a zero-copy header scanner (the tool must stay cheaper than
//! the gateway it measures) and writers for the few messages it sends.

use memchr::memmem;
use std::sync::LazyLock;

/// First line of a SIP message.
#[derive(Debug, PartialEq, Eq)]
pub enum First<'a> {
    Request { method: &'a str, uri: &'a str },
    Response { code: u16 },
}

/// A parsed message; header names and values borrow the datagram.
#[derive(Debug)]
pub struct Msg<'a> {
    pub first: First<'a>,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
}

/// The blank line ending a head, searched with a finder built once: `memmem::find` builds
/// one per call, which cost more than the search itself on a message of a few hundred bytes.
static CRLF2: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\r\n\r\n"));

/// Byte offset of the first `c` in `s`.
fn find_byte(s: &str, c: u8) -> Option<usize> {
    memchr::memchr(c, s.as_bytes())
}

/// Long form of a compact header name (RFC 3261 §7.3.3, RFC 6665 `o`).
fn long_name(name: &str) -> &str {
    match name {
        "v" | "V" => "via",
        "f" | "F" => "from",
        "t" | "T" => "to",
        "i" | "I" => "call-id",
        "m" | "M" => "contact",
        "l" | "L" => "content-length",
        "c" | "C" => "content-type",
        "o" | "O" => "event",
        "u" | "U" => "allow-events",
        _ => name,
    }
}

/// Whether `b` is one of the ASCII characters `char::is_whitespace` accepts (what `str::trim`
/// removes, restricted to ASCII).
fn is_trim_ws(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | b' ')
}

/// `s.trim()` with a byte loop for the ASCII edges; falls back to `str::trim` only when a
/// non-ASCII character is at an edge (it could be Unicode white space).
pub fn trim(s: &str) -> &str {
    let b = s.as_bytes();
    let start = b.iter().position(|&c| !is_trim_ws(c)).unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|&c| !is_trim_ws(c))
        .map_or(start, |i| i + 1);
    let t = s.get(start..end).unwrap_or_default();
    match (t.as_bytes().first(), t.as_bytes().last()) {
        (Some(&f), Some(&l)) if f >= 0x80 || l >= 0x80 => t.trim(),
        _ => t,
    }
}

/// Parses one datagram. `None` for anything that is not a SIP message.
pub fn parse(data: &[u8]) -> Option<Msg<'_>> {
    let (head_end, body_start) = match CRLF2.find(data) {
        Some(i) => (i, i + 4),
        None => memmem::find(data, b"\n\n").map(|i| (i, i + 2))?,
    };
    let head = std::str::from_utf8(data.get(..head_end)?).ok()?;
    let hb = head.as_bytes();
    let mut body = data.get(body_start..).unwrap_or_default();
    // Lines split at LF with a byte search (the `str` splitters were a visible share of the
    // tool's CPU); every cut is at an ASCII byte, so the `str` slices below always exist.
    let mut lfs = memchr::memchr_iter(b'\n', hb);
    let first_end = lfs.next().unwrap_or(hb.len());
    let first_line = head.get(..first_end)?.trim_end_matches('\r');
    let first = if let Some(rest) = first_line.strip_prefix("SIP/2.0 ") {
        First::Response {
            code: rest.get(..3)?.parse().ok()?,
        }
    } else {
        // `METHOD SP URI SP SIP/2.0`, anything after a third space ignored.
        let sp1 = find_byte(first_line, b' ')?;
        let method = first_line.get(..sp1)?;
        let rest = first_line.get(sp1 + 1..)?;
        let sp2 = find_byte(rest, b' ')?;
        let uri = rest.get(..sp2)?;
        let rest = rest.get(sp2 + 1..)?;
        let version = rest.get(..find_byte(rest, b' ').unwrap_or(rest.len()))?;
        if version != "SIP/2.0" {
            return None;
        }
        First::Request { method, uri }
    };
    let mut headers = Vec::with_capacity(16);
    let mut pos = first_end + 1;
    while pos <= hb.len() {
        let end = lfs.next().unwrap_or(hb.len());
        let line = hb.get(pos..end)?;
        // Names are short: a plain loop beats a memchr call here.
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            // Trimming the value also drops the line's CR.
            let name = trim(head.get(pos..pos + colon)?);
            let value = trim(head.get(pos + colon + 1..end)?);
            headers.push((long_name(name), value));
        }
        pos = end + 1;
    }
    let msg = Msg {
        first,
        headers,
        body,
    };
    if let Some(len) = msg
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body = body.get(..len).unwrap_or(body);
    }
    Some(Msg { body, ..msg })
}

/// Case-insensitive header name equality; length and first letter first, which rejects
/// almost every other header without the byte-by-byte compare (`Msg::get` walks them all).
fn same_name(a: &str, b: &str) -> bool {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    // Bytes equal up to ASCII case are also equal with bit 5 set.
    x.len() == y.len()
        && x.first().map(|c| c | 0x20) == y.first().map(|c| c | 0x20)
        && x.eq_ignore_ascii_case(y)
}

impl<'a> Msg<'a> {
    /// First value of a header, by long lower-case name.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| same_name(n, name))
            .map(|(_, v)| *v)
    }

    /// All values of a header, in order.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| same_name(n, name))
            .map(|(_, v)| *v)
    }

    /// Method named in CSeq (the method a response answers).
    pub fn cseq_method(&self) -> Option<&'a str> {
        self.get("cseq")?.split_whitespace().nth(1)
    }
}

/// URI of a name-addr or addr-spec header value.
pub fn uri_of(v: &str) -> &str {
    match (find_byte(v, b'<'), find_byte(v, b'>')) {
        (Some(a), Some(b)) if a < b => v.get(a + 1..b).unwrap_or(v),
        _ => trim(v.get(..find_byte(v, b';').unwrap_or(v.len())).unwrap_or(v)),
    }
}

/// `tag` parameter of a From/To value.
pub fn tag_of(v: &str) -> Option<&str> {
    let mut params = match find_byte(v, b'>') {
        Some(i) => v.get(i + 1..)?,
        None => v,
    };
    // Each `;` starts a parameter; the text before the first is not one.
    while let Some(semi) = find_byte(params, b';') {
        params = params.get(semi + 1..)?;
        let p = params.get(..find_byte(params, b';').unwrap_or(params.len()))?;
        if let Some(eq) = find_byte(p, b'=') {
            if trim(p.get(..eq)?).eq_ignore_ascii_case("tag") {
                return Some(trim(p.get(eq + 1..)?));
            }
        }
    }
    None
}

/// User part of a `sip:` URI.
pub fn user_of(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    rest.get(..find_byte(rest, b'@')?)
}

/// The first token of a header value (Event package, Subscription-State value).
pub fn token(v: &str) -> &str {
    v.split(';').next().unwrap_or("").trim()
}

/// Text of the first `<note>` (any prefix) of a PIDF body.
pub fn first_note(body: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(body).ok()?;
    let mut from = 0;
    while let Some(i) = s.get(from..)?.find("note") {
        let at = from + i;
        from = at + 4;
        let before = s.get(..at)?;
        let opens = before.ends_with('<') || (before.ends_with(':') && is_open_tag(before));
        let next = s.get(at + 4..)?.chars().next()?;
        if !opens || !(next == '>' || next == ' ') {
            continue;
        }
        let gt = at + s.get(at..)?.find('>')?;
        let text_start = gt + 1;
        let end = text_start + s.get(text_start..)?.find('<')?;
        return s.get(text_start..end);
    }
    None
}

/// Whether `before` ends in `<prefix:` (a prefixed start tag being opened).
fn is_open_tag(before: &str) -> bool {
    let b = before.trim_end_matches(':');
    let name_start = b
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .map(|i| i + 1)
        .unwrap_or(0);
    b.get(..name_start).is_some_and(|p| p.ends_with('<'))
}

/// What a stream buffer starts with.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not a whole message yet.
    Need,
    /// Keepalive CRLFs to skip.
    Skip(usize),
    /// A whole message of this many bytes.
    Message(usize),
    /// No Content-Length or an oversized head: the stream is unusable.
    Bad,
}

/// Content-Length framing of a SIP stream (RFC 3261 §18.3).
pub fn frame(buf: &[u8]) -> Frame {
    let ws = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if ws > 0 {
        return Frame::Skip(ws);
    }
    let Some(head_end) = CRLF2.find(buf) else {
        return if buf.len() > 65536 {
            Frame::Bad
        } else {
            Frame::Need
        };
    };
    let head = buf.get(..head_end).unwrap_or_default();
    let len = content_length(head);
    match len {
        None => Frame::Bad,
        Some(n) if n > 1 << 20 => Frame::Bad,
        Some(n) if buf.len() >= head_end + 4 + n => Frame::Message(head_end + 4 + n),
        Some(_) => Frame::Need,
    }
}

/// The first Content-Length (or `l`) header of a message head whose value is a number,
/// found with byte searches: only that line is decoded as text.
fn content_length(head: &[u8]) -> Option<usize> {
    let mut lfs = memchr::memchr_iter(b'\n', head);
    // The first line is the request or status line, never a header.
    let mut pos = lfs.next()? + 1;
    while pos <= head.len() {
        let end = lfs.next().unwrap_or(head.len());
        let line = head.get(pos..end)?;
        pos = end + 1;
        // Only a line starting with `c`, `l`, white space or a non-ASCII byte (possibly
        // Unicode white space) can name Content-Length: skip the others at their first byte.
        match line.first() {
            Some(&b) if matches!(b | 0x20, b'c' | b'l') || is_trim_ws(b) || b >= 0x80 => {}
            _ => continue,
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let raw = line.get(..colon)?;
        let start = raw
            .iter()
            .position(|&c| !is_trim_ws(c))
            .unwrap_or(raw.len());
        let stop = raw
            .iter()
            .rposition(|&c| !is_trim_ws(c))
            .map_or(start, |i| i + 1);
        let name = raw.get(start..stop)?;
        let is_len = match (name.first(), name.last()) {
            // A non-ASCII edge could be Unicode white space: decide as text.
            (Some(&f), Some(&l)) if f >= 0x80 || l >= 0x80 => std::str::from_utf8(raw)
                .ok()
                .is_some_and(|n| long_name(n.trim()).eq_ignore_ascii_case("content-length")),
            _ => name.eq_ignore_ascii_case(b"l") || name.eq_ignore_ascii_case(b"content-length"),
        };
        if !is_len {
            continue;
        }
        let value = std::str::from_utf8(line.get(colon + 1..)?).ok();
        if let Some(n) = value.and_then(|v| v.trim().parse::<usize>().ok()) {
            return Some(n);
        }
    }
    None
}

/// Decimal text of an integer, on the stack: integer formatting through `write!` was a
/// visible share of the tool's CPU.
pub struct Dec {
    buf: [u8; 20],
    start: usize,
}

impl Dec {
    pub fn new(mut n: u64) -> Dec {
        let mut buf = [0u8; 20];
        let mut start = buf.len();
        loop {
            start -= 1;
            if let Some(d) = buf.get_mut(start) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || start == 0 {
                break;
            }
        }
        Dec { buf, start }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// Appends the decimal digits of `n`.
pub fn push_dec(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(Dec::new(n).as_bytes());
}

/// Appends each piece in turn.
pub fn push_all(out: &mut Vec<u8>, pieces: &[&str]) {
    for p in pieces {
        out.extend_from_slice(p.as_bytes());
    }
}

/// A response to `req`: Via, From, To (+ our tag if it had none), Call-ID and CSeq copied.
/// `extra` is more header lines, each ending in CRLF. Appended to `out` piece by piece.
pub fn write_response(
    out: &mut Vec<u8>,
    req: &Msg<'_>,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &str,
) {
    out.reserve(400);
    out.extend_from_slice(b"SIP/2.0 ");
    push_dec(out, u64::from(code));
    push_all(out, &[" ", reason, "\r\n"]);
    for v in req.all("via") {
        push_all(out, &["Via: ", v, "\r\n"]);
    }
    if let Some(v) = req.get("from") {
        push_all(out, &["From: ", v, "\r\n"]);
    }
    if let Some(v) = req.get("to") {
        match (tag_of(v), to_tag) {
            (None, Some(t)) => push_all(out, &["To: ", v, ";tag=", t, "\r\n"]),
            _ => push_all(out, &["To: ", v, "\r\n"]),
        }
    }
    if let Some(v) = req.get("call-id") {
        push_all(out, &["Call-ID: ", v, "\r\n"]);
    }
    if let Some(v) = req.get("cseq") {
        push_all(out, &["CSeq: ", v, "\r\n"]);
    }
    push_all(out, &[extra, "Content-Length: 0\r\n\r\n"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "SUBSCRIBE sip:p7@sip.bench SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:15080;branch=z9hG4bK-1;rport\r\n\
Max-Forwards: 70\r\n\
f: <sip:w7*xmpp.bench@gw.bench.local>;tag=gw-1\r\n\
To: <sip:p7@sip.bench>\r\n\
i: c1@gw\r\n\
CSeq: 1 SUBSCRIBE\r\n\
Contact: <sip:w7*xmpp.bench@127.0.0.1:15080>\r\n\
o: presence\r\n\
Expires: 3600\r\n\
l: 0\r\n\r\n";

    #[test]
    fn parses_compact_headers_and_answers() {
        let Some(m) = parse(SUB.as_bytes()) else {
            panic!("no parse")
        };
        assert_eq!(
            m.first,
            First::Request {
                method: "SUBSCRIBE",
                uri: "sip:p7@sip.bench"
            }
        );
        assert_eq!(m.get("call-id"), Some("c1@gw"));
        assert_eq!(m.get("event"), Some("presence"));
        assert_eq!(tag_of(m.get("from").unwrap_or("")), Some("gw-1"));
        assert_eq!(user_of(uri_of(m.get("to").unwrap_or(""))), Some("p7"));
        let mut out = Vec::new();
        write_response(&mut out, &m, 200, "OK", Some("b1"), "Expires: 3600\r\n");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 127.0.0.1:15080;branch=z9hG4bK-1;rport\r\n\
From: <sip:w7*xmpp.bench@gw.bench.local>;tag=gw-1\r\n\
To: <sip:p7@sip.bench>;tag=b1\r\n\
Call-ID: c1@gw\r\n\
CSeq: 1 SUBSCRIBE\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn finds_the_first_note_with_or_without_prefix() {
        let b = br#"<presence xmlns="urn:ietf:params:xml:ns:pidf"><tuple id="a"><status><basic>open</basic></status><note xml:lang="en">n42</note></tuple><note>n42</note></presence>"#;
        assert_eq!(first_note(b), Some("n42"));
        let p = br#"<p:presence><p:tuple><p:notebook/><p:note>x1</p:note></p:tuple></p:presence>"#;
        assert_eq!(first_note(p), Some("x1"));
        assert_eq!(first_note(b"<presence/>"), None);
    }

    #[test]
    fn frames_a_stream() {
        assert_eq!(frame(b"\r\n\r\nINVITE"), Frame::Skip(4));
        assert_eq!(frame(b"NOTIFY x SIP/2.0\r\nl: 3\r\n\r\nab"), Frame::Need);
        assert_eq!(
            frame(b"NOTIFY x SIP/2.0\r\nl: 3\r\n\r\nabcNOTIFY"),
            Frame::Message(29)
        );
        assert_eq!(frame(b"NOTIFY x SIP/2.0\r\nTo: a\r\n\r\n"), Frame::Bad);
    }

    #[test]
    fn response_first_line_and_body_length() {
        let r = b"SIP/2.0 481 Gone\r\nCSeq: 4 NOTIFY\r\nContent-Length: 2\r\n\r\nabcd";
        let Some(m) = parse(r) else {
            panic!("no parse")
        };
        assert_eq!(m.first, First::Response { code: 481 });
        assert_eq!(m.cseq_method(), Some("NOTIFY"));
        assert_eq!(m.body, b"ab");
    }

    /// The `str`-splitting readers this module used before its byte-level ones: the tests
    /// check that both give the same results.
    mod reference {
        use super::super::{long_name, First, Msg};
        use std::fmt::Write as _;

        fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
            memchr::memmem::find(hay, needle)
        }

        pub fn parse(data: &[u8]) -> Option<Msg<'_>> {
            let (head_end, body_start) = match find(data, b"\r\n\r\n") {
                Some(i) => (i, i + 4),
                None => find(data, b"\n\n").map(|i| (i, i + 2))?,
            };
            let head = std::str::from_utf8(data.get(..head_end)?).ok()?;
            let mut body = data.get(body_start..).unwrap_or_default();
            let mut lines = head.split('\n').map(|l| l.trim_end_matches('\r'));
            let first_line = lines.next()?;
            let first = if let Some(rest) = first_line.strip_prefix("SIP/2.0 ") {
                First::Response {
                    code: rest.get(..3)?.parse().ok()?,
                }
            } else {
                let mut it = first_line.split(' ');
                let method = it.next()?;
                let uri = it.next()?;
                if it.next()? != "SIP/2.0" {
                    return None;
                }
                First::Request { method, uri }
            };
            let mut headers = Vec::with_capacity(16);
            for l in lines {
                if let Some((n, v)) = l.split_once(':') {
                    headers.push((long_name(n.trim()), v.trim()));
                }
            }
            let msg = Msg {
                first,
                headers,
                body,
            };
            if let Some(len) = msg
                .get("content-length")
                .and_then(|v| v.parse::<usize>().ok())
            {
                body = body.get(..len).unwrap_or(body);
            }
            Some(Msg { body, ..msg })
        }

        pub fn content_length(head: &[u8]) -> Option<usize> {
            head.split(|&b| b == b'\n').skip(1).find_map(|l| {
                let colon = l.iter().position(|&b| b == b':')?;
                let name = std::str::from_utf8(l.get(..colon)?).ok()?;
                (long_name(name.trim()).eq_ignore_ascii_case("content-length"))
                    .then(|| {
                        let v = std::str::from_utf8(l.get(colon + 1..)?).ok()?;
                        v.trim().parse::<usize>().ok()
                    })
                    .flatten()
            })
        }

        pub fn uri_of(v: &str) -> &str {
            match (v.find('<'), v.find('>')) {
                (Some(a), Some(b)) if a < b => v.get(a + 1..b).unwrap_or(v),
                _ => v.split(';').next().unwrap_or(v).trim(),
            }
        }

        pub fn tag_of(v: &str) -> Option<&str> {
            let params = match v.find('>') {
                Some(i) => v.get(i + 1..)?,
                None => v,
            };
            params.split(';').skip(1).find_map(|p| {
                let (k, val) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case("tag").then_some(val.trim())
            })
        }

        pub fn user_of(uri: &str) -> Option<&str> {
            let rest = uri
                .strip_prefix("sip:")
                .or_else(|| uri.strip_prefix("sips:"))?;
            rest.split_once('@').map(|(u, _)| u)
        }

        pub fn write_response(
            out: &mut Vec<u8>,
            req: &Msg<'_>,
            code: u16,
            reason: &str,
            to_tag: Option<&str>,
            extra: &str,
        ) {
            let mut s = String::with_capacity(400);
            let _ = write!(s, "SIP/2.0 {code} {reason}\r\n");
            for v in req.all("via") {
                let _ = write!(s, "Via: {v}\r\n");
            }
            if let Some(v) = req.get("from") {
                let _ = write!(s, "From: {v}\r\n");
            }
            if let Some(v) = req.get("to") {
                match (super::super::tag_of(v), to_tag) {
                    (None, Some(t)) => {
                        let _ = write!(s, "To: {v};tag={t}\r\n");
                    }
                    _ => {
                        let _ = write!(s, "To: {v}\r\n");
                    }
                }
            }
            if let Some(v) = req.get("call-id") {
                let _ = write!(s, "Call-ID: {v}\r\n");
            }
            if let Some(v) = req.get("cseq") {
                let _ = write!(s, "CSeq: {v}\r\n");
            }
            s.push_str(extra);
            s.push_str("Content-Length: 0\r\n\r\n");
            out.extend_from_slice(s.as_bytes());
        }
    }

    /// Messages with the odd corners a byte-level reader can get wrong: LF-only lines,
    /// compact and oddly cased names, white space (also Unicode) around names and values,
    /// lines without a colon, repeated headers, bad first lines, bodies and lengths.
    const ODD: &[&[u8]] = &[
        SUB.as_bytes(),
        b"SIP/2.0 200 OK\r\nVia: a\r\nVia: b\r\nCSeq: 2 NOTIFY\r\nl: 3\r\n\r\nabcdef",
        b"NOTIFY sip:x SIP/2.0\nV: v1\nt:  <sip:y>;tag=1 \n  i :\tc@d\t\nL: 2\n\nxyz",
        b"NOTIFY sip:x SIP/2.0 trailing words\r\nTo: a\r\n\r\n",
        b"NOTIFY sip:x SIP/2.1\r\nTo: a\r\n\r\n",
        b"NOTIFY sip:x\r\nTo: a\r\n\r\n",
        b"NOTIFY\r\n\r\n",
        b"NOTIFY  sip:x SIP/2.0\r\n\r\n",
        b"SIP/2.0 2x0 OK\r\n\r\n",
        b"SIP/2.0 18\r\n\r\n",
        b"NOTIFY sip:x SIP/2.0\r\nno colon here\r\n:empty name\r\nX-A:\r\n\r\n",
        "NOTIFY sip:x SIP/2.0\r\n\u{a0}Call-ID\u{a0}: \u{3000}c1\u{2003}\r\nTo:\x0b<sip:é@x>\x0c\r\n\r\n"
            .as_bytes(),
        b"NOTIFY sip:x SIP/2.0\r\nContent-Length: x\r\nl: 1\r\n\r\nab",
        b"NOTIFY sip:x SIP/2.0\r\nContent-Length: 99\r\n\r\nab",
        b"NOTIFY sip:x SIP/2.0\r\nTo: a\r\r\n\r\n",
        b"NOTIFY sip:x SIP/2.0\r\nTo: a",
        b"NOTIFY sip:x SIP/2.0\r\nTo: \xff\r\n\r\n",
        b"",
    ];

    #[test]
    fn byte_parser_equals_the_str_parser() {
        for m in ODD {
            let (new, old) = (parse(m), reference::parse(m));
            let text = String::from_utf8_lossy(m);
            assert_eq!(new.is_some(), old.is_some(), "{text:?}");
            if let (Some(n), Some(o)) = (new, old) {
                assert_eq!(n.first, o.first, "{text:?}");
                assert_eq!(n.headers, o.headers, "{text:?}");
                assert_eq!(n.body, o.body, "{text:?}");
            }
        }
    }

    #[test]
    fn framing_length_equals_the_line_by_line_reader() {
        let mut heads: Vec<&[u8]> = ODD.to_vec();
        heads.extend([
            &b"X\r\n \tcontent-LENGTH : 7 "[..],
            b"X\r\nL:\x0b12\r\nContent-Length: 3",
            "X\r\n\u{a0}l\u{2003}: \u{a0}5".as_bytes(),
            b"X\r\ncontent-length: \xff\r\nl: 4",
            b"X\r\nContent-Lengthy: 1\r\nCall-ID: l",
            b"content-length: 4",
            b"X\ncontent-length: 4\n",
        ]);
        for h in heads {
            assert_eq!(
                content_length(h),
                reference::content_length(h),
                "{:?}",
                String::from_utf8_lossy(h)
            );
        }
    }

    #[test]
    fn byte_value_readers_equal_the_str_ones() {
        for v in [
            "<sip:a@b>;tag=x",
            "\"N\" <sip:a@b;lr>;TAG = y ;q=1",
            "sip:a@b;tag=z",
            " sip:a@b ; x=1 ; tag= t2",
            "sip:a@b",
            "<sip:a@b",
            "sip:a@b>;tag=1",
            "a>b<c;tag",
            ";tag=;tag=2",
            "\u{a0}sip:é@b\u{a0};tag=\u{2003}q\u{2003}",
            "sips:u@h",
            "sip:nouser",
            "tel:1",
            "",
            ";",
        ] {
            assert_eq!(uri_of(v), reference::uri_of(v), "{v:?}");
            assert_eq!(tag_of(v), reference::tag_of(v), "{v:?}");
            assert_eq!(user_of(v), reference::user_of(v), "{v:?}");
            assert_eq!(trim(v), v.trim(), "{v:?}");
        }
    }

    #[test]
    fn decimal_text_equals_format() {
        for n in [0u64, 7, 9, 10, 99, 100, 12345, 1 << 32, u64::MAX] {
            assert_eq!(Dec::new(n).as_str(), n.to_string());
            let mut out = b"x".to_vec();
            push_dec(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn written_response_equals_the_formatted_one() {
        let reqs: [&[u8]; 4] = [
            SUB.as_bytes(),
            b"NOTIFY sip:x SIP/2.0\r\nv: a\r\nVia: b\r\nt: <sip:y>;tag=9\r\nCSeq: 3 NOTIFY\r\n\r\n",
            b"OPTIONS sip:x SIP/2.0\r\nTo: <sip:y>\r\n\r\n",
            b"MESSAGE sip:x SIP/2.0\r\n\r\n",
        ];
        for r in reqs {
            let Some(m) = parse(r) else {
                panic!("no parse")
            };
            for (code, reason, tag, extra) in [
                (200, "OK", Some("b1"), "Expires: 3600\r\n"),
                (481, "Subscription Does Not Exist", None, ""),
                (489, "Bad Event", Some("t"), "Allow-Events: presence\r\n"),
            ] {
                let (mut new, mut old) = (b"prefix".to_vec(), b"prefix".to_vec());
                write_response(&mut new, &m, code, reason, tag, extra);
                reference::write_response(&mut old, &m, code, reason, tag, extra);
                assert_eq!(String::from_utf8_lossy(&new), String::from_utf8_lossy(&old));
            }
        }
    }
}
