//! The XEP-0114 component link (spec §8): one TCP connection to the XMPP server, handshake,
//! inbound presence to the gateway, outbound presence from it, reconnect with backoff. With
//! instant messaging on ([`XmppComponent::start_with_messages`]), `<message/>` stanzas too:
//! inbound ones parsed leniently (`InMessage::from_element`) and handed on as [`MessageIn`],
//! outbound ones ([`SendMessage`]) through the same outbox as presence; without it, an inbound
//! `<message/>` is answered `service-unavailable` here.
//!
//! The stream is implemented here on tokio + minidom's incremental parser (`rxml` raw events
//! fed into minidom's `TreeBuilder`) rather than with tokio-xmpp 6's `Component`, because that
//! API (a) hides the socket, so no TCP_NODELAY; (b) reports a `<stream:error/>` during the
//! handshake as a bare `AuthError::ComponentFail`, so `not-authorized` / `host-unknown` /
//! `conflict` cannot be told apart (cases 94, 95); (c) yields typed `xmpp_parsers` stanzas, so a
//! presence with a bad `<show/>` or `<priority/>` is dropped before the lenient
//! `InPresence::from_element` can see it (cases 37, 38); (d) ends its `Stream` on one bad
//! stanza without telling why, and never answers not-well-formed XML (case 97).
//!
//! Structure: the actor owns an [`Outbox`] (bounded queue shared with its I/O task) and the I/O
//! task; the task runs connect → handshake → session → backoff until [`CloseStream`], and
//! reports to the gateway through the `inbound` and `status` recipients.
//!
//! Shutdown is two messages: [`StopInbound`] (inbound stanzas are no longer forwarded, so no new
//! SIP work starts; outbound ones still go out) and [`CloseStream`] (write what is queued, then
//! `</stream:stream>`, wait briefly for the server's closing tag, end the task).

use crate::messages::{ComponentStatus, MessageIn, SendMessage, SendPresence, StanzaIn, StanzasIn};
use actix::prelude::*;
use minidom::rxml::{self, Parse as _};
use minidom::tree_builder::TreeBuilder;
use minidom::Element;
use pua_xmpp::message::InMessage;
use pua_xmpp::stanza::{InPresence, NS_COMPONENT, NS_STANZAS};
use pua_xmpp::xml::escape_attr;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

/// Namespace of the stream element and `<stream:error/>`.
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
/// Namespace of stream error conditions.
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// A single stanza larger than this ends the session (memory bound on a misbehaving server).
const MAX_STANZA_BYTES: usize = 1 << 20;
/// A session at least this long resets the reconnect delay to its initial value.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Stream errors that mean "fix the configuration": retrying fast would be a hot loop.
const FATAL_CONDITIONS: [&str; 3] = ["not-authorized", "host-unknown", "conflict"];

/// Settings of the component link. `Debug` hides the secret.
#[derive(Clone)]
pub struct ComponentConfig {
    /// Component name: stream `to`, and the domain inbound stanzas must be addressed to.
    pub domain: String,
    /// `host:port` of the server's component listener (names are resolved on each attempt).
    pub server: String,
    pub secret: String,
    /// Interval of whitespace keepalives.
    pub keepalive: Duration,
    /// Outbound stanzas kept while the link is down; the oldest is dropped beyond this.
    pub queue_limit: usize,
    /// Cap of the doubling reconnect delay.
    pub reconnect_max: Duration,
    /// First reconnect delay (1 s in production).
    pub reconnect_initial: Duration,
    /// Minimum delay after `not-authorized` / `host-unknown` / `conflict` (30 s in production).
    pub fatal_backoff: Duration,
    /// `conflict` retried sooner: (first delay, cap), doubling in between. Set for an instance
    /// that holds the store lease (issue 17): the `conflict` then comes from the old leader's
    /// connection, which Prosody drops soon (the old one exits on resume, or its TCP dies);
    /// the new leader must not wait 30 s on top. `None`: `conflict` waits `fatal_backoff`.
    pub conflict_retry: Option<(Duration, Duration)>,
    /// Limit for TCP connect, and separately for the server's header and handshake reply.
    pub connect_timeout: Duration,
    /// Largest inbound stanza accepted; a larger one ends the session (`limits.max_stanza_bytes`).
    pub max_stanza: usize,
}

impl fmt::Debug for ComponentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComponentConfig")
            .field("domain", &self.domain)
            .field("server", &self.server)
            .field("secret", &"<redacted>")
            .field("keepalive", &self.keepalive)
            .field("queue_limit", &self.queue_limit)
            .field("reconnect_max", &self.reconnect_max)
            .field("reconnect_initial", &self.reconnect_initial)
            .field("fatal_backoff", &self.fatal_backoff)
            .field("conflict_retry", &self.conflict_retry)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ComponentConfig {
    /// Production settings from the `[xmpp]` section.
    pub fn from_xmpp(x: &crate::config::XmppConfig) -> ComponentConfig {
        ComponentConfig {
            domain: x.component_domain.clone(),
            server: x.server.clone(),
            secret: x.secret.clone(),
            keepalive: Duration::from_secs(x.keepalive_secs.max(1)),
            queue_limit: x.queue_limit.max(1),
            reconnect_max: Duration::from_secs(x.reconnect_max_secs.max(1)),
            reconnect_initial: Duration::from_secs(1),
            fatal_backoff: Duration::from_secs(30),
            conflict_retry: None,
            connect_timeout: Duration::from_secs(30),
            max_stanza: MAX_STANZA_BYTES,
        }
    }

    /// The settings of a lease-holding instance (`store.lease`): a `conflict` is retried
    /// after 1 s, doubling up to 5 s (see [`ComponentConfig::conflict_retry`]).
    pub fn with_lease(mut self) -> ComponentConfig {
        self.conflict_retry = Some((Duration::from_secs(1), Duration::from_secs(5)));
        self
    }

    /// The same with the stanza size limit of `limits.max_stanza_bytes`.
    pub fn with_max_stanza(mut self, max: usize) -> ComponentConfig {
        self.max_stanza = max.max(1024);
        self
    }
}

/// The reconnect delay after a failed or lost session.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
    fatal: Duration,
    /// `conflict_retry`: (next delay, first, cap).
    conflict: Option<(Duration, Duration, Duration)>,
}

impl Backoff {
    pub fn new(cfg: &ComponentConfig) -> Backoff {
        let initial = cfg.reconnect_initial.max(Duration::from_millis(1));
        Backoff {
            next: initial,
            initial,
            max: cfg.reconnect_max.max(initial),
            fatal: cfg.fatal_backoff,
            conflict: cfg
                .conflict_retry
                .map(|(first, cap)| (first, first, cap.max(first))),
        }
    }

    /// The delay after `err`: a `conflict` under `conflict_retry` backs off on its own short
    /// scale; everything else as [`Backoff::next_delay`].
    pub fn delay_after(&mut self, conflict: bool, fatal: bool) -> Duration {
        match (&mut self.conflict, conflict) {
            (Some((next, _, cap)), true) => {
                let d = *next;
                *next = (*next * 2).min(*cap);
                d
            }
            _ => self.next_delay(fatal),
        }
    }
    /// The delay before the next attempt; doubles up to the cap. Fatal causes wait at least
    /// `fatal_backoff` (cases 94, 95: no hot loop).
    pub fn next_delay(&mut self, fatal: bool) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        if fatal {
            d.max(self.fatal)
        } else {
            d
        }
    }
    /// After a session that stayed up for a while.
    pub fn reset(&mut self) {
        self.next = self.initial;
        if let Some((next, first, _)) = &mut self.conflict {
            *next = *first;
        }
    }
}

/// Bounded queue of serialized outbound stanzas, shared by the actor (producer) and its I/O
/// task (consumer). Survives reconnects: stanzas wait here while the link is down.
pub struct Outbox {
    inner: Mutex<OutboxInner>,
    notify: Notify,
    /// `pua_xmpp_xmpp_outbox_stanzas` and `pua_xmpp_xmpp_stanzas_dropped_total`.
    queued_gauge: metrics::Gauge,
    dropped_counter: metrics::Counter,
}

struct OutboxInner {
    queue: VecDeque<String>,
    limit: usize,
    dropped: u64,
}

impl Outbox {
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            inner: Mutex::new(OutboxInner {
                queue: VecDeque::new(),
                limit: limit.max(1),
                dropped: 0,
            }),
            notify: Notify::new(),
            queued_gauge: metrics::gauge!("pua_xmpp_xmpp_outbox_stanzas"),
            dropped_counter: metrics::counter!("pua_xmpp_xmpp_stanzas_dropped_total"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxInner> {
        // A panic elsewhere while holding the lock leaves a consistent VecDeque: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a stanza; beyond the limit the oldest one is dropped and counted.
    pub fn push(&self, stanza: String) {
        {
            let mut g = self.lock();
            if g.queue.len() >= g.limit {
                g.queue.pop_front();
                g.dropped += 1;
                self.dropped_counter.increment(1);
                let dropped = g.dropped;
                if dropped % 1000 == 1 {
                    tracing::warn!(
                        dropped_total = dropped,
                        limit = g.limit,
                        "XMPP outbound queue full: dropped the oldest presence"
                    );
                }
            }
            g.queue.push_back(stanza);
            self.queued_gauge.set(g.queue.len() as f64);
        }
        self.notify.notify_one();
    }

    /// Takes everything queued, oldest first.
    fn take_all(&self) -> Vec<String> {
        let all = self.lock().queue.drain(..).collect();
        self.queued_gauge.set(0.0);
        all
    }

    /// Puts back a batch that could not be written, ahead of newer stanzas (limit still holds).
    fn requeue_front(&self, batch: Vec<String>) {
        let mut g = self.lock();
        for s in batch.into_iter().rev() {
            if g.queue.len() >= g.limit {
                g.dropped += 1;
                self.dropped_counter.increment(1);
                continue;
            }
            g.queue.push_front(s);
        }
        self.queued_gauge.set(g.queue.len() as f64);
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Stanzas dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

/// Counter handles by stanza type, made on first use: `counter!` builds its key and looks it
/// up in the recorder's registry on every call, a cost paid twice per subscription set-up.
#[derive(Default)]
struct TypeCounters {
    handles: Vec<(&'static str, metrics::Counter)>,
}

impl TypeCounters {
    fn inc(&mut self, kind: &'static str, make: impl FnOnce(&'static str) -> metrics::Counter) {
        if let Some((_, c)) = self.handles.iter().find(|(k, _)| *k == kind) {
            c.increment(1);
            return;
        }
        let c = make(kind);
        c.increment(1);
        self.handles.push((kind, c));
    }
}

/// Shutdown switches shared by the actor and its I/O task.
struct Control {
    /// Set by [`StopInbound`]: inbound presence is dropped instead of forwarded.
    draining: AtomicBool,
    /// Inbound presences dropped while draining (reported in the close log line).
    dropped_inbound: AtomicU64,
}

/// The component actor: queues outbound presence, owns the I/O task.
pub struct XmppComponent {
    cfg: Arc<ComponentConfig>,
    outbox: Arc<Outbox>,
    inbound: Recipient<StanzaIn>,
    inbound_batches: Option<Recipient<StanzasIn>>,
    /// Where inbound `<message/>` stanzas go (instant messaging on); `None`: they are
    /// answered `service-unavailable` at the edge.
    messages: Option<Recipient<MessageIn>>,
    status: Recipient<ComponentStatus>,
    control: Arc<Control>,
    /// `Some(wait)` once [`CloseStream`] arrived: close, waiting up to `wait` for the server.
    close_tx: watch::Sender<Option<Duration>>,
    close_rx: watch::Receiver<Option<Duration>>,
    task: Option<tokio::task::JoinHandle<CloseOutcome>>,
    out_counters: TypeCounters,
}

/// Graceful shutdown, first step: stop forwarding inbound stanzas (they would start new SIP
/// transactions the shutdown would not wait for). Outbound presence still goes out.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopInbound;

/// Graceful shutdown, last step for the link: write the queued stanzas and
/// `</stream:stream>`, wait up to `timeout` for the server's `</stream:stream>`, then end the
/// I/O task for good (no reconnect). The reply comes within about `timeout`.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "CloseOutcome")]
pub struct CloseStream {
    pub timeout: Duration,
}

/// How [`CloseStream`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    /// `</stream:stream>` was written after `flushed` queued stanzas; `server_closed` says
    /// whether the server answered with its own closing tag in time. `dropped_inbound`:
    /// presences that arrived after [`StopInbound`] and were not forwarded.
    Closed {
        flushed: usize,
        server_closed: bool,
        dropped_inbound: u64,
    },
    /// No session was up (server unreachable): nothing to close; `queued` stanzas are lost.
    NotConnected { queued: usize },
    /// Writing the close failed (the connection was already broken).
    WriteFailed(String),
    /// The I/O task did not end within the timeout and was aborted.
    TimedOut,
}

impl XmppComponent {
    /// Starts the actor; it connects at once and keeps reconnecting until stopped.
    pub fn start(
        cfg: ComponentConfig,
        inbound: Recipient<StanzaIn>,
        status: Recipient<ComponentStatus>,
    ) -> Addr<XmppComponent> {
        XmppComponent::start_batched(cfg, inbound, None, status)
    }

    /// [`XmppComponent::start`], with the presence stanzas of one read handed to `batches` as
    /// one [`StanzasIn`] when there are several (a lone stanza still goes to `inbound`).
    pub fn start_batched(
        cfg: ComponentConfig,
        inbound: Recipient<StanzaIn>,
        batches: Option<Recipient<StanzasIn>>,
        status: Recipient<ComponentStatus>,
    ) -> Addr<XmppComponent> {
        XmppComponent::start_with_messages(cfg, inbound, batches, None, status)
    }

    /// [`XmppComponent::start_batched`], with inbound `<message/>` stanzas parsed
    /// ([`InMessage::from_element`]) and handed to `messages` when it is given.
    pub fn start_with_messages(
        cfg: ComponentConfig,
        inbound: Recipient<StanzaIn>,
        batches: Option<Recipient<StanzasIn>>,
        messages: Option<Recipient<MessageIn>>,
        status: Recipient<ComponentStatus>,
    ) -> Addr<XmppComponent> {
        let outbox = Arc::new(Outbox::new(cfg.queue_limit));
        let (close_tx, close_rx) = watch::channel(None);
        XmppComponent {
            cfg: Arc::new(cfg),
            outbox,
            inbound,
            inbound_batches: batches,
            messages,
            status,
            control: Arc::new(Control {
                draining: AtomicBool::new(false),
                dropped_inbound: AtomicU64::new(0),
            }),
            close_tx,
            close_rx,
            task: None,
            out_counters: TypeCounters::default(),
        }
        .start()
    }
}

impl Actor for XmppComponent {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        let link = Link {
            cfg: self.cfg.clone(),
            outbox: self.outbox.clone(),
            inbound: self.inbound.clone(),
            inbound_batches: self.inbound_batches.clone(),
            messages: self.messages.clone(),
            status: self.status.clone(),
            control: self.control.clone(),
        };
        self.task = Some(actix::spawn(link.run(self.close_rx.clone())));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Handler<SendPresence> for XmppComponent {
    type Result = ();
    fn handle(&mut self, msg: SendPresence, _ctx: &mut Self::Context) {
        // A `from` outside our domain would make the server kill the whole stream
        // (`invalid-from`, §8): drop the one stanza instead.
        if !self.ours(msg.0.from.domain().as_str()) {
            tracing::error!(from = %msg.0.from, to = %msg.0.to, component = %self.cfg.domain, "not sending presence whose 'from' is outside the component domain");
            return;
        }
        let mut s = String::with_capacity(160);
        msg.0.write_xml(&mut s);
        let kind = msg.0.kind.as_attr().unwrap_or("available");
        self.out_counters.inc(
            kind,
            |k| metrics::counter!("pua_xmpp_stanzas_out_total", "type" => k),
        );
        self.outbox.push(s);
    }
}

impl XmppComponent {
    /// Whether `from` may be the `from` of a stanza we send: a `from` outside our domain would
    /// make the server kill the whole stream (`invalid-from`, §8).
    fn ours(&self, from_domain: &str) -> bool {
        let d = &self.cfg.domain;
        from_domain.eq_ignore_ascii_case(d)
            || from_domain
                .strip_suffix(d.as_str())
                .is_some_and(|p| p.ends_with('.'))
    }
}

/// A `<message/>` stanza, queued like presence (the same outbox, the same limit).
impl Handler<SendMessage> for XmppComponent {
    type Result = ();
    fn handle(&mut self, msg: SendMessage, _ctx: &mut Self::Context) {
        let m = msg.0;
        if !self.ours(m.from.domain().as_str()) {
            tracing::error!(from = %m.from, to = %m.to, component = %self.cfg.domain, "not sending a message whose 'from' is outside the component domain");
            return;
        }
        let mut s = String::with_capacity(256);
        m.write_xml(&mut s);
        let kind = if m.error.is_some() {
            "message_error"
        } else {
            "message"
        };
        self.out_counters.inc(
            kind,
            |k| metrics::counter!("pua_xmpp_stanzas_out_total", "type" => k),
        );
        self.outbox.push(s);
    }
}

/// A batch of stanzas: each as [`SendPresence`], queued together for one write.
impl Handler<crate::messages::SendPresences> for XmppComponent {
    type Result = ();
    fn handle(&mut self, msg: crate::messages::SendPresences, ctx: &mut Self::Context) {
        for p in msg.0 {
            <Self as Handler<SendPresence>>::handle(self, SendPresence(p), ctx);
        }
    }
}

impl Handler<StopInbound> for XmppComponent {
    type Result = ();
    fn handle(&mut self, _: StopInbound, _ctx: &mut Self::Context) {
        self.control.draining.store(true, Ordering::SeqCst);
    }
}

impl Handler<CloseStream> for XmppComponent {
    type Result = ResponseFuture<CloseOutcome>;
    fn handle(&mut self, msg: CloseStream, _ctx: &mut Self::Context) -> Self::Result {
        self.control.draining.store(true, Ordering::SeqCst);
        self.close_tx.send_replace(Some(msg.timeout));
        let queued = self.outbox.len();
        let Some(mut task) = self.task.take() else {
            return Box::pin(async move { CloseOutcome::NotConnected { queued } });
        };
        // The task waits `timeout` for the server itself; the margin covers the final writes.
        let limit = msg.timeout + Duration::from_millis(500);
        Box::pin(async move {
            match tokio::time::timeout(limit, &mut task).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(e)) => CloseOutcome::WriteFailed(format!("I/O task failed: {e}")),
                Err(_) => {
                    task.abort();
                    CloseOutcome::TimedOut
                }
            }
        })
    }
}

/// Why a session ended.
#[derive(Debug)]
pub enum LinkError {
    Connect(std::io::Error),
    Io(std::io::Error),
    Timeout(&'static str),
    /// `<stream:error/>` from the server.
    StreamError {
        condition: String,
        text: Option<String>,
    },
    /// The server closed the stream or the socket.
    Closed,
    /// The server sent XML we could not parse (we answered not-well-formed, case 97).
    BadXml(String),
    /// Well-formed but not what XEP-0114 says (e.g. no stream id).
    Protocol(String),
}

impl LinkError {
    fn is_fatal(&self) -> bool {
        matches!(self, LinkError::StreamError { condition, .. } if FATAL_CONDITIONS.contains(&condition.as_str()))
    }
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Connect(e) => write!(f, "connect failed: {e}"),
            LinkError::Io(e) => write!(f, "socket error: {e}"),
            LinkError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            LinkError::StreamError { condition, text } => {
                write!(f, "stream error <{condition}/>")?;
                if let Some(t) = text {
                    write!(f, ": {t}")?;
                }
                Ok(())
            }
            LinkError::Closed => f.write_str("server closed the stream"),
            LinkError::BadXml(e) => write!(f, "malformed XML from server: {e}"),
            LinkError::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

/// Lowercase hex SHA-1 of `stream_id + secret` (XEP-0114 handshake, case 93).
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let h = xmpp_parsers::component::Handshake::from_stream_id_and_password(
        stream_id.to_owned(),
        secret,
    );
    let mut out = String::with_capacity(40);
    for b in h.data.unwrap_or_default() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// What the component stream reader produced.
#[derive(Debug)]
pub enum StreamEvent {
    /// The server's stream header.
    Header { id: Option<String> },
    /// A complete top-level element (stanza, `<handshake/>`, `<stream:error/>`).
    Element(Element),
    /// A top-level `<presence/>` without children or text, read without building a tree.
    Presence(PresenceHead),
    /// `</stream:stream>`.
    End,
}

/// The attributes of a childless top-level `<presence/>` (unprefixed names, plus `xml:lang`).
#[derive(Debug, Default, PartialEq)]
pub struct PresenceHead {
    attrs: Vec<(String, String)>,
    lang: Option<String>,
}

impl PresenceHead {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The same [`InPresence`] (or error) as `InPresence::from_element` of the element.
    pub fn parse(&self) -> Result<InPresence, pua_xmpp::stanza::StanzaError> {
        let a = |n| self.attr(n);
        InPresence::from_attrs([a("from"), a("to"), a("type"), a("id")], self.lang.clone())
    }

    /// The head's attributes when the tree would read them the same way: unprefixed names
    /// (a default-namespace declaration is skipped) and `xml:lang`, each at most once.
    /// Anything else (other prefixes, duplicates) goes through the tree, which decides.
    fn of_events(events: &[rxml::RawEvent]) -> Option<PresenceHead> {
        let mut head = PresenceHead::default();
        for ev in events {
            let rxml::RawEvent::Attribute(_, (prefix, name), value) = ev else {
                continue;
            };
            match prefix.as_ref().map(|p| p.as_str()) {
                None if name.as_str() == "xmlns" => {}
                None => {
                    if head.attr(name.as_str()).is_some() {
                        return None;
                    }
                    head.attrs
                        .push((name.as_str().to_owned(), value.to_string()));
                }
                Some("xml") if name.as_str() == "lang" && head.lang.is_none() => {
                    head.lang = Some(value.to_string());
                }
                Some(_) => return None,
            }
        }
        Some(head)
    }
}

/// Incremental parser for the server side of the stream: rxml raw events into minidom
/// elements, one per top-level child of `<stream:stream>`.
///
/// Fast path (issue 7): the head of a top-level `<presence>` is held back from the tree; if
/// the element ends right after its head (no child, no text), it becomes a
/// [`StreamEvent::Presence`] read from its attributes, with no tree built and dropped. A child,
/// text or an attribute the fast path does not read replays the held events into the tree.
pub struct StreamParser {
    parser: rxml::RawParser,
    tree: TreeBuilder,
    depth: usize,
    stanza_bytes: usize,
    max_stanza: usize,
    events: VecDeque<StreamEvent>,
    /// The held-back head of a top-level `<presence>` (open, attributes, close).
    held: Vec<rxml::RawEvent>,
    holding: bool,
}

impl Default for StreamParser {
    fn default() -> Self {
        StreamParser::new()
    }
}

impl StreamParser {
    pub fn new() -> StreamParser {
        StreamParser::with_limit(MAX_STANZA_BYTES)
    }

    /// A parser that refuses stanzas larger than `max_stanza` bytes.
    pub fn with_limit(max_stanza: usize) -> StreamParser {
        StreamParser {
            parser: rxml::RawParser::new(),
            tree: TreeBuilder::new(),
            depth: 0,
            stanza_bytes: 0,
            max_stanza,
            events: VecDeque::new(),
            held: Vec::new(),
            holding: false,
        }
    }

    /// Hands the held-back presence head to the tree (the element is not childless after all).
    fn replay(&mut self) -> Result<(), String> {
        self.holding = false;
        for ev in std::mem::take(&mut self.held) {
            self.tree.process_event(ev).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Feeds bytes; complete events are queued for [`StreamParser::next_event`]. An error means
    /// the stream is unusable (not well-formed, or a stanza over the size limit).
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        loop {
            let before = data.len();
            let r = self.parser.parse(&mut data, false);
            if self.depth >= 2 {
                self.stanza_bytes += before - data.len();
                if self.stanza_bytes > self.max_stanza {
                    return Err(format!(
                        "stanza larger than {} bytes (limits.max_stanza_bytes)",
                        self.max_stanza
                    ));
                }
            }
            match r {
                Ok(Some(ev)) => self.on_event(ev)?,
                Ok(None) => return Ok(()),
                Err(rxml::error::EndOrError::NeedMoreData) => return Ok(()),
                Err(rxml::error::EndOrError::Error(e)) => return Err(e.to_string()),
            }
        }
    }

    pub fn next_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    fn on_event(&mut self, ev: rxml::RawEvent) -> Result<(), String> {
        use rxml::RawEvent as E;
        if self.holding {
            match ev {
                E::Attribute(..) | E::ElementHeadClose(..) => {
                    self.held.push(ev);
                    return Ok(());
                }
                E::ElementFoot(..) => {
                    if let Some(head) = PresenceHead::of_events(&self.held) {
                        self.holding = false;
                        self.held.clear();
                        self.depth = self.depth.saturating_sub(1);
                        self.events.push_back(StreamEvent::Presence(head));
                        return Ok(());
                    }
                    self.replay()?;
                }
                _ => self.replay()?,
            }
        } else if let E::ElementHeadOpen(_, (None, name)) = &ev {
            if self.depth == 1 && name.as_str() == "presence" {
                self.depth = 2;
                self.stanza_bytes = 0;
                self.holding = true;
                self.held.push(ev);
                return Ok(());
            }
        }
        match ev {
            E::XmlDeclaration(..) => Ok(()),
            E::ElementHeadOpen(..) => {
                self.depth += 1;
                if self.depth == 2 {
                    self.stanza_bytes = 0;
                }
                self.tree.process_event(ev).map_err(|e| e.to_string())
            }
            E::Attribute(..) => self.tree.process_event(ev).map_err(|e| e.to_string()),
            E::ElementHeadClose(..) => {
                self.tree.process_event(ev).map_err(|e| e.to_string())?;
                if self.depth == 1 {
                    let top = self
                        .tree
                        .top()
                        .ok_or_else(|| "stream header lost".to_owned())?;
                    if top.name() != "stream" || top.ns() != NS_STREAM {
                        return Err(format!(
                            "expected <stream:stream>, got <{}> in {:?}",
                            top.name(),
                            top.ns()
                        ));
                    }
                    let id = top.attr("id").map(str::to_owned);
                    self.events.push_back(StreamEvent::Header { id });
                }
                Ok(())
            }
            // Whitespace keepalives between stanzas would pile up as text of the stream element.
            E::Text(..) if self.depth < 2 => Ok(()),
            E::Text(..) => self.tree.process_event(ev).map_err(|e| e.to_string()),
            E::ElementFoot(..) => {
                self.tree.process_event(ev).map_err(|e| e.to_string())?;
                self.depth = self.depth.saturating_sub(1);
                match self.depth {
                    0 => self.events.push_back(StreamEvent::End),
                    1 => {
                        if let Some(el) = self.tree.unshift_child() {
                            self.events.push_back(StreamEvent::Element(el));
                        }
                    }
                    _ => {}
                }
                Ok(())
            }
        }
    }
}

/// What to do with one inbound top-level element.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// Forward to the gateway.
    Presence(Box<InPresence>),
    /// Write this reply on the stream.
    Reply(String),
    /// Nothing to do (already logged).
    Ignore,
}

fn push_attr(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("='");
    escape_attr(out, value);
    out.push('\'');
}

/// An error reply to an iq or message: `to`/`from` swapped, `id` echoed (RFC 6120 §8.3).
fn service_unavailable(kind: &str, el: &Element, from: &str) -> String {
    let mut s = String::with_capacity(200);
    s.push('<');
    s.push_str(kind);
    s.push_str(" type='error'");
    if let Some(to) = el.attr("to") {
        push_attr(&mut s, "from", to);
    }
    push_attr(&mut s, "to", from);
    if let Some(id) = el.attr("id") {
        push_attr(&mut s, "id", id);
    }
    s.push_str("><error type='cancel'><service-unavailable xmlns='");
    s.push_str(NS_STANZAS);
    s.push_str("'/></error></");
    s.push_str(kind);
    s.push('>');
    s
}

/// A parsed inbound presence (from the tree or [`PresenceHead`]): case 47, a bad presence is
/// dropped and logged; so is one addressed outside the component's domain.
pub fn classify_presence(
    domain: &str,
    parsed: Result<InPresence, pua_xmpp::stanza::StanzaError>,
    from: Option<&str>,
    to: Option<&str>,
) -> Inbound {
    match parsed {
        Err(e) => {
            tracing::warn!(error = %e, from = ?from, to = ?to, "dropping inbound presence");
            Inbound::Ignore
        }
        Ok(p) if !p.to.domain().as_str().eq_ignore_ascii_case(domain) => {
            tracing::warn!(to = %p.to, component = domain, "dropping presence addressed outside the component domain");
            Inbound::Ignore
        }
        Ok(p) => Inbound::Presence(Box::new(p)),
    }
}

/// Classifies an inbound element (case 47: bad presence dropped; case 96: disco#info).
pub fn classify_inbound(domain: &str, el: &Element) -> Inbound {
    match el.name() {
        "presence" => classify_presence(
            domain,
            InPresence::from_element(el),
            el.attr("from"),
            el.attr("to"),
        ),
        "iq" => {
            let Some(from) = el.attr("from") else {
                tracing::warn!("dropping iq without 'from'");
                return Inbound::Ignore;
            };
            match el.attr("type") {
                Some("get") | Some("set") => {
                    let disco = el.attr("type") == Some("get")
                        && el
                            .attr("to")
                            .is_some_and(|t| t.eq_ignore_ascii_case(domain))
                        && el.children().count() == 1
                        && el
                            .get_child("query", NS_DISCO_INFO)
                            .is_some_and(|q| q.attr("node").is_none());
                    if disco {
                        let mut s = String::with_capacity(300);
                        s.push_str("<iq type='result'");
                        push_attr(&mut s, "from", domain);
                        push_attr(&mut s, "to", from);
                        if let Some(id) = el.attr("id") {
                            push_attr(&mut s, "id", id);
                        }
                        s.push_str("><query xmlns='");
                        s.push_str(NS_DISCO_INFO);
                        s.push_str("'><identity category='gateway' type='sip' name='SIP presence gateway'/><feature var='");
                        s.push_str(NS_DISCO_INFO);
                        s.push_str("'/></query></iq>");
                        Inbound::Reply(s)
                    } else {
                        Inbound::Reply(service_unavailable("iq", el, from))
                    }
                }
                _ => Inbound::Ignore,
            }
        }
        "message" => {
            if el.attr("type") == Some("error") {
                return Inbound::Ignore;
            }
            match el.attr("from") {
                Some(from) => Inbound::Reply(service_unavailable("message", el, from)),
                None => Inbound::Ignore,
            }
        }
        other => {
            tracing::debug!(
                element = other,
                ns = el.ns(),
                "ignoring unexpected element on component stream"
            );
            Inbound::Ignore
        }
    }
}

/// Parses an inbound `<message/>` leniently and hands it to instant messaging: one that does
/// not parse (no `to`, a bad JID) or is addressed outside the component domain is dropped and
/// logged; while shutting down, messages are dropped like presence.
fn forward_message(link: &Link, to: &Recipient<MessageIn>, el: &Element) {
    let m = match InMessage::from_element(el) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, from = ?el.attr("from"), to = ?el.attr("to"), "dropping inbound message");
            return;
        }
    };
    if !m
        .to
        .domain()
        .as_str()
        .eq_ignore_ascii_case(&link.cfg.domain)
    {
        tracing::warn!(to = %m.to, component = %link.cfg.domain, "dropping message addressed outside the component domain");
        return;
    }
    if link.control.draining.load(Ordering::SeqCst) {
        link.control.dropped_inbound.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(to = %m.to, "shutting down: inbound message dropped");
        return;
    }
    metrics::counter!("pua_xmpp_stanzas_in_total", "type" => "message").increment(1);
    to.do_send(MessageIn(m));
}

/// Reads the condition and text of a `<stream:error/>`.
pub fn stream_error_of(el: &Element) -> Option<(String, Option<String>)> {
    if el.name() != "error" || el.ns() != NS_STREAM {
        return None;
    }
    let mut condition = "undefined-condition".to_owned();
    let mut text = None;
    for c in el.children().filter(|c| c.ns() == NS_STREAM_ERRORS) {
        if c.name() == "text" {
            text = Some(c.text());
        } else {
            condition = c.name().to_owned();
        }
    }
    Some((condition, text))
}

/// The I/O side: everything the task needs, nothing shared with other actors.
struct Link {
    cfg: Arc<ComponentConfig>,
    outbox: Arc<Outbox>,
    messages: Option<Recipient<MessageIn>>,
    inbound: Recipient<StanzaIn>,
    inbound_batches: Option<Recipient<StanzasIn>>,
    status: Recipient<ComponentStatus>,
    control: Arc<Control>,
}

/// Resolves once a close was requested, with the time to wait for the server's closing tag.
/// Cancel-safe (used in `select!`).
async fn close_requested(rx: &mut watch::Receiver<Option<Duration>>) -> Duration {
    loop {
        if let Some(d) = *rx.borrow_and_update() {
            return d;
        }
        if rx.changed().await.is_err() {
            // The actor is gone; it aborts this task when it stops.
            std::future::pending::<()>().await;
        }
    }
}

/// An authenticated connection.
struct Session {
    sock: TcpStream,
    parser: StreamParser,
}

impl Link {
    /// Connects and reconnects until a close is requested; returns how the close went.
    async fn run(self, mut close: watch::Receiver<Option<Duration>>) -> CloseOutcome {
        let mut backoff = Backoff::new(&self.cfg);
        loop {
            let handshake = tokio::select! {
                r = self.handshake() => r,
                _ = close_requested(&mut close) => {
                    return CloseOutcome::NotConnected { queued: self.outbox.len() };
                }
            };
            let (err, was_online) = match handshake {
                Ok(mut session) => {
                    let up_at = tokio::time::Instant::now();
                    tracing::info!(component = %self.cfg.domain, server = %self.cfg.server, "XMPP component link up (handshake accepted)");
                    self.status.do_send(ComponentStatus { online: true });
                    let err = match run_session(&self, &mut session, &mut close).await {
                        Ok(outcome) => {
                            self.status.do_send(ComponentStatus { online: false });
                            return outcome;
                        }
                        Err(e) => e,
                    };
                    // Only a session that lasted resets the delay: a server that accepts and
                    // then drops us at once must not cause a 1 s reconnect loop forever.
                    if up_at.elapsed() >= STABLE_SESSION {
                        backoff.reset();
                    }
                    (err, true)
                }
                Err(e) => (e, false),
            };
            if was_online {
                self.status.do_send(ComponentStatus { online: false });
            }
            metrics::counter!("pua_xmpp_component_reconnects_total").increment(1);
            let fatal = err.is_fatal();
            let conflict =
                matches!(&err, LinkError::StreamError { condition, .. } if condition == "conflict");
            let delay = backoff.delay_after(conflict, fatal);
            self.log_end(&err, delay);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = close_requested(&mut close) => {
                    return CloseOutcome::NotConnected { queued: self.outbox.len() };
                }
            }
        }
    }

    fn log_end(&self, err: &LinkError, delay: Duration) {
        let domain = &self.cfg.domain;
        let server = &self.cfg.server;
        let retry_secs = delay.as_secs_f64();
        let server_text = match err {
            LinkError::StreamError { text: Some(t), .. } => t.as_str(),
            _ => "",
        };
        match err {
            LinkError::StreamError { condition, .. } if condition == "not-authorized" => {
                tracing::error!(component = %domain, %server, retry_secs, server_text, "XMPP server refused the component handshake (not-authorized): xmpp.secret does not match the server's component secret")
            }
            LinkError::StreamError { condition, .. } if condition == "host-unknown" => {
                tracing::error!(component = %domain, %server, retry_secs, server_text, "XMPP server has no component named {domain} (host-unknown): check xmpp.component_domain and the server's Component definition")
            }
            LinkError::StreamError { condition, .. }
                if condition == "conflict" && self.cfg.conflict_retry.is_some() =>
            {
                tracing::warn!(component = %domain, %server, retry_secs, server_text, "component {domain} still served by another connection (conflict): the previous active instance's, until the server drops it; retrying")
            }
            LinkError::StreamError { condition, .. } if condition == "conflict" => {
                tracing::error!(component = %domain, %server, retry_secs, server_text, "another connection already serves component {domain} (conflict): is a second pua-xmpp running?")
            }
            _ => {
                tracing::warn!(component = %domain, %server, retry_secs, error = %err, "XMPP component link down; reconnecting")
            }
        }
    }

    /// Connects, opens the stream and authenticates.
    async fn handshake(&self) -> Result<Session, LinkError> {
        let t = self.cfg.connect_timeout;
        let mut sock = tokio::time::timeout(t, TcpStream::connect(self.cfg.server.as_str()))
            .await
            .map_err(|_| LinkError::Timeout("TCP connect"))?
            .map_err(LinkError::Connect)?;
        // Presence is latency-sensitive and small: no Nagle delay (Kamailio's link stalls ~40 ms).
        if let Err(e) = sock.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let mut header = String::from(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams'",
        );
        push_attr(&mut header, "to", &self.cfg.domain);
        header.push('>');
        sock.write_all(header.as_bytes())
            .await
            .map_err(LinkError::Io)?;
        let mut session = Session {
            sock,
            parser: StreamParser::with_limit(self.cfg.max_stanza),
        };
        let id = match tokio::time::timeout(t, read_event(&mut session)).await {
            Err(_) => return Err(LinkError::Timeout("the server's stream header")),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(StreamEvent::Header { id: Some(id) })) => id,
            Ok(Ok(StreamEvent::Header { id: None })) => {
                return Err(LinkError::Protocol("server stream header has no id".into()))
            }
            Ok(Ok(other)) => return Err(unexpected(other)),
        };
        let digest = handshake_digest(&id, &self.cfg.secret);
        let hs = format!("<handshake>{digest}</handshake>");
        session
            .sock
            .write_all(hs.as_bytes())
            .await
            .map_err(LinkError::Io)?;
        match tokio::time::timeout(t, read_event(&mut session)).await {
            Err(_) => Err(LinkError::Timeout("the handshake reply")),
            Ok(Err(e)) => Err(e),
            Ok(Ok(StreamEvent::Element(el)))
                if el.name() == "handshake" && el.ns() == NS_COMPONENT =>
            {
                Ok(session)
            }
            Ok(Ok(other)) => Err(unexpected(other)),
        }
    }
}

/// The session loop: flush the outbox, read and dispatch, keepalive. Ends with `Err` when the
/// session fails, with `Ok` only after a requested close.
async fn run_session(
    link: &Link,
    s: &mut Session,
    close: &mut watch::Receiver<Option<Duration>>,
) -> Result<CloseOutcome, LinkError> {
    let period = link.cfg.keepalive.max(Duration::from_millis(10));
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 16 * 1024];
    let mut in_counters = TypeCounters::default();
    // The presences of one read, handed on as one batch (room kept from the last).
    let mut presences = Vec::new();
    loop {
        // Flush whatever is queued as one write (coalescing: one syscall per batch).
        let batch = link.outbox.take_all();
        if !batch.is_empty() {
            let bytes: String = batch.concat();
            if let Err(e) = s.sock.write_all(bytes.as_bytes()).await {
                link.outbox.requeue_front(batch);
                return Err(LinkError::Io(e));
            }
            keepalive.reset();
        }
        tokio::select! {
            r = s.sock.read(&mut buf) => {
                let n = r.map_err(LinkError::Io)?;
                if n == 0 {
                    return Err(LinkError::Closed);
                }
                if let Err(e) = s.parser.feed(buf.get(..n).unwrap_or_default()) {
                    send_not_well_formed(&mut s.sock).await;
                    return Err(LinkError::BadXml(e));
                }
                let mut replies = String::new();
                let mut end = None;
                while let Some(ev) = s.parser.next_event() {
                    let inbound = match ev {
                        StreamEvent::Element(el) => {
                            if let Some((condition, text)) = stream_error_of(&el) {
                                end = Some(LinkError::StreamError { condition, text });
                                break;
                            }
                            match &link.messages {
                                Some(to) if el.name() == "message" => {
                                    forward_message(link, to, &el);
                                    continue;
                                }
                                _ => classify_inbound(&link.cfg.domain, &el),
                            }
                        }
                        StreamEvent::Presence(h) => classify_presence(
                            &link.cfg.domain,
                            h.parse(),
                            h.attr("from"),
                            h.attr("to"),
                        ),
                        StreamEvent::End => {
                            end = Some(LinkError::Closed);
                            break;
                        }
                        StreamEvent::Header { .. } => {
                            end = Some(LinkError::Protocol("second stream header".into()));
                            break;
                        }
                    };
                    match inbound {
                        Inbound::Presence(p) if link.control.draining.load(Ordering::SeqCst) => {
                            let n = link.control.dropped_inbound.fetch_add(1, Ordering::SeqCst);
                            if n == 0 {
                                tracing::info!(from = %p.from, to = %p.to, "shutting down: inbound presence no longer forwarded");
                            } else {
                                tracing::debug!(from = %p.from, to = %p.to, "shutting down: inbound presence dropped");
                            }
                        }
                        Inbound::Presence(p) => {
                            let kind = match &p.kind {
                                Ok(k) => k.as_attr().unwrap_or("available"),
                                Err(_) => "unknown",
                            };
                            in_counters.inc(kind, |k| {
                                metrics::counter!("pua_xmpp_stanzas_in_total", "type" => k)
                            });
                            presences.push(*p);
                        }
                        Inbound::Reply(r) => replies.push_str(&r),
                        Inbound::Ignore => {}
                    }
                }
                match &link.inbound_batches {
                    Some(b) if presences.len() > 1 => {
                        b.do_send(StanzasIn(crate::batch::take_sized(&mut presences)))
                    }
                    _ => {
                        for p in presences.drain(..) {
                            link.inbound.do_send(StanzaIn(p));
                        }
                    }
                }
                if !replies.is_empty() {
                    s.sock.write_all(replies.as_bytes()).await.map_err(LinkError::Io)?;
                }
                if let Some(e) = end {
                    let _ = s.sock.write_all(b"</stream:stream>").await;
                    let _ = s.sock.shutdown().await;
                    return Err(e);
                }
            }
            _ = link.outbox.notify.notified() => {}
            wait = close_requested(close) => {
                return Ok(close_session(link, s, wait).await);
            }
            _ = keepalive.tick() => {
                s.sock.write_all(b" ").await.map_err(LinkError::Io)?;
            }
        }
    }
}

/// Requested close: write what is queued and `</stream:stream>` in one write, then wait up to
/// `wait` for the server's `</stream:stream>` (RFC 6120 §4.4: the initiating side waits for
/// the other side's closing tag before closing TCP). Inbound stanzas meanwhile are dropped.
async fn close_session(link: &Link, s: &mut Session, wait: Duration) -> CloseOutcome {
    let batch = link.outbox.take_all();
    let flushed = batch.len();
    let mut bytes: String = batch.concat();
    bytes.push_str("</stream:stream>");
    if let Err(e) = s.sock.write_all(bytes.as_bytes()).await {
        return CloseOutcome::WriteFailed(e.to_string());
    }
    let mut buf = vec![0u8; 16 * 1024];
    let server_closed = tokio::time::timeout(wait, async {
        loop {
            while let Some(ev) = s.parser.next_event() {
                match ev {
                    StreamEvent::End => return true,
                    StreamEvent::Element(el) if el.name() == "presence" => {
                        link.control.dropped_inbound.fetch_add(1, Ordering::SeqCst);
                    }
                    StreamEvent::Presence(_) => {
                        link.control.dropped_inbound.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
            match s.sock.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    if s.parser.feed(buf.get(..n).unwrap_or_default()).is_err() {
                        return false;
                    }
                }
            }
        }
    })
    .await
    .unwrap_or(false);
    let _ = s.sock.shutdown().await;
    CloseOutcome::Closed {
        flushed,
        server_closed,
        dropped_inbound: link.control.dropped_inbound.load(Ordering::SeqCst),
    }
}

/// Case 97: tell the server its XML was bad, then close.
async fn send_not_well_formed(sock: &mut TcpStream) {
    let _ = sock
        .write_all(
            b"<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
        )
        .await;
    let _ = sock.shutdown().await;
}

fn unexpected(ev: StreamEvent) -> LinkError {
    match ev {
        StreamEvent::Element(el) => match stream_error_of(&el) {
            Some((condition, text)) => LinkError::StreamError { condition, text },
            None => LinkError::Protocol(format!("unexpected <{}> during handshake", el.name())),
        },
        StreamEvent::Presence(_) => {
            LinkError::Protocol("unexpected <presence> during handshake".into())
        }
        StreamEvent::End => LinkError::Closed,
        StreamEvent::Header { .. } => LinkError::Protocol("second stream header".into()),
    }
}

/// Reads until the parser yields one event.
async fn read_event(s: &mut Session) -> Result<StreamEvent, LinkError> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(ev) = s.parser.next_event() {
            return Ok(ev);
        }
        let n = s.sock.read(&mut buf).await.map_err(LinkError::Io)?;
        if n == 0 {
            return Err(LinkError::Closed);
        }
        if let Err(e) = s.parser.feed(buf.get(..n).unwrap_or_default()) {
            send_not_well_formed(&mut s.sock).await;
            return Err(LinkError::BadXml(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TypeCounters;

    /// One handle per stanza type, made once and reused.
    #[test]
    fn type_counters_make_one_handle_per_type() {
        let mut c = TypeCounters::default();
        let mut made = Vec::new();
        for kind in [
            "available",
            "subscribed",
            "available",
            "available",
            "subscribed",
        ] {
            c.inc(kind, |k| {
                made.push(k);
                metrics::Counter::noop()
            });
        }
        assert_eq!(made, vec!["available", "subscribed"]);
        let kinds: Vec<&str> = c.handles.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, vec!["available", "subscribed"]);
    }
}
