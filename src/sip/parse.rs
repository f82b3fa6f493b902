//! Bytes -> [`SipMessage`]. rsip 0.4 tokenizes the start line and the header fields; this
//! module covers its gaps in a thin layer: it first normalizes the header section (bare LF ->
//! CRLF, folded lines joined, compact names expanded, space before the colon dropped), and
//! afterwards turns the header values the gateway uses into typed fields. rsip's typed header
//! conversion is not used: it rejects unknown methods and re-serializes URIs, and URIs must stay
//! exactly as received (user-part spelling matters for address mapping).
//!
//! The body is everything after the blank line; framing (Content-Length) happened before, in
//! [`super::framing`].

use rsip::headers::header::Tokenizer as HeaderTokenizer;
use rsip::message::request::Tokenizer as RequestTokenizer;
use rsip::message::response::Tokenizer as ResponseTokenizer;
use rsip::message::sip_message::Tokenizer as MessageTokenizer;

use super::framing::header_end;
use super::headers::{Event, SubscriptionState};
use super::{Method, NameAddr, OutResponse, SipMessage, SipRequest, SipResponse};

#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub reason: String,
    /// a ready response (400 with a reason phrase naming the problem, e.g. "Missing Call-ID")
    /// when the bytes were a request with at least a Via, else None (caller drops + logs)
    pub response: Option<OutResponse>,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ParseError {}

fn garbage(reason: impl Into<String>) -> ParseError {
    ParseError {
        reason: reason.into(),
        response: None,
    }
}

/// Long name of a compact header form (RFC 3261 §7.3.3, RFC 6665 `o`/`u`, RFC 3515 `r`,
/// RFC 3892 `b`, RFC 4028 `x`, RFC 3841 `a`/`j`/`d`, RFC 4474 `y`/`n`).
fn expand_compact(name: &[u8]) -> &[u8] {
    let [c] = name else {
        return name;
    };
    match c.to_ascii_lowercase() {
        b'a' => b"Accept-Contact",
        b'b' => b"Referred-By",
        b'c' => b"Content-Type",
        b'd' => b"Request-Disposition",
        b'e' => b"Content-Encoding",
        b'f' => b"From",
        b'i' => b"Call-ID",
        b'j' => b"Reject-Contact",
        b'k' => b"Supported",
        b'l' => b"Content-Length",
        b'm' => b"Contact",
        b'n' => b"Identity-Info",
        b'o' => b"Event",
        b'r' => b"Refer-To",
        b's' => b"Subject",
        b't' => b"To",
        b'u' => b"Allow-Events",
        b'v' => b"Via",
        b'x' => b"Session-Expires",
        b'y' => b"Identity",
        _ => name,
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The end of the header section (just past its blank line) when the section is already in the
/// form [`normalize`] produces: every line ends with CRLF, no folding, long names without
/// trailing space, exactly one space after the colon, values without surrounding whitespace,
/// and a status line with a reason phrase. Nearly every message a SIP server sends is in that
/// form, and then it can be handed to rsip as it is, without a copy. `None` means: take the
/// general path (which gives the same bytes whenever this returns `Some`).
fn normal_head_end(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut first = true;
    loop {
        let rest = bytes.get(at..)?;
        let lf = find_byte(rest, b'\n')?;
        let line = rest.get(..lf)?.strip_suffix(b"\r")?;
        at += lf + 1;
        if first {
            first = false;
            if line.is_empty()
                || (line.starts_with(b"SIP/") && line.iter().filter(|&&b| b == b' ').count() == 1)
            {
                return None;
            }
            continue;
        }
        if line.is_empty() {
            return Some(at);
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return None;
        }
        let colon = find_byte(line, b':')?;
        let name = line.get(..colon)?;
        if name.len() < 2 || name.last().is_some_and(u8::is_ascii_whitespace) {
            return None;
        }
        let value = line.get(colon + 1..)?.strip_prefix(b" ")?;
        if value.first().is_some_and(u8::is_ascii_whitespace)
            || value.last().is_some_and(u8::is_ascii_whitespace)
        {
            return None;
        }
    }
}

/// Position of the first `needle` in `hay`, eight octets at a time (header sections are scanned
/// once per message; a byte loop costs three times as much).
#[inline]
pub(crate) fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO.wrapping_mul(u64::from(needle));
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w) ^ pattern;
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            return Some(base + (found.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|i| base + i)
}

/// Rewrites a header section into the form rsip accepts: CRLF line ends, one `Name: value` per
/// line (folded continuation lines joined with one space, RFC 3261 §7.3.1), long names, and
/// the terminating empty line.
fn normalize(head: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(head.len() + 64);
    let mut lines = head.split(|&b| b == b'\n').map(strip_cr);
    let start = lines.next().unwrap_or_default();
    if start.is_empty() {
        return Err("Empty message");
    }
    out.extend_from_slice(start);
    // A status line without a reason phrase (`SIP/2.0 200`): rsip needs the space after the code.
    if start.starts_with(b"SIP/") && start.iter().filter(|&&b| b == b' ').count() == 1 {
        out.push(b' ');
    }
    let mut in_header = false;
    for line in lines {
        match line.first() {
            None => continue,
            Some(b' ' | b'\t') => {
                if !in_header {
                    return Err("Continuation line without a header");
                }
                let cont = line.trim_ascii();
                if cont.is_empty() {
                    continue; // a blank folded line adds nothing (not even a space)
                }
                out.push(b' ');
                out.extend_from_slice(cont);
            }
            Some(_) => {
                let Some(colon) = line.iter().position(|&b| b == b':') else {
                    // Passed through: rsip rejects it, and `salvage` may still answer 400.
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(line);
                    in_header = false;
                    continue;
                };
                let (name, value) = line.split_at(colon);
                let value = value.get(1..).unwrap_or_default().trim_ascii();
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(expand_compact(name.trim_ascii_end()));
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                in_header = true;
            }
        }
    }
    out.extend_from_slice(b"\r\n\r\n");
    Ok(out)
}

/// `str::trim`, with a shortcut: a piece whose first and last octets are visible ASCII has
/// nothing to trim (nearly every header piece), so the Unicode whitespace scan is skipped.
#[inline]
pub(crate) fn trim(s: &str) -> &str {
    let visible = |b: Option<&u8>| b.is_some_and(|&b| (0x21..0x7f).contains(&b));
    if visible(s.as_bytes().first()) && visible(s.as_bytes().last()) {
        s
    } else {
        s.trim()
    }
}

/// Calls `f` with each comma-separated item of a header value, trimmed, skipping empty ones.
/// Commas inside `<...>` and quoted strings do not separate.
fn for_each_item<'a>(s: &'a str, mut f: impl FnMut(&'a str)) {
    // Without a comma there is one item (the common case: one Via, one Contact per header).
    if find_byte(s.as_bytes(), b',').is_none() {
        let item = trim(s);
        if !item.is_empty() {
            f(item);
        }
        return;
    }
    let (mut angle, mut quote, mut escape) = (false, false, false);
    let mut start = 0;
    // Separators are ASCII, so byte offsets are char boundaries.
    for (i, &c) in s.as_bytes().iter().enumerate() {
        if quote {
            match c {
                _ if escape => escape = false,
                b'\\' => escape = true,
                b'"' => quote = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => quote = true,
            b'<' => angle = true,
            b'>' => angle = false,
            b',' if !angle => {
                let item = trim(s.get(start..i).unwrap_or_default());
                if !item.is_empty() {
                    f(item);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    let item = trim(s.get(start..).unwrap_or_default());
    if !item.is_empty() {
        f(item);
    }
}

/// Reads a quoted string's content (after the opening quote): the unescaped text and what
/// follows the closing quote.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut escape = false;
    for (i, c) in s.char_indices() {
        if escape {
            out.push(c);
            escape = false;
        } else if c == '\\' {
            escape = true;
        } else if c == '"' {
            return Some((out, s.get(i + 1..)?));
        } else {
            out.push(c);
        }
    }
    None
}

/// A URI as we accept it in a name-addr: `scheme:rest`, no spaces or brackets.
fn plausible_uri(uri: &str) -> bool {
    let Some(colon) = byte_pos(uri, b':') else {
        return false;
    };
    let (scheme, rest) = (
        uri.get(..colon).unwrap_or_default(),
        uri.get(colon + 1..).unwrap_or_default(),
    );
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && !uri.bytes().any(|b| {
            matches!(
                b,
                b' ' | b'\t' | b'\n' | b'\x0C' | b'\r' | b'<' | b'>' | b'"'
            )
        })
}

/// `"Juliet" <sip:juliet@example.com>;tag=x`, `<sip:a@b>`, `sip:a@b;tag=x` (addr-spec form:
/// params after URI are header params)
pub fn parse_name_addr(s: &str) -> Option<NameAddr> {
    let s = trim(s);
    let (display, uri, params) = if let Some(rest) = s.strip_prefix('"') {
        let (display, after) = unquote(rest)?;
        let inner = after.trim_start().strip_prefix('<')?;
        let close = byte_pos(inner, b'>')?;
        (Some(display), inner.get(..close)?, inner.get(close + 1..)?)
    } else if let Some(open) = byte_pos(s, b'<') {
        let display = trim(s.get(..open)?);
        let inner = s.get(open + 1..)?;
        let close = byte_pos(inner, b'>')?;
        let display = (!display.is_empty()).then(|| display.to_owned());
        (display, inner.get(..close)?, inner.get(close + 1..)?)
    } else {
        let end = byte_pos(s, b';').unwrap_or(s.len());
        (None, s.get(..end)?, s.get(end..)?)
    };
    let uri = trim(uri);
    let params = trim(params);
    if !plausible_uri(uri) || !(params.is_empty() || params.starts_with(';')) {
        return None;
    }
    Some(NameAddr {
        display,
        uri: uri.to_owned(),
        tag: tag_param(params),
    })
}

/// The first `tag=` parameter with a value in `;p1;tag=x;p2` (the text before the first `;`
/// is not a parameter).
fn tag_param(params: &str) -> Option<String> {
    let mut rest = params;
    while let Some(semi) = byte_pos(rest, b';') {
        rest = rest.get(semi + 1..)?;
        let p = rest.get(..byte_pos(rest, b';').unwrap_or(rest.len()))?;
        if let Some(eq) = byte_pos(p, b'=') {
            let (n, v) = (p.get(..eq)?, trim(p.get(eq + 1..)?));
            if trim(n).eq_ignore_ascii_case("tag") && !v.is_empty() {
                return Some(v.to_owned());
            }
        }
    }
    None
}

/// Byte position of an ASCII delimiter in a short header piece: a plain loop, cheaper than
/// `str::find`'s searcher set-up on a few dozen octets. ASCII octets are char boundaries.
pub(super) fn byte_pos(s: &str, c: u8) -> Option<usize> {
    s.bytes().position(|b| b == c)
}

/// delta-seconds; values beyond u32 saturate (RFC 3261 §20.19, §20.33).
fn delta_seconds(s: &str) -> Option<u32> {
    let s = trim(s);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u32>().unwrap_or(u32::MAX))
}

/// `Retry-After: 120 (comment);duration=60` -> 120.
fn retry_after(s: &str) -> Option<u32> {
    let end = s.find([' ', '\t', '(', ';']).unwrap_or(s.len());
    delta_seconds(s.get(..end)?)
}

/// `Content-Type` / `Accept` media range: type/subtype lowercased, parameters dropped.
fn media_type(s: &str) -> Option<String> {
    let t = s.split(';').next().unwrap_or_default().trim();
    (!t.is_empty()).then(|| t.to_ascii_lowercase())
}

/// The headers the gateway reads (long names; compact forms were expanded by [`normalize`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Contact,
    RecordRoute,
    Route,
    Event,
    SubscriptionState,
    Expires,
    MinExpires,
    RetryAfter,
    Accept,
    Require,
    ContentType,
    SipEtag,
    SipIfMatch,
    Other,
}

impl Kind {
    #[cfg(test)]
    const ALL: [Kind; 19] = [
        Kind::Via,
        Kind::From,
        Kind::To,
        Kind::CallId,
        Kind::CSeq,
        Kind::MaxForwards,
        Kind::Contact,
        Kind::RecordRoute,
        Kind::Route,
        Kind::Event,
        Kind::SubscriptionState,
        Kind::Expires,
        Kind::MinExpires,
        Kind::RetryAfter,
        Kind::Accept,
        Kind::Require,
        Kind::ContentType,
        Kind::SipEtag,
        Kind::SipIfMatch,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Via => "Via",
            Kind::From => "From",
            Kind::To => "To",
            Kind::CallId => "Call-ID",
            Kind::CSeq => "CSeq",
            Kind::MaxForwards => "Max-Forwards",
            Kind::Contact => "Contact",
            Kind::RecordRoute => "Record-Route",
            Kind::Route => "Route",
            Kind::Event => "Event",
            Kind::SubscriptionState => "Subscription-State",
            Kind::Expires => "Expires",
            Kind::MinExpires => "Min-Expires",
            Kind::RetryAfter => "Retry-After",
            Kind::Accept => "Accept",
            Kind::Require => "Require",
            Kind::ContentType => "Content-Type",
            Kind::SipEtag => "SIP-ETag",
            Kind::SipIfMatch => "SIP-If-Match",
            Kind::Other => "header",
        }
    }

    /// Case-insensitive lookup; the length check first keeps this to a few comparisons on the
    /// hot path.
    fn of(name: &[u8]) -> Kind {
        // Candidates by length first: one or two comparisons per header instead of a scan.
        let candidates: &[Kind] = match name.len() {
            2 => &[Kind::To],
            3 => &[Kind::Via],
            4 => &[Kind::From, Kind::CSeq],
            5 => &[Kind::Route, Kind::Event],
            6 => &[Kind::Accept],
            7 => &[Kind::CallId, Kind::Contact, Kind::Expires, Kind::Require],
            8 => &[Kind::SipEtag],
            11 => &[Kind::MinExpires, Kind::RetryAfter],
            12 => &[
                Kind::MaxForwards,
                Kind::RecordRoute,
                Kind::ContentType,
                Kind::SipIfMatch,
            ],
            18 => &[Kind::SubscriptionState],
            _ => &[],
        };
        candidates
            .iter()
            .copied()
            .find(|k| {
                // Senders nearly always use the canonical spelling: compare exactly first.
                let n = k.name().as_bytes();
                n == name || n.eq_ignore_ascii_case(name)
            })
            .unwrap_or(Kind::Other)
    }
}

/// Header fields the gateway reads, as found (before the mandatory-header checks).
#[derive(Default)]
struct Fields {
    via: Vec<String>,
    from: Option<NameAddr>,
    to: Option<NameAddr>,
    call_id: Option<String>,
    cseq: Option<(u32, Method)>,
    max_forwards: Option<u32>,
    contact: Option<NameAddr>,
    record_route: Vec<String>,
    route: Vec<String>,
    event: Option<Event>,
    subscription_state: Option<Result<SubscriptionState, String>>,
    expires: Option<u32>,
    min_expires: Option<u32>,
    retry_after: Option<u32>,
    accept: Vec<String>,
    require: Vec<String>,
    content_type: Option<String>,
    sip_etag: Option<String>,
    sip_if_match: Option<String>,
    /// The first header that was present but malformed, as the 400 reason phrase.
    malformed: Option<String>,
}

impl Fields {
    fn bad(&mut self, what: &str) {
        if self.malformed.is_none() {
            self.malformed = Some(format!("Malformed {what}"));
        }
    }

    /// Reads one header; `lenient` (responses) turns malformed optional values into `None`.
    fn read(&mut self, name: &[u8], value: &[u8], lenient: bool) {
        self.read_in(None, name, value, lenient);
    }

    /// [`Fields::read`], where `section` is the header section the value was tokenized from,
    /// if all of it is UTF-8: then the value is not checked a second time.
    fn read_in(&mut self, section: Option<&str>, name: &[u8], value: &[u8], lenient: bool) {
        let kind = Kind::of(name);
        if kind == Kind::Other {
            return;
        }
        let checked = section.and_then(|s| within(s, value));
        let Some(v) = checked.or_else(|| std::str::from_utf8(value).ok()) else {
            self.bad(kind.name());
            return;
        };
        match kind {
            Kind::Via => {
                let via = &mut self.via;
                for_each_item(v, |i| via.push(i.to_owned()));
            }
            Kind::From | Kind::To => {
                let slot = if kind == Kind::From {
                    &mut self.from
                } else {
                    &mut self.to
                };
                if slot.is_none() {
                    match parse_name_addr(v) {
                        Some(na) => *slot = Some(na),
                        None => self.bad(kind.name()),
                    }
                }
            }
            Kind::CallId => {
                if self.call_id.is_none() && !v.is_empty() {
                    self.call_id = Some(v.to_owned());
                }
            }
            Kind::CSeq => {
                if self.cseq.is_none() {
                    let mut parts = v.split_ascii_whitespace();
                    match (
                        parts.next().map(str::parse::<u32>),
                        parts.next(),
                        parts.next(),
                    ) {
                        (Some(Ok(n)), Some(m), None) => self.cseq = Some((n, Method::parse(m))),
                        _ => self.bad("CSeq"),
                    }
                }
            }
            Kind::MaxForwards => match v.parse::<u32>() {
                Ok(n) => self.max_forwards = Some(n),
                Err(_) if lenient => {}
                Err(_) => self.bad("Max-Forwards"),
            },
            Kind::Contact => {
                if self.contact.is_none() && v != "*" {
                    let mut first = None;
                    for_each_item(v, |i| {
                        if first.is_none() {
                            first = Some(i)
                        }
                    });
                    match first.and_then(parse_name_addr) {
                        Some(na) => self.contact = Some(na),
                        None if lenient => {}
                        None => self.bad("Contact"),
                    }
                }
            }
            Kind::RecordRoute => {
                let rr = &mut self.record_route;
                for_each_item(v, |i| rr.push(i.to_owned()));
            }
            Kind::Route => {
                let r = &mut self.route;
                for_each_item(v, |i| r.push(i.to_owned()));
            }
            Kind::Event => match Event::parse(v) {
                Ok(e) => self.event = Some(e),
                Err(_) if lenient => {}
                Err(_) => self.bad("Event"),
            },
            Kind::SubscriptionState => {
                self.subscription_state = Some(SubscriptionState::parse(v));
            }
            Kind::Expires => match delta_seconds(v) {
                Some(n) => self.expires = Some(n),
                None if lenient => {}
                None => self.bad("Expires"),
            },
            Kind::MinExpires => self.min_expires = delta_seconds(v),
            Kind::RetryAfter => self.retry_after = retry_after(v),
            Kind::Accept => {
                let accept = &mut self.accept;
                for_each_item(v, |i| accept.extend(media_type(i)));
            }
            Kind::Require => {
                let require = &mut self.require;
                for_each_item(v, |i| require.push(i.to_owned()));
            }
            Kind::ContentType => self.content_type = media_type(v),
            Kind::SipEtag => self.sip_etag = (!v.is_empty()).then(|| v.to_owned()),
            Kind::SipIfMatch => self.sip_if_match = (!v.is_empty()).then(|| v.to_owned()),
            Kind::Other => {}
        }
    }

    /// The first missing or malformed mandatory header, then any other malformed one.
    fn problem(&self) -> Option<String> {
        if self.via.is_empty() {
            return Some("Missing Via".into());
        }
        if let Some(m) = &self.malformed {
            if ["Malformed From", "Malformed To", "Malformed CSeq"].contains(&m.as_str()) {
                return Some(m.clone());
            }
        }
        let missing = [
            ("From", self.from.is_none()),
            ("To", self.to.is_none()),
            ("Call-ID", self.call_id.is_none()),
            ("CSeq", self.cseq.is_none()),
        ];
        missing
            .iter()
            .find(|(_, m)| *m)
            .map(|(n, _)| format!("Missing {n}"))
            .or_else(|| self.malformed.clone())
    }
}

/// `part` as a `&str` when it is a slice of `whole` on char boundaries (a token of a section
/// that was checked as UTF-8 as a whole), else `None` (the caller checks `part` itself).
fn within<'a>(whole: &'a str, part: &[u8]) -> Option<&'a str> {
    let off = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let s = whole.get(off..off.checked_add(part.len())?)?;
    (s.as_ptr() == part.as_ptr()).then_some(s)
}

fn empty_name_addr() -> NameAddr {
    NameAddr {
        display: None,
        uri: String::new(),
        tag: None,
    }
}

/// A 400 for a request whose headers we could read in part: whatever of From/To/Call-ID/CSeq
/// exists is copied; the encoder leaves out the empty ones.
fn bad_request(f: Fields, method: Method, reason: String) -> ParseError {
    let (cseq, cseq_method) = f.cseq.unwrap_or((0, method));
    let response = OutResponse {
        status: 400,
        reason: reason.clone(),
        via: f.via,
        from: f.from.unwrap_or_else(empty_name_addr),
        to: f.to.unwrap_or_else(empty_name_addr),
        call_id: f.call_id.unwrap_or_default(),
        cseq,
        cseq_method,
        contact: None,
        record_route: Vec::new(),
        headers: Vec::new(),
        content_type: None,
        body: Vec::new(),
    };
    ParseError {
        reason,
        response: Some(response),
    }
}

/// rsip's request tokenizer, composed from rsip's own pieces in rsip's own order, but with the
/// request line tokenized on its own: rsip's URI tokenizer ends its parameter list on an error
/// that formats all of the remaining input into a `String` (three such errors per request, half
/// of the SIP parse time), and on the request line alone that remainder is a dozen octets.
///
/// Only taken when nothing in the request line can make rsip's scanners look past its end (the
/// URI starts with `sip:`/`sips:`, so the scheme is never searched for `://`; the line ends
/// with ` SIP/2.0`, so the user, host and parameter scans stop inside it): then the tokens are
/// exactly those of `RequestTokenizer::tokenize` on the whole message. `None` means: use that
/// (it also gives the error text).
fn tokenize_request_fast(norm: &[u8]) -> Option<RequestTokenizer<'_>> {
    type Bytes<'a> = &'a [u8];
    let eol = find_byte(norm, b'\n')?;
    let line = norm.get(..eol + 1)?;
    let text = line.strip_suffix(b"\r\n")?;
    let sp = find_byte(text, b' ')?;
    let uri_start = text.get(sp + 1..)?;
    let scheme_ok = uri_start
        .get(..4)
        .is_some_and(|s| s.eq_ignore_ascii_case(b"sip:"))
        || uri_start
            .get(..5)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"sips:"));
    if !scheme_ok || !text.ends_with(b" SIP/2.0") {
        return None;
    }
    let (rem, method) = rsip::common::method::Tokenizer::<Bytes, u8>::tokenize(line).ok()?;
    let rem = rem.strip_prefix(b" ")?;
    // The URI alone (up to the space before `SIP/2.0`): its scans stop at the same places as
    // on the whole line, and the error that ends its parameter list formats nothing. On the
    // line, rsip succeeds exactly when the URI tokenizer consumes all of it.
    let uri_text = rem.get(..rem.len().checked_sub(b" SIP/2.0\r\n".len())?)?;
    let (uri_rem, uri) = tokenize_sip_uri(uri_text)?;
    if !uri_rem.is_empty() {
        return None;
    }
    let rem = rem.get(uri_text.len()..)?.strip_prefix(b" ")?;
    let (rem, version) = rsip::common::version::Tokenizer::<Bytes, u8>::tokenize(rem).ok()?;
    if rem != b"\r\n" {
        return None;
    }
    let (headers, body) = tokenize_header_section(norm.get(eol + 1..)?)?;
    Some(RequestTokenizer {
        method,
        uri,
        version,
        headers,
        body,
    })
}

/// rsip's tokens of a URI in a byte string.
type UriTokens<'a> = rsip::common::uri::Tokenizer<'a, &'a [u8], u8>;

/// rsip's URI tokenizer (`rsip::common::uri::Tokenizer::tokenize`) for a URI starting with
/// `sip:` or `sips:`, step for step: the scheme; the user part up to the first `@` if no `.`
/// comes first (password after its first `:`); host and port up to the first `;` or space
/// (port after the first `:`); then `;name[=value]` parameters of token characters. rsip's
/// own ends its parameter list, and tries the user part, on errors that format the rest of
/// the input into strings: two thirds of its cost. `None` where rsip fails (no host) or for
/// another scheme. A proptest compares the two.
fn tokenize_sip_uri(uri: &[u8]) -> Option<(&[u8], UriTokens<'_>)> {
    use rsip::common::uri::{auth, host_with_port, param, scheme};
    let scheme_len = if uri.get(..4)?.eq_ignore_ascii_case(b"sip:") {
        3
    } else if uri.get(..5)?.eq_ignore_ascii_case(b"sips:") {
        4
    } else {
        return None;
    };
    let scheme = scheme::Tokenizer::from(uri.get(..scheme_len)?);
    let mut rest = uri.get(scheme_len + 1..)?;
    let auth = match rest.iter().position(|&b| b == b'.' || b == b'@') {
        Some(at) if rest.get(at) == Some(&b'@') => {
            let user = rest.get(..at)?;
            rest = rest.get(at + 1..)?;
            Some(auth::Tokenizer::from(split_at_colon(user)))
        }
        _ => None,
    };
    let end = rest
        .iter()
        .position(|&b| b == b';' || b == b' ')
        .unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    let host_with_port = host_with_port::Tokenizer::from(split_at_colon(rest.get(..end)?));
    rest = rest.get(end..)?;
    let mut params = Vec::new();
    while let Some(after) = rest.strip_prefix(b";") {
        let name_len = after.iter().take_while(|&&b| uri_token(b)).count();
        let (name, after) = after.split_at(name_len);
        let (value, after) = match after.strip_prefix(b"=") {
            Some(v) => {
                let n = v.iter().take_while(|&&b| uri_token(b)).count();
                let (value, after) = v.split_at(n);
                (Some(value), after)
            }
            None => (None, after),
        };
        params.push(param::Tokenizer::from((name, value)));
        rest = after;
    }
    Some((
        rest,
        rsip::common::uri::Tokenizer {
            scheme: Some(scheme),
            auth,
            host_with_port,
            params,
            headers: None,
            phantom1: Default::default(),
            phantom2: Default::default(),
        },
    ))
}

/// `a:b` → (`a`, Some(`b`)) at the first colon, else (`a`, None): rsip's user/password and
/// host/port split.
fn split_at_colon(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    match s.iter().position(|&b| b == b':') {
        Some(c) => (s.get(..c).unwrap_or_default(), s.get(c + 1..)),
        None => (s, None),
    }
}

/// rsip's token characters for URI parameters (`AbstractInputItem::is_token` for bytes).
fn uri_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// The header lines and body after the start line, as rsip's message tokenizers split them
/// (both take the same steps after their start line); `None` where rsip would fail.
fn tokenize_header_section(rest: &[u8]) -> Option<(Vec<HeaderTokenizer<'_>>, &[u8])> {
    // As rsip: the header lines end at the first empty line, else at the first line end. A
    // header section from `normal_head_end` or `normalize` ends with its only empty line; that
    // is confirmed below (an earlier empty line would stop the header loop), so the section is
    // not searched for it here. `raw` must not end with CRLF: then the first empty line would
    // start two octets earlier.
    let (mut raw, body) = match rest.strip_suffix(b"\r\n\r\n") {
        Some(raw) if !raw.ends_with(b"\r\n") => (raw, &b""[..]),
        _ => match find_sub(rest, b"\r\n\r\n") {
            Some(i) => (rest.get(..i)?, rest.get(i + 4..)?),
            None => {
                let i = find_sub(rest, b"\r\n")?;
                (rest.get(..i)?, rest.get(i + 2..)?)
            }
        },
    };
    // As nom's `many0`: header after header until one does not tokenize; rsip then requires that
    // nothing is left. (An empty remainder never tokenizes, so it is not tried.)
    let mut headers = Vec::with_capacity(16);
    while !raw.is_empty() {
        match tokenize_header(raw) {
            Some((r, h)) if r.len() < raw.len() => {
                headers.push(h);
                raw = r;
            }
            _ => return None,
        }
    }
    Some((headers, body))
}

/// rsip's response tokenizer (`ResponseTokenizer::tokenize`) for a message in normal form: the
/// status line by rsip's own version and status tokenizers, the header lines as
/// [`tokenize_request_fast`] does. `None` sends the message the general way (rsip's, which
/// also reports the error). A proptest compares the tokens with rsip's.
fn tokenize_response_fast(norm: &[u8]) -> Option<ResponseTokenizer<'_>> {
    type Bytes<'a> = &'a [u8];
    let eol = find_byte(norm, b'\n')?;
    let line = norm.get(..eol + 1)?;
    if !line.ends_with(b"\r\n") {
        return None;
    }
    // rsip: version, space1 (spaces or tabs), status code and reason, CRLF. The status
    // tokenizer's reason runs to the first CRLF, which is this line's end on both inputs.
    let (rem, version) = rsip::common::version::Tokenizer::<Bytes, u8>::tokenize(line).ok()?;
    let sp = rem.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    if sp == 0 {
        return None;
    }
    let (rem, status_code) =
        rsip::common::status_code::Tokenizer::<Bytes, u8>::tokenize(rem.get(sp..)?).ok()?;
    if rem != b"\r\n" {
        return None;
    }
    let (headers, body) = tokenize_header_section(norm.get(eol + 1..)?)?;
    Some(ResponseTokenizer {
        version,
        status_code,
        headers,
        body,
    })
}

/// rsip's header tokenizer (`HeaderTokenizer::tokenize`) written out without nom, for the
/// request fast path: its grammar is `token ":" *(SP / HTAB) value`, the value running to the
/// first CRLF (which is consumed) or to the end. rsip's version builds its error (formatting
/// the input) and runs nom's combinators per header line, a fifth of the SIP parse. `None`
/// exactly where rsip gives an error (a proptest compares the two); the caller then takes
/// rsip's own path, which reports it.
fn tokenize_header(part: &[u8]) -> Option<(&[u8], HeaderTokenizer<'_>)> {
    let name_len = part
        .iter()
        .position(|&b| !rsip_is_token(b))
        .unwrap_or(part.len());
    if name_len == 0 || part.get(name_len) != Some(&b':') {
        return None;
    }
    let name = part.get(..name_len)?;
    let mut i = name_len + 1;
    while matches!(part.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    let rest = part.get(i..)?;
    let (value, rem) = match find_sub(rest, b"\r\n") {
        Some(end) => (rest.get(..end)?, rest.get(end + 2..)?),
        None => (rest, &b""[..]),
    };
    Some((rem, (name, value).into()))
}

/// rsip's `token` octet (RFC 3261 §25.1): alphanumeric or one of ``-.!%*_+`'~``.
#[inline]
fn rsip_is_token(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

/// [`rsip_is_token`] as a table: one load per octet of a header name.
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    t
};

/// Position of the first occurrence of `needle` (2 or 4 octets, starting with CR) in `hay`.
#[inline]
fn find_sub(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut at = 0;
    loop {
        let i = at + find_byte(hay.get(at..)?, first)?;
        if hay.get(i..)?.starts_with(needle) {
            return Some(i);
        }
        at = i + 1;
    }
}

/// rsip's message tokenizer tries the status line first and, for every request, formats the
/// whole input into an error string before trying the request line; choosing the tokenizer
/// from the first octets avoids that (a third of the parse time).
fn tokenize(norm: &[u8]) -> Result<MessageTokenizer<'_>, String> {
    if norm.starts_with(b"SIP/") {
        if let Some(t) = tokenize_response_fast(norm) {
            return Ok(MessageTokenizer::Response(t));
        }
    } else if let Some(t) = tokenize_request_fast(norm) {
        return Ok(MessageTokenizer::Request(t));
    }
    let tokens = if norm.starts_with(b"SIP/") {
        ResponseTokenizer::tokenize(norm).map(|(_, t)| MessageTokenizer::Response(t))
    } else {
        RequestTokenizer::tokenize(norm).map(|(_, t)| MessageTokenizer::Request(t))
    };
    tokens.map_err(|e| {
        // rsip's message quotes the rest of the input: one log line, bounded length.
        let text = format!("Unparseable message: {}", rsip::Error::from(e));
        let mut out = String::with_capacity(170);
        for c in text.chars() {
            if out.len() >= 160 {
                out.push('…');
                break;
            }
            match c {
                '\r' => out.push_str("\\r"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out
    })
}

/// When rsip rejects a request as a whole (a malformed header line or Request-URI), the header
/// lines it can still tokenize one by one may carry a Via: then the sender gets a 400
/// "Malformed request" instead of silence.
fn salvage(norm: &[u8], reason: String) -> ParseError {
    if norm.starts_with(b"SIP/") {
        return garbage(reason);
    }
    let mut lines = norm.split(|&b| b == b'\n').map(strip_cr);
    let method = lines
        .next()
        .and_then(|start| start.split(|&b| b == b' ').next())
        .filter(|m| {
            !m.is_empty()
                && m.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
        })
        .and_then(|m| std::str::from_utf8(m).ok());
    let Some(method) = method else {
        return garbage(reason);
    };
    let mut f = Fields::default();
    for line in lines {
        if let Ok((_, h)) = HeaderTokenizer::tokenize(line) {
            f.read(h.name, h.value, false);
        }
    }
    if f.via.is_empty() {
        return garbage(reason);
    }
    let mut e = bad_request(f, Method::parse(method), "Malformed request".to_owned());
    e.reason = reason;
    e
}

/// Every header field of a framed message as (name, value), in order: long names as
/// written (compact forms expanded), values trimmed, folded lines joined, one pair per header
/// line (commas do not split), invalid UTF-8 replaced.
///
/// For the few header fields [`SipRequest`] does not keep, read only for the requests that need
/// them (MESSAGE: `Subject`, `Content-Language`, `Content-Encoding`, and the parameters of
/// `Content-Type`), so the common path parses nothing more.
pub fn header_fields(bytes: &[u8]) -> Vec<(String, String)> {
    let skip = bytes
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let bytes = bytes.get(skip..).unwrap_or_default();
    let head = match header_end(bytes, 0) {
        Some(end) => bytes.get(..end).unwrap_or_default(),
        None => bytes,
    };
    let Ok(norm) = normalize(head) else {
        return Vec::new();
    };
    norm.split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| {
            let line = strip_cr(line);
            let colon = find_byte(line, b':')?;
            let (n, v) = (line.get(..colon)?, line.get(colon + 1..)?);
            Some((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v.trim_ascii()).into_owned(),
            ))
        })
        .collect()
}

/// The values of every `name` header (a long name, compared case-insensitively) of a framed
/// message, in order (see [`header_fields`]).
pub fn header_values(bytes: &[u8], name: &str) -> Vec<String> {
    header_fields(bytes)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// Parses one framed message.
///
/// The large error type is the agreed contract; errors are the rare path. Leading CRLFs are skipped; the body is everything after the
/// blank line.
#[allow(clippy::result_large_err)]
pub fn parse_message(bytes: &[u8]) -> Result<SipMessage, ParseError> {
    let skip = bytes
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let bytes = bytes.get(skip..).unwrap_or_default();
    let copied;
    let (norm, body): (&[u8], &[u8]) = match normal_head_end(bytes) {
        Some(end) => (
            bytes.get(..end).unwrap_or_default(),
            bytes.get(end..).unwrap_or_default(),
        ),
        None => {
            let (head, body) = match header_end(bytes, 0) {
                Some(end) => (
                    bytes.get(..end).unwrap_or_default(),
                    bytes.get(end..).unwrap_or_default(),
                ),
                None => (bytes, &b""[..]),
            };
            copied = normalize(head).map_err(garbage)?;
            (&copied, body)
        }
    };
    let tokens = tokenize(norm).map_err(|reason| salvage(norm, reason))?;
    match tokens {
        MessageTokenizer::Request(t) => {
            if t.version.major != b"2" || t.version.minor != b"0" {
                return Err(garbage("Unsupported SIP version"));
            }
            let method = std::str::from_utf8(t.method.value)
                .map(Method::parse)
                .map_err(|_| garbage("Malformed method"))?;
            // The Request-URI exactly as received: the second field of the request line.
            let start = norm.split(|&b| b == b'\r').next().unwrap_or_default();
            let uri = start
                .split(|&b| b == b' ')
                .nth(1)
                .and_then(|u| std::str::from_utf8(u).ok())
                .ok_or_else(|| garbage("Malformed Request-URI"))?
                .to_owned();
            let mut f = Fields::default();
            // One UTF-8 check for the section rather than one per header value.
            let section = std::str::from_utf8(norm).ok();
            for h in &t.headers {
                f.read_in(section, h.name, h.value, false);
            }
            if let Some(reason) = f.problem() {
                if f.via.is_empty() {
                    return Err(garbage(reason));
                }
                return Err(bad_request(f, method, reason));
            }
            let (Some(from), Some(to), Some(call_id), Some((cseq, cseq_method))) =
                (f.from, f.to, f.call_id, f.cseq)
            else {
                return Err(garbage("Missing mandatory header"));
            };
            Ok(SipMessage::Request(SipRequest {
                method,
                uri,
                via: f.via,
                from,
                to,
                call_id,
                cseq,
                cseq_method,
                max_forwards: f.max_forwards,
                contact: f.contact,
                record_route: f.record_route,
                route: f.route,
                event: f.event,
                subscription_state: f.subscription_state,
                expires: f.expires,
                accept: f.accept,
                require: f.require,
                content_type: f.content_type,
                sip_if_match: f.sip_if_match,
                body: body.to_vec(),
            }))
        }
        MessageTokenizer::Response(t) => {
            if t.version.major != b"2" || t.version.minor != b"0" {
                return Err(garbage("Unsupported SIP version"));
            }
            let status = std::str::from_utf8(t.status_code.code)
                .ok()
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (100..=699).contains(c))
                .ok_or_else(|| garbage("Malformed status code"))?;
            let reason = String::from_utf8_lossy(t.status_code.reason)
                .trim()
                .to_owned();
            let mut f = Fields::default();
            for h in &t.headers {
                f.read(h.name, h.value, true);
            }
            if let Some(reason) = f.problem() {
                return Err(garbage(format!("Response: {reason}")));
            }
            let (Some(from), Some(to), Some(call_id), Some((cseq, cseq_method))) =
                (f.from, f.to, f.call_id, f.cseq)
            else {
                return Err(garbage("Response: missing mandatory header"));
            };
            Ok(SipMessage::Response(SipResponse {
                status,
                reason,
                via: f.via,
                from,
                to,
                call_id,
                cseq,
                cseq_method,
                contact: f.contact,
                record_route: f.record_route,
                expires: f.expires,
                min_expires: f.min_expires,
                retry_after: f.retry_after,
                sip_etag: f.sip_etag,
                content_type: f.content_type,
                body: body.to_vec(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::encode::{encode_request, encode_response, tests as enc};
    use crate::sip::SubState;
    use proptest::prelude::*;

    fn na(display: Option<&str>, uri: &str, tag: Option<&str>) -> NameAddr {
        NameAddr {
            display: display.map(str::to_owned),
            uri: uri.into(),
            tag: tag.map(str::to_owned),
        }
    }

    #[test]
    fn header_values_reads_long_compact_and_folded_forms() {
        let msg = b"\r\nMESSAGE sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\n\
            s: Hello\nSUBJECT :  there,\n  again\ncontent-language: it, en\n\
            Content-Length: 3\n\nSubject: not a header";
        assert_eq!(header_values(msg, "Subject"), ["Hello", "there, again"]);
        assert_eq!(header_values(msg, "Content-Language"), ["it, en"]);
        assert!(header_values(msg, "Content-Encoding").is_empty());
        assert!(header_values(b"", "Subject").is_empty());
    }

    fn request(bytes: &[u8]) -> SipRequest {
        match parse_message(bytes) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn response(bytes: &[u8]) -> SipResponse {
        match parse_message(bytes) {
            Ok(SipMessage::Response(r)) => r,
            other => panic!("not a response: {other:?}"),
        }
    }

    /// A NOTIFY as Kamailio 5.6 presence sends it (reference lab flow 2): Via without a port,
    /// Kamailio's header order, a PIDF body. About 700 octets.
    const KAMAILIO_NOTIFY: &str = "NOTIFY sip:alice*xmpp.test@127.0.0.2:5080 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK4b43.1c7d4a4b1fa0e5ae3b7b9c0d0f1e2a3b.0\r\n\
To: <sip:alice*xmpp.test@sip-xmpp.test>;tag=gw-5d1c8a\r\n\
From: <sip:bob@sip.test>;tag=a6a1c5f60faecf035a1ae5b6e96e979a-0a5c\r\n\
CSeq: 2 NOTIFY\r\n\
Call-ID: 8c41f0e2b7d94e1a@127.0.0.2\r\n\
Content-Length: 209\r\n\
User-Agent: kamailio (5.6.3 (x86_64/linux))\r\n\
Max-Forwards: 70\r\n\
Event: presence\r\n\
Contact: <sip:127.0.0.2:5060;transport=udp>\r\n\
Subscription-State: active;expires=600\r\n\
Content-Type: application/pidf+xml\r\n\
\r\n\
<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:bob@sip.test\">\n\
<tuple id=\"t1\"><status><basic>open</basic></status><note>On the phone</note></tuple>\n\
</presence>\n";

    const KAMAILIO_200: &str = "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/TCP 127.0.0.1:5080;branch=z9hG4bK9f2c4e6a1b3d5f70a1;rport=5080\r\n\
From: <sip:romeo*xmpp.test@sip-xmpp.test>;tag=gw-4be1c2d3e4f5\r\n\
To: <sip:bob@sip.test>;tag=a6a1c5f60faecf035a1ae5b6e96e979a-1f2e\r\n\
Call-ID: 6f1e2d3c4b5a69780a1b2c3d@127.0.0.1\r\n\
CSeq: 1 SUBSCRIBE\r\n\
Expires: 600\r\n\
Contact: <sip:127.0.0.2:5060;transport=tcp>\r\n\
Server: kamailio (5.6.3 (x86_64/linux))\r\n\
Content-Length: 0\r\n\
\r\n";

    #[test]
    fn kamailio_200_takes_the_fast_path() {
        let bytes = KAMAILIO_200.as_bytes();
        let end = normal_head_end(bytes).unwrap();
        let fast = tokenize_response_fast(&bytes[..end]).unwrap();
        assert_eq!(fast, ResponseTokenizer::tokenize(&bytes[..end]).unwrap().1);
        assert_eq!(fast.headers.len(), 9);
        // Not taken: a tab-separated or malformed status line, a bare-LF line end.
        for bad in [
            KAMAILIO_200.replace("SIP/2.0 200", "SIP/2.0\t\t200"),
            KAMAILIO_200.replace("200 OK", "20 OK"),
            KAMAILIO_200.replace("SIP/2.0 200", "SIP/x 200"),
        ] {
            let b = bad.as_bytes();
            let end = header_end(b, 0).unwrap();
            assert_eq!(
                tokenize_response_fast(&b[..end]),
                ResponseTokenizer::tokenize(&b[..end]).ok().map(|t| t.1),
                "{bad}"
            );
        }
        let lf = KAMAILIO_200.replacen("OK\r\n", "OK\n", 1);
        assert_eq!(tokenize_response_fast(lf.as_bytes()), None);
    }

    #[test]
    fn kamailio_notify_without_via_port() {
        let r = request(KAMAILIO_NOTIFY.as_bytes());
        let body = KAMAILIO_NOTIFY.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(body.len(), 209);
        assert_eq!(
            r,
            SipRequest {
                method: Method::Notify,
                uri: "sip:alice*xmpp.test@127.0.0.2:5080".into(),
                via: vec![
                    "SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK4b43.1c7d4a4b1fa0e5ae3b7b9c0d0f1e2a3b.0"
                        .into()
                ],
                from: na(
                    None,
                    "sip:bob@sip.test",
                    Some("a6a1c5f60faecf035a1ae5b6e96e979a-0a5c")
                ),
                to: na(None, "sip:alice*xmpp.test@sip-xmpp.test", Some("gw-5d1c8a")),
                call_id: "8c41f0e2b7d94e1a@127.0.0.2".into(),
                cseq: 2,
                cseq_method: Method::Notify,
                max_forwards: Some(70),
                contact: Some(na(None, "sip:127.0.0.2:5060;transport=udp", None)),
                record_route: vec![],
                route: vec![],
                event: Some(Event {
                    package: "presence".into(),
                    id: None
                }),
                subscription_state: Some(Ok(SubscriptionState {
                    state: SubState::Active,
                    reason: None,
                    expires: Some(600),
                    retry_after: None
                })),
                expires: None,
                accept: vec![],
                require: vec![],
                content_type: Some("application/pidf+xml".into()),
                sip_if_match: None,
                body: body.as_bytes().to_vec(),
            }
        );
    }

    /// Reference lab flow 3a: carol's SUBSCRIBE as Kamailio relays it to the gateway, with its
    /// Record-Route and a second Via.
    #[test]
    fn kamailio_relayed_subscribe_two_vias_and_record_route() {
        let msg = "SUBSCRIBE sip:alice*xmpp.test@sip-xmpp.test SIP/2.0\r\n\
Record-Route: <sip:127.0.0.2;lr;ftag=c4r01>\r\n\
Via: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bKcydzigwkX\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5071;rport=5071;branch=z9hG4bK-carol-1\r\n\
From: <sip:carol@sip.test>;tag=c4r01\r\n\
To: <sip:alice*xmpp.test@sip-xmpp.test>\r\n\
Call-ID: carol-sub-1@127.0.0.2\r\n\
CSeq: 1 SUBSCRIBE\r\n\
Contact: <sip:carol@127.0.0.2:5071>\r\n\
Max-Forwards: 69\r\n\
Event: presence\r\n\
Accept: application/pidf+xml\r\n\
Expires: 600\r\n\
Content-Length: 0\r\n\r\n";
        let r = request(msg.as_bytes());
        assert_eq!(r.method, Method::Subscribe);
        assert_eq!(r.uri, "sip:alice*xmpp.test@sip-xmpp.test");
        assert_eq!(
            r.via,
            vec![
                "SIP/2.0/UDP 127.0.0.2;branch=z9hG4bKcydzigwkX".to_owned(),
                "SIP/2.0/UDP 127.0.0.2:5071;rport=5071;branch=z9hG4bK-carol-1".to_owned()
            ]
        );
        assert_eq!(
            r.record_route,
            vec!["<sip:127.0.0.2;lr;ftag=c4r01>".to_owned()]
        );
        assert_eq!(r.from, na(None, "sip:carol@sip.test", Some("c4r01")));
        assert_eq!(r.to, na(None, "sip:alice*xmpp.test@sip-xmpp.test", None));
        assert_eq!(r.contact, Some(na(None, "sip:carol@127.0.0.2:5071", None)));
        assert_eq!(r.max_forwards, Some(69));
        assert_eq!(r.expires, Some(600));
        assert_eq!(r.accept, vec!["application/pidf+xml".to_owned()]);
        assert_eq!(r.body, b"");
    }

    #[test]
    fn round_trip_spec_4_2_subscribe() {
        let req = enc::subscribe_4_2();
        let mut out = Vec::new();
        encode_request(
            &req,
            "SIP/2.0/TCP gw.xmpp.example.com:5060;branch=z9hG4bK-5f2a91c3",
            &mut out,
        );
        let r = request(&out);
        assert_eq!(r.method, req.method);
        assert_eq!(r.uri, req.uri);
        assert_eq!(
            r.via,
            vec!["SIP/2.0/TCP gw.xmpp.example.com:5060;branch=z9hG4bK-5f2a91c3".to_owned()]
        );
        assert_eq!(r.from, req.from);
        assert_eq!(r.to, req.to);
        assert_eq!(r.call_id, req.call_id);
        assert_eq!((r.cseq, r.cseq_method), (1, Method::Subscribe));
        assert_eq!(r.max_forwards, Some(70));
        assert_eq!(
            r.contact,
            Some(na(None, req.contact.as_deref().unwrap(), None))
        );
        assert_eq!(
            r.event,
            Some(Event {
                package: "presence".into(),
                id: None
            })
        );
        assert_eq!(r.accept, vec!["application/pidf+xml".to_owned()]);
        assert_eq!(r.expires, Some(3600));
        assert_eq!(r.subscription_state, None);
        assert_eq!(r.body, b"");
    }

    #[test]
    fn round_trip_spec_5_1_ok_with_record_route_and_body() {
        let mut resp = enc::ok_5_1();
        resp.record_route = vec![
            "<sip:127.0.0.2;lr;ftag=ua-77aa31>".into(),
            "<sip:p2;lr>".into(),
        ];
        resp.content_type = Some("application/pidf+xml");
        resp.body = b"<x/>".to_vec();
        let mut out = Vec::new();
        encode_response(&resp, &mut out);
        let r = response(&out);
        assert_eq!(
            r,
            SipResponse {
                status: 200,
                reason: "OK".into(),
                via: resp.via.clone(),
                from: resp.from.clone(),
                to: resp.to.clone(),
                call_id: resp.call_id.clone(),
                cseq: 20,
                cseq_method: Method::Subscribe,
                contact: Some(na(
                    None,
                    "sip:romeo*example.net@gw.xmpp.example.com:5061;transport=tls",
                    None
                )),
                record_route: resp.record_route.clone(),
                expires: Some(3600),
                min_expires: None,
                retry_after: None,
                sip_etag: None,
                content_type: Some("application/pidf+xml".into()),
                body: b"<x/>".to_vec(),
            }
        );
    }

    #[test]
    fn compact_forms_folding_and_space_before_colon() {
        let msg = "NOTIFY sip:romeo*example.net@gw.xmpp.example.com SIP/2.0\r\n\
v: SIP/2.0/UDP a.example;branch=z9hG4bK1, SIP/2.0/UDP b.example;branch=z9hG4bK2\r\n\
f: \"Juliet, C.\" <sip:juliet@example.com>;tag=ps-91aa07\r\n\
t: sip:romeo*example.net@xmpp.example.com;tag=gw-5d1c8a\r\n\
i: 8c41f0e2b7d94e1a@gw.xmpp.example.com\r\n\
CSeq : 102\r\n NOTIFY\r\n\
m: <sip:ps1.example.com:5060;transport=tcp>;expires=5, <sip:other>\r\n\
o: presence;id=42\r\n\
Subscription-State: terminated;\r\n\treason=giveup;retry-after=3600\r\n\
c: Application/PIDF+XML; charset=UTF-8\r\n\
k: eventlist\r\n\
l: 3\r\n\r\nabc";
        let r = request(msg.as_bytes());
        assert_eq!(
            r.via,
            vec![
                "SIP/2.0/UDP a.example;branch=z9hG4bK1".to_owned(),
                "SIP/2.0/UDP b.example;branch=z9hG4bK2".to_owned()
            ]
        );
        assert_eq!(
            r.from,
            na(
                Some("Juliet, C."),
                "sip:juliet@example.com",
                Some("ps-91aa07")
            )
        );
        assert_eq!(
            r.to,
            na(
                None,
                "sip:romeo*example.net@xmpp.example.com",
                Some("gw-5d1c8a")
            )
        );
        assert_eq!(r.call_id, "8c41f0e2b7d94e1a@gw.xmpp.example.com");
        assert_eq!((r.cseq, r.cseq_method), (102, Method::Notify));
        assert_eq!(
            r.contact,
            Some(na(None, "sip:ps1.example.com:5060;transport=tcp", None))
        );
        assert_eq!(
            r.event,
            Some(Event {
                package: "presence".into(),
                id: Some("42".into())
            })
        );
        assert_eq!(
            r.subscription_state,
            Some(Ok(SubscriptionState {
                state: SubState::Terminated,
                reason: Some("giveup".into()),
                expires: None,
                retry_after: Some(3600)
            }))
        );
        assert_eq!(r.content_type, Some("application/pidf+xml".into()));
        assert_eq!(r.max_forwards, None);
        assert_eq!(r.body, b"abc");
    }

    #[test]
    fn bare_lf_line_endings() {
        let msg = "\r\nSUBSCRIBE sip:romeo*example.net@xmpp.example.com SIP/2.0\n\
Via: SIP/2.0/TCP ua7.example.com:5061;branch=z9hG4bK-ua-4411\n\
From: \"Juliet\" <sip:juliet@example.com>;tag=ua-77aa31\n\
To: <sip:romeo*example.net@xmpp.example.com>\n\
Call-ID: 3f9a0c55e1@ua7.example.com\n\
CSeq: 20 SUBSCRIBE\n\
Route: <sip:p1;lr>, <sip:p2;lr;x=\"a,b\">\n\
Route: <sip:p3;lr>\n\
Accept: Application/PIDF+xml;q=0.5, */*\n\
Accept: application/xpidf+xml\n\
Require: eventlist, foo\n\
SIP-If-Match: kwj449x\n\
Expires: 0\n\
\n\
body\nline2\n";
        let r = request(msg.as_bytes());
        assert_eq!(
            r.from,
            na(Some("Juliet"), "sip:juliet@example.com", Some("ua-77aa31"))
        );
        assert_eq!(r.call_id, "3f9a0c55e1@ua7.example.com");
        assert_eq!(
            r.route,
            vec![
                "<sip:p1;lr>".to_owned(),
                "<sip:p2;lr;x=\"a,b\">".to_owned(),
                "<sip:p3;lr>".to_owned()
            ]
        );
        assert_eq!(
            r.accept,
            vec![
                "application/pidf+xml".to_owned(),
                "*/*".to_owned(),
                "application/xpidf+xml".to_owned()
            ]
        );
        assert_eq!(r.require, vec!["eventlist".to_owned(), "foo".to_owned()]);
        assert_eq!(r.sip_if_match, Some("kwj449x".into()));
        assert_eq!(r.expires, Some(0));
        assert_eq!(r.body, b"body\nline2\n");
    }

    fn headers_without(skip: &str) -> String {
        let all = [
            "Via: SIP/2.0/TLS ua7.example.com:5061;branch=z9hG4bK-ua-4411",
            "Max-Forwards: 69",
            "From: \"Juliet\" <sip:juliet@example.com>;tag=ua-77aa31",
            "To: <sip:romeo*example.net@xmpp.example.com>",
            "Call-ID: 3f9a0c55e1@ua7.example.com",
            "CSeq: 20 SUBSCRIBE",
            "Event: presence",
            "Content-Length: 0",
        ];
        let mut s = "SUBSCRIBE sip:romeo*example.net@xmpp.example.com SIP/2.0\r\n".to_owned();
        for h in all.iter().filter(|h| !h.starts_with(skip)) {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s
    }

    #[test]
    fn case_059_missing_call_id_gives_400_naming_it() {
        let e = parse_message(headers_without("Call-ID").as_bytes()).unwrap_err();
        assert_eq!(e.reason, "Missing Call-ID");
        let resp = e.response.unwrap();
        assert_eq!(
            (resp.status, resp.reason.as_str()),
            (400, "Missing Call-ID")
        );
        let mut out = Vec::new();
        encode_response(&resp, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "SIP/2.0 400 Missing Call-ID\r\n\
             Via: SIP/2.0/TLS ua7.example.com:5061;branch=z9hG4bK-ua-4411\r\n\
             From: \"Juliet\" <sip:juliet@example.com>;tag=ua-77aa31\r\n\
             To: <sip:romeo*example.net@xmpp.example.com>\r\n\
             CSeq: 20 SUBSCRIBE\r\n\
             Content-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn case_059_missing_cseq_gives_400_naming_it() {
        let e = parse_message(headers_without("CSeq").as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), "Missing CSeq");
        let resp = e.response.unwrap();
        assert_eq!((resp.status, resp.reason.as_str()), (400, "Missing CSeq"));
        assert_eq!(resp.call_id, "3f9a0c55e1@ua7.example.com");
        assert_eq!((resp.cseq, resp.cseq_method), (0, Method::Subscribe));
        let e = parse_message(headers_without("From").as_bytes()).unwrap_err();
        assert_eq!(e.reason, "Missing From");
        let e = parse_message(headers_without("To").as_bytes()).unwrap_err();
        assert_eq!(e.reason, "Missing To");
    }

    #[test]
    fn malformed_headers_give_400_naming_them() {
        let m = headers_without("CSeq").replace("Event", "CSeq: x SUBSCRIBE\r\nEvent");
        assert_eq!(
            parse_message(m.as_bytes()).unwrap_err().reason,
            "Malformed CSeq"
        );
        let m = headers_without("Max").replace("Event", "Max-Forwards: many\r\nEvent");
        let e = parse_message(m.as_bytes()).unwrap_err();
        assert_eq!(e.reason, "Malformed Max-Forwards");
        assert_eq!(e.response.map(|r| r.status), Some(400));
        let m =
            headers_without("Event").replace("Content-Length", "Expires: soon\r\nContent-Length");
        assert_eq!(
            parse_message(m.as_bytes()).unwrap_err().reason,
            "Malformed Expires"
        );
        let m = headers_without("From").replace("To:", "From: <sip:x\r\nTo:");
        assert_eq!(
            parse_message(m.as_bytes()).unwrap_err().reason,
            "Malformed From"
        );
    }

    #[test]
    fn bad_header_line_with_a_via_still_gets_400() {
        let m = headers_without("Max-Forwards")
            .replace("Event: presence", "Bad Header: x\r\nno colon here");
        let e = parse_message(m.as_bytes()).unwrap_err();
        let resp = e.response.unwrap();
        assert_eq!(
            (resp.status, resp.reason.as_str()),
            (400, "Malformed request")
        );
        assert_eq!(
            resp.via,
            vec!["SIP/2.0/TLS ua7.example.com:5061;branch=z9hG4bK-ua-4411".to_owned()]
        );
        assert_eq!(resp.call_id, "3f9a0c55e1@ua7.example.com");
        assert_eq!((resp.cseq, resp.cseq_method), (20, Method::Subscribe));
        assert!(
            e.reason
                .starts_with("Unparseable message: Tokenizer error: failed to tokenize headers"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn max_forwards_is_optional() {
        let r = request(headers_without("Max-Forwards").as_bytes());
        assert_eq!(r.max_forwards, None);
        assert_eq!(
            r.event,
            Some(Event {
                package: "presence".into(),
                id: None
            })
        );
    }

    #[test]
    fn missing_via_gives_no_response() {
        let e = parse_message(headers_without("Via").as_bytes()).unwrap_err();
        assert_eq!(
            e,
            ParseError {
                reason: "Missing Via".into(),
                response: None
            }
        );
    }

    #[test]
    fn case_071_notify_without_subscription_state_parses_to_none() {
        let m = KAMAILIO_NOTIFY.replace("Subscription-State: active;expires=600\r\n", "");
        assert_eq!(request(m.as_bytes()).subscription_state, None);
        let m = KAMAILIO_NOTIFY.replace("active;expires=600", "active;expires=ten");
        assert_eq!(
            request(m.as_bytes()).subscription_state,
            Some(Err("bad expires value \"ten\"".into()))
        );
    }

    #[test]
    fn garbage_gives_no_response() {
        for g in [
            &b"hello world"[..],
            b"",
            b"\r\n\r\n",
            b"\xff\xfe\x00SIP",
            b"INVITE\r\n\r\n",
            b"SIP/2.0 2000 OK\r\n\r\n",
        ] {
            let e = parse_message(g).unwrap_err();
            assert_eq!(e.response, None, "{e}");
        }
        assert_eq!(
            parse_message(b"hello world")
                .unwrap_err()
                .reason
                .split(':')
                .next(),
            Some("Unparseable message")
        );
        assert_eq!(parse_message(b"").unwrap_err().reason, "Empty message");
        let e = parse_message(b"NOTIFY sip:a@b SIP/2.0\r\nVia x\r\n\r\n").unwrap_err();
        assert_eq!(
            e.reason,
            "Unparseable message: Tokenizer error: failed to tokenize headers: Via x"
        );
        assert_eq!(e.response, None);
        assert_eq!(
            parse_message(b"NOTIFY sip:a@b SIP/3.0\r\nVia: x\r\n\r\n")
                .unwrap_err()
                .reason,
            "Unsupported SIP version"
        );
    }

    #[test]
    fn unknown_method_is_other() {
        let m = headers_without("CSeq")
            .replace("SUBSCRIBE sip", "FROB sip")
            .replace("Event", "CSeq: 3 FROB\r\nEvent");
        let r = request(m.as_bytes());
        assert_eq!(r.method, Method::Other("FROB".into()));
        assert_eq!(r.cseq_method, Method::Other("FROB".into()));
    }

    #[test]
    fn responses_423_503_and_publish_etag() {
        let base = "Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bK-1\r\n\
From: <sip:alice*xmpp.test@sip-xmpp.test>;tag=gw1\r\n\
To: <sip:bob@sip.test>;tag=k1\r\n\
Call-ID: c1\r\n";
        let r = response(format!("SIP/2.0 423 Interval Too Brief\r\n{base}CSeq: 1 SUBSCRIBE\r\nMin-Expires: 1800\r\n\r\n").as_bytes());
        assert_eq!(
            (r.status, r.reason.as_str(), r.min_expires),
            (423, "Interval Too Brief", Some(1800))
        );
        let r = response(format!("SIP/2.0 503 Service Unavailable\r\n{base}CSeq: 1 SUBSCRIBE\r\nRetry-After: 120 (busy);duration=10\r\n\r\n").as_bytes());
        assert_eq!((r.status, r.retry_after), (503, Some(120)));
        let r = response(format!("SIP/2.0 200 OK\r\n{base}CSeq: 7 PUBLISH\r\nSIP-ETag: a.1795667704.31254.2.0\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n").as_bytes());
        assert_eq!(r.sip_etag, Some("a.1795667704.31254.2.0".into()));
        assert_eq!(
            (r.cseq, r.cseq_method, r.expires),
            (7, Method::Publish, Some(600))
        );
        let r = response(format!("SIP/2.0 202\r\n{base}CSeq: 1 SUBSCRIBE\r\n\r\n").as_bytes());
        assert_eq!((r.status, r.reason.as_str()), (202, ""));
        // A malformed optional value in a response is dropped, not fatal.
        let r = response(
            format!("SIP/2.0 200 OK\r\n{base}CSeq: 1 SUBSCRIBE\r\nExpires: x\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.expires, None);
        let e = parse_message(format!("SIP/2.0 200 OK\r\n{base}\r\n").as_bytes()).unwrap_err();
        assert_eq!(
            e,
            ParseError {
                reason: "Response: Missing CSeq".into(),
                response: None
            }
        );
    }

    #[test]
    fn header_kinds_by_name_any_case() {
        for k in Kind::ALL {
            assert_eq!(Kind::of(k.name().as_bytes()), k);
            assert_eq!(Kind::of(k.name().to_ascii_lowercase().as_bytes()), k);
            assert_eq!(Kind::of(k.name().to_ascii_uppercase().as_bytes()), k);
        }
        assert_eq!(Kind::of(b"User-Agent"), Kind::Other);
        assert_eq!(Kind::of(b"Tx"), Kind::Other);
        assert_eq!(Kind::of(b""), Kind::Other);
    }

    #[test]
    fn within_gives_slices_of_a_checked_section_only() {
        let whole = "Via: a\r\nTo: é<sip:x>";
        let b = whole.as_bytes();
        assert_eq!(within(whole, &b[5..6]), Some("a"));
        assert_eq!(within(whole, &b[12..14]), Some("é"));
        assert_eq!(within(whole, &b[b.len()..]), Some(""));
        // Not on a char boundary, or not inside `whole`: the caller checks the octets itself.
        assert_eq!(within(whole, &b[12..13]), None);
        let copy = b.to_vec();
        assert_eq!(within(whole, &copy[5..6]), None);
    }

    #[test]
    fn trim_is_str_trim() {
        for s in [
            "",
            " ",
            "a",
            " a ",
            "a\t",
            "\u{a0}a",
            "a\u{3000}",
            "\u{b}x\u{b}",
            "é",
            "x y",
        ] {
            assert_eq!(trim(s), s.trim(), "{s:?}");
        }
    }

    #[test]
    fn find_byte_finds_the_first() {
        let hay = b"0123456789abcdef\nxyz\n";
        assert_eq!(find_byte(hay, b'\n'), Some(16));
        assert_eq!(find_byte(hay, b'0'), Some(0));
        assert_eq!(find_byte(hay, b'z'), Some(19));
        assert_eq!(find_byte(hay, b'Q'), None);
        assert_eq!(find_byte(b"", b'Q'), None);
        assert_eq!(find_byte(b"\x80\x81\x0a", b'\n'), Some(2));
        assert_eq!(
            find_byte(b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01", b'\x01'),
            Some(0)
        );
        assert_eq!(
            find_byte(b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01", b'\x01'),
            Some(9)
        );
        assert_eq!(find_sub(b"a\r\nb\r\n\r\nc", b"\r\n\r\n"), Some(4));
        assert_eq!(find_sub(b"a\r\nb", b"\r\n\r\n"), None);
    }

    #[test]
    fn kamailio_notify_takes_both_fast_paths() {
        let bytes = KAMAILIO_NOTIFY.as_bytes();
        let end = normal_head_end(bytes).unwrap();
        assert_eq!(Some(end), header_end(bytes, 0));
        let head = &bytes[..end];
        let fast = tokenize_request_fast(head).unwrap();
        assert_eq!(fast, RequestTokenizer::tokenize(head).unwrap().1);
        for line in [
            &b"Via: SIP/2.0/UDP h\r\nTo: x"[..],
            b"Max-Forwards:\t 70",
            b"X-Empty:",
            b"X-Lone-CR: a\rb\r\n",
            b"Bad Name: x",
            b": no name",
            b"NoColon",
            b"\xe9: x",
        ] {
            assert_eq!(
                tokenize_header(line),
                HeaderTokenizer::tokenize(line).ok(),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        // Compact forms, folding and a bare-LF message are not in normal form.
        for m in [
            KAMAILIO_NOTIFY.replace("Call-ID:", "i:"),
            KAMAILIO_NOTIFY.replace("CSeq: 2", "CSeq:  2"),
            KAMAILIO_NOTIFY.replace("CSeq: 2 NOTIFY", "CSeq: 2\r\n NOTIFY"),
            KAMAILIO_NOTIFY.replace("\r\n", "\n"),
            KAMAILIO_NOTIFY.replace("Event: presence", "Event : presence"),
        ] {
            assert_eq!(normal_head_end(m.as_bytes()), None, "{m}");
        }
        // A non-SIP Request-URI goes the general way.
        let m = KAMAILIO_NOTIFY.replace("sip:alice*xmpp.test@127.0.0.2:5080", "tel:+1555");
        let end = header_end(m.as_bytes(), 0).unwrap();
        assert_eq!(tokenize_request_fast(&m.as_bytes()[..end]), None);
    }

    /// Octets that change how a SIP header section is tokenized or normalized.
    fn sip_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            proptest::sample::select(b" \t\r\n:;.@/,<>\"=aZ0S".to_vec()),
            any::<u8>(),
        ]
    }

    fn mutate(base: &str, edits: &[(usize, usize, u8)]) -> Vec<u8> {
        let mut m = base.as_bytes().to_vec();
        for &(pos, len, byte) in edits {
            let pos = pos % (m.len() + 1);
            let end = (pos + len).min(m.len());
            m.splice(pos..end, std::iter::repeat_n(byte, len % 3));
        }
        m
    }

    proptest! {
        /// Whenever the section is taken as it is, it is exactly what `normalize` makes of it.
        #[test]
        fn normal_head_is_what_normalize_gives(
            edits in proptest::collection::vec((0usize..700, 0usize..4, sip_byte()), 1..4),
        ) {
            let m = mutate(KAMAILIO_NOTIFY, &edits);
            if let Some(end) = normal_head_end(&m) {
                prop_assert_eq!(header_end(&m, 0), Some(end));
                let head = &m[..end];
                let norm = normalize(head);
                prop_assert_eq!(norm.as_deref(), Ok(head));
            }
        }

        /// The header tokenizer is rsip's: the same tokens, and `None` exactly where rsip fails.
        #[test]
        fn header_tokens_are_rsips(
            line in proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(b" \t\r\n:;-.!%*_+`'~aZ09,<>\"=".to_vec()),
                    any::<u8>(),
                ],
                0..40,
            ),
        ) {
            prop_assert_eq!(
                tokenize_header(&line),
                HeaderTokenizer::tokenize(&line).ok()
            );
        }

        /// The URI tokenizer of the request fast path gives rsip's tokens, or `None` exactly
        /// where rsip fails, on URIs made of the octets that steer its scans.
        #[test]
        fn sip_uri_tokens_are_rsips(
            scheme in "[sS][iI][pP][sS]?:",
            rest in "[a-z0-9@.:;= !%*_+`'~?&/-]{0,30}",
        ) {
            let uri = format!("{scheme}{rest}");
            let rsip = rsip::common::uri::Tokenizer::<&[u8], u8>::tokenize(uri.as_bytes()).ok();
            prop_assert_eq!(tokenize_sip_uri(uri.as_bytes()), rsip);
        }

        /// Whenever the fast request tokenizer answers, rsip's whole-message tokenizer gives the
        /// same tokens.
        #[test]
        fn fast_request_tokens_are_rsips(
            edits in proptest::collection::vec((0usize..600, 0usize..4, sip_byte()), 1..4),
        ) {
            let m = mutate(KAMAILIO_NOTIFY, &edits);
            let skip = m.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            let m = &m[skip..];
            let end = header_end(m, 0).unwrap_or(m.len());
            if let Ok(norm) = normalize(&m[..end]) {
                if let Some(fast) = tokenize_request_fast(&norm) {
                    prop_assert_eq!(Some(fast), RequestTokenizer::tokenize(&norm).ok().map(|t| t.1));
                }
            }
        }

        /// Whenever the fast response tokenizer answers, rsip's gives the same tokens; and it
        /// answers for every status line rsip takes whose separator is one space.
        #[test]
        fn fast_response_tokens_are_rsips(
            edits in proptest::collection::vec((0usize..400, 0usize..4, sip_byte()), 1..4),
        ) {
            let m = mutate(KAMAILIO_200, &edits);
            let skip = m.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            let m = &m[skip..];
            let end = header_end(m, 0).unwrap_or(m.len());
            if let Ok(norm) = normalize(&m[..end]) {
                let rsip = ResponseTokenizer::tokenize(&norm).ok().map(|t| t.1);
                match tokenize_response_fast(&norm) {
                    Some(fast) => prop_assert_eq!(Some(fast), rsip),
                    None => prop_assert!(rsip.is_none() || !norm.contains(&b'\n')),
                }
            }
        }
    }

    #[test]
    fn name_addr_forms() {
        assert_eq!(
            parse_name_addr("\"Juliet\" <sip:juliet@example.com>;tag=x"),
            Some(na(Some("Juliet"), "sip:juliet@example.com", Some("x")))
        );
        assert_eq!(
            parse_name_addr("<sip:a@b>"),
            Some(na(None, "sip:a@b", None))
        );
        assert_eq!(
            parse_name_addr("sip:a@b;tag=x"),
            Some(na(None, "sip:a@b", Some("x")))
        );
        assert_eq!(
            parse_name_addr("Bob Smith <sip:Bob@Example.COM;transport=tcp> ; TAG = 9 ;x"),
            Some(na(
                Some("Bob Smith"),
                "sip:Bob@Example.COM;transport=tcp",
                Some("9")
            ))
        );
        assert_eq!(
            parse_name_addr("\"a \\\"q\\\" <b>\" <sip:mary%20ann@example.com>"),
            Some(na(Some("a \"q\" <b>"), "sip:mary%20ann@example.com", None))
        );
        assert_eq!(
            parse_name_addr("<tel:+15551234567>;tag=a"),
            Some(na(None, "tel:+15551234567", Some("a")))
        );
        for bad in [
            "",
            "<sip:a@b",
            "\"x <sip:a@b>",
            "juliet",
            "<sip:a@b> junk",
            "<:x>",
            "<sip:>",
        ] {
            assert_eq!(parse_name_addr(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_message(&data);
        }

        #[test]
        fn parse_never_panics_on_mutated_messages(
            pos in 0usize..700, len in 0usize..20, byte in any::<u8>(),
        ) {
            let mut m = KAMAILIO_NOTIFY.as_bytes().to_vec();
            let pos = pos.min(m.len());
            let end = (pos + len).min(m.len());
            m.splice(pos..end, std::iter::repeat_n(byte, len % 3));
            let _ = parse_message(&m);
        }

        #[test]
        fn encode_then_parse_round_trips(
            display in proptest::option::of("[ -~]{1,20}"),
            tag in proptest::option::of("[A-Za-z0-9.!%*_+`'~-]{1,16}"),
            call_id in "[A-Za-z0-9.!%*_+`'~@-]{1,30}",
            cseq in any::<u32>(),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut req = enc::subscribe_4_2();
            req.from.display = display.map(|d| d.trim().to_owned()).filter(|d| !d.is_empty());
            req.to.tag = tag;
            req.call_id = call_id;
            req.cseq = cseq;
            req.content_type = Some("application/pidf+xml");
            req.body = body;
            let mut out = Vec::new();
            encode_request(&req, "SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKx", &mut out);
            let r = request(&out);
            prop_assert_eq!(&r.from, &req.from);
            prop_assert_eq!(&r.to, &req.to);
            prop_assert_eq!(&r.call_id, &req.call_id);
            prop_assert_eq!(r.cseq, req.cseq);
            prop_assert_eq!(&r.body, &req.body);
        }

        #[test]
        fn tag_param_is_the_first_tag_with_a_value(s in "[;= tagTAGx\u{e9}]{0,30}") {
            let old = s.split(';').skip(1).find_map(|p| {
                let (n, v) = p.split_once('=')?;
                let v = v.trim();
                (n.trim().eq_ignore_ascii_case("tag") && !v.is_empty()).then(|| v.to_owned())
            });
            prop_assert_eq!(tag_param(&s), old);
        }

        #[test]
        fn name_addr_never_panics(s in ".{0,80}") {
            let _ = parse_name_addr(&s);
        }
    }

    /// Ad-hoc timing of the hot path: `cargo test -p pua-xmpp --lib parse_bench -- --ignored
    /// --nocapture`. Debug builds are ~10x slower than release.
    #[test]
    #[ignore]
    fn parse_bench() {
        let bytes = bench_bytes();
        let bytes = bytes.as_bytes();
        let n = 20_000;
        let t = std::time::Instant::now();
        let mut ok = 0;
        for _ in 0..n {
            if parse_message(std::hint::black_box(bytes)).is_ok() {
                ok += 1;
            }
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!(
            "parse_message of a {}-octet NOTIFY: {us:.2} µs/message",
            bytes.len()
        );
        assert_eq!(ok, n);
    }

    pub(super) fn bench_bytes() -> String {
        KAMAILIO_NOTIFY.replace(
            "</presence>",
            "<tuple id=\"t2\"><status><basic>closed</basic></status></tuple>\n</presence>",
        )
    }
}
#[cfg(test)]
mod breakdown {
    /// CPU time of this thread (utime + stime, 10 ms ticks): wall time is meaningless on a
    /// machine shared by several builds.
    pub(super) fn cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<f64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
    }

    fn time(name: &str, n: usize, mut f: impl FnMut()) {
        let t = cpu_seconds();
        for _ in 0..n {
            f();
        }
        println!("{name}: {:.2} µs", (cpu_seconds() - t) * 1e6 / n as f64);
    }

    #[test]
    #[ignore]
    fn breakdown() {
        let bytes = super::tests::bench_bytes();
        let bytes = bytes.as_bytes();
        let end = super::header_end(bytes, 0).unwrap();
        let head = &bytes[..end];
        let n = 200_000;
        time("normalize", n, || {
            std::hint::black_box(super::normalize(std::hint::black_box(head))).ok();
        });
        let norm = super::normalize(head).unwrap();
        time("rsip tokenize", n, || {
            std::hint::black_box(super::tokenize(std::hint::black_box(&norm))).ok();
        });
        let Ok(super::MessageTokenizer::Request(t)) = super::tokenize(&norm) else {
            panic!("not a request")
        };
        time("typed fields", n, || {
            let mut f = super::Fields::default();
            for h in &t.headers {
                f.read(h.name, h.value, false);
            }
            std::hint::black_box(f);
        });
        time("parse_message", n, || {
            std::hint::black_box(super::parse_message(std::hint::black_box(bytes))).ok();
        });
    }
}
