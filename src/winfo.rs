//! Watcher information, `application/watcherinfo+xml` (RFC 3858; spec §7).
//!
//! In PUA mode the gateway subscribes to `presence.winfo` for each XMPP user and learns from
//! these documents which SIP users want to watch them; each new watcher becomes one XMPP
//! `subscribe`. [`parse`] reads a document (namespace-aware, no DTD, size-limited),
//! [`write`] produces one, and [`WinfoTracker`] applies the version rules and deduplicates.

use std::collections::HashSet;
use std::fmt;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::{NsReader, XmlVersion};

use crate::xml::{escape_attr, escape_text};

/// Namespace of watcherinfo documents (RFC 3858 §4).
pub const NS: &str = "urn:ietf:params:xml:ns:watcherinfo";

/// Whether a document replaces all state or updates watchers by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WinfoState {
    Full,
    Partial,
}

/// `watcher@status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatcherStatus {
    /// Waiting for authorization.
    Pending,
    Active,
    /// Tried while pending and went away: still worth authorizing.
    Waiting,
    Terminated,
    /// A value RFC 3858 does not define; kept as received.
    Other(String),
}

impl WatcherStatus {
    fn parse(s: &str) -> Self {
        match s {
            "pending" => WatcherStatus::Pending,
            "active" => WatcherStatus::Active,
            "waiting" => WatcherStatus::Waiting,
            "terminated" => WatcherStatus::Terminated,
            other => WatcherStatus::Other(other.to_string()),
        }
    }

    /// The attribute value.
    pub fn as_str(&self) -> &str {
        match self {
            WatcherStatus::Pending => "pending",
            WatcherStatus::Active => "active",
            WatcherStatus::Waiting => "waiting",
            WatcherStatus::Terminated => "terminated",
            WatcherStatus::Other(s) => s,
        }
    }
}

/// One `<watcher>`: a subscription of `uri` to the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    pub id: String,
    pub status: WatcherStatus,
    /// Why the status changed (`subscribe`, `approved`, `timeout`, ...).
    pub event: String,
    pub display_name: Option<String>,
    /// Seconds left.
    pub expiration: Option<u32>,
    /// Seconds subscribed so far.
    pub duration_subscribed: Option<u32>,
    /// The watcher's URI (element text, trimmed).
    pub uri: String,
}

/// One `<watcher-list>`: the watchers of one resource and package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherList {
    pub resource: String,
    pub package: String,
    pub watchers: Vec<Watcher>,
}

/// A whole `<watcherinfo>` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherInfo {
    pub version: u32,
    pub state: WinfoState,
    pub lists: Vec<WatcherList>,
}

/// Why a watcherinfo body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WinfoError {
    /// The body is bigger than the caller's limit.
    TooLarge { size: usize, max: usize },
    /// The body is not UTF-8.
    NotUtf8,
    /// A DOCTYPE was present (refused: entity expansion attacks).
    Dtd,
    /// Not well-formed XML.
    Xml(String),
    /// The root element is not `watcherinfo` in the RFC 3858 namespace.
    NotWatcherinfo,
    /// A required attribute is absent.
    MissingAttribute {
        element: &'static str,
        attribute: &'static str,
    },
    /// An attribute has a value outside its type.
    BadAttribute {
        element: &'static str,
        attribute: &'static str,
        value: String,
    },
    /// A `<watcher>` has no URI text.
    EmptyWatcherUri,
    /// The document ended before the root element closed.
    Truncated,
}

impl fmt::Display for WinfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WinfoError::TooLarge { size, max } => {
                write!(f, "watcherinfo body of {size} octets exceeds {max}")
            }
            WinfoError::NotUtf8 => f.write_str("watcherinfo body is not UTF-8"),
            WinfoError::Dtd => f.write_str("DOCTYPE not allowed in watcherinfo"),
            WinfoError::Xml(e) => write!(f, "malformed watcherinfo XML: {e}"),
            WinfoError::NotWatcherinfo => {
                write!(f, "root element is not watcherinfo in namespace {NS}")
            }
            WinfoError::MissingAttribute { element, attribute } => {
                write!(f, "<{element}> lacks the {attribute} attribute")
            }
            WinfoError::BadAttribute {
                element,
                attribute,
                value,
            } => write!(f, "<{element}> has a bad {attribute}: {value:?}"),
            WinfoError::EmptyWatcherUri => f.write_str("<watcher> without a URI"),
            WinfoError::Truncated => f.write_str("watcherinfo document is truncated"),
        }
    }
}

impl std::error::Error for WinfoError {}

fn xml_err(e: impl fmt::Display) -> WinfoError {
    WinfoError::Xml(e.to_string())
}

/// Unprefixed attributes of an element (RFC 3858 attributes are in no namespace), unescaped.
fn attrs(e: &BytesStart<'_>) -> Result<Vec<(String, String)>, WinfoError> {
    let mut out = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(xml_err)?;
        if a.key.prefix().is_some() {
            continue;
        }
        let key = a.key.local_name().as_ref().to_string();
        let value = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(xml_err)?;
        out.push((key, writable(&value, true)));
    }
    Ok(out)
}

/// A value as our writer (`xml::escape_*`) writes it back, so `parse(write(doc)) == doc`:
/// characters XML 1.0 forbids (reachable through lenient parsing and character references)
/// become U+FFFD; in an attribute, tab and line ends become spaces (attribute-value
/// normalization turns the raw ones we write into spaces); in text, CR becomes LF.
fn writable(s: &str, attr: bool) -> String {
    s.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' if attr => ' ',
            '\r' => '\n',
            '\t' | '\n' => c,
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => '\u{fffd}',
            c => c,
        })
        .collect()
}

fn get<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn required<'a>(
    attrs: &'a [(String, String)],
    element: &'static str,
    attribute: &'static str,
) -> Result<&'a str, WinfoError> {
    get(attrs, attribute).ok_or(WinfoError::MissingAttribute { element, attribute })
}

fn number(v: &str, element: &'static str, attribute: &'static str) -> Result<u32, WinfoError> {
    v.trim().parse().map_err(|_| WinfoError::BadAttribute {
        element,
        attribute,
        value: v.to_string(),
    })
}

fn optional_number(
    attrs: &[(String, String)],
    element: &'static str,
    attribute: &'static str,
) -> Result<Option<u32>, WinfoError> {
    get(attrs, attribute)
        .map(|v| number(v, element, attribute))
        .transpose()
}

/// A watcher being read: attributes done, URI text still accumulating.
struct OpenWatcher {
    w: Watcher,
    text: String,
}

fn open_watcher(e: &BytesStart<'_>) -> Result<OpenWatcher, WinfoError> {
    let a = attrs(e)?;
    let w = Watcher {
        id: required(&a, "watcher", "id")?.to_string(),
        status: WatcherStatus::parse(required(&a, "watcher", "status")?),
        event: required(&a, "watcher", "event")?.to_string(),
        display_name: get(&a, "display-name").map(str::to_string),
        expiration: optional_number(&a, "watcher", "expiration")?,
        duration_subscribed: optional_number(&a, "watcher", "duration-subscribed")?,
        uri: String::new(),
    };
    Ok(OpenWatcher {
        w,
        text: String::new(),
    })
}

fn close_watcher(open: OpenWatcher) -> Result<Watcher, WinfoError> {
    let uri = open.text.trim();
    if uri.is_empty() {
        return Err(WinfoError::EmptyWatcherUri);
    }
    Ok(Watcher {
        uri: writable(uri, false),
        ..open.w
    })
}

/// Parses a watcherinfo body. Elements of other namespaces and unknown elements are
/// skipped (RFC 3858 extensibility); a DOCTYPE, bad XML or a missing required attribute
/// refuses the whole document.
pub fn parse(body: &[u8], max_size: usize) -> Result<WatcherInfo, WinfoError> {
    if body.len() > max_size {
        return Err(WinfoError::TooLarge {
            size: body.len(),
            max: max_size,
        });
    }
    let text = std::str::from_utf8(body).map_err(|_| WinfoError::NotUtf8)?;
    let mut reader = NsReader::from_str(text);
    let ns = Namespace(NS);

    let mut doc: Option<WatcherInfo> = None;
    let mut list: Option<WatcherList> = None;
    let mut watcher: Option<OpenWatcher> = None;
    let mut depth = 0usize;
    // Depth of the unknown element being skipped, with everything inside it.
    let mut skip_at: Option<usize> = None;
    let mut root_closed = false;

    loop {
        let (res, ev) = reader.read_resolved_event().map_err(xml_err)?;
        let ours = matches!(res, ResolveResult::Bound(n) if n == ns);
        match ev {
            Event::DocType(_) => return Err(WinfoError::Dtd),
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(ev, Event::Empty(_));
                depth += 1;
                if skip_at.is_none() {
                    let local = e.local_name();
                    let name: &str = if ours { local.as_ref() } else { "" };
                    match (depth, name) {
                        (1, "watcherinfo") => {
                            let a = attrs(e)?;
                            let version = number(
                                required(&a, "watcherinfo", "version")?,
                                "watcherinfo",
                                "version",
                            )?;
                            let state = match required(&a, "watcherinfo", "state")? {
                                "full" => WinfoState::Full,
                                "partial" => WinfoState::Partial,
                                other => {
                                    return Err(WinfoError::BadAttribute {
                                        element: "watcherinfo",
                                        attribute: "state",
                                        value: other.to_string(),
                                    })
                                }
                            };
                            doc = Some(WatcherInfo {
                                version,
                                state,
                                lists: Vec::new(),
                            });
                            if empty {
                                root_closed = true;
                            }
                        }
                        (1, _) => return Err(WinfoError::NotWatcherinfo),
                        (2, "watcher-list") => {
                            let a = attrs(e)?;
                            let l = WatcherList {
                                resource: required(&a, "watcher-list", "resource")?.to_string(),
                                package: required(&a, "watcher-list", "package")?.to_string(),
                                watchers: Vec::new(),
                            };
                            if empty {
                                if let Some(d) = doc.as_mut() {
                                    d.lists.push(l);
                                }
                            } else {
                                list = Some(l);
                            }
                        }
                        (3, "watcher") if list.is_some() => {
                            let open = open_watcher(e)?;
                            if empty {
                                return Err(WinfoError::EmptyWatcherUri);
                            }
                            watcher = Some(open);
                        }
                        _ if !empty => skip_at = Some(depth),
                        _ => {}
                    }
                }
                if empty {
                    depth = depth.saturating_sub(1);
                }
            }
            Event::End(_) => {
                if skip_at == Some(depth) {
                    skip_at = None;
                } else if skip_at.is_none() {
                    match depth {
                        3 => {
                            if let (Some(open), Some(l)) = (watcher.take(), list.as_mut()) {
                                l.watchers.push(close_watcher(open)?);
                            }
                        }
                        2 => {
                            if let (Some(l), Some(d)) = (list.take(), doc.as_mut()) {
                                d.lists.push(l);
                            }
                        }
                        1 => root_closed = true,
                        _ => {}
                    }
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(t) => {
                if let (None, Some(open)) = (skip_at, watcher.as_mut()) {
                    open.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(t) => {
                if let (None, Some(open)) = (skip_at, watcher.as_mut()) {
                    open.text.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                if let (None, Some(open)) = (skip_at, watcher.as_mut()) {
                    let c = match r.resolve_char_ref().map_err(xml_err)? {
                        Some(c) => c,
                        None => match &*r {
                            "lt" => '<',
                            "gt" => '>',
                            "amp" => '&',
                            "apos" => '\'',
                            "quot" => '"',
                            other => {
                                return Err(WinfoError::Xml(format!("unknown entity &{other};")))
                            }
                        },
                    };
                    open.text.push(c);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    match doc {
        Some(d) if root_closed => Ok(d),
        Some(_) => Err(WinfoError::Truncated),
        None => Err(WinfoError::NotWatcherinfo),
    }
}

/// Serializes a document (UTF-8, default namespace, attributes in RFC 3858 order).
pub fn write(doc: &WatcherInfo) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str("<watcherinfo xmlns=\"");
    out.push_str(NS);
    out.push_str("\" version=\"");
    out.push_str(&doc.version.to_string());
    out.push_str("\" state=\"");
    out.push_str(match doc.state {
        WinfoState::Full => "full",
        WinfoState::Partial => "partial",
    });
    out.push_str("\">\n");
    for l in &doc.lists {
        out.push_str("  <watcher-list resource=\"");
        escape_attr(&mut out, &l.resource);
        out.push_str("\" package=\"");
        escape_attr(&mut out, &l.package);
        out.push_str("\">\n");
        for w in &l.watchers {
            out.push_str("    <watcher id=\"");
            escape_attr(&mut out, &w.id);
            out.push_str("\" status=\"");
            escape_attr(&mut out, w.status.as_str());
            out.push_str("\" event=\"");
            escape_attr(&mut out, &w.event);
            out.push('"');
            if let Some(n) = &w.display_name {
                out.push_str(" display-name=\"");
                escape_attr(&mut out, n);
                out.push('"');
            }
            if let Some(e) = w.expiration {
                out.push_str(&format!(" expiration=\"{e}\""));
            }
            if let Some(d) = w.duration_subscribed {
                out.push_str(&format!(" duration-subscribed=\"{d}\""));
            }
            out.push('>');
            escape_text(&mut out, &w.uri);
            out.push_str("</watcher>\n");
        }
        out.push_str("  </watcher-list>\n");
    }
    out.push_str("</watcherinfo>");
    out
}

/// What one winfo NOTIFY asks the gateway to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WinfoOutcome {
    /// Watchers (pending, waiting or active) not seen before, by URI, in document order:
    /// each becomes one XMPP `subscribe`. Empty when there is nothing to do.
    NewWatchers(Vec<Watcher>),
    /// A partial document with a version gap or repeat (or before any full state): ignore it
    /// and refresh the winfo SUBSCRIBE to get full state.
    NeedFullState,
}

/// Tracks one winfo subscription: the last version and the watcher URIs already reported.
///
/// `active` watchers count as new too: Kamailio with `presence_xml force_active=1` never
/// shows them `pending`. URIs stay remembered across versions and full-state resets, so a
/// watcher that flaps pending → terminated → pending is reported once; [`Self::forget`] lets
/// the caller re-arm one (e.g. after the 24 h rule of §6.2).
#[derive(Debug, Clone, Default)]
pub struct WinfoTracker {
    version: Option<u32>,
    seen: HashSet<String>,
}

impl WinfoTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The version of the last accepted document.
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// A new winfo subscription: versions start again (RFC 3857: per subscription), but the
    /// watchers already reported stay reported, so a re-subscription does not re-ask X.
    pub fn restart(&mut self) {
        self.version = None;
    }

    /// Records a watcher learned another way (the proxy's `req_winfo` call); true if new.
    pub fn mark_seen(&mut self, uri: &str) -> bool {
        self.seen.insert(uri.to_owned())
    }

    /// Makes a watcher URI reportable again.
    pub fn forget(&mut self, uri: &str) -> bool {
        self.seen.remove(uri)
    }

    /// Applies one document (RFC 3858 §4.4: a full document is always accepted; a partial
    /// one only when its version is exactly the last one plus one).
    pub fn apply(&mut self, doc: &WatcherInfo) -> WinfoOutcome {
        if doc.state == WinfoState::Partial {
            let expected = self.version.and_then(|v| v.checked_add(1));
            if expected != Some(doc.version) {
                return WinfoOutcome::NeedFullState;
            }
        }
        self.version = Some(doc.version);
        let mut new = Vec::new();
        for w in doc.lists.iter().flat_map(|l| l.watchers.iter()) {
            let interesting = matches!(
                w.status,
                WatcherStatus::Pending | WatcherStatus::Waiting | WatcherStatus::Active
            );
            if interesting && self.seen.insert(w.uri.clone()) {
                new.push(w.clone());
            }
        }
        WinfoOutcome::NewWatchers(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SPEC_DOC: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<watcherinfo xmlns="urn:ietf:params:xml:ns:watcherinfo" version="0" state="full">
  <watcher-list resource="sip:romeo*example.net@xmpp.example.com" package="presence">
    <watcher id="w1" status="pending" event="subscribe" display-name="Juliet"
             >sip:juliet@example.com</watcher>
    <watcher id="w2" status="active" event="approved" duration-subscribed="912"
             expiration="2688">sip:nurse@example.com</watcher>
  </watcher-list>
</watcherinfo>"#;

    fn juliet_pending() -> Watcher {
        Watcher {
            id: "w1".into(),
            status: WatcherStatus::Pending,
            event: "subscribe".into(),
            display_name: Some("Juliet".into()),
            expiration: None,
            duration_subscribed: None,
            uri: "sip:juliet@example.com".into(),
        }
    }

    fn nurse_active() -> Watcher {
        Watcher {
            id: "w2".into(),
            status: WatcherStatus::Active,
            event: "approved".into(),
            display_name: None,
            expiration: Some(2688),
            duration_subscribed: Some(912),
            uri: "sip:nurse@example.com".into(),
        }
    }

    fn spec_doc() -> WatcherInfo {
        WatcherInfo {
            version: 0,
            state: WinfoState::Full,
            lists: vec![WatcherList {
                resource: "sip:romeo*example.net@xmpp.example.com".into(),
                package: "presence".into(),
                watchers: vec![juliet_pending(), nurse_active()],
            }],
        }
    }

    fn partial(version: u32, watchers: Vec<Watcher>) -> WatcherInfo {
        WatcherInfo {
            version,
            state: WinfoState::Partial,
            lists: vec![WatcherList {
                resource: "sip:romeo*example.net@xmpp.example.com".into(),
                package: "presence".into(),
                watchers,
            }],
        }
    }

    #[test]
    fn parses_spec_example_exactly() {
        assert_eq!(parse(SPEC_DOC.as_bytes(), 65536), Ok(spec_doc()));
    }

    #[test]
    fn write_then_parse_round_trip_and_exact_output() {
        let mut doc = spec_doc();
        doc.lists[0].watchers[0].display_name = Some("J & \"R\" <3".into());
        let xml = write(&doc);
        assert_eq!(parse(xml.as_bytes(), 65536), Ok(doc));
        let small = partial(
            2,
            vec![Watcher {
                id: "a1".into(),
                status: WatcherStatus::Waiting,
                event: "timeout".into(),
                display_name: None,
                expiration: None,
                duration_subscribed: None,
                uri: "sip:a&b@example.com".into(),
            }],
        );
        assert_eq!(
            write(&small),
            concat!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
                "<watcherinfo xmlns=\"urn:ietf:params:xml:ns:watcherinfo\" version=\"2\" state=\"partial\">\n",
                "  <watcher-list resource=\"sip:romeo*example.net@xmpp.example.com\" package=\"presence\">\n",
                "    <watcher id=\"a1\" status=\"waiting\" event=\"timeout\">sip:a&amp;b@example.com</watcher>\n",
                "  </watcher-list>\n",
                "</watcherinfo>"
            )
        );
    }

    #[test]
    fn case_090_full_pending_gives_one_subscribe_once() {
        let body = r#"<?xml version="1.0"?>
<watcherinfo xmlns="urn:ietf:params:xml:ns:watcherinfo" version="0" state="full">
  <watcher-list resource="sip:romeo*example.net@xmpp.example.com" package="presence">
    <watcher id="w1" status="pending" event="subscribe">sip:juliet@example.com</watcher>
  </watcher-list>
</watcherinfo>"#;
        let doc = match parse(body.as_bytes(), 4096) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let mut t = WinfoTracker::new();
        let mut want = juliet_pending();
        want.display_name = None;
        assert_eq!(t.apply(&doc), WinfoOutcome::NewWatchers(vec![want.clone()]));
        // The same watcher in the next partial (still pending) and a repeated full: once only.
        assert_eq!(
            t.apply(&partial(1, vec![want.clone()])),
            WinfoOutcome::NewWatchers(vec![])
        );
        assert_eq!(t.apply(&doc), WinfoOutcome::NewWatchers(vec![]));
        assert_eq!(t.version(), Some(0));
    }

    #[test]
    fn case_091_version_gap_needs_full_state() {
        let mut t = WinfoTracker::new();
        let mut full = spec_doc();
        full.version = 3;
        full.lists[0].watchers.clear();
        assert_eq!(t.apply(&full), WinfoOutcome::NewWatchers(vec![]));
        assert_eq!(
            t.apply(&partial(5, vec![juliet_pending()])),
            WinfoOutcome::NeedFullState
        );
        // Ignored: version unchanged and juliet not marked seen.
        assert_eq!(t.version(), Some(3));
        // A repeat is a gap too.
        assert_eq!(t.apply(&partial(3, vec![])), WinfoOutcome::NeedFullState);
        // Partial before any full state.
        assert_eq!(
            WinfoTracker::new().apply(&partial(0, vec![])),
            WinfoOutcome::NeedFullState
        );
        assert_eq!(
            t.apply(&partial(4, vec![juliet_pending()])),
            WinfoOutcome::NewWatchers(vec![juliet_pending()])
        );
    }

    #[test]
    fn case_092_terminated_timeout_gives_nothing() {
        let mut t = WinfoTracker::new();
        let mut w = juliet_pending();
        w.status = WatcherStatus::Terminated;
        w.event = "timeout".into();
        let mut doc = spec_doc();
        doc.lists[0].watchers = vec![w];
        assert_eq!(t.apply(&doc), WinfoOutcome::NewWatchers(vec![]));
    }

    #[test]
    fn kamailio_real_shapes() {
        let v1 = r#"<?xml version="1.0"?>
<watcherinfo xmlns="urn:ietf:params:xml:ns:watcherinfo" version="1" state="full">
<watcher-list resource="sip:alice*xmpp.test@gw.sip.test" package="presence"/>
</watcherinfo>
"#;
        let v2 = r#"<?xml version="1.0"?>
<watcherinfo xmlns="urn:ietf:params:xml:ns:watcherinfo" version="2" state="partial">
<watcher-list resource="sip:alice*xmpp.test@gw.sip.test" package="presence">
<watcher id="a5f1c2d3e4" event="subscribe" status="active">sip:carol@sip.test</watcher>
</watcher-list>
</watcherinfo>
"#;
        let d1 = parse(v1.as_bytes(), 4096);
        assert_eq!(
            d1,
            Ok(WatcherInfo {
                version: 1,
                state: WinfoState::Full,
                lists: vec![WatcherList {
                    resource: "sip:alice*xmpp.test@gw.sip.test".into(),
                    package: "presence".into(),
                    watchers: vec![],
                }],
            })
        );
        let carol = Watcher {
            id: "a5f1c2d3e4".into(),
            status: WatcherStatus::Active,
            event: "subscribe".into(),
            display_name: None,
            expiration: None,
            duration_subscribed: None,
            uri: "sip:carol@sip.test".into(),
        };
        let d2 = parse(v2.as_bytes(), 4096);
        assert_eq!(
            d2.as_ref()
                .map(|d| (d.version, d.state, d.lists[0].watchers.clone())),
            Ok((2, WinfoState::Partial, vec![carol.clone()]))
        );
        let mut t = WinfoTracker::new();
        if let (Ok(d1), Ok(d2)) = (d1, d2) {
            assert_eq!(t.apply(&d1), WinfoOutcome::NewWatchers(vec![]));
            assert_eq!(t.apply(&d2), WinfoOutcome::NewWatchers(vec![carol]));
        }
    }

    #[test]
    fn dedupe_by_uri_and_forget() {
        let mut t = WinfoTracker::new();
        let mut doc = spec_doc();
        let mut dup = juliet_pending();
        dup.id = "w9".into();
        doc.lists[0].watchers.push(dup);
        assert_eq!(
            t.apply(&doc),
            WinfoOutcome::NewWatchers(vec![juliet_pending(), nurse_active()])
        );
        assert!(t.forget("sip:juliet@example.com"));
        assert_eq!(
            t.apply(&partial(1, vec![juliet_pending()])),
            WinfoOutcome::NewWatchers(vec![juliet_pending()])
        );
    }

    #[test]
    fn prefixed_namespace_entities_and_unknown_elements() {
        let body = r#"<w:watcherinfo xmlns:w="urn:ietf:params:xml:ns:watcherinfo" xmlns:x="urn:x" version="7" state="partial">
  <x:extra><w:watcher-list resource="sip:no" package="presence"/></x:extra>
  <w:watcher-list resource="sip:r@h" package="presence">
    <watcher xmlns="urn:other" id="z" status="pending" event="subscribe">sip:ignored@h</watcher>
    <w:watcher id="a" status="weird" event="subscribe">
      sip:a&amp;b&#x40;x@h<![CDATA[;p]]>
    </w:watcher>
  </w:watcher-list>
</w:watcherinfo>"#;
        assert_eq!(
            parse(body.as_bytes(), 4096),
            Ok(WatcherInfo {
                version: 7,
                state: WinfoState::Partial,
                lists: vec![WatcherList {
                    resource: "sip:r@h".into(),
                    package: "presence".into(),
                    watchers: vec![Watcher {
                        id: "a".into(),
                        status: WatcherStatus::Other("weird".into()),
                        event: "subscribe".into(),
                        display_name: None,
                        expiration: None,
                        duration_subscribed: None,
                        uri: "sip:a&b@x@h;p".into(),
                    }],
                }],
            })
        );
    }

    #[test]
    fn refusals_are_typed() {
        assert_eq!(
            parse(SPEC_DOC.as_bytes(), 10),
            Err(WinfoError::TooLarge {
                size: SPEC_DOC.len(),
                max: 10
            })
        );
        let dtd = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><watcherinfo xmlns="urn:ietf:params:xml:ns:watcherinfo" version="0" state="full"/>"#;
        assert_eq!(parse(dtd.as_bytes(), 4096), Err(WinfoError::Dtd));
        let wrong_ns = r#"<watcherinfo xmlns="urn:wrong" version="0" state="full"/>"#;
        assert_eq!(
            parse(wrong_ns.as_bytes(), 4096),
            Err(WinfoError::NotWatcherinfo)
        );
        let no_version =
            r#"<watcherinfo xmlns="urn:ietf:params:xml:ns:watcherinfo" state="full"/>"#;
        assert_eq!(
            parse(no_version.as_bytes(), 4096),
            Err(WinfoError::MissingAttribute {
                element: "watcherinfo",
                attribute: "version"
            })
        );
        let bad_state =
            r#"<watcherinfo xmlns="urn:ietf:params:xml:ns:watcherinfo" version="1" state="some"/>"#;
        assert_eq!(
            parse(bad_state.as_bytes(), 4096),
            Err(WinfoError::BadAttribute {
                element: "watcherinfo",
                attribute: "state",
                value: "some".into()
            })
        );
        let truncated = r#"<watcherinfo xmlns="urn:ietf:params:xml:ns:watcherinfo" version="1" state="full"><watcher-list resource="r" package="presence">"#;
        assert_eq!(
            parse(truncated.as_bytes(), 4096),
            Err(WinfoError::Truncated)
        );
        let empty_uri = r#"<watcherinfo xmlns="urn:ietf:params:xml:ns:watcherinfo" version="1" state="full"><watcher-list resource="r" package="presence"><watcher id="a" status="active" event="subscribe">  </watcher></watcher-list></watcherinfo>"#;
        assert_eq!(
            parse(empty_uri.as_bytes(), 4096),
            Err(WinfoError::EmptyWatcherUri)
        );
        assert_eq!(parse(&[0xff, 0xfe], 4096), Err(WinfoError::NotUtf8));
        assert_eq!(parse(b"", 4096), Err(WinfoError::NotWatcherinfo));
        assert_eq!(
            WinfoError::Dtd.to_string(),
            "DOCTYPE not allowed in watcherinfo"
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = parse(s.as_bytes(), 4096);
        }

        #[test]
        fn never_panics_on_mutated_documents(cut in 0usize..400, junk in "[<>&/=\"a-z ]{0,5}") {
            let mut s = SPEC_DOC.to_string();
            let at = cut.min(s.len());
            if s.is_char_boundary(at) {
                s.insert_str(at, &junk);
            }
            let _ = parse(s.as_bytes(), 4096);
        }
    }
}
