//! Just enough SIP for a load peer: a zero-copy header scanner (the tool must stay cheaper than
//! the gateway it measures) and writers for the few messages it sends.

use std::fmt::Write as _;

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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
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

/// Parses one datagram. `None` for anything that is not a SIP message.
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

impl<'a> Msg<'a> {
    /// First value of a header, by long lower-case name.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// All values of a header, in order.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// Method named in CSeq (the method a response answers).
    pub fn cseq_method(&self) -> Option<&'a str> {
        self.get("cseq")?.split_whitespace().nth(1)
    }
}

/// URI of a name-addr or addr-spec header value.
pub fn uri_of(v: &str) -> &str {
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => v.get(a + 1..b).unwrap_or(v),
        _ => v.split(';').next().unwrap_or(v).trim(),
    }
}

/// `tag` parameter of a From/To value.
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

/// User part of a `sip:` URI.
pub fn user_of(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    rest.split_once('@').map(|(u, _)| u)
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
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 65536 {
            Frame::Bad
        } else {
            Frame::Need
        };
    };
    let head = buf.get(..head_end).unwrap_or_default();
    let len = head.split(|&b| b == b'\n').skip(1).find_map(|l| {
        let colon = l.iter().position(|&b| b == b':')?;
        let name = std::str::from_utf8(l.get(..colon)?).ok()?;
        (long_name(name.trim()).eq_ignore_ascii_case("content-length"))
            .then(|| {
                let v = std::str::from_utf8(l.get(colon + 1..)?).ok()?;
                v.trim().parse::<usize>().ok()
            })
            .flatten()
    });
    match len {
        None => Frame::Bad,
        Some(n) if n > 1 << 20 => Frame::Bad,
        Some(n) if buf.len() >= head_end + 4 + n => Frame::Message(head_end + 4 + n),
        Some(_) => Frame::Need,
    }
}

/// A response to `req`: Via, From, To (+ our tag if it had none), Call-ID and CSeq copied.
/// `extra` is more header lines, each ending in CRLF.
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
        match (tag_of(v), to_tag) {
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
}
