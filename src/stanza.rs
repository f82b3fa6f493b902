//! XMPP presence stanzas as typed values.
//!
//! Inbound stanzas are parsed once, at the edge, from a `minidom::Element` into [`InPresence`]:
//! leniently, because RFC 6121 says a bad `<show>` or `<priority>` must not make the gateway
//! drop the whole presence (cases 37, 38), while xmpp-parsers rejects such a stanza outright.
//! Outbound stanzas are [`OutPresence`] values with a direct serializer (no DOM per update),
//! and a conversion to `minidom::Element` for libraries that want one.

use crate::xml::{escape_attr, escape_text};
pub use xmpp_parsers::jid::{BareJid, FullJid, Jid};
pub use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

/// Namespace of stanzas on a XEP-0114 component stream.
pub const NS_COMPONENT: &str = "jabber:component:accept";
/// Namespace of stanza error conditions.
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// RFC 6121 `<show/>` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Show {
    Away,
    Chat,
    Dnd,
    Xa,
}

impl Show {
    pub fn as_str(self) -> &'static str {
        match self {
            Show::Away => "away",
            Show::Chat => "chat",
            Show::Dnd => "dnd",
            Show::Xa => "xa",
        }
    }
    pub fn parse(s: &str) -> Option<Show> {
        match s {
            "away" => Some(Show::Away),
            "chat" => Some(Show::Chat),
            "dnd" => Some(Show::Dnd),
            "xa" => Some(Show::Xa),
            _ => None,
        }
    }
}

/// One `<status/>` text, with its language.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    pub lang: Option<String>,
    pub text: String,
}

impl Status {
    pub fn new(lang: Option<&str>, text: impl Into<String>) -> Status {
        Status {
            lang: lang.map(str::to_owned),
            text: text.into(),
        }
    }
}

/// What an available presence says (show, statuses, priority). Also carries the statuses of an
/// `unavailable` presence.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Availability {
    pub show: Option<Show>,
    pub statuses: Vec<Status>,
    pub priority: Option<i8>,
}

/// Presence `type` values (RFC 6121), `Available` standing for the absent attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PresenceType {
    Available,
    Unavailable,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Probe,
    Error,
}

impl PresenceType {
    pub fn as_attr(self) -> Option<&'static str> {
        match self {
            PresenceType::Available => None,
            PresenceType::Unavailable => Some("unavailable"),
            PresenceType::Subscribe => Some("subscribe"),
            PresenceType::Subscribed => Some("subscribed"),
            PresenceType::Unsubscribe => Some("unsubscribe"),
            PresenceType::Unsubscribed => Some("unsubscribed"),
            PresenceType::Probe => Some("probe"),
            PresenceType::Error => Some("error"),
        }
    }
    pub fn parse(s: Option<&str>) -> Result<PresenceType, String> {
        Ok(match s {
            None => PresenceType::Available,
            Some("unavailable") => PresenceType::Unavailable,
            Some("subscribe") => PresenceType::Subscribe,
            Some("subscribed") => PresenceType::Subscribed,
            Some("unsubscribe") => PresenceType::Unsubscribe,
            Some("unsubscribed") => PresenceType::Unsubscribed,
            Some("probe") => PresenceType::Probe,
            Some("error") => PresenceType::Error,
            Some(other) => return Err(other.to_owned()),
        })
    }
}

/// The `<error/>` child of an outgoing error stanza.
#[derive(Clone, Debug, PartialEq)]
pub struct StanzaErrorOut {
    pub kind: ErrorType,
    pub condition: DefinedCondition,
    /// Human-readable text such as `SIP 486 Busy Here`, `xml:lang='en'`.
    pub text: Option<String>,
    pub by: Option<String>,
}

impl StanzaErrorOut {
    /// Writes the `<error/>` child of a presence or message stanza, escaping with the
    /// stanza's own text and attribute escapers.
    pub(crate) fn write_xml(
        &self,
        out: &mut String,
        text_escape: fn(&mut String, &str),
        attr_escape: fn(&mut String, &str),
    ) {
        out.push_str("<error type='");
        out.push_str(error_type_str(&self.kind));
        out.push('\'');
        if let Some(by) = &self.by {
            out.push_str(" by='");
            attr_escape(out, by);
            out.push('\'');
        }
        out.push_str("><");
        out.push_str(condition_name(&self.condition));
        out.push_str(" xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>");
        if let Some(text) = &self.text {
            out.push_str("<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>");
            text_escape(out, text);
            out.push_str("</text>");
        }
        out.push_str("</error>");
    }
}

/// An outgoing presence stanza. `from` is always in the component domain.
#[derive(Clone, Debug, PartialEq)]
pub struct OutPresence {
    pub from: Jid,
    pub to: Jid,
    pub kind: PresenceType,
    pub id: Option<String>,
    pub body: Availability,
    pub error: Option<StanzaErrorOut>,
}

impl OutPresence {
    /// A presence of `kind` with no children.
    pub fn new(from: Jid, to: Jid, kind: PresenceType) -> OutPresence {
        OutPresence {
            from,
            to,
            kind,
            id: None,
            body: Availability::default(),
            error: None,
        }
    }

    /// An error reply to `req`: `to` and `from` swapped, `id` echoed (RFC 6120 §8.3).
    pub fn error_reply(
        req: &InPresence,
        condition: DefinedCondition,
        text: Option<String>,
    ) -> OutPresence {
        OutPresence {
            from: req.to.clone(),
            to: req.from.clone(),
            kind: PresenceType::Error,
            id: req.id.clone(),
            body: Availability::default(),
            error: Some(StanzaErrorOut {
                kind: crate::error_map::default_error_type(&condition),
                condition,
                text,
                by: Some(req.to.domain().to_string()),
            }),
        }
    }

    /// Serializes with single-quoted attributes, children in the order show, status, priority,
    /// error. Namespace is inherited from the component stream.
    pub fn write_xml(&self, out: &mut String) {
        out.push_str("<presence from='");
        escape_attr(out, self.from.as_str());
        out.push_str("' to='");
        escape_attr(out, self.to.as_str());
        out.push('\'');
        if let Some(t) = self.kind.as_attr() {
            out.push_str(" type='");
            out.push_str(t);
            out.push('\'');
        }
        if let Some(id) = &self.id {
            out.push_str(" id='");
            escape_attr(out, id);
            out.push('\'');
        }
        let b = &self.body;
        if b.show.is_none() && b.statuses.is_empty() && b.priority.is_none() && self.error.is_none()
        {
            out.push_str("/>");
            return;
        }
        out.push('>');
        if let Some(show) = b.show {
            out.push_str("<show>");
            out.push_str(show.as_str());
            out.push_str("</show>");
        }
        for s in &b.statuses {
            out.push_str("<status");
            if let Some(lang) = &s.lang {
                out.push_str(" xml:lang='");
                escape_attr(out, lang);
                out.push('\'');
            }
            out.push('>');
            escape_text(out, &s.text);
            out.push_str("</status>");
        }
        if let Some(p) = b.priority {
            out.push_str("<priority>");
            write_i8(out, p);
            out.push_str("</priority>");
        }
        if let Some(e) = &self.error {
            e.write_xml(out, escape_text, escape_attr);
        }
        out.push_str("</presence>");
    }

    pub fn to_xml(&self) -> String {
        let mut s = String::with_capacity(160);
        self.write_xml(&mut s);
        s
    }

    /// The same stanza as a DOM element in `jabber:component:accept`.
    pub fn to_element(&self) -> minidom::Element {
        let mut xml = String::with_capacity(200);
        // Parse our own serialization inside a wrapper that declares the namespaces; the output
        // of write_xml is well-formed by construction, so this cannot fail on valid Jids.
        xml.push_str("<presence xmlns='jabber:component:accept'");
        let own = self.to_xml();
        xml.push_str(&own["<presence".len()..]);
        xml.parse::<minidom::Element>()
            .unwrap_or_else(|_| minidom::Element::builder("presence", NS_COMPONENT).build())
    }
}

/// `p` in decimal, as `Display` writes it, without the formatting machinery.
fn write_i8(out: &mut String, p: i8) {
    if p < 0 {
        out.push('-');
    }
    let v = p.unsigned_abs();
    if v >= 100 {
        out.push(char::from(b'0' + v / 100));
    }
    if v >= 10 {
        out.push(char::from(b'0' + (v / 10) % 10));
    }
    out.push(char::from(b'0' + v % 10));
}

pub fn error_type_str(t: &ErrorType) -> &'static str {
    match t {
        ErrorType::Auth => "auth",
        ErrorType::Cancel => "cancel",
        ErrorType::Continue => "continue",
        ErrorType::Modify => "modify",
        ErrorType::Wait => "wait",
    }
}

/// The element name of a defined condition (RFC 6120 §8.3.3).
pub fn condition_name(c: &DefinedCondition) -> &'static str {
    use DefinedCondition as C;
    match c {
        C::BadRequest => "bad-request",
        C::Conflict => "conflict",
        C::FeatureNotImplemented => "feature-not-implemented",
        C::Forbidden => "forbidden",
        C::Gone { .. } => "gone",
        C::InternalServerError => "internal-server-error",
        C::ItemNotFound => "item-not-found",
        C::JidMalformed => "jid-malformed",
        C::NotAcceptable => "not-acceptable",
        C::NotAllowed => "not-allowed",
        C::NotAuthorized => "not-authorized",
        C::PolicyViolation => "policy-violation",
        C::RecipientUnavailable => "recipient-unavailable",
        C::Redirect { .. } => "redirect",
        C::RegistrationRequired => "registration-required",
        C::RemoteServerNotFound => "remote-server-not-found",
        C::RemoteServerTimeout => "remote-server-timeout",
        C::ResourceConstraint => "resource-constraint",
        C::ServiceUnavailable => "service-unavailable",
        C::SubscriptionRequired => "subscription-required",
        C::UndefinedCondition => "undefined-condition",
        C::UnexpectedRequest => "unexpected-request",
    }
}

/// Parses a condition element name; unknown names are `None`.
pub fn condition_from_name(name: &str) -> Option<DefinedCondition> {
    use DefinedCondition as C;
    Some(match name {
        "bad-request" => C::BadRequest,
        "conflict" => C::Conflict,
        "feature-not-implemented" => C::FeatureNotImplemented,
        "forbidden" => C::Forbidden,
        "gone" => C::Gone { new_address: None },
        "internal-server-error" => C::InternalServerError,
        "item-not-found" => C::ItemNotFound,
        "jid-malformed" => C::JidMalformed,
        "not-acceptable" => C::NotAcceptable,
        "not-allowed" => C::NotAllowed,
        "not-authorized" => C::NotAuthorized,
        "policy-violation" => C::PolicyViolation,
        "recipient-unavailable" => C::RecipientUnavailable,
        "redirect" => C::Redirect { new_address: None },
        "registration-required" => C::RegistrationRequired,
        "remote-server-not-found" => C::RemoteServerNotFound,
        "remote-server-timeout" => C::RemoteServerTimeout,
        "resource-constraint" => C::ResourceConstraint,
        "service-unavailable" => C::ServiceUnavailable,
        "subscription-required" => C::SubscriptionRequired,
        "undefined-condition" => C::UndefinedCondition,
        "unexpected-request" => C::UnexpectedRequest,
        _ => return None,
    })
}

/// An inbound presence stanza, parsed leniently.
#[derive(Clone, Debug, PartialEq)]
pub struct InPresence {
    pub from: Jid,
    pub to: Jid,
    /// `Err(value)` for a `type` RFC 6121 does not define (answered with `bad-request`, case 46).
    pub kind: Result<PresenceType, String>,
    pub id: Option<String>,
    /// The stanza's `xml:lang`, default language of its statuses.
    pub lang: Option<String>,
    pub body: Availability,
    /// A `<show/>` value that is not one of the four; treated as absent (case 37).
    pub invalid_show: Option<String>,
    /// A `<priority/>` that is not an integer; treated as absent (case 38).
    pub invalid_priority: Option<String>,
    /// The condition of a `type='error'` stanza.
    pub error: Option<DefinedCondition>,
}

/// Why an inbound stanza was not turned into an [`InPresence`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StanzaError {
    NotPresence(String),
    MissingFrom,
    MissingTo,
    BadJid { attr: &'static str, value: String },
}

impl std::fmt::Display for StanzaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StanzaError::NotPresence(n) => write!(f, "not a presence stanza: <{n}>"),
            StanzaError::MissingFrom => f.write_str("presence without 'from'"),
            StanzaError::MissingTo => f.write_str("presence without 'to'"),
            StanzaError::BadJid { attr, value } => write!(f, "invalid JID in '{attr}': {value:?}"),
        }
    }
}

impl std::error::Error for StanzaError {}

const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

fn xml_lang(e: &minidom::Element) -> Option<String> {
    e.attr("xml:lang")
        .or_else(|| e.attr_ns(NS_XML, "lang"))
        .map(str::to_owned)
}

impl InPresence {
    /// `from` without its resource. `Jid::to_bare` formats the parts anew; a clone cut at the
    /// slash is several times cheaper (two per subscription set-up, measured).
    pub fn from_bare(&self) -> BareJid {
        self.from.clone().into_bare()
    }

    /// `to` without its resource (see [`InPresence::from_bare`]).
    pub fn to_bare(&self) -> BareJid {
        self.to.clone().into_bare()
    }

    /// Parses a `<presence/>` element from the component stream. Child elements are matched by
    /// local name in the stanza's own namespace; unknown children are ignored.
    pub fn from_element(e: &minidom::Element) -> Result<InPresence, StanzaError> {
        if e.name() != "presence" {
            return Err(StanzaError::NotPresence(e.name().to_owned()));
        }
        let mut p = InPresence::from_attrs(
            [e.attr("from"), e.attr("to"), e.attr("type"), e.attr("id")],
            xml_lang(e),
        )?;
        let ns = e.ns();
        let mut body = Availability::default();
        let mut invalid_show = None;
        let mut invalid_priority = None;
        let mut error = None;
        for child in e.children() {
            if child.ns() == ns {
                match child.name() {
                    "show" => {
                        let t = child.text();
                        match Show::parse(t.trim()) {
                            Some(s) => body.show = Some(s),
                            None => invalid_show = Some(t),
                        }
                    }
                    "status" => {
                        let l = xml_lang(child);
                        if !body.statuses.iter().any(|s| s.lang == l) {
                            body.statuses.push(Status {
                                lang: l,
                                text: child.text(),
                            });
                        }
                    }
                    "priority" => {
                        let t = child.text();
                        match t.trim().parse::<i64>() {
                            Ok(p) => body.priority = Some(p.clamp(-128, 127) as i8),
                            Err(_) => invalid_priority = Some(t),
                        }
                    }
                    "error" => {
                        error = child
                            .children()
                            .filter(|c| c.ns() == NS_STANZAS)
                            .find_map(|c| condition_from_name(c.name()))
                            .or(Some(DefinedCondition::UndefinedCondition));
                    }
                    _ => {}
                }
            }
        }
        p.body = body;
        p.invalid_show = invalid_show;
        p.invalid_priority = invalid_priority;
        p.error = error;
        Ok(p)
    }

    /// A presence without children or text, from its attributes alone: `from`, `to`, `type`
    /// and `id`, and its `xml:lang`. The component's stream parser reads the common childless
    /// stanzas (subscription requests, probes) this way without building a tree;
    /// [`InPresence::from_element`] gives the same result for the same element.
    pub fn from_attrs(
        [from, to, typ, id]: [Option<&str>; 4],
        lang: Option<String>,
    ) -> Result<InPresence, StanzaError> {
        let jid = |v: Option<&str>, name: &'static str| -> Result<Jid, StanzaError> {
            let v = v.ok_or(if name == "from" {
                StanzaError::MissingFrom
            } else {
                StanzaError::MissingTo
            })?;
            Jid::new(v).map_err(|_| StanzaError::BadJid {
                attr: name,
                value: v.chars().take(200).collect(),
            })
        };
        let from = jid(from, "from")?;
        let to = jid(to, "to")?;
        Ok(InPresence {
            from,
            to,
            kind: PresenceType::parse(typ),
            id: id.map(str::to_owned),
            lang,
            body: Availability::default(),
            invalid_show: None,
            invalid_priority: None,
            error: None,
        })
    }

    /// Parses one serialized stanza (tests and tools); the default namespace is the component's.
    pub fn from_xml(xml: &str) -> Result<InPresence, String> {
        let root = xml.split('>').next().unwrap_or("");
        let wrapped = if root.contains("xmlns=") {
            xml.to_owned()
        } else {
            xml.replacen("<presence", "<presence xmlns='jabber:component:accept'", 1)
        };
        let e: minidom::Element = wrapped.parse().map_err(|e| format!("{e}"))?;
        InPresence::from_element(&e).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_digits_as_display() {
        for p in i8::MIN..=i8::MAX {
            let mut s = String::new();
            write_i8(&mut s, p);
            assert_eq!(s, p.to_string());
        }
    }

    fn jid(s: &str) -> Jid {
        Jid::new(s).unwrap()
    }

    #[test]
    fn bare_addresses_of_an_inbound_presence() {
        let el: minidom::Element =
            "<presence xmlns='jabber:component:accept' from='romeo@example.net/orchard' to='juliet*example.com@sip.example.net'/>"
                .parse()
                .unwrap();
        let p = InPresence::from_element(&el).unwrap();
        assert_eq!(p.from_bare(), BareJid::new("romeo@example.net").unwrap());
        assert_eq!(p.from_bare(), p.from.to_bare());
        assert_eq!(p.from_bare().as_str(), "romeo@example.net");
        assert_eq!(p.to_bare().as_str(), "juliet*example.com@sip.example.net");
        assert_eq!(p.to_bare(), p.to.to_bare());
    }

    #[test]
    fn serializes_available_with_children_in_order() {
        let p = OutPresence {
            body: Availability {
                show: Some(Show::Dnd),
                statuses: vec![Status::new(Some("en"), "On the <balcony> & 'out'")],
                priority: Some(80),
            },
            ..OutPresence::new(
                jid("juliet*example.com@sip.example.net/t-desk"),
                jid("romeo@example.net"),
                PresenceType::Available,
            )
        };
        assert_eq!(
            p.to_xml(),
            "<presence from='juliet*example.com@sip.example.net/t-desk' to='romeo@example.net'>\
             <show>dnd</show><status xml:lang='en'>On the &lt;balcony&gt; &amp; 'out'</status>\
             <priority>80</priority></presence>"
        );
        let e = p.to_element();
        assert_eq!(e.ns(), NS_COMPONENT);
        let back = InPresence::from_element(&e).unwrap();
        assert_eq!(back.body, p.body);
    }

    #[test]
    fn serializes_error_reply() {
        let req = InPresence::from_xml(
            "<presence from='romeo@example.net' to='bob@sip.example.net' type='subscribe' id='sub-7'/>",
        )
        .unwrap();
        let r = OutPresence::error_reply(
            &req,
            DefinedCondition::ItemNotFound,
            Some("no such user".into()),
        );
        assert_eq!(
            r.to_xml(),
            "<presence from='bob@sip.example.net' to='romeo@example.net' type='error' id='sub-7'>\
             <error type='cancel' by='sip.example.net'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>no such user</text></error></presence>"
        );
    }

    #[test]
    fn lenient_parse_of_bad_show_priority_and_type() {
        let p = InPresence::from_xml(
            "<presence from='romeo@example.net/orchard' to='a@b' type='foo'><show>busy</show>\
             <priority>abc</priority><status>x</status></presence>",
        )
        .unwrap();
        assert_eq!(p.kind, Err("foo".to_owned()));
        assert_eq!(p.invalid_show.as_deref(), Some("busy"));
        assert_eq!(p.invalid_priority.as_deref(), Some("abc"));
        assert_eq!(p.body.show, None);
        assert_eq!(p.body.priority, None);
        let p = InPresence::from_xml(
            "<presence from='a@b' to='c@d'><priority>300</priority></presence>",
        )
        .unwrap();
        assert_eq!(p.body.priority, Some(127));
    }

    #[test]
    fn missing_from_is_an_error() {
        assert_eq!(
            InPresence::from_xml("<presence to='c@d'/>"),
            Err("presence without 'from'".to_owned())
        );
    }

    #[test]
    fn error_condition_is_read() {
        let p = InPresence::from_xml(
            "<presence from='romeo@example.net' to='j*e@sip.example.net' type='error'>\
             <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
        )
        .unwrap();
        assert_eq!(p.error, Some(DefinedCondition::ItemNotFound));
    }
}
