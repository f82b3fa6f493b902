//! What an instant message carries, both ways (§10.2.2, §10.3.2, §10.3.3): which `<body/>`
//! and `<subject/>` of a stanza become the MESSAGE body and `Subject`, the header values built
//! from stanza fields (sanitized: no header injection), the Call-ID a `<thread/>` maps to, and
//! how a MESSAGE body is read (content types, charsets, CPIM, text clean-up). Pure functions;
//! the state machine is in [`crate::im`].

use crate::message::InMessage;
use sha2::{Digest, Sha256};

/// The MESSAGE header fields [`crate::sip::SipRequest`] does not keep, read from the raw
/// request by [`MessageHeaders::from_raw`] (only MESSAGE requests need them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageHeaders {
    /// The whole `Content-Type` value, parameters included (`text/plain;charset=UTF-8`).
    pub content_type: Option<String>,
    /// Every `Content-Encoding` coding, lowercased, in order.
    pub content_encoding: Vec<String>,
    /// The first `Content-Language` value as received (`it, en`).
    pub content_language: Option<String>,
    pub subject: Option<String>,
}

impl MessageHeaders {
    /// Reads the fields from a framed request (compact forms `c`, `e`, `s` included).
    pub fn from_raw(bytes: &[u8]) -> MessageHeaders {
        let mut h = MessageHeaders::default();
        for (name, value) in crate::sip::parse::header_fields(bytes) {
            let is = |n: &str| name.eq_ignore_ascii_case(n);
            if is("Content-Type") && h.content_type.is_none() {
                h.content_type = Some(value);
            } else if is("Content-Encoding") {
                h.content_encoding.extend(
                    value
                        .split(',')
                        .map(|c| c.trim().to_ascii_lowercase())
                        .filter(|c| !c.is_empty()),
                );
            } else if is("Content-Language") && h.content_language.is_none() {
                h.content_language = Some(value);
            } else if is("Subject") && h.subject.is_none() {
                h.subject = Some(value);
            }
        }
        h
    }
}

// ---- XMPP → SIP -------------------------------------------------------------------------

/// Longest `Subject` we write, in octets (§10.2.2 ◆).
pub const MAX_SUBJECT_OCTETS: usize = 255;

/// What of a stanza goes into the MESSAGE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen<'a> {
    pub body: &'a str,
    /// `Content-Language`: the body's own `xml:lang`, else the stanza's, if it is a valid tag.
    pub language: Option<&'a str>,
    /// `Subject`, already sanitized.
    pub subject: Option<String>,
}

/// `[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*` (§10.2.2 ◆): what may go into `Content-Language` or
/// come out of it as `xml:lang`.
pub fn language_tag_ok(s: &str) -> bool {
    let mut parts = s.split('-');
    let first_ok = parts
        .next()
        .is_some_and(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    first_ok
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The body, language and subject of §10.2.2: among the non-empty bodies, the one without its
/// own `xml:lang`, else the one in the stanza's language, else the first. The subject in the
/// same (effective) language, else the first. `None`: no non-empty body (check 3).
pub fn choose(m: &InMessage) -> Option<Chosen<'_>> {
    let bodies = || m.bodies.iter().filter(|b| !b.text.is_empty());
    let body = bodies()
        .find(|b| b.lang.is_none())
        .or_else(|| bodies().find(|b| b.lang.is_some() && b.lang == m.lang))
        .or_else(|| bodies().next())?;
    let effective = body.lang.as_deref().or(m.lang.as_deref());
    let subject = m
        .subjects
        .iter()
        .find(|s| s.lang.as_deref().or(m.lang.as_deref()) == effective)
        .or_else(|| m.subjects.first())
        .and_then(|s| subject_header(&s.text));
    Some(Chosen {
        body: &body.text,
        language: effective.filter(|l| language_tag_ok(l)),
        subject,
    })
}

/// A `<subject/>` as a `Subject` value: control characters (CR and LF among them) become
/// spaces, the result is trimmed and cut at [`MAX_SUBJECT_OCTETS`] on a character boundary.
/// `None` when nothing is left.
pub fn subject_header(s: &str) -> Option<String> {
    let spaced: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let t = spaced.trim();
    let mut end = t.len().min(MAX_SUBJECT_OCTETS);
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    let cut = t.get(..end).unwrap_or_default().trim_end();
    (!cut.is_empty()).then(|| cut.to_owned())
}

/// The characters of a Call-ID word this gateway copies from a thread (§10.2.2 ◆).
fn call_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b".!%*_+`'~()-".contains(&b)
}

/// The Call-ID of a thread (§10.2.2 ◆): the thread itself when it is 1–128 characters of
/// ``[A-Za-z0-9.!%*_+`'~()-]`` with at most one `@` between two such runs, else `xt-` and the
/// first 32 hex digits of SHA-256(thread), so one thread always maps to one Call-ID.
pub fn call_id_for_thread(thread: &str) -> String {
    let word = |w: &str| !w.is_empty() && w.bytes().all(call_id_char);
    let valid = (1..=128).contains(&thread.len())
        && match thread.split_once('@') {
            Some((a, b)) => word(a) && word(b),
            None => word(thread),
        };
    if valid {
        return thread.to_owned();
    }
    let digest = Sha256::digest(thread.as_bytes());
    let mut s = String::with_capacity(35);
    s.push_str("xt-");
    for b in digest.iter().take(16) {
        crate::text::push_hex(&mut s, u64::from(*b), 2);
    }
    s
}

/// A resource as the value of a SIP URI parameter (`;gr=`): `unreserved` and
/// `param-unreserved` stay, every other octet is `%XX` (RFC 3261 §25.1).
pub fn pct_encode_param(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()[]/:&+$".contains(&b) {
            out.push(char::from(b));
        } else {
            crate::text::push_pct(&mut out, b);
        }
    }
    out
}

// ---- SIP → XMPP -------------------------------------------------------------------------

/// `Accept` of a 415 (§10.3.1 check 13).
pub const ACCEPT: &str = "text/plain, message/cpim, application/im-iscomposing+xml";

/// How the octets of a text part are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charset {
    /// `utf-8`, `us-ascii` (a subset) or none given (§10.3.2 ◆: what UAs send).
    Utf8,
    /// ISO-8859-1, converted (§10.3.2 ◆).
    Latin1,
}

/// An accepted body, before decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// Text to deliver (from `text/plain` or the `text/plain` inside `message/cpim`).
    Text { charset: Charset, octets: &'a [u8] },
    /// An RFC 3994 typing indicator: answered 200, not delivered.
    Composing,
}

/// Why a body is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// 415: a type or charset we do not take.
    Unsupported,
    /// 400: a `message/cpim` body without its header blocks, or text that does not decode.
    Malformed,
}

/// A media type and its parameters, lowercased names; quoted values unquoted.
struct MediaType<'a> {
    essence: String,
    params: Vec<(String, &'a str)>,
}

fn media_type(v: &str) -> MediaType<'_> {
    let mut parts = v.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| {
            let (n, v) = p.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(v);
            Some((n.trim().to_ascii_lowercase(), v))
        })
        .collect();
    MediaType { essence, params }
}

fn charset_of(mt: &MediaType<'_>) -> Result<Charset, BodyError> {
    let Some((_, cs)) = mt.params.iter().find(|(n, _)| n == "charset") else {
        return Ok(Charset::Utf8);
    };
    let cs = cs.to_ascii_lowercase();
    match cs.as_str() {
        "utf-8" | "utf8" | "us-ascii" | "ascii" => Ok(Charset::Utf8),
        "iso-8859-1" | "iso_8859-1" | "iso_8859-1:1987" | "latin1" | "l1" | "iso-ir-100"
        | "cp819" | "ibm819" | "csisolatin1" => Ok(Charset::Latin1),
        _ => Err(BodyError::Unsupported),
    }
}

/// Splits at the first empty line (CRLF or LF line ends): the header block and the rest.
fn split_at_blank_line(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut i = 0;
    if b.starts_with(b"\r\n") {
        return Some((&[], b.get(2..)?));
    }
    if b.starts_with(b"\n") {
        return Some((&[], b.get(1..)?));
    }
    while let Some(lf) = b.get(i..)?.iter().position(|&c| c == b'\n') {
        let at = i + lf + 1;
        match b.get(at..) {
            Some([b'\n', ..]) => return Some((b.get(..at)?, b.get(at + 1..)?)),
            Some([b'\r', b'\n', ..]) => return Some((b.get(..at)?, b.get(at + 2..)?)),
            _ => i = at,
        }
    }
    None
}

/// The value of header `name` in a MIME/CPIM header block (case-insensitive, no folding).
fn block_header<'a>(block: &'a [u8], name: &str) -> Option<&'a str> {
    block.split(|&c| c == b'\n').find_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Which body is accepted, by its `Content-Type` (§10.3.2): `text/plain` (no `Content-Type`
/// reads as `text/plain` ◆), `message/cpim` with an inner `text/plain` (the CPIM headers are
/// ignored: identity comes from the SIP From only), `application/im-iscomposing+xml`.
/// Everything else, `text/html` included, is [`BodyError::Unsupported`].
pub fn classify<'a>(content_type: Option<&str>, body: &'a [u8]) -> Result<Payload<'a>, BodyError> {
    let mt = media_type(content_type.unwrap_or("text/plain"));
    match mt.essence.as_str() {
        "text/plain" => Ok(Payload::Text {
            charset: charset_of(&mt)?,
            octets: body,
        }),
        "application/im-iscomposing+xml" => Ok(Payload::Composing),
        "message/cpim" => {
            let (_cpim_headers, rest) = split_at_blank_line(body).ok_or(BodyError::Malformed)?;
            let (mime, content) = split_at_blank_line(rest).ok_or(BodyError::Malformed)?;
            let inner = media_type(block_header(mime, "Content-Type").unwrap_or("text/plain"));
            if inner.essence != "text/plain" {
                return Err(BodyError::Unsupported);
            }
            Ok(Payload::Text {
                charset: charset_of(&inner)?,
                octets: content,
            })
        }
        _ => Err(BodyError::Unsupported),
    }
}

/// The text of a body: decoded from its charset (invalid UTF-8 is [`BodyError::Malformed`]),
/// then cleaned up by [`clean_text`].
pub fn decode_text(charset: Charset, octets: &[u8]) -> Result<String, BodyError> {
    let text = match charset {
        Charset::Utf8 => std::str::from_utf8(octets)
            .map_err(|_| BodyError::Malformed)?
            .to_owned(),
        Charset::Latin1 => octets.iter().map(|&b| char::from(b)).collect(),
    };
    Ok(clean_text(&text))
}

/// §10.3.2 ◆: CRLF and a lone CR become LF (as an XML parser would read them), and the
/// characters XML 1.0 cannot carry (C0 controls but tab, LF and CR; U+FFFE; U+FFFF) become
/// U+FFFD. What is left is exactly what the stanza's reader gets back.
pub fn clean_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\t' | '\n' => out.push(c),
            '\u{0}'..='\u{1f}' | '\u{FFFE}' | '\u{FFFF}' => out.push('\u{FFFD}'),
            _ => out.push(c),
        }
    }
    out
}

/// The `xml:lang` of a delivered stanza: the first tag of `Content-Language`, if valid.
pub fn stanza_lang(content_language: Option<&str>) -> Option<String> {
    let first = content_language?.split(',').next()?.trim();
    language_tag_ok(first).then(|| first.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::LangText;

    #[test]
    fn language_tags() {
        for ok in ["en", "de-CH", "zh-Hant-TW", "abcdefgh", "x-a1"] {
            assert!(language_tag_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "e1",
            "en-",
            "-en",
            "abcdefghi",
            "en_US",
            "en\nX-Injected: 1",
            "en US",
        ] {
            assert!(!language_tag_ok(bad), "{bad:?}");
        }
        assert_eq!(stanza_lang(Some("it, en")).as_deref(), Some("it"));
        assert_eq!(stanza_lang(Some("i t")), None);
    }

    #[test]
    fn thread_call_ids() {
        assert_eq!(
            call_id_for_thread("7f1c9e02@ua7.example.com"),
            "7f1c9e02@ua7.example.com"
        );
        assert_eq!(
            call_id_for_thread("e2b4c6a0-5f7d-4c1a-9d3b-6a1f0c9e2d11"),
            "e2b4c6a0-5f7d-4c1a-9d3b-6a1f0c9e2d11"
        );
        assert_eq!(
            call_id_for_thread("a b<c>"),
            "xt-ec1407284342029f2f8a4f46875496ae"
        );
        for bad in ["", "a@b@c", "@a", "a@", &"x".repeat(129)] {
            assert!(call_id_for_thread(bad).starts_with("xt-"), "{bad:?}");
        }
        assert_eq!(call_id_for_thread(&"x".repeat(128)), "x".repeat(128));
    }

    #[test]
    fn subjects_are_one_line() {
        assert_eq!(
            subject_header("Tonight\nX-Injected: 1").as_deref(),
            Some("Tonight X-Injected: 1")
        );
        assert_eq!(subject_header(" \r\n\t "), None);
        let long = "é".repeat(200);
        let cut = subject_header(&long).unwrap();
        assert_eq!(cut.len(), 254);
    }

    #[test]
    fn body_choice() {
        let m = |lang: Option<&str>, bodies: Vec<LangText>| InMessage {
            lang: lang.map(str::to_owned),
            bodies,
            ..InMessage::from_xml("<message from='a@b/c' to='d@e'/>").unwrap()
        };
        let a = m(
            Some("en"),
            vec![
                LangText::new(Some("de"), "Hallo"),
                LangText::new(None, "Hello"),
            ],
        );
        let c = choose(&a).unwrap();
        assert_eq!((c.body, c.language), ("Hello", Some("en")));
        let b = m(
            Some("fr"),
            vec![
                LangText::new(Some("de"), "Hallo"),
                LangText::new(Some("fr"), "Salut"),
            ],
        );
        let c = choose(&b).unwrap();
        assert_eq!((c.body, c.language), ("Salut", Some("fr")));
        let d = m(None, vec![LangText::new(Some("de"), "Hallo")]);
        let c = choose(&d).unwrap();
        assert_eq!((c.body, c.language), ("Hallo", Some("de")));
        assert_eq!(choose(&m(None, vec![LangText::new(None, "")])), None);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            classify(Some("text/plain;charset=ISO-8859-1"), b"Caf\xe9"),
            Ok(Payload::Text {
                charset: Charset::Latin1,
                octets: b"Caf\xe9"
            })
        );
        assert_eq!(
            classify(Some("Text/Plain; charset=\"utf-8\""), b"x"),
            Ok(Payload::Text {
                charset: Charset::Utf8,
                octets: b"x"
            })
        );
        assert_eq!(
            classify(Some("text/plain;charset=KOI8-R"), b"x"),
            Err(BodyError::Unsupported)
        );
        for t in ["text/html", "image/jpeg", "multipart/mixed;boundary=x"] {
            assert_eq!(classify(Some(t), b"x"), Err(BodyError::Unsupported), "{t}");
        }
        assert_eq!(
            classify(Some("application/im-iscomposing+xml"), b"<x/>"),
            Ok(Payload::Composing)
        );
        let cpim = b"From: <sip:eve@evil.example>\r\nDateTime: 2024-05-01T10:00:00Z\r\n\r\n\
                     Content-Type: text/plain;charset=UTF-8\r\n\r\nHi there";
        assert_eq!(
            classify(Some("message/cpim"), cpim),
            Ok(Payload::Text {
                charset: Charset::Utf8,
                octets: b"Hi there"
            })
        );
        let png = b"From: <sip:a@b>\n\nContent-Type: image/png\n\n\x89PNG";
        assert_eq!(
            classify(Some("message/cpim"), png),
            Err(BodyError::Unsupported)
        );
        assert_eq!(
            classify(Some("message/cpim"), b"no blank line"),
            Err(BodyError::Malformed)
        );
    }

    #[test]
    fn decoding_and_clean_up() {
        assert_eq!(
            decode_text(Charset::Latin1, b"Caf\xe9").as_deref(),
            Ok("Café")
        );
        assert_eq!(
            decode_text(Charset::Utf8, b"\xc3\x28"),
            Err(BodyError::Malformed)
        );
        assert_eq!(
            clean_text("<b>\"Tom & Jerry\"</b>\u{7}\r\nok\rx\u{FFFF}"),
            "<b>\"Tom & Jerry\"</b>\u{FFFD}\nok\nx\u{FFFD}"
        );
    }

    #[test]
    fn raw_headers() {
        let raw = b"MESSAGE sip:a@b SIP/2.0\r\nc: text/plain;charset=UTF-8\r\n\
                    Content-Encoding: identity, GZIP\r\ns: Stasera\r\nContent-Language: it\r\n\r\nx";
        let h = MessageHeaders::from_raw(raw);
        assert_eq!(h.content_type.as_deref(), Some("text/plain;charset=UTF-8"));
        assert_eq!(h.content_encoding, ["identity", "gzip"]);
        assert_eq!(h.subject.as_deref(), Some("Stasera"));
        assert_eq!(h.content_language.as_deref(), Some("it"));
        assert_eq!(pct_encode_param("or chard/é"), "or%20chard/%C3%A9");
    }
}
