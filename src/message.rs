//! XMPP `<message/>` stanzas as typed values (RFC 6121 §5; the single messages of RFC 7572).
//!
//! Inbound stanzas are parsed once, at the edge, from a `minidom::Element` into [`InMessage`],
//! leniently: an unknown `type` is `normal` (RFC 6121 §5.2.2), unknown children are ignored,
//! and the children the IM mapping looks at (bodies and subjects with their `xml:lang`, the
//! thread, XEP-0085 chat states, XEP-0184 receipts, the error condition) are collected.
//! Outbound stanzas are [`OutMessage`] values with a direct serializer whose text parses back
//! to the same values (the escaping keeps CR, tab and LF as references where a parser would
//! otherwise normalize them), and a conversion to `minidom::Element`.

use crate::error_map::default_error_type;
use crate::stanza::{
    condition_from_name, BareJid, DefinedCondition, Jid, StanzaErrorOut, NS_COMPONENT, NS_STANZAS,
};
use crate::xml::{escape_attr_exact, escape_text_exact};

/// XEP-0085 chat states.
pub const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// XEP-0184 message delivery receipts.
pub const NS_RECEIPTS: &str = "urn:xmpp:receipts";

const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// Message `type` values (RFC 6121 §5.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    Normal,
    Chat,
    Groupchat,
    Headline,
    Error,
}

impl MessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Normal => "normal",
            MessageType::Chat => "chat",
            MessageType::Groupchat => "groupchat",
            MessageType::Headline => "headline",
            MessageType::Error => "error",
        }
    }

    /// The `type` attribute read as RFC 6121 §5.2.2 says: absent or unknown is `normal`.
    pub fn parse(s: Option<&str>) -> MessageType {
        match s {
            Some("chat") => MessageType::Chat,
            Some("groupchat") => MessageType::Groupchat,
            Some("headline") => MessageType::Headline,
            Some("error") => MessageType::Error,
            _ => MessageType::Normal,
        }
    }
}

/// A `<body/>` or `<subject/>`: its text and its own `xml:lang`, if any.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LangText {
    pub lang: Option<String>,
    pub text: String,
}

impl LangText {
    pub fn new(lang: Option<&str>, text: impl Into<String>) -> LangText {
        LangText {
            lang: lang.map(str::to_owned),
            text: text.into(),
        }
    }
}

/// An inbound message stanza, parsed leniently.
#[derive(Clone, Debug, PartialEq)]
pub struct InMessage {
    /// `None` when the attribute is missing (the gateway drops such a stanza).
    pub from: Option<Jid>,
    pub to: Jid,
    pub id: Option<String>,
    /// The type as RFC 6121 reads it (absent or unknown: `Normal`).
    pub kind: MessageType,
    /// The `type` attribute as received, e.g. `urgent` (read as `normal`).
    pub type_attr: Option<String>,
    /// The stanza's own `xml:lang`.
    pub lang: Option<String>,
    /// Every `<body/>` in document order; a second one with the same language is dropped
    /// (RFC 6121 §5.2.3 forbids it).
    pub bodies: Vec<LangText>,
    /// Every `<subject/>`, as bodies.
    pub subjects: Vec<LangText>,
    pub thread: Option<String>,
    /// The local name of a XEP-0085 chat-state child (`active`, `composing`, …).
    pub chat_state: Option<String>,
    /// A XEP-0184 `<request/>` child.
    pub receipt_request: bool,
    /// The `id` of a XEP-0184 `<received/>` child (empty when it has none).
    pub receipt_received: Option<String>,
    /// The condition of a `type='error'` stanza.
    pub error: Option<DefinedCondition>,
}

/// Why an element was not turned into an [`InMessage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageError {
    NotMessage(String),
    MissingTo,
    BadJid { attr: &'static str, value: String },
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageError::NotMessage(n) => write!(f, "not a message stanza: <{n}>"),
            MessageError::MissingTo => f.write_str("message without 'to'"),
            MessageError::BadJid { attr, value } => write!(f, "invalid JID in '{attr}': {value:?}"),
        }
    }
}

impl std::error::Error for MessageError {}

fn xml_lang(e: &minidom::Element) -> Option<String> {
    e.attr("xml:lang")
        .or_else(|| e.attr_ns(NS_XML, "lang"))
        .map(str::to_owned)
}

fn push_unique(list: &mut Vec<LangText>, lang: Option<String>, text: String) {
    if !list.iter().any(|t| t.lang == lang) {
        list.push(LangText { lang, text });
    }
}

impl InMessage {
    /// `from` without its resource.
    pub fn from_bare(&self) -> Option<BareJid> {
        self.from.clone().map(Jid::into_bare)
    }

    /// `to` without its resource.
    pub fn to_bare(&self) -> BareJid {
        self.to.clone().into_bare()
    }

    /// Parses a `<message/>` element from the component stream. Body, subject, thread and
    /// error are matched by local name in the stanza's own namespace; chat states and receipts
    /// by their namespaces; anything else is ignored.
    pub fn from_element(e: &minidom::Element) -> Result<InMessage, MessageError> {
        if e.name() != "message" {
            return Err(MessageError::NotMessage(e.name().to_owned()));
        }
        let jid = |name: &'static str| -> Result<Option<Jid>, MessageError> {
            match e.attr(name) {
                None => Ok(None),
                Some(v) => Jid::new(v).map(Some).map_err(|_| MessageError::BadJid {
                    attr: name,
                    value: v.chars().take(200).collect(),
                }),
            }
        };
        let from = jid("from")?;
        let to = jid("to")?.ok_or(MessageError::MissingTo)?;
        let type_attr = e.attr("type").map(str::to_owned);
        let mut m = InMessage {
            from,
            to,
            id: e.attr("id").map(str::to_owned),
            kind: MessageType::parse(type_attr.as_deref()),
            type_attr,
            lang: xml_lang(e),
            bodies: Vec::new(),
            subjects: Vec::new(),
            thread: None,
            chat_state: None,
            receipt_request: false,
            receipt_received: None,
            error: None,
        };
        let ns = e.ns();
        for child in e.children() {
            let cns = child.ns();
            if cns == ns {
                match child.name() {
                    "body" => push_unique(&mut m.bodies, xml_lang(child), child.text()),
                    "subject" => push_unique(&mut m.subjects, xml_lang(child), child.text()),
                    "thread" if m.thread.is_none() => m.thread = Some(child.text()),
                    "error" => {
                        m.error = child
                            .children()
                            .filter(|c| c.ns() == NS_STANZAS)
                            .find_map(|c| condition_from_name(c.name()))
                            .or(Some(DefinedCondition::UndefinedCondition));
                    }
                    _ => {}
                }
            } else if cns == NS_CHATSTATES {
                m.chat_state = Some(child.name().to_owned());
            } else if cns == NS_RECEIPTS {
                match child.name() {
                    "request" => m.receipt_request = true,
                    "received" => {
                        m.receipt_received = Some(child.attr("id").unwrap_or_default().to_owned())
                    }
                    _ => {}
                }
            }
        }
        Ok(m)
    }

    /// Parses one serialized stanza (tests and tools); the default namespace is the
    /// component's unless the text declares one.
    pub fn from_xml(xml: &str) -> Result<InMessage, String> {
        let root = xml.split('>').next().unwrap_or("");
        let wrapped = if root.contains("xmlns=") {
            xml.to_owned()
        } else {
            xml.replacen("<message", "<message xmlns='jabber:component:accept'", 1)
        };
        let e: minidom::Element = wrapped.parse().map_err(|e| format!("{e}"))?;
        InMessage::from_element(&e).map_err(|e| e.to_string())
    }
}

/// An outgoing message stanza. `from` is always in the component domain.
#[derive(Clone, Debug, PartialEq)]
pub struct OutMessage {
    pub from: Jid,
    pub to: Jid,
    /// `None`: no `type` attribute (RFC 7572 §5's `normal`).
    pub kind: Option<MessageType>,
    pub id: Option<String>,
    pub lang: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    pub thread: Option<String>,
    /// A XEP-0184 `<received id='…'/>` child.
    pub receipt_received: Option<String>,
    pub error: Option<StanzaErrorOut>,
}

impl OutMessage {
    /// A message with no type and no children.
    pub fn new(from: Jid, to: Jid) -> OutMessage {
        OutMessage {
            from,
            to,
            kind: None,
            id: None,
            lang: None,
            subject: None,
            body: None,
            thread: None,
            receipt_received: None,
            error: None,
        }
    }

    /// A `type='error'` message from `from` to `to` carrying `id`, with `by` = the domain of
    /// `from` (the component) and the condition's default error type (RFC 6120 §8.3). The
    /// payload is not echoed: clients match errors on `id`.
    pub fn error(
        from: Jid,
        to: Jid,
        id: Option<String>,
        condition: DefinedCondition,
        text: Option<String>,
    ) -> OutMessage {
        let by = Some(from.domain().to_string());
        OutMessage {
            kind: Some(MessageType::Error),
            id,
            error: Some(StanzaErrorOut {
                kind: default_error_type(&condition),
                condition,
                text,
                by,
            }),
            ..OutMessage::new(from, to)
        }
    }

    /// The error reply to `req`: `to` and `from` swapped, `id` echoed. `None` for a stanza
    /// without `from` and for an error stanza (never answer an error with an error).
    pub fn error_reply(
        req: &InMessage,
        condition: DefinedCondition,
        text: Option<String>,
    ) -> Option<OutMessage> {
        if req.kind == MessageType::Error {
            return None;
        }
        let from = req.from.clone()?;
        Some(OutMessage::error(
            req.to.clone(),
            from,
            req.id.clone(),
            condition,
            text,
        ))
    }

    /// Serializes with single-quoted attributes, children in the order subject, body, thread,
    /// receipt, error. The namespace is inherited from the component stream.
    pub fn write_xml(&self, out: &mut String) {
        out.push_str("<message from='");
        escape_attr_exact(out, self.from.as_str());
        out.push_str("' to='");
        escape_attr_exact(out, self.to.as_str());
        out.push('\'');
        if let Some(t) = self.kind {
            out.push_str(" type='");
            out.push_str(t.as_str());
            out.push('\'');
        }
        for (name, v) in [(" id='", &self.id), (" xml:lang='", &self.lang)] {
            if let Some(v) = v {
                out.push_str(name);
                escape_attr_exact(out, v);
                out.push('\'');
            }
        }
        if self.subject.is_none()
            && self.body.is_none()
            && self.thread.is_none()
            && self.receipt_received.is_none()
            && self.error.is_none()
        {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for (name, v) in [
            ("subject", &self.subject),
            ("body", &self.body),
            ("thread", &self.thread),
        ] {
            if let Some(v) = v {
                out.push('<');
                out.push_str(name);
                out.push('>');
                escape_text_exact(out, v);
                out.push_str("</");
                out.push_str(name);
                out.push('>');
            }
        }
        if let Some(id) = &self.receipt_received {
            out.push_str("<received xmlns='urn:xmpp:receipts' id='");
            escape_attr_exact(out, id);
            out.push_str("'/>");
        }
        if let Some(e) = &self.error {
            e.write_xml(out, escape_text_exact, escape_attr_exact);
        }
        out.push_str("</message>");
    }

    pub fn to_xml(&self) -> String {
        let mut s = String::with_capacity(200 + self.body.as_ref().map_or(0, String::len));
        self.write_xml(&mut s);
        s
    }

    /// The same stanza as a DOM element in `jabber:component:accept`.
    pub fn to_element(&self) -> minidom::Element {
        let own = self.to_xml();
        let mut xml = String::with_capacity(own.len() + 40);
        // Our own serialization inside the namespace declaration; write_xml's output is
        // well-formed by construction, so the fallback is never taken for valid Jids.
        xml.push_str("<message xmlns='jabber:component:accept'");
        xml.push_str(own.get("<message".len()..).unwrap_or_default());
        xml.parse::<minidom::Element>()
            .unwrap_or_else(|_| minidom::Element::builder("message", NS_COMPONENT).build())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn jid(s: &str) -> Jid {
        Jid::new(s).unwrap()
    }

    #[test]
    fn parses_the_example_of_10_2_2() {
        let m = InMessage::from_xml(
            "<message from='romeo@example.net/orchard' to='juliet*example.com@sip.example.net' \
             type='chat' id='m-101' xml:lang='en'>\
             <body>Meet me at the orchard wall at nine.</body>\
             <thread>e2b4c6a0-5f7d-4c1a-9d3b-6a1f0c9e2d11</thread>\
             <active xmlns='http://jabber.org/protocol/chatstates'/>\
             <request xmlns='urn:xmpp:receipts'/></message>",
        )
        .unwrap();
        assert_eq!(m.from, Some(jid("romeo@example.net/orchard")));
        assert_eq!(m.kind, MessageType::Chat);
        assert_eq!(m.id.as_deref(), Some("m-101"));
        assert_eq!(m.lang.as_deref(), Some("en"));
        assert_eq!(
            m.bodies,
            [LangText::new(None, "Meet me at the orchard wall at nine.")]
        );
        assert_eq!(
            m.thread.as_deref(),
            Some("e2b4c6a0-5f7d-4c1a-9d3b-6a1f0c9e2d11")
        );
        assert_eq!(m.chat_state.as_deref(), Some("active"));
        assert!(m.receipt_request);
        assert_eq!(m.receipt_received, None);
    }

    #[test]
    fn lenient_type_languages_receipts_and_errors() {
        let m = InMessage::from_xml(
            "<message to='a@b' type='urgent'><body xml:lang='de'>Hallo</body><body>Hi</body>\
             <body xml:lang='de'>again</body><subject>S</subject>\
             <received xmlns='urn:xmpp:receipts' id='x'/></message>",
        )
        .unwrap();
        assert_eq!(m.from, None);
        assert_eq!(m.kind, MessageType::Normal);
        assert_eq!(m.type_attr.as_deref(), Some("urgent"));
        assert_eq!(
            m.bodies,
            [
                LangText::new(Some("de"), "Hallo"),
                LangText::new(None, "Hi")
            ]
        );
        assert_eq!(m.subjects, [LangText::new(None, "S")]);
        assert_eq!(m.receipt_received.as_deref(), Some("x"));
        let e = InMessage::from_xml(
            "<message from='romeo@example.net' to='j*e@sip.example.net' type='error' id='sipm-1'>\
             <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             </error></message>",
        )
        .unwrap();
        assert_eq!(e.kind, MessageType::Error);
        assert_eq!(e.error, Some(DefinedCondition::ServiceUnavailable));
        assert_eq!(
            InMessage::from_xml("<message from='a@b'/>"),
            Err("message without 'to'".to_owned())
        );
        assert!(InMessage::from_xml("<presence to='a@b'/>").is_err());
    }

    #[test]
    fn serializes_the_stanza_of_10_3_3() {
        let m = OutMessage {
            kind: Some(MessageType::Chat),
            id: Some("sipm-5c0e7a9b31d2f468".into()),
            lang: Some("it".into()),
            subject: Some("Stasera".into()),
            body: Some("A domani, amore mio. 🌙".into()),
            thread: Some("7f1c9e02@ua7.example.com".into()),
            ..OutMessage::new(
                jid("juliet*example.com@sip.example.net"),
                jid("romeo@example.net"),
            )
        };
        assert_eq!(
            m.to_xml(),
            "<message from='juliet*example.com@sip.example.net' to='romeo@example.net' \
             type='chat' id='sipm-5c0e7a9b31d2f468' xml:lang='it'><subject>Stasera</subject>\
             <body>A domani, amore mio. 🌙</body><thread>7f1c9e02@ua7.example.com</thread></message>"
        );
        let e = m.to_element();
        assert_eq!(e.ns(), NS_COMPONENT);
        let back = InMessage::from_element(&e).unwrap();
        assert_eq!(
            back.bodies,
            [LangText::new(None, "A domani, amore mio. 🌙")]
        );
        assert_eq!(back.subjects, [LangText::new(None, "Stasera")]);
        assert_eq!(back.lang.as_deref(), Some("it"));
    }

    #[test]
    fn error_reply_swaps_addresses_and_never_answers_an_error() {
        let req = InMessage::from_xml(
            "<message from='romeo@example.net/orchard' to='juliet*example.com@sip.example.net' id='m-101'><body>x</body></message>",
        )
        .unwrap();
        let r = OutMessage::error_reply(
            &req,
            DefinedCondition::ItemNotFound,
            Some("SIP 404 Not Found".into()),
        )
        .unwrap();
        assert_eq!(
            r.to_xml(),
            "<message from='juliet*example.com@sip.example.net' to='romeo@example.net/orchard' \
             type='error' id='m-101'><error type='cancel' by='sip.example.net'>\
             <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>SIP 404 Not Found</text>\
             </error></message>"
        );
        let mut err = req.clone();
        err.kind = MessageType::Error;
        assert_eq!(
            OutMessage::error_reply(&err, DefinedCondition::BadRequest, None),
            None
        );
        let mut anon = req;
        anon.from = None;
        assert_eq!(
            OutMessage::error_reply(&anon, DefinedCondition::BadRequest, None),
            None
        );
    }

    #[test]
    fn receipt_stanza() {
        let m = OutMessage {
            receipt_received: Some("m-101".into()),
            ..OutMessage::new(
                jid("juliet*example.com@sip.example.net"),
                jid("romeo@example.net/orchard"),
            )
        };
        assert_eq!(
            m.to_xml(),
            "<message from='juliet*example.com@sip.example.net' to='romeo@example.net/orchard'>\
             <received xmlns='urn:xmpp:receipts' id='m-101'/></message>"
        );
        let back = InMessage::from_element(&m.to_element()).unwrap();
        assert_eq!(back.receipt_received.as_deref(), Some("m-101"));
    }

    /// What a parser gives back for a text we escaped: characters XML 1.0 cannot carry are
    /// U+FFFD, everything else is unchanged. (The IM tests use it too.)
    pub(crate) fn xml_safe(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                '\t' | '\n' | '\r' => c,
                '\u{0}'..='\u{1f}' | '\u{FFFE}' | '\u{FFFF}' => '\u{FFFD}',
                _ => c,
            })
            .collect()
    }

    proptest! {
        /// Any text in any field of an outgoing stanza parses back to the same text (with
        /// U+FFFD for what XML cannot carry): markup, `]]>`, CR, tabs and controls included.
        #[test]
        fn serialization_parses_back(
            body in any::<String>(),
            subject in "(?s).{0,40}",
            thread in "(?s).{0,40}",
            id in "(?s).{0,40}",
            text in "(?s).{0,40}",
        ) {
            let m = OutMessage {
                kind: Some(MessageType::Chat),
                id: Some(id.clone()),
                subject: Some(subject.clone()),
                body: Some(body.clone()),
                thread: Some(thread.clone()),
                ..OutMessage::new(jid("a*b.example@sip.example.net"), jid("romeo@example.net"))
            };
            let back = InMessage::from_xml(&m.to_xml()).map_err(TestCaseError::fail)?;
            prop_assert_eq!(&back.bodies, &vec![LangText::new(None, xml_safe(&body))]);
            prop_assert_eq!(&back.subjects, &vec![LangText::new(None, xml_safe(&subject))]);
            prop_assert_eq!(back.thread, Some(xml_safe(&thread)));
            prop_assert_eq!(back.id, Some(xml_safe(&id)));
            let e = OutMessage::error(
                jid("a*b.example@sip.example.net"),
                jid("romeo@example.net/x"),
                Some(id.clone()),
                DefinedCondition::PolicyViolation,
                Some(text),
            );
            let back = InMessage::from_xml(&e.to_xml()).map_err(TestCaseError::fail)?;
            prop_assert_eq!(back.id, Some(xml_safe(&id)));
            prop_assert_eq!(back.error, Some(DefinedCondition::PolicyViolation));
        }
    }
}
