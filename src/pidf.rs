//! PIDF (RFC 3863) with the data model (RFC 4479) and RPID (RFC 4480): a tolerant, bounded
//! parser for what SIP presence servers send, and the writer for what we send (§3.1, §3.2, §4.6).
//!
//! The parser is a hand-driven quick-xml `Reader` over the body bytes with its own prefix
//! bindings: elements are matched by namespace URI + local name (prefixes vary between
//! servers), text is joined across entity references, and nothing but the five predefined entities and character references is ever
//! expanded. A DOCTYPE is refused outright (XXE, "billion laughs", case 69).

use crate::presence::XmppAggregate;
use crate::stanza::Show;
use crate::xml::{escape_attr, escape_text};
use quick_xml::events::{BytesEnd, BytesRef, BytesStart, BytesText, Event};
use quick_xml::{Reader, XmlVersion};
use sha1::{Digest, Sha1};
use std::borrow::Cow;
use std::fmt::Write as _;

pub const NS_PIDF: &str = "urn:ietf:params:xml:ns:pidf";
pub const NS_DM: &str = "urn:ietf:params:xml:ns:pidf:data-model";
pub const NS_RPID: &str = "urn:ietf:params:xml:ns:pidf:rpid";
/// Pre-RFC RPID, still sent by old clients; accepted on input, never emitted.
pub const NS_RPID_LEGACY: &str = "urn:ietf:params:xml:ns:pidf:status:rpid-status";

/// Elements allowed in one body; a presence document has a few dozen.
pub const MAX_ELEMENTS: usize = 2048;
/// Nesting allowed; PIDF needs about 5 levels.
pub const MAX_DEPTH: usize = 32;
/// ◆ §4.6 / §5.3: the default of `limits.max_status_chars`: status and note text longer than
/// this is cut (on a char boundary) where it becomes a `<status>` or a `<note>`.
pub const MAX_STATUS_CHARS: usize = 1024;

/// `<basic>` of a tuple. A missing or unrecognized value is `Unknown`, never open (§5.3 step 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Basic {
    Open,
    Closed,
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Note {
    pub lang: Option<String>,
    pub text: String,
}

/// One RPID activity: the local name of the element (`away`, `on-the-phone`, `other`,
/// `unknown`...), with the free text of `<other>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activity {
    pub name: String,
    pub other_text: Option<String>,
}

/// An `rpid:activities` (or legacy `es:activities`) element. `from`/`until` are kept so the
/// validity window is checked against the `now` of the caller, not at parse time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Activities {
    pub items: Vec<Activity>,
    pub notes: Vec<Note>,
    /// Unix seconds.
    pub from: Option<i64>,
    /// Unix seconds.
    pub until: Option<i64>,
}

impl Activities {
    /// RFC 4480: outside its `from`/`until` window an activities element does not apply.
    pub fn valid_at(&self, now_unix: i64) -> bool {
        !matches!(self.from, Some(f) if f > now_unix)
            && !matches!(self.until, Some(u) if u < now_unix)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple {
    /// Any string, as received (Asterisk sends `id="1000"`).
    pub id: String,
    pub basic: Basic,
    /// `<basic>` had surrounding whitespace, odd case, or an unknown value: the caller WARNs
    /// (case 63).
    pub basic_irregular: bool,
    /// Activities in the tuple or in its `<status>` (older clients put them there).
    pub activities: Option<Activities>,
    /// `contact/@priority` × 1000 (qvalue with at most 3 decimals).
    pub priority_milli: Option<u16>,
    pub contact: Option<String>,
    pub notes: Vec<Note>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Person {
    pub activities: Option<Activities>,
    pub notes: Vec<Note>,
    /// `rpid:user-input`: `Some(true)` = idle, `Some(false)` = active.
    pub user_input_idle: Option<bool>,
    /// `user-input/@last-input`, unix seconds.
    pub last_input: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PidfDoc {
    pub entity: String,
    pub tuples: Vec<Tuple>,
    /// The first `dm:person`; later ones are ignored (◆ §5.3 step 1).
    pub person: Option<Person>,
    /// Presence-level notes.
    pub notes: Vec<Note>,
}

/// Why a body was refused. All of them mean "keep the previous state and WARN" for a NOTIFY
/// (§5.2 row 9), except `TooLarge`, which the caller may answer with 413.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PidfError {
    TooLarge,
    Doctype,
    NotWellFormed(String),
    /// Well-formed, but the root is not `{urn:ietf:params:xml:ns:pidf}presence`.
    NotPidf,
    /// More than [`MAX_ELEMENTS`] elements or nesting deeper than [`MAX_DEPTH`].
    TooManyElements,
}

impl std::fmt::Display for PidfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PidfError::TooLarge => f.write_str("PIDF body too large"),
            PidfError::Doctype => f.write_str("PIDF body has a DOCTYPE (refused)"),
            PidfError::NotWellFormed(e) => write!(f, "PIDF body not well-formed: {e}"),
            PidfError::NotPidf => f.write_str("root element is not a PIDF <presence>"),
            PidfError::TooManyElements => {
                f.write_str("PIDF body has too many or too deeply nested elements")
            }
        }
    }
}

impl std::error::Error for PidfError {}

fn nwf(e: impl std::fmt::Display) -> PidfError {
    PidfError::NotWellFormed(e.to_string())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ns {
    Pidf,
    Dm,
    Rpid,
    Legacy,
    Other,
}

fn ns_of(uri: &str) -> Ns {
    match uri {
        NS_PIDF => Ns::Pidf,
        NS_DM => Ns::Dm,
        NS_RPID => Ns::Rpid,
        NS_RPID_LEGACY => Ns::Legacy,
        _ => Ns::Other,
    }
}

/// A namespace prefix; stored inline when short (every real one is), so declarations do not
/// allocate.
enum PrefixName {
    Inline([u8; 22], u8),
    Heap(Box<str>),
}

impl PrefixName {
    fn new(p: &str) -> PrefixName {
        let mut buf = [0u8; 22];
        match buf.get_mut(..p.len()) {
            Some(dst) => {
                dst.copy_from_slice(p.as_bytes());
                PrefixName::Inline(buf, p.len() as u8)
            }
            None => PrefixName::Heap(p.into()),
        }
    }
    fn is(&self, p: &str) -> bool {
        match self {
            PrefixName::Inline(buf, len) => buf.get(..usize::from(*len)) == Some(p.as_bytes()),
            PrefixName::Heap(h) => **h == *p,
        }
    }
}

/// One `xmlns[:prefix]` declaration in scope: (depth of the declaring element, prefix or ""
/// for the default namespace, namespace).
type Binding = (usize, PrefixName, Ns);

/// What an open element is, for the parser's stack.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Presence,
    Tuple,
    Status,
    Basic,
    Contact,
    TupleNote,
    PresenceNote,
    Person,
    PersonNote,
    /// `rpid:activities` or legacy `es:activities`; `true` = legacy.
    Activities(bool),
    ActivityItem,
    ActivityOther,
    ActivityNote,
    LegacyActivity,
    UserInput,
    /// Ignored subtree (unknown extension, second person...).
    Other,
}

impl Kind {
    fn captures_text(self) -> bool {
        matches!(
            self,
            Kind::Basic
                | Kind::Contact
                | Kind::TupleNote
                | Kind::PresenceNote
                | Kind::PersonNote
                | Kind::ActivityOther
                | Kind::ActivityNote
                | Kind::LegacyActivity
                | Kind::UserInput
        )
    }
}

/// The open elements; fixed size because depth is capped anyway (no allocation per parse).
struct Stack {
    kinds: [Kind; MAX_DEPTH],
    len: usize,
}

impl Stack {
    fn len(&self) -> usize {
        self.len
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn last(&self) -> Option<&Kind> {
        self.len.checked_sub(1).and_then(|i| self.kinds.get(i))
    }
    /// Callers check the depth limit first; a push beyond it is ignored.
    fn push(&mut self, k: Kind) {
        if let Some(slot) = self.kinds.get_mut(self.len) {
            *slot = k;
            self.len += 1;
        }
    }
    fn pop(&mut self) -> Option<Kind> {
        let k = *self.last()?;
        self.len -= 1;
        Some(k)
    }
}

/// Where the activities being read belong.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Tuple,
    Person,
}

struct Parser {
    doc: PidfDoc,
    stack: Stack,
    /// (depth, lang) for elements carrying `xml:lang`, innermost last (inherited by notes).
    langs: Vec<(usize, String)>,
    bindings: Vec<Binding>,
    text: String,
    tuple: Option<Tuple>,
    person: Option<Person>,
    person_poisoned: bool,
    acts: Option<(Owner, Activities)>,
    acts_poisoned: bool,
    user_input_poisoned: bool,
    user_input_last: Option<i64>,
    elements: usize,
    root_done: bool,
    not_pidf: bool,
}

/// Parses a PIDF body of at most `max_size` octets.
///
/// Bodies made only of what SIP presence servers send (tags, text, references, an XML
/// declaration) are tokenized by [`FastReader`], which gives exactly the events quick-xml
/// gives for them but validates the UTF-8 once for the whole body rather than per event;
/// anything else (comments, CDATA, DOCTYPE, any error) is read again from the start by
/// quick-xml, so errors and unusual input take the general path.
pub fn parse(body: &[u8], max_size: usize) -> Result<PidfDoc, PidfError> {
    if body.len() > max_size {
        return Err(PidfError::TooLarge);
    }
    match parse_fast(body) {
        Some(r) => r,
        None => parse_general(body),
    }
}

/// The body read by [`FastReader`]; `None` when it met something it leaves to quick-xml.
fn parse_fast(body: &[u8]) -> Option<Result<PidfDoc, PidfError>> {
    let mut reader = FastReader::new(body)?;
    let mut p = Parser::new();
    loop {
        let ev = reader.next_event().ok()?;
        match p.feed(ev) {
            Ok(true) => return Some(p.finish()),
            Ok(false) => {}
            Err(e) => return Some(Err(e)),
        }
    }
}

/// The body read by quick-xml's reader: every input, every error.
fn parse_general(body: &[u8]) -> Result<PidfDoc, PidfError> {
    // A plain `Reader` with our own prefix bindings: `NsReader` iterates the attributes of
    // every start tag a second time and resolves every end tag, which we do not need.
    // Matching is still by namespace URI, never by prefix.
    let mut reader = Reader::from_reader(body);
    let mut p = Parser::new();
    loop {
        if p.feed(reader.read_event().map_err(nwf)?)? {
            return p.finish();
        }
    }
}

impl Parser {
    fn new() -> Parser {
        Parser {
            doc: PidfDoc {
                entity: String::new(),
                tuples: Vec::new(),
                person: None,
                notes: Vec::new(),
            },
            stack: Stack {
                kinds: [Kind::Other; MAX_DEPTH],
                len: 0,
            },
            langs: Vec::new(),
            bindings: Vec::with_capacity(4),
            text: String::with_capacity(128),
            tuple: None,
            person: None,
            person_poisoned: false,
            acts: None,
            acts_poisoned: false,
            user_input_poisoned: false,
            user_input_last: None,
            elements: 0,
            root_done: false,
            not_pidf: false,
        }
    }

    /// One event; `true` at the end of the input. Inlined: it is the body of both read loops.
    #[inline(always)]
    fn feed(&mut self, ev: Event<'_>) -> Result<bool, PidfError> {
        match ev {
            Event::Start(e) => self.start(&e)?,
            Event::Empty(e) => {
                self.start(&e)?;
                self.end();
            }
            Event::End(_) => self.end(),
            Event::Text(t) => self.text_event(&t)?,
            Event::CData(t) => {
                if self.stack.is_empty() {
                    return Err(nwf("CDATA outside the root element"));
                }
                if self.capturing() {
                    self.push_text(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                if self.stack.is_empty() {
                    return Err(nwf("reference outside the root element"));
                }
                let mut buf = [0u8; 4];
                match r.resolve_char_ref().map_err(nwf)? {
                    Some(ch) => self.push_text(ch.encode_utf8(&mut buf)),
                    None => match quick_xml::escape::resolve_predefined_entity(&r) {
                        Some(s) => self.push_text(s),
                        None => return Err(nwf(format_args!("undefined entity &{};", &*r))),
                    },
                }
            }
            Event::DocType(_) => return Err(PidfError::Doctype),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => return Ok(true),
        }
        Ok(false)
    }

    /// The document once the input has ended.
    fn finish(self) -> Result<PidfDoc, PidfError> {
        if !self.root_done || !self.stack.is_empty() {
            return Err(nwf("unexpected end of document"));
        }
        if self.not_pidf {
            return Err(PidfError::NotPidf);
        }
        let mut doc = self.doc;
        doc.person = self.person;
        Ok(doc)
    }
}

/// [`FastReader`] met something it leaves to quick-xml.
#[derive(Debug, PartialEq, Eq)]
struct Bail;

/// Open elements [`FastReader`] tracks for the end-tag check; deeper bodies go to quick-xml
/// (the parser refuses more than [`MAX_DEPTH`] anyway).
const FAST_DEPTH: usize = 2 * MAX_DEPTH;

/// A tokenizer for the plain subset of XML, over a body validated as UTF-8 once. For that
/// subset each event is exactly the one quick-xml's `Reader` (default configuration) gives
/// at the same point, by the same rules (the proptests check this against quick-xml):
/// text runs up to `<` or `&`; a reference runs from `&` to `;`; a tag ends at the first `>`
/// outside quotes; an end tag's name is trimmed at the end and must match the open element;
/// the name of a start tag ends at the first XML whitespace; a UTF-8 BOM is skipped. It
/// answers [`Bail`] for comments, CDATA, DOCTYPE, processing instructions that quick-xml
/// would refuse, and every error; declarations and processing instructions are skipped (the
/// parser ignores them).
struct FastReader<'a> {
    s: &'a str,
    pos: usize,
    /// Name spans of the open elements.
    open: [(usize, usize); FAST_DEPTH],
    depth: usize,
    done: bool,
}

impl<'a> FastReader<'a> {
    /// `None` if the body is not UTF-8 (quick-xml reports where).
    fn new(body: &'a [u8]) -> Option<FastReader<'a>> {
        let s = std::str::from_utf8(body).ok()?;
        let s = s.strip_prefix('\u{feff}').unwrap_or(s);
        Some(FastReader {
            s,
            pos: 0,
            open: [(0, 0); FAST_DEPTH],
            depth: 0,
            done: false,
        })
    }

    #[inline]
    fn next_event(&mut self) -> Result<Event<'a>, Bail> {
        loop {
            if self.done {
                return Ok(Event::Eof);
            }
            let s = self.s;
            let b = s.as_bytes();
            let i = self.pos;
            match b.get(i) {
                None => {
                    self.done = true;
                    return Ok(Event::Eof);
                }
                Some(b'<') => {
                    if let Some(ev) = self.markup()? {
                        return Ok(ev);
                    }
                }
                Some(b'&') => {
                    // quick-xml: up to the first of `;`, `&`, `<`; only `;` ends a reference.
                    let j = find3(b, i + 1, b';', b'&', b'<');
                    if b.get(j) != Some(&b';') {
                        return Err(Bail);
                    }
                    self.pos = j + 1;
                    return Ok(Event::GeneralRef(BytesRef::new(
                        s.get(i + 1..j).ok_or(Bail)?,
                    )));
                }
                Some(_) => {
                    let j = find3(b, i, b'<', b'&', b'<');
                    self.pos = j;
                    return Ok(Event::Text(BytesText::from_escaped(
                        s.get(i..j).ok_or(Bail)?,
                    )));
                }
            }
        }
    }

    /// At `<`: a start, empty or end tag, or `None` for a skipped declaration.
    fn markup(&mut self) -> Result<Option<Event<'a>>, Bail> {
        let s = self.s;
        let b = s.as_bytes();
        let i = self.pos;
        match b.get(i + 1) {
            Some(b'/') => {
                // An end tag: no quotes (quick-xml would skip `>` inside them).
                let j = find3(b, i + 2, b'>', b'"', b'\'');
                if b.get(j) != Some(&b'>') {
                    return Err(Bail);
                }
                // Trailing whitespace is trimmed, unless the name is nothing else.
                let raw = s.get(i + 2..j).ok_or(Bail)?;
                let mut n = raw.len();
                while n > 0
                    && matches!(
                        raw.as_bytes().get(n - 1),
                        Some(b' ' | b'\t' | b'\r' | b'\n')
                    )
                {
                    n -= 1;
                }
                let name = if n == 0 {
                    raw
                } else {
                    raw.get(..n).ok_or(Bail)?
                };
                let (os, oe) = *self
                    .depth
                    .checked_sub(1)
                    .and_then(|d| self.open.get(d))
                    .ok_or(Bail)?;
                if s.get(os..oe) != Some(name) {
                    return Err(Bail);
                }
                self.depth -= 1;
                self.pos = j + 1;
                Ok(Some(Event::End(BytesEnd::new(name))))
            }
            Some(b'?') => {
                // As quick-xml's `PiParser`: the first `>` right after a `?` (not the one of
                // `<?`); `<?>` is an error there.
                let mut j = i + 2;
                loop {
                    j = find3(b, j, b'>', b'>', b'>');
                    match b.get(j) {
                        None => return Err(Bail),
                        Some(_) if b.get(j - 1) == Some(&b'?') => break,
                        Some(_) => j += 1,
                    }
                }
                // `<?>` (three octets) is an error in quick-xml.
                if j - i < 3 {
                    return Err(Bail);
                }
                self.pos = j + 1;
                Ok(None)
            }
            Some(b'!') | None => Err(Bail),
            Some(_) => {
                // As quick-xml's `ElementParser`: the first `>` outside quotes.
                let mut j = i + 1;
                loop {
                    j = find3(b, j, b'>', b'"', b'\'');
                    match b.get(j) {
                        None => return Err(Bail),
                        Some(b'>') => break,
                        Some(&q) => {
                            j = find3(b, j + 1, q, q, q);
                            if j >= b.len() {
                                return Err(Bail);
                            }
                            j += 1;
                        }
                    }
                }
                self.pos = j + 1;
                let (content, empty) = match s.get(i + 1..j).ok_or(Bail)? {
                    c if c.ends_with('/') => (c.get(..c.len() - 1).ok_or(Bail)?, true),
                    c => (c, false),
                };
                let name_len = content
                    .bytes()
                    .position(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
                    .unwrap_or(content.len());
                let e = BytesStart::from_content(content, name_len);
                if empty {
                    return Ok(Some(Event::Empty(e)));
                }
                let slot = self.open.get_mut(self.depth).ok_or(Bail)?;
                *slot = (i + 1, i + 1 + name_len);
                self.depth += 1;
                Ok(Some(Event::Start(e)))
            }
        }
    }
}

/// The index of the first of `x`, `y`, `z` at or after `i`, or `b.len()`: eight octets at a
/// time (the long runs are namespace URIs and whitespace).
#[inline]
fn find3(b: &[u8], mut i: usize, x: u8, y: u8, z: u8) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let (bx, by, bz) = (LO * u64::from(x), LO * u64::from(y), LO * u64::from(z));
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let v = u64::from_le_bytes(w);
        // Zero octets of v ^ c: the lowest flagged octet is exact (borrows only run upwards).
        let (tx, ty, tz) = (v ^ bx, v ^ by, v ^ bz);
        let hit =
            (tx.wrapping_sub(LO) & !tx | ty.wrapping_sub(LO) & !ty | tz.wrapping_sub(LO) & !tz)
                & HI;
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while b.get(i).is_some_and(|&c| c != x && c != y && c != z) {
        i += 1;
    }
    i.min(b.len())
}

impl Parser {
    fn lang(&self) -> Option<String> {
        self.langs.last().map(|(_, l)| l.clone())
    }

    /// Raw text between markup: whitespace between elements is skipped without copying; only
    /// text inside an element we read is line-end normalized and kept.
    #[inline(always)]
    fn text_event(&mut self, t: &quick_xml::events::BytesText<'_>) -> Result<(), PidfError> {
        if self.stack.is_empty() {
            if t.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
                return Ok(());
            }
            return Err(nwf("text outside the root element"));
        }
        if self.capturing() {
            // Line ends are normalized only where there is a CR (else the text is as it is).
            let raw: &str = t;
            if find3(raw.as_bytes(), 0, b'\r', b'\r', b'\r') == raw.len() {
                self.push_text(raw);
            } else {
                self.push_text(&t.xml10_content());
            }
        }
        Ok(())
    }

    fn capturing(&self) -> bool {
        self.stack.last().is_some_and(|k| k.captures_text())
    }

    fn push_text(&mut self, s: &str) {
        if self.capturing() && self.text.len() < 64 * 1024 {
            self.text.push_str(s);
        }
    }

    /// The namespace of an element or its prefix, from the declarations in scope.
    fn resolve(&self, prefix: &str) -> Ns {
        if prefix == "xml" || prefix == "xmlns" {
            return Ns::Other;
        }
        self.bindings
            .iter()
            .rev()
            .find(|(_, p, _)| p.is(prefix))
            .map_or(Ns::Other, |(_, _, ns)| *ns)
    }

    fn start(&mut self, e: &BytesStart<'_>) -> Result<(), PidfError> {
        self.elements += 1;
        if self.elements > MAX_ELEMENTS || self.stack.len() >= MAX_DEPTH {
            return Err(PidfError::TooManyElements);
        }
        let parent = self.stack.last().copied();
        if parent.is_none() && self.root_done {
            return Err(nwf("more than one root element"));
        }
        // Elements inside an ignored subtree are only counted.
        if parent == Some(Kind::Other) || parent == Some(Kind::ActivityItem) {
            self.stack.push(Kind::Other);
            return Ok(());
        }
        let mut at = Attrs::default();
        at.read(e, &mut self.bindings, self.stack.len())?;
        // As `QName::decompose` (split at the first colon), on a name of a few octets.
        let qname = e.name().0;
        let (prefix, local) = match qname.bytes().position(|b| b == b':') {
            Some(i) => (
                qname.get(..i).unwrap_or_default(),
                qname.get(i + 1..).unwrap_or_default(),
            ),
            None => ("", qname),
        };
        let ns = self.resolve(prefix);
        if parent.is_none() && (ns != Ns::Pidf || local != "presence") {
            // Read on, so a broken body is reported as such rather than as "not PIDF".
            self.not_pidf = true;
            self.stack.push(Kind::Other);
            return Ok(());
        }
        let kind = match (parent, ns, local) {
            (None, _, _) => {
                self.doc.entity = at.entity.map(|c| c.into_owned()).unwrap_or_default();
                Kind::Presence
            }
            (Some(Kind::Presence), Ns::Pidf, "tuple") => {
                self.tuple = Some(Tuple {
                    id: at.id.as_deref().unwrap_or("").to_owned(),
                    basic: Basic::Unknown,
                    basic_irregular: false,
                    activities: None,
                    priority_milli: None,
                    contact: None,
                    notes: Vec::new(),
                });
                Kind::Tuple
            }
            (Some(Kind::Presence), Ns::Pidf, "note") => Kind::PresenceNote,
            (Some(Kind::Presence), Ns::Dm, "person") if self.person.is_none() => {
                self.person = Some(Person::default());
                self.person_poisoned = false;
                Kind::Person
            }
            (Some(Kind::Tuple), Ns::Pidf, "status") => Kind::Status,
            (Some(Kind::Tuple), Ns::Pidf, "contact") => {
                if let Some(t) = &mut self.tuple {
                    t.priority_milli = at.priority.as_deref().and_then(parse_qvalue);
                }
                Kind::Contact
            }
            (Some(Kind::Tuple), Ns::Pidf, "note") => Kind::TupleNote,
            (Some(Kind::Status), Ns::Pidf, "basic") => Kind::Basic,
            (
                Some(p @ (Kind::Tuple | Kind::Status | Kind::Person)),
                Ns::Rpid | Ns::Legacy,
                "activities",
            ) => {
                let acts = Activities {
                    from: at.from.as_deref().and_then(parse_datetime),
                    until: at.until.as_deref().and_then(parse_datetime),
                    ..Activities::default()
                };
                let owner = if p == Kind::Person {
                    Owner::Person
                } else {
                    Owner::Tuple
                };
                self.acts = Some((owner, acts));
                self.acts_poisoned = false;
                Kind::Activities(ns == Ns::Legacy)
            }
            (Some(Kind::Person), Ns::Dm, "note") => Kind::PersonNote,
            (Some(Kind::Person), Ns::Rpid, "user-input") => {
                self.user_input_last = at.last_input.as_deref().and_then(parse_datetime);
                self.user_input_poisoned = false;
                Kind::UserInput
            }
            (Some(Kind::Activities(false)), Ns::Rpid, "note") => Kind::ActivityNote,
            (Some(Kind::Activities(false)), Ns::Rpid, "other") => Kind::ActivityOther,
            (Some(Kind::Activities(false)), Ns::Rpid, name) => {
                self.push_activity(name.to_owned());
                Kind::ActivityItem
            }
            (Some(Kind::Activities(true)), Ns::Legacy, "activity") => Kind::LegacyActivity,
            (Some(Kind::Activities(true)), Ns::Legacy, "note") => Kind::ActivityNote,
            (Some(parent), _, _) => {
                if at.must_understand {
                    // §3.1: an element we must understand but do not, inside an extension we
                    // know: ignore that whole extension, never act on it partially (case 66).
                    match parent {
                        Kind::Activities(_) => self.acts_poisoned = true,
                        Kind::Person => self.person_poisoned = true,
                        Kind::UserInput => self.user_input_poisoned = true,
                        _ => {}
                    }
                }
                Kind::Other
            }
        };
        if kind.captures_text() {
            self.text.clear();
        }
        if kind != Kind::Other {
            if let Some(l) = at.lang {
                self.langs.push((self.stack.len(), l.into_owned()));
            }
        }
        self.stack.push(kind);
        Ok(())
    }

    /// The note just closed at `depth`; its own `xml:lang` is moved, not copied.
    fn take_note(&mut self, depth: usize) -> Option<Note> {
        let text = trim_xml(&self.text);
        if text.is_empty() {
            return None;
        }
        // Cut where it becomes a `<status>` (the configured limit); `push_text` bounds it here.
        let text = text.to_owned();
        let lang = match self.langs.last() {
            Some((d, _)) if *d == depth => self.langs.pop().map(|(_, l)| l),
            _ => self.lang(),
        };
        Some(Note { lang, text })
    }

    fn end(&mut self) {
        let Some(kind) = self.stack.pop() else { return };
        let depth = self.stack.len();
        match kind {
            Kind::Presence => self.root_done = true,
            Kind::Tuple => {
                if let Some(t) = self.tuple.take() {
                    self.doc.tuples.push(t);
                }
            }
            Kind::Basic => {
                let raw = self.text.as_str();
                let t = trim_xml(raw);
                let (basic, exact) = if t.eq_ignore_ascii_case("open") {
                    (Basic::Open, raw == "open")
                } else if t.eq_ignore_ascii_case("closed") {
                    (Basic::Closed, raw == "closed")
                } else {
                    (Basic::Unknown, false)
                };
                if let Some(tu) = &mut self.tuple {
                    tu.basic = basic;
                    tu.basic_irregular = !exact;
                }
            }
            Kind::Contact => {
                let c = trim_xml(&self.text);
                if let Some(tu) = &mut self.tuple {
                    if !c.is_empty() {
                        tu.contact = Some(c.to_owned());
                    }
                }
            }
            Kind::TupleNote => {
                if let Some(n) = self.take_note(depth) {
                    if let Some(tu) = &mut self.tuple {
                        tu.notes.push(n);
                    }
                }
            }
            Kind::PresenceNote => {
                if let Some(n) = self.take_note(depth) {
                    self.doc.notes.push(n);
                }
            }
            Kind::PersonNote => {
                if let Some(n) = self.take_note(depth) {
                    if let Some(p) = &mut self.person {
                        p.notes.push(n);
                    }
                }
            }
            Kind::ActivityNote => {
                if let Some(n) = self.take_note(depth) {
                    if let Some((_, a)) = &mut self.acts {
                        a.notes.push(n);
                    }
                }
            }
            Kind::ActivityOther => {
                let t = trim_xml(&self.text);
                if let Some((_, a)) = &mut self.acts {
                    a.items.push(Activity {
                        name: "other".to_owned(),
                        other_text: (!t.is_empty()).then(|| t.to_owned()),
                    });
                }
            }
            Kind::LegacyActivity => {
                let t = trim_xml(&self.text).to_owned();
                if !t.is_empty() {
                    self.text.clear();
                    self.push_activity(t);
                }
            }
            Kind::UserInput => {
                let t = trim_xml(&self.text);
                let idle = if t.eq_ignore_ascii_case("idle") {
                    Some(true)
                } else if t.eq_ignore_ascii_case("active") {
                    Some(false)
                } else {
                    None
                };
                if let Some(p) = &mut self.person {
                    if !self.user_input_poisoned && idle.is_some() {
                        p.user_input_idle = idle;
                        p.last_input = self.user_input_last;
                    }
                }
            }
            Kind::Activities(_) => {
                if let Some((owner, acts)) = self.acts.take() {
                    if !self.acts_poisoned {
                        let slot = match owner {
                            Owner::Tuple => self.tuple.as_mut().map(|t| &mut t.activities),
                            Owner::Person => self.person.as_mut().map(|p| &mut p.activities),
                        };
                        if let Some(slot) = slot {
                            match slot {
                                // Activities both in the tuple and in its status: merge.
                                Some(prev) => {
                                    prev.items.extend(acts.items);
                                    prev.notes.extend(acts.notes);
                                }
                                None => *slot = Some(acts),
                            }
                        }
                    }
                }
            }
            Kind::Person => {
                if self.person_poisoned {
                    // Keep "a person was seen" so later persons stay ignored, but drop content.
                    self.person = Some(Person::default());
                }
            }
            Kind::Other if depth == 0 => self.root_done = true,
            Kind::Status | Kind::ActivityItem | Kind::Other => {}
        }
        while self.langs.last().is_some_and(|(d, _)| *d >= depth) {
            self.langs.pop();
        }
        while self.bindings.last().is_some_and(|(d, _, _)| *d >= depth) {
            self.bindings.pop();
        }
    }

    fn push_activity(&mut self, name: String) {
        if let Some((_, a)) = &mut self.acts {
            if a.items.len() < 32 {
                a.items.push(Activity {
                    name,
                    other_text: None,
                });
            }
        }
    }
}

/// The attributes the parser looks at, read in one pass; values borrow from the input unless
/// they contain references. Entities in values are limited to the predefined ones and
/// character references.
#[derive(Default)]
struct Attrs<'e> {
    entity: Option<Cow<'e, str>>,
    id: Option<Cow<'e, str>>,
    priority: Option<Cow<'e, str>>,
    from: Option<Cow<'e, str>>,
    until: Option<Cow<'e, str>>,
    last_input: Option<Cow<'e, str>>,
    lang: Option<Cow<'e, str>>,
    must_understand: bool,
}

impl<'e> Attrs<'e> {
    /// Reads the attributes of `e` into `self` (empty on entry) and records the element's
    /// namespace declarations in `bindings` at `depth`.
    fn read(
        &mut self,
        e: &'e BytesStart<'_>,
        bindings: &mut Vec<Binding>,
        depth: usize,
    ) -> Result<(), PidfError> {
        let raw = e.attributes_raw();
        if raw.bytes().all(|b| b.is_ascii_whitespace()) {
            return Ok(());
        }
        // Plain attributes are recorded as they are found; if one is not plain, what was
        // recorded is undone and quick-xml reads them all.
        let mark = bindings.len();
        if each_plain_attribute(raw, |key, value| {
            self.set(bindings, depth, key, Cow::Borrowed(value))
        })
        .is_some()
        {
            return Ok(());
        }
        bindings.truncate(mark);
        *self = Attrs::default();
        // Without the duplicate check, which allocates per element (a repeated attribute is
        // not well-formed, but the last value winning is harmless here).
        for a in e.attributes().with_checks(false) {
            let a = a.map_err(nwf)?;
            let v = a.normalized_value(XmlVersion::Implicit1_0).map_err(nwf)?;
            self.set(bindings, depth, a.key.into_inner(), v);
        }
        Ok(())
    }

    /// Records one attribute (a namespace declaration goes to `bindings`).
    fn set(&mut self, bindings: &mut Vec<Binding>, depth: usize, key: &str, v: Cow<'e, str>) {
        let slot = match key {
            "entity" => &mut self.entity,
            "id" => &mut self.id,
            "priority" => &mut self.priority,
            "from" => &mut self.from,
            "until" => &mut self.until,
            "last-input" => &mut self.last_input,
            // The `xml` prefix is bound to the XML namespace by definition.
            "xml:lang" => &mut self.lang,
            "xmlns" => {
                bindings.push((depth, PrefixName::new(""), ns_of(&v)));
                return;
            }
            k => {
                // The local name as quick-xml's `QName::local_name`: after the first colon.
                let local = k.split_once(':').map_or(k, |(_, l)| l);
                if let Some(prefix) = k.strip_prefix("xmlns:") {
                    bindings.push((depth, PrefixName::new(prefix), ns_of(&v)));
                } else if local == "mustUnderstand" && matches!(trim_xml(&v), "true" | "1") {
                    self.must_understand = true;
                }
                return;
            }
        };
        *slot = Some(v);
    }
}

/// The index of the first octet at or after `i` below 0x28 (both quotes, `&`, tab, CR, LF, and
/// a little punctuation), or `b.len()`: eight octets at a time, for the long values (namespace
/// URIs) of a PIDF start tag.
#[inline]
fn next_below_0x28(b: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        // Octets below 0x28 (the lowest flagged one is exact; octets >= 0x80 never flag).
        let hit = x.wrapping_sub(LO * 0x28) & !x & HI;
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while b.get(i).is_some_and(|&c| c >= 0x28) {
        i += 1;
    }
    i
}

/// Attributes read without quick-xml's iterator: a start tag has at most this many plain ones.
const MAX_PLAIN_ATTRS: usize = 8;

/// [`each_plain_attribute`] into an array, for the tests.
#[cfg(test)]
fn plain_attributes<'e>(
    raw: &'e str,
    out: &mut [(&'e str, &'e str); MAX_PLAIN_ATTRS],
) -> Option<usize> {
    let mut n = 0;
    each_plain_attribute(raw, |k, v| {
        if let Some(slot) = out.get_mut(n) {
            *slot = (k, v);
        }
        n += 1;
    })
}

/// The attributes of a start tag, when every one is plain: `key="value"` or `key='value'` with
/// nothing but XML whitespace between them, no whitespace around `=`, and values without
/// references or line ends/tabs (which quick-xml's normalization would change). For such
/// tags, this is exactly what quick-xml's attribute iterator and `normalized_value` give,
/// without their per-attribute cost. `f` gets each (key, value) as it is found; the answer is
/// their number, or `None` for anything else (the caller then undoes what `f` did and uses
/// quick-xml, which also reports the errors).
fn each_plain_attribute<'e>(raw: &'e str, mut f: impl FnMut(&'e str, &'e str)) -> Option<usize> {
    let b = raw.as_bytes();
    let is_ws = |c: u8| matches!(c, b' ' | b'\r' | b'\n' | b'\t');
    let mut i = 0;
    let mut n = 0;
    loop {
        while b.get(i).is_some_and(|&c| is_ws(c)) {
            i += 1;
        }
        if i == b.len() {
            return Some(n);
        }
        let key_start = i;
        while b.get(i).is_some_and(|&c| c != b'=' && !is_ws(c)) {
            i += 1;
        }
        if i == key_start || b.get(i) != Some(&b'=') {
            return None;
        }
        let key = raw.get(key_start..i)?;
        let quote = *b.get(i + 1)?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        i += 2;
        let value_start = i;
        loop {
            i = next_below_0x28(b, i);
            match *b.get(i)? {
                c if c == quote => break,
                b'&' | b'\t' | b'\r' | b'\n' => return None,
                _ => i += 1,
            }
        }
        if n == MAX_PLAIN_ATTRS {
            return None;
        }
        f(key, raw.get(value_start..i)?);
        n += 1;
        i += 1;
    }
}

/// ◆ `max` characters at most (`limits.max_status_chars`); byte length bounds char count, so
/// short text is not scanned.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        s
    } else {
        crate::xml::truncate_chars(s, max)
    }
}

#[inline]
fn trim_xml(s: &str) -> &str {
    let ws = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t' | b'\r' | b'\n'));
    if !ws(s.as_bytes().first()) && !ws(s.as_bytes().last()) {
        return s;
    }
    s.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
}

/// A SIP qvalue (`0`, `0.5`, `1.000`) as thousandths; more than 3 decimals are cut.
fn parse_qvalue(s: &str) -> Option<u16> {
    let s = trim_xml(s);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.len() != 1 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = match int {
        "0" => 0u16,
        "1" => 1000,
        _ => return None,
    };
    let mut milli = 0u16;
    let mut scale = 100u16;
    for b in frac.bytes().take(3) {
        milli += u16::from(b - b'0') * scale;
        scale /= 10;
    }
    Some((whole + milli).min(1000))
}

/// `xs:dateTime` (`2026-11-26T05:44:22.5Z`, `...+01:00`, no zone = UTC) to unix seconds.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let s = trim_xml(s).as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = s.get(r)?;
        if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut v = 0i64;
        for b in d {
            v = v * 10 + i64::from(b - b'0');
        }
        Some(v)
    };
    // Year may have more than 4 digits and a leading '-'; presence documents never do.
    let year = num(0..4)?;
    if s.get(4) != Some(&b'-') || s.get(7) != Some(&b'-') || !matches!(s.get(10), Some(b'T' | b't'))
    {
        return None;
    }
    let month = num(5..7)?;
    let day = num(8..10)?;
    if s.get(13) != Some(&b':') || s.get(16) != Some(&b':') {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 24 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    if s.get(i) == Some(&b'.') {
        i += 1;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    let offset = match s.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == s.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == s.len() && s.get(i + 3) == Some(&b':') => {
            let o = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    Some(days_from_civil(year, month, day) * 86400 + h * 3600 + mi * 60 + sec - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

// ---------------------------------------------------------------------------------------------
// Generation (§4.6)

/// ◆ §4.6 tuple id: `ID-<resource>` when that is a valid, short NCName tail, else a SHA-1 prefix.
pub fn tuple_id(resource: &str, out: &mut String) {
    out.push_str("ID-");
    let plain = (1..=64).contains(&resource.len())
        && resource
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        out.push_str(resource);
    } else {
        out.push('x');
        sha1_hex16(resource, out);
    }
}

/// The first 16 hex digits of SHA-1(`s`).
pub fn sha1_hex16(s: &str, out: &mut String) {
    let digest = Sha1::digest(s.as_bytes());
    for b in digest.iter().take(8) {
        let _ = write!(out, "{b:02x}");
    }
}

/// `<priority>` → qvalue: clamp(p, 0, 100) / 100 (`0`, `0.05`, `0.1`, `1`).
fn write_qvalue(p: i8, out: &mut String) {
    let p = p.clamp(0, 100);
    match p {
        0 => out.push('0'),
        100 => out.push('1'),
        _ => {
            out.push_str("0.");
            out.push(char::from(b'0' + (p / 10) as u8));
            if p % 10 != 0 {
                out.push(char::from(b'0' + (p % 10) as u8));
            }
        }
    }
}

fn write_note(indent: &str, lang: Option<&str>, text: &str, out: &mut String) {
    out.push_str(indent);
    out.push_str("<note");
    if let Some(l) = lang {
        out.push_str(" xml:lang=\"");
        escape_attr(out, l);
        out.push('"');
    }
    out.push('>');
    // Already cut to the limit by the aggregate (`XmppAggregate::with_max_status_chars`).
    escape_text(out, text);
    out.push_str("</note>");
}

/// Writes the full-state PIDF for an XMPP presentity (§4.4, §4.6): `entity` is the `pres:` (or
/// `sip:`) URI of the presentity, `contact` the SIP URI put in each tuple's `<contact>`.
pub fn write_from_xmpp(entity: &str, contact: &str, agg: &XmppAggregate, out: &mut String) {
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let top_show = agg.top().and_then(|(_, a)| a.show);
    let activity = match top_show {
        Some(Show::Away | Show::Xa) => Some("away"),
        Some(Show::Dnd) => Some("busy"),
        Some(Show::Chat) | None => None,
    };
    if activity.is_none() {
        out.push_str("<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"");
        escape_attr(out, entity);
        out.push_str("\">\n");
    } else {
        out.push_str(
            "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"\n          \
             xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\"\n          \
             xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\"\n          entity=\"",
        );
        escape_attr(out, entity);
        out.push_str("\">\n");
    }
    if !agg.is_available() {
        out.push_str("  <tuple id=\"ID-offline\"><status><basic>closed</basic></status>");
        for s in agg.offline_statuses() {
            write_note("", s.lang.as_deref(), &s.text, out);
        }
        out.push_str("</tuple>\n</presence>");
        return;
    }
    for (res, a) in agg.resources() {
        out.push_str("  <tuple id=\"");
        tuple_id(res, out);
        out.push_str("\">\n    <status><basic>open</basic></status>\n    <contact");
        if let Some(p) = a.priority {
            out.push_str(" priority=\"");
            write_qvalue(p, out);
            out.push('"');
        }
        out.push('>');
        escape_text(out, contact);
        out.push_str("</contact>\n");
        for s in &a.statuses {
            write_note("    ", s.lang.as_deref(), &s.text, out);
            out.push('\n');
        }
        out.push_str("  </tuple>\n");
    }
    if let Some((_, top)) = agg.top() {
        for s in &top.statuses {
            write_note("  ", s.lang.as_deref(), &s.text, out);
            out.push('\n');
        }
    }
    if let Some(act) = activity {
        out.push_str("  <dm:person id=\"p-1\">\n    <rpid:activities><rpid:");
        out.push_str(act);
        out.push_str("/></rpid:activities>\n");
        if top_show == Some(Show::Xa) {
            out.push_str("    <rpid:user-input>idle</rpid:user-input>\n");
        }
        out.push_str("  </dm:person>\n");
    }
    out.push_str("</presence>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stanza::{InPresence, PresenceType};

    const ENTITY: &str = "pres:romeo*example.net@xmpp.example.com";
    const CONTACT: &str = "sip:romeo*example.net@xmpp.example.com";

    /// Feeds stanzas (from romeo) into an aggregate, as the caller does with `InPresence`.
    fn feed(agg: &mut XmppAggregate, xml: &str) -> bool {
        let p = InPresence::from_xml(xml).unwrap();
        let kind = p.kind.clone().unwrap();
        let res = p.from.resource().map(|r| r.as_str().to_owned());
        agg.apply(res.as_deref(), kind, &p.body, p.lang.as_deref())
    }

    fn doc(agg: &XmppAggregate) -> String {
        let mut s = String::new();
        write_from_xmpp(ENTITY, CONTACT, agg, &mut s);
        s
    }

    fn one(xml: &str) -> String {
        let mut agg = XmppAggregate::new();
        assert!(feed(&mut agg, xml));
        doc(&agg)
    }

    const HEAD_NS: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"\n          \
xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\"\n          \
xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\"\n          \
entity=\"pres:romeo*example.net@xmpp.example.com\">\n";
    const HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"pres:romeo*example.net@xmpp.example.com\">\n";

    #[test]
    fn spec_4_4_example_document_is_reproduced_byte_exact() {
        let out = one(
            "<presence from='romeo@example.net/orchard' to='juliet*example.com@sip.example.net' xml:lang='en'>\
             <show>away</show><status>Walking in the orchard</status><priority>5</priority></presence>",
        );
        let spec = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
          xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
          xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"
          entity="pres:romeo*example.net@xmpp.example.com">
  <tuple id="ID-orchard">
    <status><basic>open</basic></status>
    <contact priority="0.05">sip:romeo*example.net@xmpp.example.com</contact>
    <note xml:lang="en">Walking in the orchard</note>
  </tuple>
  <note xml:lang="en">Walking in the orchard</note>
  <dm:person id="p-1">
    <rpid:activities><rpid:away/></rpid:activities>
  </dm:person>
</presence>"#;
        assert_eq!(out, spec);
        // The spec's NOTIFY says Content-Length: 624 for this body.
        assert_eq!(out.len(), 624);
    }

    #[test]
    fn case_034_dnd_status_priority_10() {
        let out = one(
            "<presence from='romeo@example.net/orchard' to='juliet*example.com@sip.example.net'>\
             <show>dnd</show><status>Busy!</status><priority>10</priority></presence>",
        );
        let want = format!(
            "{HEAD_NS}  <tuple id=\"ID-orchard\">\n    <status><basic>open</basic></status>\n    \
             <contact priority=\"0.1\">{CONTACT}</contact>\n    <note>Busy!</note>\n  </tuple>\n  \
             <note>Busy!</note>\n  <dm:person id=\"p-1\">\n    \
             <rpid:activities><rpid:busy/></rpid:activities>\n  </dm:person>\n</presence>"
        );
        assert_eq!(out, want);
    }

    #[test]
    fn case_035_xa_is_away_plus_idle() {
        let out = one("<presence from='romeo@example.net/orchard' to='j@sip.example.net'><show>xa</show></presence>");
        let want = format!(
            "{HEAD_NS}  <tuple id=\"ID-orchard\">\n    <status><basic>open</basic></status>\n    \
             <contact>{CONTACT}</contact>\n  </tuple>\n  <dm:person id=\"p-1\">\n    \
             <rpid:activities><rpid:away/></rpid:activities>\n    \
             <rpid:user-input>idle</rpid:user-input>\n  </dm:person>\n</presence>"
        );
        assert_eq!(out, want);
    }

    fn plain_open(resource_id: &str, contact_attr: &str) -> String {
        format!(
            "{HEAD}  <tuple id=\"{resource_id}\">\n    <status><basic>open</basic></status>\n    \
             <contact{contact_attr}>{CONTACT}</contact>\n  </tuple>\n</presence>"
        )
    }

    #[test]
    fn case_036_chat_has_no_activities_element() {
        let out = one("<presence from='romeo@example.net/orchard' to='j@sip.example.net'><show>chat</show></presence>");
        assert_eq!(out, plain_open("ID-orchard", ""));
    }

    #[test]
    fn case_037_invalid_show_is_treated_as_absent() {
        let out = one("<presence from='romeo@example.net/orchard' to='j@sip.example.net'><show>busy</show></presence>");
        assert_eq!(out, plain_open("ID-orchard", ""));
    }

    #[test]
    fn case_038_priority_forms() {
        let p = |prio: &str| {
            one(&format!(
                "<presence from='romeo@example.net/orchard' to='j@sip.example.net'><priority>{prio}</priority></presence>"
            ))
        };
        assert_eq!(p("abc"), plain_open("ID-orchard", ""));
        assert_eq!(p("300"), plain_open("ID-orchard", " priority=\"1\""));
        assert_eq!(p("-5"), plain_open("ID-orchard", " priority=\"0\""));
        assert_eq!(p("0"), plain_open("ID-orchard", " priority=\"0\""));
        assert_eq!(p("5"), plain_open("ID-orchard", " priority=\"0.05\""));
        assert_eq!(p("10"), plain_open("ID-orchard", " priority=\"0.1\""));
        assert_eq!(p("55"), plain_open("ID-orchard", " priority=\"0.55\""));
        assert_eq!(p("100"), plain_open("ID-orchard", " priority=\"1\""));
    }

    #[test]
    fn case_039_status_truncated_to_1024_chars_on_char_boundary() {
        let long: String = "é".repeat(100_000);
        let out = one(&format!(
            "<presence from='romeo@example.net/orchard' to='j@sip.example.net'><status>{long}</status></presence>"
        ));
        let note = format!("<note>{}</note>", "é".repeat(1024));
        let want = format!(
            "{HEAD}  <tuple id=\"ID-orchard\">\n    <status><basic>open</basic></status>\n    \
             <contact>{CONTACT}</contact>\n    {note}\n  </tuple>\n  {note}\n</presence>"
        );
        assert_eq!(out, want);
    }

    #[test]
    fn case_040_status_is_escaped() {
        let out = one(
            "<presence from='romeo@example.net/orchard' to='j@sip.example.net'>\
             <status>&lt;b&gt;\"Tom &amp; Jerry\"&lt;/b&gt;</status></presence>",
        );
        let note = "<note>&lt;b&gt;\"Tom &amp; Jerry\"&lt;/b&gt;</note>";
        let want = format!(
            "{HEAD}  <tuple id=\"ID-orchard\">\n    <status><basic>open</basic></status>\n    \
             <contact>{CONTACT}</contact>\n    {note}\n  </tuple>\n  {note}\n</presence>"
        );
        assert_eq!(out, want);
        // And it parses back to the same text.
        let d = parse(out.as_bytes(), 65536).unwrap();
        assert_eq!(d.notes[0].text, "<b>\"Tom & Jerry\"</b>");
    }

    #[test]
    fn case_041_tuple_id_rule() {
        // Checked: sha1("phone 2") = 47e56c9eababcf484b8f9d81dfed733ec02bf832, so the case is right.
        let out = one("<presence from='romeo@example.net/phone 2' to='j@sip.example.net'/>");
        assert_eq!(out, plain_open("ID-x47e56c9eababcf48", ""));
        let out = one("<presence from='romeo@example.net/123' to='j@sip.example.net'/>");
        assert_eq!(out, plain_open("ID-123", ""));
        let mut s = String::new();
        tuple_id(&"a".repeat(65), &mut s);
        assert_eq!(s.len(), "ID-x".len() + 16);
    }

    fn two_resources() -> XmppAggregate {
        let mut agg = XmppAggregate::new();
        feed(
            &mut agg,
            "<presence from='romeo@example.net/orchard' to='j@sip.example.net'><show>away</show><priority>5</priority></presence>",
        );
        feed(
            &mut agg,
            "<presence from='romeo@example.net/balcony' to='j@sip.example.net'><show>dnd</show><priority>10</priority></presence>",
        );
        agg
    }

    const ORCHARD_TUPLE: &str =
        "  <tuple id=\"ID-orchard\">\n    <status><basic>open</basic></status>\n    \
        <contact priority=\"0.05\">sip:romeo*example.net@xmpp.example.com</contact>\n  </tuple>\n";

    #[test]
    fn case_042_two_resources_sorted_top_gives_activity() {
        let out = doc(&two_resources());
        let want = format!(
            "{HEAD_NS}  <tuple id=\"ID-balcony\">\n    <status><basic>open</basic></status>\n    \
             <contact priority=\"0.1\">{CONTACT}</contact>\n  </tuple>\n{ORCHARD_TUPLE}  \
             <dm:person id=\"p-1\">\n    <rpid:activities><rpid:busy/></rpid:activities>\n  \
             </dm:person>\n</presence>"
        );
        assert_eq!(out, want);
    }

    #[test]
    fn case_043_one_resource_leaves() {
        let mut agg = two_resources();
        assert!(feed(
            &mut agg,
            "<presence from='romeo@example.net/balcony' to='j@sip.example.net' type='unavailable'/>"
        ));
        let want = format!(
            "{HEAD_NS}{ORCHARD_TUPLE}  <dm:person id=\"p-1\">\n    \
             <rpid:activities><rpid:away/></rpid:activities>\n  </dm:person>\n</presence>"
        );
        assert_eq!(doc(&agg), want);
    }

    #[test]
    fn case_044_last_resource_leaves_closed_document_with_status() {
        let mut agg = two_resources();
        feed(&mut agg, "<presence from='romeo@example.net/balcony' to='j@sip.example.net' type='unavailable'/>");
        assert!(feed(
            &mut agg,
            "<presence from='romeo@example.net/orchard' to='j@sip.example.net' type='unavailable'>\
             <status>Gone to Mantua</status></presence>"
        ));
        // Exactly the closed document of §4.6.
        let spec = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:romeo*example.net@xmpp.example.com">
  <tuple id="ID-offline"><status><basic>closed</basic></status><note>Gone to Mantua</note></tuple>
</presence>"#;
        assert_eq!(doc(&agg), spec);
        // A repeated unavailable changes nothing.
        assert!(!feed(
            &mut agg,
            "<presence from='romeo@example.net/orchard' to='j@sip.example.net' type='unavailable'>\
             <status>Gone to Mantua</status></presence>"
        ));
    }

    #[test]
    fn closed_document_for_empty_aggregate() {
        let agg = XmppAggregate::new();
        assert_eq!(
            doc(&agg),
            format!("{HEAD}  <tuple id=\"ID-offline\"><status><basic>closed</basic></status></tuple>\n</presence>")
        );
    }

    /// Case 45 (rate limiting) belongs to the notifier; here: every change is reported, an
    /// identical presence is not, and the document always reflects the latest state.
    #[test]
    fn case_045_changes_reported_and_duplicates_not() {
        let mut agg = XmppAggregate::new();
        let a = "<presence from='romeo@example.net/orchard' to='j@sip.example.net'><show>away</show></presence>";
        let b = "<presence from='romeo@example.net/orchard' to='j@sip.example.net'><show>dnd</show></presence>";
        let c = "<presence from='romeo@example.net/orchard' to='j@sip.example.net'/>";
        assert!(feed(&mut agg, a));
        assert!(!feed(&mut agg, a));
        assert!(feed(&mut agg, b));
        assert!(feed(&mut agg, c));
        assert_eq!(doc(&agg), plain_open("ID-orchard", ""));
        // Non-presence types change nothing.
        assert!(!agg.apply(
            Some("orchard"),
            PresenceType::Probe,
            &Default::default(),
            None
        ));
    }

    #[test]
    fn multi_language_statuses_become_notes() {
        let out = one(
            "<presence from='romeo@example.net/orchard' to='j@sip.example.net' xml:lang='en'>\
             <status>Out</status><status xml:lang='it'>Fuori</status></presence>",
        );
        let notes = "<note xml:lang=\"en\">Out</note>";
        let notes_it = "<note xml:lang=\"it\">Fuori</note>";
        let want = format!(
            "{HEAD}  <tuple id=\"ID-orchard\">\n    <status><basic>open</basic></status>\n    \
             <contact>{CONTACT}</contact>\n    {notes}\n    {notes_it}\n  </tuple>\n  {notes}\n  {notes_it}\n</presence>"
        );
        assert_eq!(out, want);
    }

    #[test]
    fn top_resource_tie_goes_to_most_recent() {
        let mut agg = XmppAggregate::new();
        feed(&mut agg, "<presence from='romeo@example.net/b' to='j@sip.example.net'><show>dnd</show></presence>");
        feed(&mut agg, "<presence from='romeo@example.net/a' to='j@sip.example.net'><show>away</show></presence>");
        assert_eq!(agg.top().map(|(r, _)| r), Some("a"));
        let names: Vec<&str> = agg.resources().map(|(r, _)| r).collect();
        assert_eq!(names, ["a", "b"]);
        feed(&mut agg, "<presence from='romeo@example.net/b' to='j@sip.example.net'><show>xa</show></presence>");
        assert_eq!(agg.top().map(|(r, _)| r), Some("b"));
        // A bare-JID unavailable (Prosody sends one to a contact it just approved) does not end
        // the live resources; their own unavailables do.
        assert!(!feed(
            &mut agg,
            "<presence from='romeo@example.net' to='j@sip.example.net' type='unavailable'/>"
        ));
        assert!(agg.is_available());
        feed(
            &mut agg,
            "<presence from='romeo@example.net/a' to='j@sip.example.net' type='unavailable'/>",
        );
        assert!(feed(
            &mut agg,
            "<presence from='romeo@example.net/b' to='j@sip.example.net' type='unavailable'/>"
        ));
        assert!(!agg.is_available());
    }

    // ---- parsing ----

    #[test]
    fn parses_spec_4_2_body() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
          xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
          xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"
          entity="pres:juliet@example.com">
  <tuple id="t-desk">
    <status><basic>open</basic></status>
    <contact priority="0.8">sip:juliet@ua7.example.com</contact>
    <note xml:lang="en">On the balcony</note>
  </tuple>
  <dm:person id="p1">
    <rpid:activities><rpid:on-the-phone/></rpid:activities>
  </dm:person>
</presence>"#;
        assert_eq!(body.len(), 538, "Content-Length of the spec's NOTIFY");
        let d = parse(body.as_bytes(), 65536).unwrap();
        assert_eq!(
            d,
            PidfDoc {
                entity: "pres:juliet@example.com".into(),
                tuples: vec![Tuple {
                    id: "t-desk".into(),
                    basic: Basic::Open,
                    basic_irregular: false,
                    activities: None,
                    priority_milli: Some(800),
                    contact: Some("sip:juliet@ua7.example.com".into()),
                    notes: vec![Note {
                        lang: Some("en".into()),
                        text: "On the balcony".into()
                    }],
                }],
                person: Some(Person {
                    activities: Some(Activities {
                        items: vec![Activity {
                            name: "on-the-phone".into(),
                            other_text: None
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                notes: vec![],
            }
        );
    }

    #[test]
    fn prefixes_do_not_matter_only_namespaces() {
        let body = r#"<p:presence xmlns:p="urn:ietf:params:xml:ns:pidf" xmlns:zz="urn:ietf:params:xml:ns:pidf:data-model" xmlns:r="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:a@b">
<p:tuple id="1000"><p:status><p:basic>closed</p:basic></p:status></p:tuple>
<zz:person><r:activities><r:busy/></r:activities><zz:note>x</zz:note></zz:person>
<tuple id="wrong-ns"/></p:presence>"#;
        let d = parse(body.as_bytes(), 65536).unwrap();
        assert_eq!(d.tuples.len(), 1);
        assert_eq!(d.tuples[0].id, "1000");
        assert_eq!(d.tuples[0].basic, Basic::Closed);
        let p = d.person.unwrap();
        assert_eq!(p.activities.unwrap().items[0].name, "busy");
        assert_eq!(
            p.notes,
            vec![Note {
                lang: None,
                text: "x".into()
            }]
        );
    }

    #[test]
    fn namespace_declarations_are_scoped() {
        // `a` is rebound inside the tuple; the default namespace is undeclared on one note;
        // a prefix used outside its declaring element is unknown (never matched).
        let body = br#"<a:presence xmlns:a="urn:ietf:params:xml:ns:pidf" entity="e">
<a:tuple id="t" xmlns:a="urn:other"><a:status><a:basic>open</a:basic></a:status></a:tuple>
<a:tuple id="u"><a:status><b:basic xmlns:b="urn:ietf:params:xml:ns:pidf">closed</b:basic></a:status></a:tuple>
<note xmlns="urn:ietf:params:xml:ns:pidf">kept</note><note xmlns="">dropped</note>
<a:note><n xmlns="urn:ietf:params:xml:ns:pidf"/>x</a:note></a:presence>"#;
        let d = parse(body, 65536).unwrap();
        assert_eq!(d.tuples.len(), 1);
        assert_eq!(
            (d.tuples[0].id.as_str(), d.tuples[0].basic),
            ("u", Basic::Closed)
        );
        assert_eq!(
            d.notes,
            vec![
                Note {
                    lang: None,
                    text: "kept".into()
                },
                Note {
                    lang: None,
                    text: "x".into()
                }
            ]
        );
        let d = parse(
            br#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="e"><tuple id="t"><status><b:basic>open</b:basic></status></tuple></presence>"#,
            65536,
        )
        .unwrap();
        assert_eq!(d.tuples[0].basic, Basic::Unknown);
    }

    #[test]
    fn case_063_basic_trimmed_case_insensitive_and_flagged() {
        let d = parse(
            br#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"><tuple id="t"><status><basic> Open </basic></status></tuple></presence>"#,
            65536,
        )
        .unwrap();
        assert_eq!(
            (d.tuples[0].basic, d.tuples[0].basic_irregular),
            (Basic::Open, true)
        );
        let d = parse(
            br#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"><tuple id="t"><status><basic>maybe</basic></status></tuple><tuple id="u"><status/></tuple></presence>"#,
            65536,
        )
        .unwrap();
        assert_eq!(
            (d.tuples[0].basic, d.tuples[0].basic_irregular),
            (Basic::Unknown, true)
        );
        assert_eq!(
            (d.tuples[1].basic, d.tuples[1].basic_irregular),
            (Basic::Unknown, false)
        );
    }

    #[test]
    fn case_064_legacy_rpid_status_activities_in_tuple_status() {
        let d = parse(
            br#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:es="urn:ietf:params:xml:ns:pidf:status:rpid-status" entity="sip:a@b"><tuple id="t"><status><basic>open</basic><es:activities><es:activity> away </es:activity></es:activities></status></tuple></presence>"#,
            65536,
        )
        .unwrap();
        assert_eq!(
            d.tuples[0].activities,
            Some(Activities {
                items: vec![Activity {
                    name: "away".into(),
                    other_text: None
                }],
                ..Default::default()
            })
        );
    }

    #[test]
    fn activity_window_other_text_notes_and_user_input_are_read() {
        let d = parse(
            br#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:a@b" xml:lang="fr">
<dm:person id="p"><rpid:activities from="2026-11-26T05:00:00Z" until="2026-11-26T07:00:00+01:00"><rpid:note xml:lang="en">n</rpid:note><rpid:other>At the &lt;gym&gt;</rpid:other></rpid:activities>
<rpid:user-input last-input="1970-01-02T00:00:00.25Z">idle</rpid:user-input></dm:person><note>Salut</note></presence>"#,
            65536,
        )
        .unwrap();
        let p = d.person.unwrap();
        assert_eq!(
            p.activities,
            Some(Activities {
                items: vec![Activity {
                    name: "other".into(),
                    other_text: Some("At the <gym>".into())
                }],
                notes: vec![Note {
                    lang: Some("en".into()),
                    text: "n".into()
                }],
                from: Some(1795669200),
                until: Some(1795672800),
            })
        );
        assert_eq!((p.user_input_idle, p.last_input), (Some(true), Some(86400)));
        // Presence-level note inherits the root's xml:lang.
        assert_eq!(
            d.notes,
            vec![Note {
                lang: Some("fr".into()),
                text: "Salut".into()
            }]
        );
    }

    #[test]
    fn case_066_must_understand_in_activities_drops_the_activities() {
        for v in ["true", "1"] {
            let body = format!(
                r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" xmlns:x="urn:example:x" entity="sip:a@b"><dm:person><rpid:activities><x:foo mustUnderstand="{v}"/><rpid:away/></rpid:activities></dm:person></presence>"#
            );
            let d = parse(body.as_bytes(), 65536).unwrap();
            assert_eq!(d.person, Some(Person::default()));
        }
        // Without the flag the unknown element is just skipped.
        let d = parse(
            br#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" xmlns:x="urn:example:x" entity="sip:a@b"><dm:person><rpid:activities><x:foo mustUnderstand="false"/><rpid:away/></rpid:activities></dm:person></presence>"#,
            65536,
        )
        .unwrap();
        assert_eq!(d.person.unwrap().activities.unwrap().items[0].name, "away");
    }

    #[test]
    fn text_is_joined_around_entity_and_char_references() {
        let d = parse(
            "<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='a'><note> Tom &amp; Jerry &#x1F38C;&#65; <![CDATA[<x>]]></note></presence>".as_bytes(),
            65536,
        )
        .unwrap();
        assert_eq!(d.notes[0].text, "Tom & Jerry 🎌A <x>");
    }

    #[test]
    fn case_067_unicode_note_kept_byte_exact() {
        let d = parse(
            r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="a"><tuple id="t"><status><basic>open</basic></status><note xml:lang="ja">会議中 🎌</note></tuple></presence>"#.as_bytes(),
            65536,
        )
        .unwrap();
        assert_eq!(
            d.tuples[0].notes,
            vec![Note {
                lang: Some("ja".into()),
                text: "会議中 🎌".into()
            }]
        );
    }

    #[test]
    fn case_068_not_well_formed_is_an_error() {
        for body in [
            &b"<presence><tuple>"[..],
            b"<presence xmlns='urn:ietf:params:xml:ns:pidf'><tuple id='a'></presence>",
            b"<presence xmlns='urn:ietf:params:xml:ns:pidf'/><presence xmlns='urn:ietf:params:xml:ns:pidf'/>",
            b"<presence xmlns='urn:ietf:params:xml:ns:pidf'><note>&foo;</note></presence>",
            b"<presence xmlns='urn:ietf:params:xml:ns:pidf' a='&foo;'/>",
            b"",
            b"garbage",
            b"<presence xmlns='urn:ietf:params:xml:ns:pidf'>\xff</presence>",
        ] {
            assert!(
                matches!(parse(body, 65536), Err(PidfError::NotWellFormed(_))),
                "{:?} -> {:?}",
                String::from_utf8_lossy(body),
                parse(body, 65536)
            );
        }
        assert_eq!(
            parse(b"<presence><tuple/></presence>", 65536),
            Err(PidfError::NotPidf)
        );
        assert_eq!(
            parse(b"<x:presence xmlns:x='urn:other'/>", 65536),
            Err(PidfError::NotPidf)
        );
    }

    /// A start tag whose later attribute has a reference: what the plain reader recorded for
    /// the earlier ones is undone and quick-xml reads them all (no duplicate declaration).
    #[test]
    fn attributes_after_a_reference_are_read_by_quick_xml() {
        let body = "<presence xmlns='urn:ietf:params:xml:ns:pidf' xmlns:x='urn:x' \
                    entity='pres:a&amp;b'><tuple id='t&#49;'><status><basic>open</basic>\
                    </status></tuple></presence>";
        let d = parse(body.as_bytes(), 65536).unwrap();
        assert_eq!(d.entity, "pres:a&b");
        assert_eq!(d.tuples[0].id, "t1");
        assert_eq!(d.tuples[0].basic, Basic::Open);
        let mut bindings = Vec::new();
        let e = BytesStart::from_content("p xmlns='urn:ietf:params:xml:ns:pidf' id='a&amp;'", 1);
        let mut at = Attrs::default();
        at.read(&e, &mut bindings, 0).unwrap();
        assert_eq!(bindings.len(), 1);
        assert_eq!(at.id.as_deref(), Some("a&"));
    }

    #[test]
    fn case_069_doctype_refused() {
        let body = br#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="x"><note>&b;</note></presence>"#;
        assert_eq!(parse(body, 65536), Err(PidfError::Doctype));
    }

    #[test]
    fn limits() {
        let body = br#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="x"/>"#;
        assert_eq!(parse(body, 10), Err(PidfError::TooLarge));
        assert_eq!(
            parse(body, body.len()).map(|d| d.entity),
            Ok("x".to_owned())
        );
        let bom = [&b"\xEF\xBB\xBF"[..], body].concat();
        assert_eq!(parse(&bom, 1000).map(|d| d.entity), Ok("x".to_owned()));
        let many = format!(
            "<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='x'>{}</presence>",
            "<a/>".repeat(MAX_ELEMENTS)
        );
        assert_eq!(
            parse(many.as_bytes(), 1 << 20),
            Err(PidfError::TooManyElements)
        );
        let deep = format!(
            "<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='x'>{}{}</presence>",
            "<a>".repeat(MAX_DEPTH),
            "</a>".repeat(MAX_DEPTH)
        );
        assert_eq!(
            parse(deep.as_bytes(), 1 << 20),
            Err(PidfError::TooManyElements)
        );
    }

    #[test]
    fn qvalues_and_datetimes() {
        assert_eq!(parse_qvalue("0.8"), Some(800));
        assert_eq!(parse_qvalue(" 1.000 "), Some(1000));
        assert_eq!(parse_qvalue("0.0555"), Some(55));
        assert_eq!(parse_qvalue("1.5"), Some(1000));
        assert_eq!(parse_qvalue("2"), None);
        assert_eq!(parse_qvalue(".5"), None);
        assert_eq!(parse_qvalue("0.x"), None);
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_datetime("2000-03-01T00:00:00"), Some(951868800));
        assert_eq!(
            parse_datetime("2026-11-26T06:44:22+01:00"),
            Some(1795671862)
        );
        assert_eq!(
            parse_datetime("2026-11-26T05:44:22.123-00:30"),
            Some(1795671862 + 1800)
        );
        assert_eq!(parse_datetime("2026-11-26 05:44:22Z"), None);
        assert_eq!(parse_datetime("2026-13-26T05:44:22Z"), None);
        assert_eq!(parse_datetime("2026-11-26T05:44:22Zjunk"), None);
        assert_eq!(parse_datetime("é"), None);
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parse_never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse(&body, 65536);
            }

            #[test]
            fn parse_never_panics_on_strings_in_a_skeleton(a in ".{0,64}", b in ".{0,64}", c in "[<>&;#a-z0-9 \"'/=:]{0,64}") {
                let body = format!(
                    "<presence xmlns='urn:ietf:params:xml:ns:pidf' xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model' \
                     xmlns:rpid='urn:ietf:params:xml:ns:pidf:rpid' entity='{a}'><tuple id='{b}'><status><basic>{c}</basic>\
                     </status><contact priority='{c}'>{a}</contact><note>{b}</note></tuple><dm:person>\
                     <rpid:activities from='{a}' until='{c}'><rpid:{c}/>{b}</rpid:activities>\
                     <rpid:user-input last-input='{b}'>{c}</rpid:user-input></dm:person></presence>"
                );
                if let Ok(d) = parse(body.as_bytes(), 65536) {
                    let _ = crate::presence::view_pidf(&d, 0);
                }
            }

            /// Whenever the plain-attribute reader answers, quick-xml's iterator and
            /// normalization give the same keys and values.
            #[test]
            fn plain_attributes_are_quick_xmls(raw in "[ab:x=\"' \t\n\r&<;%!#)(\u{e9}\u{80}]{0,60}") {
                check_plain(&raw)?;
            }

            /// The same on attribute lists that are mostly well-formed.
            #[test]
            fn plain_attributes_are_quick_xmls_on_lists(
                attrs in proptest::collection::vec(
                    ("[a-z:]{0,6}", "[ \t\n]{0,2}", "[a-z%!#)( :/.\u{e9}&\t<'\"]{0,24}", any::<bool>()),
                    0..5,
                ),
                trailing in "[ \t\n]{0,2}",
            ) {
                let mut raw = String::new();
                for (key, ws, value, double) in &attrs {
                    let q = if *double { '"' } else { '\'' };
                    raw.push_str(ws);
                    raw.push(' ');
                    raw.push_str(key);
                    raw.push('=');
                    raw.push(q);
                    raw.push_str(value);
                    raw.push(q);
                }
                raw.push_str(&trailing);
                check_plain(&raw)?;
            }
            /// The fast tokenizer gives quick-xml's events (or leaves the body to it), on
            /// strings of markup characters.
            #[test]
            fn fast_reader_is_quick_xml_on_markup_soup(
                body in "[<>/?!&;#a-z:= \"'\t\n\r\u{e9}\u{feff}x-]{0,80}"
            ) {
                check_fast(body.as_bytes())?;
            }

            /// The same on arbitrary octets (invalid UTF-8 goes to quick-xml).
            #[test]
            fn fast_reader_is_quick_xml_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..96)) {
                check_fast(&body)?;
            }

            /// The same on mostly well-formed element trees, with odd names, attribute
            /// quoting, references and whitespace in end tags.
            #[test]
            fn fast_reader_is_quick_xml_on_trees(
                decl in any::<bool>(),
                parts in proptest::collection::vec(
                    (0u8..6, "[a-z:]{0,3}", "[ \t\n]{0,2}", "[a-z&#;<>'\"/ =\u{e9}]{0,12}"),
                    0..24,
                ),
            ) {
                let mut body = String::new();
                if decl {
                    body.push_str("<?xml version='1.0'?>\n");
                }
                let mut open: Vec<String> = Vec::new();
                for (kind, name, ws, text) in &parts {
                    match kind {
                        0 => {
                            body.push_str(&format!("<{name}{ws} a='{text}'>"));
                            open.push(name.clone());
                        }
                        1 => body.push_str(&format!("<{name} b=\"{text}\"{ws}/>")),
                        2 => {
                            let n = open.pop().unwrap_or_else(|| name.clone());
                            body.push_str(&format!("</{n}{ws}>"));
                        }
                        3 => body.push_str(text),
                        4 => body.push_str(&format!("&{name};")),
                        _ => body.push_str(&format!("<!--{text}-->")),
                    }
                }
                while let Some(n) = open.pop() {
                    body.push_str(&format!("</{n}>"));
                }
                check_fast(body.as_bytes())?;
            }

            /// Whenever the fast path answers, the whole parse is the general path's.
            #[test]
            fn fast_parse_is_general_parse_in_a_skeleton(
                a in "[a-z &;#0-9\u{e9}]{0,24}",
                b in "[<>&;#a-z0-9 \"'/=:\t\r\n]{0,24}",
                c in "[a-z:-]{0,12}",
            ) {
                let body = format!(
                    "\u{feff}<?xml version='1.0'?><presence xmlns='urn:ietf:params:xml:ns:pidf' xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model' \
                     xmlns:rpid='urn:ietf:params:xml:ns:pidf:rpid' entity='{a}'><tuple id='{b}'><status><basic>{a}</basic>\
                     </status><contact priority='{c}'>{a}</contact><note xml:lang='{c}'>{b}</note></tuple><dm:person>\
                     <rpid:activities from='{a}' until='{c}'><rpid:{c}/>{b}<rpid:other>{a}</rpid:other></rpid:activities>\
                     <rpid:user-input last-input='{b}'>{a}</rpid:user-input></dm:person><{c}>{b}</{c} ></presence>{b}"
                );
                if let Some(fast) = parse_fast(body.as_bytes()) {
                    prop_assert_eq!(fast, parse_general(body.as_bytes()));
                }
            }
        }

        /// quick-xml's events up to its first error (`true` if one ended them), without
        /// declarations and processing instructions (which the fast reader skips: the parser
        /// ignores them).
        fn quick_events(body: &[u8]) -> (Vec<Event<'static>>, bool) {
            let mut r = Reader::from_reader(body);
            let mut out = Vec::new();
            for _ in 0..4096 {
                match r.read_event() {
                    Ok(Event::Eof) => {
                        out.push(Event::Eof);
                        return (out, false);
                    }
                    Ok(Event::Decl(_) | Event::PI(_)) => {}
                    Ok(e) => out.push(e.into_owned()),
                    Err(_) => return (out, true),
                }
            }
            (out, true)
        }

        /// Every event the fast reader gives is quick-xml's; if it reaches the end, so does
        /// quick-xml, without an error and with the same events.
        fn check_fast(body: &[u8]) -> Result<(), TestCaseError> {
            let (theirs, their_error) = quick_events(body);
            let Some(mut fast) = FastReader::new(body) else {
                return Ok(());
            };
            let mut ours = Vec::new();
            let mut bailed = false;
            for _ in 0..4096 {
                match fast.next_event() {
                    Ok(Event::Eof) => {
                        ours.push(Event::Eof);
                        break;
                    }
                    Ok(e) => ours.push(e.into_owned()),
                    Err(Bail) => {
                        bailed = true;
                        break;
                    }
                }
            }
            if bailed {
                prop_assert!(ours.len() <= theirs.len(), "{:?} / {:?}", ours, theirs);
                prop_assert_eq!(&ours[..], &theirs[..ours.len()]);
            } else {
                prop_assert!(
                    !their_error,
                    "quick-xml failed where the fast reader did not: {:?}",
                    ours
                );
                prop_assert_eq!(ours, theirs);
            }
            Ok(())
        }

        #[test]
        fn fast_reader_examples() {
            let body = "\u{feff}<?xml version='1.0'?>\n<a x='>' y=\"'\">t&amp;u<b/></a >";
            let mut r = FastReader::new(body.as_bytes()).unwrap();
            let mut ev = Vec::new();
            loop {
                match r.next_event().unwrap() {
                    Event::Eof => break,
                    e => ev.push(e),
                }
            }
            assert_eq!(
                ev,
                vec![
                    Event::Text(BytesText::from_escaped("\n")),
                    Event::Start(BytesStart::from_content("a x='>' y=\"'\"", 1)),
                    Event::Text(BytesText::from_escaped("t")),
                    Event::GeneralRef(BytesRef::new("amp")),
                    Event::Text(BytesText::from_escaped("u")),
                    Event::Empty(BytesStart::from_content("b", 1)),
                    Event::End(BytesEnd::new("a")),
                ]
            );
            for other in [
                "<!-- c --><a/>",
                "<a></b>",
                "</a>",
                "<a x='1",
                "&amp",
                "<?>",
                "<",
                "<a><![CDATA[x]]></a>",
                // An end tag of whitespace only keeps it (quick-xml trims nothing then).
                "< ></ >",
            ] {
                let mut r = FastReader::new(other.as_bytes()).unwrap();
                let mut bailed = false;
                for _ in 0..8 {
                    match r.next_event() {
                        Err(Bail) => bailed = true,
                        Ok(Event::Eof) => break,
                        Ok(_) => continue,
                    }
                    break;
                }
                assert!(bailed, "{other}");
            }
            assert!(FastReader::new(b"<a>\xff</a>").is_none());
        }

        /// The bodies servers send take the fast path (else the speed-up is silently lost).
        #[test]
        fn typical_bodies_take_the_fast_path() {
            let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
  xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="pres:juliet@example.com">
  <tuple id="t-desk"><status><basic>open</basic></status>
    <contact priority="0.8">sip:juliet@ua7.example.com</contact>
    <note xml:lang="en">On the balcony &amp; away</note></tuple>
  <dm:person id="p1"><rpid:activities><rpid:on-the-phone/></rpid:activities></dm:person>
</presence>"#;
            let fast = parse_fast(body).expect("fast path");
            assert_eq!(fast, parse_general(body));
            assert_eq!(fast.map(|d| d.tuples.len()), Ok(1));
        }

        fn check_plain(raw: &str) -> Result<(), TestCaseError> {
            let mut plain = [("", ""); MAX_PLAIN_ATTRS];
            if let Some(n) = plain_attributes(raw, &mut plain) {
                let content = format!("e{raw}");
                let e = BytesStart::from_content(content.as_str(), 1);
                let theirs: Result<Vec<(String, String)>, String> = e
                    .attributes()
                    .with_checks(false)
                    .map(|a| {
                        let a = a.map_err(|e| e.to_string())?;
                        let v = a
                            .normalized_value(XmlVersion::Implicit1_0)
                            .map_err(|e| e.to_string())?;
                        Ok((a.key.into_inner().to_owned(), v.into_owned()))
                    })
                    .collect();
                let ours: Vec<(String, String)> = plain
                    .iter()
                    .take(n)
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
                prop_assert_eq!(theirs, Ok(ours));
            }
            Ok(())
        }

        #[test]
        fn octets_below_0x28_are_found() {
            let b = b"abcdefghijklmnop'qrs";
            assert_eq!(next_below_0x28(b, 0), 16);
            assert_eq!(next_below_0x28(b, 17), b.len());
            assert_eq!(next_below_0x28(b"\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\"", 0), 8);
            assert_eq!(next_below_0x28(b"a&", 0), 1);
            assert_eq!(next_below_0x28(b"(((((((((\t", 2), 9);
        }

        #[test]
        fn plain_attributes_examples() {
            let mut plain = [("", ""); MAX_PLAIN_ATTRS];
            assert_eq!(
                plain_attributes(" id=\"t1\"\n\txml:lang='en' ", &mut plain),
                Some(2)
            );
            assert_eq!(plain[..2], [("id", "t1"), ("xml:lang", "en")]);
            for other in [
                " a = \"x\"",
                " a=\"x&amp;\"",
                " a=x",
                " a",
                " a=\"x",
                " =\"x\"",
            ] {
                assert_eq!(plain_attributes(other, &mut plain), None, "{other}");
            }
            let many = " a='1'".repeat(MAX_PLAIN_ATTRS + 1);
            assert_eq!(plain_attributes(&many, &mut plain), None);
        }
    }
}
