//! Instant messaging: one XMPP `<message/>` ⇄ one SIP MESSAGE (RFC 7572 page mode, RFC 3428;
//! §10 of the spec digest).
//!
//! One [`ImGateway`] serves the whole gateway. XMPP → SIP (§10.2): a stanza passes the ordered
//! checks of §10.2.1, becomes a MESSAGE (§10.2.2) and waits in the FIFO of its Request-URI,
//! which has at most one MESSAGE in flight; the final response (or the failure of the
//! transaction) becomes nothing, a receipt or an error stanza (§10.2.3). SIP → XMPP (§10.3): a
//! MESSAGE passes the checks of §10.3.1, becomes a stanza at once, and is answered when the
//! bounce wait of §10.3.4 ends (an error stanza in time → its status; otherwise 202).
//!
//! Sans-IO like the other machines: feed [`Input`]s with [`ImGateway::handle_input`], drain
//! [`Output`]s with [`ImGateway::poll_output`], and call `handle_input(Input::Timeout, now)`
//! once [`ImGateway::poll_timeout`] is reached. Message texts are never logged (§10.4).

use crate::address::{AddressMapper, MapError};
use crate::error_map::{condition_to_sip, sip_to_condition};
use crate::ids::IdGen;
use crate::im_content::{self, BodyError, MessageHeaders, Payload};
use crate::message::{InMessage, MessageType, OutMessage};
use crate::rate::RateLimiter;
use crate::sip::encode::encode_request;
use crate::sip::{
    reason_phrase, Destination, Method, NameAddr, OutRequest, OutResponse, SipRequest, SipResponse,
};
use crate::stanza::{BareJid, DefinedCondition, Jid};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The `type` of the stanzas made from SIP MESSAGEs (§10.3.3, `inbound_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundType {
    /// `type='chat'` ◆: what clients treat as one-to-one conversation (the default).
    Chat,
    /// No `type` attribute: RFC 7572 §5 to the letter.
    Normal,
}

/// The `[im]` settings of §10.5, and what the runtime knows about its transports. The domains
/// that are served come from the address mapper's allow-lists (`[mapping]`), the trusted
/// sources from `[sip] trusted_peers`: the same policy as presence.
#[derive(Clone, Debug, PartialEq)]
pub struct ImConfig {
    /// `false`: MESSAGE → 405, `<message/>` → `service-unavailable`.
    pub enabled: bool,
    pub inbound_type: InboundType,
    /// Adds the sender's resource to our From as `;gr=` (RFC 7572 §4 literally); an inbound
    /// Request-URI `gr` then addresses that resource.
    pub from_gruu: bool,
    /// Sends a XEP-0184 receipt on a 200 when the stanza asked for one.
    pub receipts: bool,
    /// How long a SIP MESSAGE waits for an error stanza before its 202 (§10.3.4). Zero
    /// answers at once.
    pub bounce_wait: Duration,
    /// Largest body, both ways, in octets (UTF-8 text outbound, the raw body inbound).
    pub max_body_bytes: usize,
    /// Messages a second per sender and direction; `0` turns the limit off.
    pub rate_per_sender: u32,
    pub rate_burst: u32,
    /// MESSAGEs waiting per Request-URI behind the one in flight.
    pub queue_per_target: usize,
    /// A MESSAGE still queued after this long is answered `remote-server-timeout`.
    pub queue_max_age: Duration,
    /// MESSAGEs queued or in flight, all targets together.
    pub queue_total: usize,
    /// Source addresses MESSAGEs are taken from; empty = any (`[sip] trusted_peers`).
    pub trusted_sources: Vec<IpAddr>,
    /// Hosts (lowercase, no port) that mean the gateway itself in a Request-URI besides the
    /// gateway domain, e.g. the listen address when the proxy routes by IP.
    pub local_hosts: Vec<String>,
    /// Whether requests can go over TCP. Without it a MESSAGE over `max_udp_request` is
    /// refused with `policy-violation` (§10.2.1 row 9).
    pub tcp_available: bool,
    /// Above this many octets a request must go over a congestion-controlled transport
    /// (RFC 3261 §18.1.1: 1300).
    pub max_udp_request: usize,
    /// Octets counted for the `Via` value the transport adds, when sizing a MESSAGE.
    pub via_allowance: usize,
    /// Host part of the fresh Call-IDs (none when empty).
    pub call_id_host: String,
    /// 3xx responses followed per MESSAGE (§10.2.3 ◆: 3).
    pub max_redirects: u8,
    /// A MESSAGE in flight whose outcome the runtime never reports is failed after this long
    /// (Timer F is 32 s; this only keeps the queue from sticking).
    pub outcome_guard: Duration,
    /// How long an answered SIP MESSAGE is remembered, to log late bounces and to answer
    /// retransmissions that reach the core (§10.3.3 ◆: 60 s).
    pub answered_memory: Duration,
    /// Most senders with a rate bucket, and most answered MESSAGEs remembered.
    pub max_tracked: usize,
}

impl Default for ImConfig {
    fn default() -> ImConfig {
        ImConfig {
            enabled: true,
            inbound_type: InboundType::Chat,
            from_gruu: false,
            receipts: true,
            bounce_wait: Duration::from_millis(500),
            max_body_bytes: 8192,
            rate_per_sender: 10,
            rate_burst: 20,
            queue_per_target: 50,
            queue_max_age: Duration::from_secs(64),
            queue_total: 10_000,
            trusted_sources: Vec::new(),
            local_hosts: Vec::new(),
            tcp_available: true,
            max_udp_request: 1300,
            via_allowance: 100,
            call_id_host: String::new(),
            max_redirects: 3,
            outcome_guard: Duration::from_secs(64),
            answered_memory: Duration::from_secs(60),
            max_tracked: 100_000,
        }
    }
}

/// How a MESSAGE of ours ended without a final response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Timer F: no final response (→ `remote-server-timeout`).
    Timeout,
    /// Refused, unreachable, TLS failure (→ `service-unavailable`, RFC 3261 §8.1.3.1).
    Transport,
}

/// Events fed to the [`ImGateway`].
#[derive(Debug)]
pub enum Input<'a> {
    /// A `<message/>` from the component stream, addressed to the component domain.
    Stanza(&'a InMessage),
    /// An inbound SIP MESSAGE. `key` names its server transaction: the response comes back
    /// as [`Output::Response`] with the same key, now or after the bounce wait.
    Message {
        req: &'a SipRequest,
        headers: &'a MessageHeaders,
        source: IpAddr,
        key: u64,
    },
    /// The final response to one of our MESSAGEs (matched by Call-ID and CSeq).
    Response(&'a SipResponse),
    /// One of our MESSAGEs got no final response.
    RequestFailed {
        call_id: &'a str,
        cseq: u32,
        failure: Failure,
    },
    /// The XEP-0114 stream went up or down (MESSAGEs are refused while it is down).
    XmppLink { up: bool },
    /// [`ImGateway::poll_timeout`] was reached.
    Timeout,
}

/// Actions for the runtime.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// A MESSAGE for the outbound proxy. `reliable`: it is over the UDP size limit and must
    /// go over TCP (or TLS) whatever the configured transport, with the same Via sent-by.
    Request {
        req: OutRequest,
        reliable: bool,
    },
    /// The final response to the inbound MESSAGE of `key`.
    Response {
        key: u64,
        resp: OutResponse,
    },
    Stanza(OutMessage),
    /// Something worth counting (a metric label, e.g. `im_late_bounce`).
    Problem(&'static str),
}

/// (Call-ID, CSeq, From-tag): one inbound MESSAGE transaction.
type TxnKey = (String, u32, String);

/// A timer's identity: when, and a sequence number that makes it unique.
type TimerKey = (Instant, u64);

#[derive(Clone, Debug)]
enum Timer {
    /// A MESSAGE queued for this Request-URI reached its maximum age.
    Queued(String),
    /// The MESSAGE in flight to this Request-URI has had no outcome for too long.
    InFlight(String),
    /// The bounce wait of this stanza id ended: answer 202.
    Bounce(String),
    /// Forget this answered stanza id.
    Forget(String),
}

#[derive(Debug, Default)]
struct Timers {
    map: BTreeMap<TimerKey, Timer>,
    seq: u64,
}

impl Timers {
    fn arm(&mut self, at: Instant, t: Timer) -> TimerKey {
        self.seq += 1;
        let key = (at, self.seq);
        self.map.insert(key, t);
        key
    }

    fn cancel(&mut self, key: TimerKey) {
        self.map.remove(&key);
    }

    fn pop_due(&mut self, now: Instant) -> Option<(TimerKey, Timer)> {
        let (&key, _) = self.map.first_key_value()?;
        if key.0 > now {
            return None;
        }
        self.map.remove(&key).map(|t| (key, t))
    }
}

/// A MESSAGE of ours, queued or in flight, and where its outcome goes.
#[derive(Debug)]
struct Outgoing {
    req: OutRequest,
    reliable: bool,
    /// The stanza's `to` as received: `from` of the error or receipt.
    reply_from: Jid,
    /// The stanza's full `from`: `to` of the error or receipt.
    reply_to: Jid,
    id: Option<String>,
    /// The stanza asked for a XEP-0184 receipt.
    receipt: bool,
    redirects: u8,
    /// The queue's age limit while queued, the outcome guard while in flight.
    timer: TimerKey,
}

/// The FIFO of one Request-URI.
#[derive(Debug, Default)]
struct Target {
    in_flight: Option<Outgoing>,
    queue: VecDeque<Outgoing>,
}

/// An inbound MESSAGE whose stanza was sent, waiting for a bounce.
#[derive(Debug)]
struct Waiting {
    /// The stanza's `to` (bare): a bounce must come from it.
    to: BareJid,
    call_id: String,
    txn: TxnKey,
    /// One response per copy of the request that reached us, each built from its copy.
    answers: Vec<(u64, OutResponse)>,
    timer: TimerKey,
}

/// An inbound MESSAGE already answered, remembered for a while.
#[derive(Debug)]
struct Answered {
    to: BareJid,
    call_id: String,
    txn: TxnKey,
    status: u16,
}

/// The gateway's instant-messaging machine.
#[derive(Debug)]
pub struct ImGateway {
    cfg: ImConfig,
    mapper: AddressMapper,
    ids: IdGen,
    next_cseq: u32,
    xmpp_up: bool,
    out: VecDeque<Output>,
    timers: Timers,
    /// XMPP → SIP: the FIFO of each Request-URI that has a MESSAGE queued or in flight.
    targets: HashMap<String, Target>,
    /// CSeq of each MESSAGE in flight → its Request-URI key (CSeqs are gateway-wide unique).
    in_flight: HashMap<u32, String>,
    queued: usize,
    xmpp_rate: RateLimiter,
    /// SIP → XMPP, by the id of the stanza we sent.
    waiting: HashMap<String, Waiting>,
    answered: HashMap<String, Answered>,
    /// Inbound transactions → stanza id (waiting or answered): retransmissions.
    txns: HashMap<TxnKey, String>,
    sip_rate: RateLimiter,
}

/// Largest CSeq we use: RFC 3261 §8.1.1.5 wants it below 2^31.
const MAX_CSEQ: u32 = (1 << 31) - 1;

/// The `Allow` of a 405: the methods of the gateway, with MESSAGE when IM is on.
const ALLOW_WITHOUT_IM: &str = "SUBSCRIBE, NOTIFY, OPTIONS";
const ALLOW_WITH_IM: &str = "SUBSCRIBE, NOTIFY, OPTIONS, MESSAGE";

impl ImGateway {
    /// `seed` is the stream of the identifier generator ([`crate::ids::fresh_stream`] in the
    /// runtime); `cseq_seed` starts the gateway-wide CSeq counter (§10.2.2 ◆: from the clock,
    /// so (Call-ID, CSeq) does not repeat across restarts when a thread reuses a Call-ID).
    /// The XMPP stream counts as down until [`Input::XmppLink`] says otherwise.
    pub fn new(cfg: ImConfig, mapper: AddressMapper, seed: u64, cseq_seed: u32) -> ImGateway {
        let tracked = cfg.max_tracked;
        ImGateway {
            xmpp_rate: RateLimiter::new(cfg.rate_per_sender, cfg.rate_burst, tracked),
            sip_rate: RateLimiter::new(cfg.rate_per_sender, cfg.rate_burst, tracked),
            cfg,
            mapper,
            ids: IdGen::new(seed),
            next_cseq: cseq_seed.clamp(1, MAX_CSEQ),
            xmpp_up: false,
            out: VecDeque::new(),
            timers: Timers::default(),
            targets: HashMap::new(),
            in_flight: HashMap::new(),
            queued: 0,
            waiting: HashMap::new(),
            answered: HashMap::new(),
            txns: HashMap::new(),
        }
    }

    pub fn config(&self) -> &ImConfig {
        &self.cfg
    }

    /// The address mapper (its learned spellings; the runtime may teach it more).
    pub fn mapper_mut(&mut self) -> &mut AddressMapper {
        &mut self.mapper
    }

    pub fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        match input {
            Input::Stanza(m) => self.on_stanza(m, now),
            Input::Message {
                req,
                headers,
                source,
                key,
            } => self.on_sip_message(req, headers, source, key, now),
            Input::Response(r) => self.on_response(r, now),
            Input::RequestFailed {
                call_id,
                cseq,
                failure,
            } => self.on_failure(call_id, cseq, failure, now),
            Input::XmppLink { up } => self.xmpp_up = up,
            Input::Timeout => self.on_timeout(now),
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When to call `handle_input(Input::Timeout, …)` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.map.first_key_value().map(|(k, _)| k.0)
    }

    /// MESSAGEs queued behind the ones in flight.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// MESSAGEs of ours in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Inbound MESSAGEs waiting for the end of their bounce wait.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn problem(&mut self, label: &'static str) {
        self.out.push_back(Output::Problem(label));
    }

    fn cseq(&mut self) -> u32 {
        let n = self.next_cseq;
        self.next_cseq = if n >= MAX_CSEQ { 1 } else { n + 1 };
        n
    }

    // ---- XMPP → SIP (§10.2) ---------------------------------------------------------------

    fn reply_error(&mut self, m: &InMessage, condition: DefinedCondition, text: &str) {
        tracing::debug!(id = ?m.id, to = %m.to, condition = crate::stanza::condition_name(&condition), text, "message refused");
        if let Some(e) = OutMessage::error_reply(m, condition, Some(text.to_owned())) {
            self.out.push_back(Output::Stanza(e));
        }
    }

    fn in_component_domain(&self, jid: &Jid) -> bool {
        let d = jid.domain().as_str();
        let component = self.mapper.config().component_domain.as_str();
        if d.is_ascii() {
            return d.eq_ignore_ascii_case(component);
        }
        idna::domain_to_ascii(d).is_ok_and(|a| a == component)
    }

    fn on_stanza(&mut self, m: &InMessage, now: Instant) {
        use DefinedCondition as C;
        // 1: no from, or one of our own addresses.
        let Some(from) = m.from.clone() else {
            tracing::info!(to = %m.to, id = ?m.id, "message without 'from' dropped");
            return self.problem("im_xmpp_no_from");
        };
        if self.in_component_domain(&from) {
            tracing::info!(%from, to = %m.to, "message from the component domain dropped");
            return self.problem("im_xmpp_from_component");
        }
        // 2: errors answer our stanzas, and are never answered.
        if m.kind == MessageType::Error {
            return self.on_bounce(m, now);
        }
        // 3: nothing to deliver (chat states, receipts, markers, subject only).
        let Some(chosen) = im_content::choose(m) else {
            tracing::debug!(%from, to = %m.to, id = ?m.id, "message without a body not carried");
            return self.problem("im_xmpp_no_body");
        };
        if !self.cfg.enabled {
            return self.reply_error(m, C::ServiceUnavailable, "Instant messaging is disabled");
        }
        // 4
        if m.kind == MessageType::Groupchat {
            return self.reply_error(m, C::ServiceUnavailable, "Groupchat is not supported");
        }
        // 5: the sender must be a user of a served XMPP domain.
        let from_bare = from.clone().into_bare();
        let sender_uri = match self.mapper.xmpp_to_sip(&from_bare) {
            Ok(u) => u,
            Err(e) => return self.reply_error(m, C::Forbidden, &e.to_string()),
        };
        // 6: the component itself is not a SIP user.
        if m.to.node().is_none() && self.in_component_domain(&m.to) {
            return self.reply_error(
                m,
                C::ServiceUnavailable,
                "The gateway does not take messages",
            );
        }
        // 7, 8: the target decodes, into a served SIP domain.
        let target = match self.mapper.jid_to_sip(&m.to_bare()) {
            Ok(u) => u,
            Err(MapError::DomainNotAllowed) => {
                return self.reply_error(m, C::NotAllowed, "SIP domain not served")
            }
            Err(e) => return self.reply_error(m, C::ItemNotFound, &e.to_string()),
        };
        // 9: size.
        if chosen.body.len() > self.cfg.max_body_bytes {
            let text = format!("Message over {} octets", self.cfg.max_body_bytes);
            return self.reply_error(m, C::PolicyViolation, &text);
        }
        let from_uri = match (self.cfg.from_gruu, from.resource()) {
            (true, Some(r)) => crate::text::concat(&[
                &sender_uri,
                ";gr=",
                &im_content::pct_encode_param(r.as_str()),
            ]),
            _ => sender_uri,
        };
        let call_id = match m.thread.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => im_content::call_id_for_thread(t),
            None => self.fresh_call_id(),
        };
        let mut headers = Vec::new();
        if let Some(s) = chosen.subject {
            headers.push(("Subject", s));
        }
        if let Some(l) = chosen.language {
            headers.push(("Content-Language", l.to_owned()));
        }
        let req = OutRequest {
            method: Method::Message,
            uri: target.clone(),
            route: Vec::new(),
            from: NameAddr {
                display: None,
                uri: from_uri,
                tag: Some(self.ids.tag("im-")),
            },
            to: NameAddr {
                display: None,
                uri: target.clone(),
                tag: None,
            },
            call_id,
            cseq: self.cseq(),
            contact: None,
            headers,
            content_type: Some("text/plain;charset=UTF-8"),
            body: chosen.body.as_bytes().to_vec(),
            destination: Destination::OutboundProxy,
        };
        let reliable = self.needs_reliable(&req);
        if reliable && !self.cfg.tcp_available {
            let text = format!(
                "Message over {} octets and no TCP transport",
                self.cfg.max_udp_request
            );
            return self.reply_error(m, C::PolicyViolation, &text);
        }
        // 10: rate and queue room.
        if !self.xmpp_rate.allow(from_bare.as_str(), now) {
            self.problem("im_xmpp_rate_limited");
            return self.reply_error(m, C::ResourceConstraint, "Too many messages");
        }
        let waiting = self.targets.get(&target).map_or(0, |t| t.queue.len());
        let total = self.queued + self.in_flight.len();
        if waiting >= self.cfg.queue_per_target || total >= self.cfg.queue_total {
            self.problem("im_xmpp_queue_full");
            return self.reply_error(m, C::ResourceConstraint, "Too many messages queued");
        }
        // 11
        tracing::debug!(%from, %target, id = ?m.id, octets = req.body.len(), "message queued");
        let timer = self
            .timers
            .arm(now + self.cfg.queue_max_age, Timer::Queued(target.clone()));
        let item = Outgoing {
            req,
            reliable,
            reply_from: m.to.clone(),
            reply_to: from,
            id: m.id.clone(),
            receipt: m.receipt_request,
            redirects: 0,
            timer,
        };
        self.targets
            .entry(target.clone())
            .or_default()
            .queue
            .push_back(item);
        self.queued += 1;
        self.pump(&target, now);
    }

    fn fresh_call_id(&mut self) -> String {
        let mut c = self.ids.call_id(&self.cfg.call_id_host);
        if self.cfg.call_id_host.is_empty() {
            c.pop();
        }
        c
    }

    /// Whether the encoded request, with the Via the transport adds, exceeds the UDP limit.
    fn needs_reliable(&self, req: &OutRequest) -> bool {
        let mut buf = Vec::with_capacity(req.body.len() + 400);
        encode_request(req, "", &mut buf);
        buf.len() + self.cfg.via_allowance > self.cfg.max_udp_request
    }

    /// Sends the next queued MESSAGE of `target` if none is in flight.
    fn pump(&mut self, target: &str, now: Instant) {
        let Some(t) = self.targets.get_mut(target) else {
            return;
        };
        if t.in_flight.is_some() {
            return;
        }
        let Some(mut o) = t.queue.pop_front() else {
            self.targets.remove(target);
            return;
        };
        self.queued -= 1;
        self.timers.cancel(o.timer);
        o.timer = self.timers.arm(
            now + self.cfg.outcome_guard,
            Timer::InFlight(target.to_owned()),
        );
        self.in_flight.insert(o.req.cseq, target.to_owned());
        self.out.push_back(Output::Request {
            req: o.req.clone(),
            reliable: o.reliable,
        });
        t.in_flight = Some(o);
    }

    /// Takes the MESSAGE in flight with this Call-ID and CSeq, if it is one.
    fn take_in_flight(&mut self, call_id: &str, cseq: u32) -> Option<(String, Outgoing)> {
        let target = self.in_flight.get(&cseq)?;
        let t = self.targets.get_mut(target)?;
        if t.in_flight.as_ref()?.req.call_id != call_id {
            return None;
        }
        let o = t.in_flight.take()?;
        let target = self.in_flight.remove(&cseq)?;
        self.timers.cancel(o.timer);
        Some((target, o))
    }

    fn fail(&mut self, o: Outgoing, condition: DefinedCondition, text: String) {
        tracing::info!(target = %o.req.uri, id = ?o.id, call_id = %o.req.call_id, condition = crate::stanza::condition_name(&condition), %text, "message not delivered");
        let e = OutMessage::error(o.reply_from, o.reply_to, o.id, condition, Some(text));
        self.out.push_back(Output::Stanza(e));
    }

    fn on_response(&mut self, r: &SipResponse, now: Instant) {
        if r.cseq_method != Method::Message || r.status < 200 {
            return;
        }
        let Some((target, mut o)) = self.take_in_flight(&r.call_id, r.cseq) else {
            tracing::debug!(call_id = %r.call_id, cseq = r.cseq, "stale MESSAGE response ignored");
            return;
        };
        match r.status {
            200..=299 => {
                tracing::debug!(target = %o.req.uri, id = ?o.id, status = r.status, "message delivered");
                if r.status == 200 && o.receipt && self.cfg.receipts {
                    if let Some(id) = o.id {
                        let receipt = OutMessage {
                            receipt_received: Some(id),
                            ..OutMessage::new(o.reply_from, o.reply_to)
                        };
                        self.out.push_back(Output::Stanza(receipt));
                    }
                }
            }
            300..=399 if o.redirects < self.cfg.max_redirects && redirect_target(r).is_some() => {
                let uri = redirect_target(r).unwrap_or_default().to_owned();
                tracing::debug!(from = %o.req.uri, to = %uri, "MESSAGE redirected");
                o.redirects += 1;
                o.req.uri = uri;
                o.req.cseq = self.cseq();
                o.reliable = self.needs_reliable(&o.req);
                if o.reliable && !self.cfg.tcp_available {
                    let text = format!("SIP {} {}", r.status, reason_of(r));
                    self.fail(o, DefinedCondition::PolicyViolation, text);
                } else {
                    o.timer = self.timers.arm(
                        now + self.cfg.outcome_guard,
                        Timer::InFlight(target.clone()),
                    );
                    self.in_flight.insert(o.req.cseq, target.clone());
                    self.out.push_back(Output::Request {
                        req: o.req.clone(),
                        reliable: o.reliable,
                    });
                    if let Some(t) = self.targets.get_mut(&target) {
                        t.in_flight = Some(o);
                    }
                    return;
                }
            }
            status => {
                // 487 (a MESSAGE is never cancelled by us) and unknown codes: still an error,
                // so no message is lost silently.
                let c = sip_to_condition(status).unwrap_or(DefinedCondition::UndefinedCondition);
                let text = format!("SIP {status} {}", reason_of(r));
                self.fail(o, c, text);
            }
        }
        self.pump(&target, now);
    }

    fn on_failure(&mut self, call_id: &str, cseq: u32, failure: Failure, now: Instant) {
        let Some((target, o)) = self.take_in_flight(call_id, cseq) else {
            return;
        };
        match failure {
            Failure::Timeout => self.fail(
                o,
                DefinedCondition::RemoteServerTimeout,
                "SIP request timed out".to_owned(),
            ),
            Failure::Transport => self.fail(
                o,
                DefinedCondition::ServiceUnavailable,
                "SIP transport failure".to_owned(),
            ),
        }
        self.pump(&target, now);
    }

    // ---- SIP → XMPP (§10.3) ---------------------------------------------------------------

    fn respond(
        &mut self,
        key: u64,
        req: &SipRequest,
        status: u16,
        headers: &[(&'static str, &str)],
    ) {
        let mut resp = OutResponse::to_request(req, status, None).with_reason(reason(status));
        for (n, v) in headers {
            resp = resp.with_header(n, *v);
        }
        if status >= 300 {
            tracing::debug!(call_id = %req.call_id, from = %req.from.uri, uri = %req.uri, status, "MESSAGE refused");
        }
        self.out.push_back(Output::Response { key, resp });
    }

    /// The XMPP user a Request-URI addresses (§10.3.1 check 7, 8): the gateway domain, or one
    /// of `local_hosts` standing for it.
    fn decode_request_uri(&self, uri: &str) -> Result<BareJid, MapError> {
        let local = crate::sip::encode::uri_host_port(uri).is_some_and(|hp| {
            self.cfg
                .local_hosts
                .iter()
                .any(|l| l.eq_ignore_ascii_case(&hp.host))
        });
        if local {
            let user = uri
                .split_once(':')
                .and_then(|(_, rest)| rest.split_once('@'))
                .map(|(u, _)| u)
                .ok_or(MapError::NoUserPart)?;
            let gw = &self.mapper.config().gateway_domain;
            return self
                .mapper
                .sip_to_xmpp(&crate::text::concat(&["sip:", user, "@", gw]));
        }
        self.mapper.sip_to_xmpp(uri)
    }

    fn on_sip_message(
        &mut self,
        req: &SipRequest,
        h: &MessageHeaders,
        source: IpAddr,
        key: u64,
        now: Instant,
    ) {
        if !self.cfg.enabled {
            return self.respond(key, req, 405, &[("Allow", ALLOW_WITHOUT_IM)]);
        }
        if req.method != Method::Message {
            return self.respond(key, req, 405, &[("Allow", ALLOW_WITH_IM)]);
        }
        let txn: TxnKey = (
            req.call_id.clone(),
            req.cseq,
            req.from.tag.clone().unwrap_or_default(),
        );
        if let Some(id) = self.txns.get(&txn).cloned() {
            // A copy of a request we have: the transaction layer should have absorbed it.
            self.problem("im_sip_retransmission");
            if let Some(w) = self.waiting.get_mut(&id) {
                w.answers
                    .push((key, OutResponse::to_request(req, 202, None)));
                return;
            }
            if let Some(status) = self.answered.get(&id).map(|a| a.status) {
                return self.respond(key, req, status, &[]);
            }
        }
        // 2, 3 (1, the parse, happened at the edge).
        if req.max_forwards == Some(0) {
            return self.respond(key, req, 483, &[]);
        }
        if !req.require.is_empty() {
            let tags = req.require.join(", ");
            return self.respond(key, req, 420, &[("Unsupported", &tags)]);
        }
        // 4
        if req.to.tag.is_some() {
            return self.respond(key, req, 481, &[]);
        }
        // 5
        if !self.cfg.trusted_sources.is_empty() && !self.cfg.trusted_sources.contains(&source) {
            tracing::warn!(%source, call_id = %req.call_id, "MESSAGE from an untrusted source refused");
            return self.respond(key, req, 403, &[]);
        }
        // 6
        if !sip_scheme(&req.uri) {
            return self.respond(key, req, 416, &[]);
        }
        // 7, 8
        let to = match self.decode_request_uri(&req.uri) {
            Ok(j) => j,
            Err(MapError::DomainNotAllowed) => return self.respond(key, req, 403, &[]),
            Err(_) => return self.respond(key, req, 404, &[]),
        };
        // 9: the sender, from a served SIP domain, never from one of ours.
        if !sip_scheme(&req.from.uri) {
            return self.respond(key, req, 416, &[]);
        }
        if self.mapper.is_gateway_uri(&req.from.uri) {
            return self.respond(key, req, 403, &[]);
        }
        let sender = match self.mapper.sip_to_jid(&req.from.uri) {
            Ok(j) => j,
            Err(MapError::Loop | MapError::DomainNotAllowed) => {
                return self.respond(key, req, 403, &[])
            }
            Err(MapError::UnsupportedScheme) => return self.respond(key, req, 416, &[]),
            Err(_) => return self.respond(key, req, 400, &[]),
        };
        // 10
        if !self.sip_rate.allow(sender.as_str(), now) {
            self.problem("im_sip_rate_limited");
            return self.respond(key, req, 503, &[("Retry-After", "2")]);
        }
        // 11
        if req.body.is_empty() {
            return self.respond(key, req, 400, &[]);
        }
        // 12
        if h.content_encoding.iter().any(|c| c != "identity") {
            return self.respond(key, req, 415, &[("Accept-Encoding", "identity")]);
        }
        // 13
        let content_type = h.content_type.as_deref().or(req.content_type.as_deref());
        let payload = match im_content::classify(content_type, &req.body) {
            Ok(p) => p,
            Err(BodyError::Unsupported) => {
                return self.respond(key, req, 415, &[("Accept", im_content::ACCEPT)])
            }
            Err(BodyError::Malformed) => return self.respond(key, req, 400, &[]),
        };
        // 14
        if req.body.len() > self.cfg.max_body_bytes {
            return self.respond(key, req, 413, &[]);
        }
        let (charset, octets) = match payload {
            Payload::Composing => return self.respond(key, req, 200, &[]),
            Payload::Text { charset, octets } => (charset, octets),
        };
        // 15
        let Ok(body) = im_content::decode_text(charset, octets) else {
            return self.respond(key, req, 400, &[]);
        };
        // 16
        if !self.xmpp_up {
            return self.respond(key, req, 503, &[("Retry-After", "30")]);
        }
        self.deliver(req, h, key, to, sender, body, now);
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        req: &SipRequest,
        h: &MessageHeaders,
        key: u64,
        to: BareJid,
        sender: BareJid,
        body: String,
        now: Instant,
    ) {
        let id = crate::text::concat(&["sipm-", &self.ids.token()]);
        let stanza_to = match (self.cfg.from_gruu, gr_param(&req.uri)) {
            (true, Some(res)) => to
                .with_resource_str(&res)
                .map(Jid::from)
                .unwrap_or_else(|_| Jid::from(to.clone())),
            _ => Jid::from(to.clone()),
        };
        let stanza = OutMessage {
            kind: match self.cfg.inbound_type {
                InboundType::Chat => Some(MessageType::Chat),
                InboundType::Normal => None,
            },
            id: Some(id.clone()),
            lang: im_content::stanza_lang(h.content_language.as_deref()),
            subject: h
                .subject
                .as_deref()
                .map(im_content::clean_text)
                .filter(|s| !s.is_empty()),
            body: Some(body),
            thread: Some(im_content::clean_text(&req.call_id)),
            ..OutMessage::new(Jid::from(sender.clone()), stanza_to)
        };
        tracing::debug!(from = %sender, to = %to, %id, call_id = %req.call_id, octets = req.body.len(), "MESSAGE delivered as a stanza");
        self.out.push_back(Output::Stanza(stanza));
        let txn: TxnKey = (
            req.call_id.clone(),
            req.cseq,
            req.from.tag.clone().unwrap_or_default(),
        );
        self.txns.insert(txn.clone(), id.clone());
        let timer = self
            .timers
            .arm(now + self.cfg.bounce_wait, Timer::Bounce(id.clone()));
        self.waiting.insert(
            id.clone(),
            Waiting {
                to,
                call_id: req.call_id.clone(),
                txn,
                answers: vec![(key, OutResponse::to_request(req, 202, None))],
                timer,
            },
        );
        if self.cfg.bounce_wait.is_zero() {
            self.answer(&id, 202, now);
        }
    }

    /// A `type='error'` stanza (§10.2.1 row 2): the answer of an inbound MESSAGE still
    /// waiting, a late bounce (logged), or nothing of ours.
    fn on_bounce(&mut self, m: &InMessage, now: Instant) {
        let (Some(id), Some(from)) = (m.id.as_deref(), m.from_bare()) else {
            return;
        };
        if self.waiting.get(id).is_some_and(|w| w.to == from) {
            let condition = m
                .error
                .clone()
                .unwrap_or(DefinedCondition::UndefinedCondition);
            let status = bounce_status(&condition);
            tracing::info!(%id, %from, condition = crate::stanza::condition_name(&condition), status, "message bounced");
            return self.answer(id, status, now);
        }
        if let Some(a) = self.answered.get(id).filter(|a| a.to == from) {
            let condition = m.error.as_ref().map(crate::stanza::condition_name);
            tracing::warn!(%id, call_id = %a.call_id, ?condition, status = a.status, "bounce after the MESSAGE was answered");
            self.problem("im_late_bounce");
        }
    }

    /// Sends the final response of a waiting inbound MESSAGE (to every copy received), then
    /// remembers it for `answered_memory`.
    fn answer(&mut self, id: &str, status: u16, now: Instant) {
        let Some(w) = self.waiting.remove(id) else {
            return;
        };
        self.timers.cancel(w.timer);
        for (key, template) in w.answers {
            let mut resp = template;
            resp.status = status;
            resp.reason = reason(status).to_owned();
            self.out.push_back(Output::Response { key, resp });
        }
        if self.answered.len() >= self.cfg.max_tracked {
            self.txns.remove(&w.txn);
            return;
        }
        self.timers
            .arm(now + self.cfg.answered_memory, Timer::Forget(id.to_owned()));
        self.answered.insert(
            id.to_owned(),
            Answered {
                to: w.to,
                call_id: w.call_id,
                txn: w.txn,
                status,
            },
        );
    }

    // ---- timers ---------------------------------------------------------------------------

    fn on_timeout(&mut self, now: Instant) {
        while let Some((key, t)) = self.timers.pop_due(now) {
            match t {
                Timer::Queued(target) => self.expire_queued(&target, key),
                Timer::InFlight(target) => {
                    let Some(t) = self.targets.get_mut(&target) else {
                        continue;
                    };
                    if !matches!(&t.in_flight, Some(o) if o.timer == key) {
                        continue;
                    }
                    if let Some(o) = t.in_flight.take() {
                        self.in_flight.remove(&o.req.cseq);
                        self.problem("im_sip_outcome_missing");
                        self.fail(
                            o,
                            DefinedCondition::RemoteServerTimeout,
                            "SIP request timed out".to_owned(),
                        );
                    }
                    self.pump(&target, now);
                }
                Timer::Bounce(id) => self.answer(&id, 202, now),
                Timer::Forget(id) => {
                    if let Some(a) = self.answered.remove(&id) {
                        self.txns.remove(&a.txn);
                    }
                }
            }
        }
    }

    fn expire_queued(&mut self, target: &str, key: TimerKey) {
        let Some(t) = self.targets.get_mut(target) else {
            return;
        };
        let Some(pos) = t.queue.iter().position(|o| o.timer == key) else {
            return;
        };
        let Some(o) = t.queue.remove(pos) else {
            return;
        };
        if t.in_flight.is_none() && t.queue.is_empty() {
            self.targets.remove(target);
        }
        self.queued -= 1;
        let text = format!("Not sent within {} s", self.cfg.queue_max_age.as_secs());
        self.fail(o, DefinedCondition::RemoteServerTimeout, text);
    }
}

/// The `sip:`/`sips:` Contact of a 3xx, where the MESSAGE is sent again.
fn redirect_target(r: &SipResponse) -> Option<&str> {
    let c = r.contact.as_ref()?;
    sip_scheme(&c.uri).then_some(c.uri.as_str())
}

/// `sip:` or `sips:` (case-insensitive).
fn sip_scheme(uri: &str) -> bool {
    uri.split_once(':')
        .is_some_and(|(s, _)| s.eq_ignore_ascii_case("sip") || s.eq_ignore_ascii_case("sips"))
}

/// The response's reason phrase, or the standard one when it has none.
fn reason_of(r: &SipResponse) -> &str {
    if r.reason.is_empty() {
        reason(r.status)
    } else {
        &r.reason
    }
}

/// Reason phrases, with the few codes of the bounce table [`reason_phrase`] lacks.
fn reason(status: u16) -> &'static str {
    match status {
        410 => "Gone",
        484 => "Address Incomplete",
        491 => "Request Pending",
        _ => reason_phrase(status),
    }
}

/// The `gr` parameter of a Request-URI, percent-decoded.
fn gr_param(uri: &str) -> Option<String> {
    let after_host = uri.split_once('@').map_or(uri, |(_, h)| h);
    let params = after_host.split('?').next()?;
    params.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=')?;
        if n.trim().eq_ignore_ascii_case("gr") && !v.is_empty() {
            crate::address::pct_decode(v.trim()).ok()
        } else {
            None
        }
    })
}

/// The final response of an inbound MESSAGE whose stanza bounced in time (§10.3.4 ◆).
/// `service-unavailable` is 480, not 503 (RFC 6121 §8.5 uses it for "no such user / cannot
/// deliver now"; a 503 would make proxies fail over). Beyond the digest's table: `redirect`
/// and `not-authorized` would need a Contact or a `WWW-Authenticate` we cannot give, so they
/// are 480 and 403, and `gone` is 410 even with a new address.
pub fn bounce_status(c: &DefinedCondition) -> u16 {
    use DefinedCondition as C;
    match c {
        C::ServiceUnavailable | C::RecipientUnavailable | C::Redirect { .. } => 480,
        C::ItemNotFound | C::RemoteServerNotFound => 404,
        C::Forbidden | C::NotAllowed | C::PolicyViolation | C::NotAuthorized => 403,
        C::RemoteServerTimeout => 408,
        C::Gone { .. } => 410,
        other => condition_to_sip(other),
    }
}

#[cfg(test)]
#[path = "im_tests.rs"]
mod tests;
