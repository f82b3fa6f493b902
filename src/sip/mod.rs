//! SIP, as much of it as a presence gateway needs: rsip for the grammar, and a thin layer of
//! ours for what rsip 0.4 lacks (typed `Event` with `id`, `Subscription-State`, `SIP-ETag`,
//! `SIP-If-Match`, `Min-Expires`, compact header forms, Content-Length framing of streams).
//!
//! A message is parsed once, at the edge, into a [`SipRequest`] or [`SipResponse`]: a struct of
//! the typed fields the state machines use. Outgoing messages are [`OutRequest`] and
//! [`OutResponse`] values; the transport adds the top `Via` (it owns branches and
//! retransmissions) and encodes them with [`encode`].

pub mod encode;
pub mod framing;
pub mod headers;
pub mod parse;

pub use headers::{Event, SubState, SubscriptionState};

/// SIP methods the gateway speaks; everything else is `Other`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Subscribe,
    Notify,
    Publish,
    Options,
    Message,
    Ack,
    Bye,
    Cancel,
    Invite,
    Register,
    Info,
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Publish => "PUBLISH",
            Method::Options => "OPTIONS",
            Method::Message => "MESSAGE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Invite => "INVITE",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Other(s) => s,
        }
    }
    pub fn parse(s: &str) -> Method {
        match s {
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "PUBLISH" => Method::Publish,
            "OPTIONS" => Method::Options,
            "MESSAGE" => Method::Message,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "INVITE" => Method::Invite,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            other => Method::Other(other.to_owned()),
        }
    }
}

/// A `From`/`To`/`Contact`-style name-addr: the URI as text (exactly as received, so that
/// user-part spelling and escapes survive), its display name and its `tag` parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    /// The URI without the angle brackets, e.g. `sip:juliet@example.com`.
    pub uri: String,
    pub tag: Option<String>,
}

/// A parsed inbound request with the fields the gateway acts on.
#[derive(Clone, Debug, PartialEq)]
pub struct SipRequest {
    pub method: Method,
    /// The Request-URI as text.
    pub uri: String,
    /// Every `Via` header value, top first, exactly as received (copied into responses).
    pub via: Vec<String>,
    pub from: NameAddr,
    pub to: NameAddr,
    pub call_id: String,
    pub cseq: u32,
    pub cseq_method: Method,
    pub max_forwards: Option<u32>,
    pub contact: Option<NameAddr>,
    /// `Record-Route` entries, in the order received, each a name-addr text like `<sip:p;lr>`.
    pub record_route: Vec<String>,
    /// `Route` entries in the order received.
    pub route: Vec<String>,
    pub event: Option<Event>,
    /// `Some(Err(text))` when the header is present but does not parse.
    pub subscription_state: Option<Result<SubscriptionState, String>>,
    pub expires: Option<u32>,
    /// Media ranges of all `Accept` headers, lowercased, parameters dropped.
    pub accept: Vec<String>,
    /// Option tags of `Require`.
    pub require: Vec<String>,
    /// `Content-Type` without parameters, lowercased.
    pub content_type: Option<String>,
    pub sip_if_match: Option<String>,
    pub body: Vec<u8>,
}

/// A parsed response to one of our requests.
#[derive(Clone, Debug, PartialEq)]
pub struct SipResponse {
    pub status: u16,
    pub reason: String,
    pub via: Vec<String>,
    pub from: NameAddr,
    pub to: NameAddr,
    pub call_id: String,
    pub cseq: u32,
    pub cseq_method: Method,
    pub contact: Option<NameAddr>,
    pub record_route: Vec<String>,
    pub expires: Option<u32>,
    pub min_expires: Option<u32>,
    /// `Retry-After` in seconds.
    pub retry_after: Option<u32>,
    pub sip_etag: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Any parsed message.
#[derive(Clone, Debug, PartialEq)]
pub enum SipMessage {
    Request(SipRequest),
    Response(SipResponse),
}

/// Where the transport should send an [`OutRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Out of dialog: the configured outbound proxy (`sip.server_address`).
    OutboundProxy,
    /// In dialog: the first `Route` if any, else the Request-URI; the transport may still use
    /// the outbound proxy when it is configured to force it.
    InDialog,
}

/// A request the gateway wants sent. No `Via`: the transport adds it with a fresh branch, and
/// `Content-Length` is computed when encoding.
#[derive(Clone, Debug, PartialEq)]
pub struct OutRequest {
    pub method: Method,
    pub uri: String,
    /// `Route` header values in order (each like `<sip:127.0.0.1;lr>`).
    pub route: Vec<String>,
    pub from: NameAddr,
    pub to: NameAddr,
    pub call_id: String,
    pub cseq: u32,
    /// The Contact URI (without brackets); `None` for PUBLISH.
    pub contact: Option<String>,
    /// Further headers in order, as (name, value).
    pub headers: Vec<(&'static str, String)>,
    pub content_type: Option<&'static str>,
    pub body: Vec<u8>,
    pub destination: Destination,
}

/// A response the gateway wants sent to an inbound request.
#[derive(Clone, Debug, PartialEq)]
pub struct OutResponse {
    pub status: u16,
    pub reason: String,
    /// Copied from the request, all of them, in order.
    pub via: Vec<String>,
    pub from: NameAddr,
    /// The request's `To`, with our tag added when the request had none and we create a dialog.
    pub to: NameAddr,
    pub call_id: String,
    pub cseq: u32,
    pub cseq_method: Method,
    pub contact: Option<String>,
    /// `Record-Route` copied back on dialog-creating 2xx responses.
    pub record_route: Vec<String>,
    pub headers: Vec<(&'static str, String)>,
    pub content_type: Option<&'static str>,
    pub body: Vec<u8>,
}

/// The standard reason phrase of a status code.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        412 => "Conditional Request Failed",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        483 => "Too Many Hops",
        489 => "Bad Event",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

impl OutResponse {
    /// A response to `req` with the standard reason phrase. When the request carried no To-tag,
    /// `to_tag` is added, or for any final response without one, a tag derived from the Call-ID
    /// and From-tag: RFC 3261 §8.2.6.2 wants a tag on every non-100 response, and deriving it
    /// keeps the tag identical on retransmissions without any state.
    pub fn to_request(req: &SipRequest, status: u16, to_tag: Option<&str>) -> OutResponse {
        let mut to = req.to.clone();
        if to.tag.is_none() {
            to.tag = match to_tag {
                Some(t) => Some(t.to_owned()),
                None if status > 100 => Some(derived_tag(req)),
                None => None,
            };
        }
        OutResponse {
            status,
            reason: reason_phrase(status).to_owned(),
            via: req.via.clone(),
            from: req.from.clone(),
            to,
            call_id: req.call_id.clone(),
            cseq: req.cseq,
            cseq_method: req.cseq_method.clone(),
            contact: None,
            record_route: Vec::new(),
            headers: Vec::new(),
            content_type: None,
            body: Vec::new(),
        }
    }

    pub fn with_reason(mut self, reason: impl Into<String>) -> OutResponse {
        self.reason = reason.into();
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> OutResponse {
        self.headers.push((name, value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A stable tag for a stateless response: FNV-1a of Call-ID and From-tag.
fn derived_tag(req: &SipRequest) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let tag = req.from.tag.as_deref().unwrap_or("");
    for b in req.call_id.bytes().chain([0u8]).chain(tag.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("sl-{:012x}", h & 0xffff_ffff_ffff)
}

impl OutRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
