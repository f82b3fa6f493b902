//! The typed messages the gateway's actors exchange. Actors share no mutable state: everything
//! crosses an actor boundary as one of these.

use actix::prelude::*;
use pua_xmpp::im_content::MessageHeaders;
use pua_xmpp::message::{InMessage, OutMessage};
use pua_xmpp::sip::{OutRequest, OutResponse, SipRequest, SipResponse};
use pua_xmpp::stanza::{BareJid, InPresence, OutPresence};
use std::net::SocketAddr;

/// The transport a SIP message travelled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS over TCP (RFC 3261 §26): a stream like TCP.
    Tls,
}

impl Transport {
    /// The Via protocol token (`SIP/2.0/UDP`, `TCP`, `TLS`).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// A stream transport (TCP or TLS): one connection, no retransmissions.
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// Where an inbound SIP message came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub transport: Transport,
    pub peer: SocketAddr,
    /// The TCP or TLS connection it arrived on, so the response can use the same one.
    pub conn_id: Option<u64>,
}

/// Identifies a server transaction inside the SIP transport actor.
pub type ServerTxnId = u64;

/// An inbound SIP request (not a retransmission: the transport absorbs those and replays the
/// last response). Unparseable messages never get here: the transport answers 400 or drops.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SipRequestIn {
    pub req: SipRequest,
    pub source: Source,
    pub txn: ServerTxnId,
    /// For a MESSAGE only: what instant messaging reads from the raw request
    /// (`MessageHeaders::from_raw`), computed where the bytes were parsed. `None` for every
    /// other method, so the NOTIFY path carries one null pointer.
    pub im: Option<Box<MessageHeaders>>,
}

/// Several inbound requests read together (one TCP read or one batch of datagrams): one
/// message, so a burst crosses each actor boundary once rather than once per request.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SipRequestsIn(pub Vec<SipRequestIn>);

/// Sends the final response of server transaction `txn`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SendResponse {
    pub txn: ServerTxnId,
    pub resp: OutResponse,
}

/// Several [`SendResponse`]s at once (what a shard produced for one batch of requests).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SendResponses(pub Vec<SendResponse>);

/// Starts a client transaction. Provisional responses are swallowed; the final response, a
/// timeout (Timer F / B) or a transport error comes back to `reply_to` tagged with `key`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendRequest {
    pub req: OutRequest,
    pub key: u64,
    pub reply_to: Recipient<TransactionOutcome>,
    /// Overrides the transport the request would take (`sip.transport` for the outbound
    /// proxy): a MESSAGE over 1300 bytes goes over TCP whatever the default.
    pub transport: Option<Transport>,
}

/// How a client transaction ended.
#[derive(Debug)]
pub enum TxnResult {
    Response(Box<SipResponse>),
    Timeout,
    TransportError(String),
}

/// The outcome of a [`SendRequest`].
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TransactionOutcome {
    pub key: u64,
    pub result: TxnResult,
}

/// A presence stanza received on the component stream, already parsed and checked to be
/// addressed to the component domain.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StanzaIn(pub InPresence);

/// The presence stanzas of one read of the component stream, in order: one message instead
/// of one per stanza (a set-up burst brings hundreds per read).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StanzasIn(pub Vec<InPresence>);

/// A presence stanza to send on the component stream (queued while the link is down).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SendPresence(pub OutPresence);

/// Several presence stanzas at once, written to the stream in one go.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SendPresences(pub Vec<OutPresence>);

/// A `<message/>` received on the component stream, parsed leniently at the edge and
/// addressed to the component domain.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct MessageIn(pub InMessage);

/// A `<message/>` to send on the component stream (queued while the link is down, like
/// presence).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SendMessage(pub OutMessage);

/// An inbound SIP MESSAGE for the instant-messaging actor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SipMessageIn {
    pub req: SipRequest,
    pub txn: ServerTxnId,
    pub source: Source,
    pub headers: Box<MessageHeaders>,
}

/// The component link went up (authenticated) or down.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ComponentStatus {
    pub online: bool,
}

// ---- between the registry and the translators -------------------------------------------------

/// A stanza for the subscriber pair (X, S'); `pair` carries the mapped identities so the
/// translator can create the pair.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ToSubscriber {
    pub pair: pua_xmpp::subscriber::Pair,
    pub stanza: InPresence,
}

/// Several [`ToSubscriber`] for one shard, in the order the stanzas came.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ToSubscribers(pub Vec<ToSubscriber>);

/// An in-dialog request (NOTIFY to a subscriber, refresh SUBSCRIBE to a notifier) routed by
/// Call-ID, or an initial SUBSCRIBE for an XMPP presentity (`watcher` = S').
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct DialogRequest {
    pub req: SipRequest,
    pub txn: ServerTxnId,
    pub watcher: Option<pua_xmpp::stanza::BareJid>,
}

/// A NOTIFY for an XMPP-watches-SIP dialog, on its way through the subscriber shards: the
/// registry sends it to shard `first` (the one of its To URI); a shard that does not know the
/// Call-ID hands it back to the registry for the next one until `tried == shards`, and the
/// last one answers 481.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ShardNotify {
    pub req: SipRequest,
    pub txn: ServerTxnId,
    pub first: usize,
    pub tried: usize,
    pub shards: usize,
    /// Counts the NOTIFY in [`crate::backlog`] until it is dropped, handled or not.
    pub counted: crate::backlog::Ticket,
}

/// NOTIFYs for one shard, from one batch of inbound requests.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ShardNotifies(pub Vec<ShardNotify>);

/// A presence stanza from the XMPP presentity X (presence or a decision about a watcher).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct FromPresentity(pub InPresence);

/// `POST /pua/req_winfo`: a SIP watcher subscribed to `uri` (an XMPP presentity in the
/// gateway domain) with `expires` (0 = it unsubscribed). The seed's `pua_xmpp_req_winfo`.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), String>")]
pub struct ReqWinfo {
    pub uri: String,
    pub expires: u32,
    pub watcher: Option<String>,
}

/// Restores persisted subscriber pairs into a subscriber shard, after `delay` (restarts
/// are staggered so a million leases are not refreshed in one burst).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct RestorePairs {
    pub pairs: Vec<(pua_xmpp::subscriber::SubscriptionRecord, Option<u32>)>,
    pub delay: std::time::Duration,
}

/// Restores persisted relations and dialogs into a notifier translator.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct RestoreNotifier {
    pub relations: Vec<(
        pua_xmpp::stanza::BareJid,
        pua_xmpp::notifier::WatcherRelation,
    )>,
    pub dialogs: Vec<crate::store::StoredNotifierDialog>,
}

/// Restores persisted state at start-up.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restore(pub crate::store::Snapshot);

/// One live subscription, as `GET /subscriptions` shows it.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct SubscriptionInfo {
    /// `xmpp_to_sip` (an XMPP user watches a SIP user) or `sip_to_xmpp`.
    pub direction: &'static str,
    pub watcher: String,
    pub presentity: String,
    /// Relation (`pending`, `approved`, ...) and lease state (`active`, `waiting`, ...).
    pub relation: String,
    pub state: String,
    pub call_id: Option<String>,
    /// Seconds until the SIP lease ends, if there is one.
    pub expires_in: Option<u64>,
}

/// `GET /subscriptions?user=`: every subscription where `user` (a JID or a SIP URI) is the
/// watcher or the presentity.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Vec<SubscriptionInfo>, String>")]
pub struct ListSubscriptions {
    pub user: String,
}

/// Asks a subscriber shard for every pair where `user` is the XMPP watcher or the SIP
/// presentity (S').
#[derive(Message, Debug, Clone)]
#[rtype(result = "Vec<SubscriptionInfo>")]
pub struct DumpPairs {
    pub user: pua_xmpp::stanza::BareJid,
}

/// Write now every record a shard still holds back for coalescing (before the store's final
/// flush at shutdown). To the registry: it asks every shard and answers once all have.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct FlushPersists;

/// Asks the registry which of the actors it started are gone (their thread died): the
/// answer names them, empty when all run. `/health` reports it.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Vec<String>")]
pub struct GetLiveness;

/// The store committed every record a translator sent before its commit marker number `.0`
/// ([`crate::durable::Gate`]): the outputs held for it may go.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Durable(pub u64);

// ---- to the registry -------------------------------------------------------------------

/// Index updates sent by the translators.
#[derive(Message)]
#[rtype(result = "()")]
pub enum RegistryEvent {
    /// A notifier dialog of SIP watcher `watcher` (S') with XMPP presentity `presentity`.
    DialogXmpp {
        call_id: String,
        shard: usize,
        watcher: BareJid,
        presentity: BareJid,
    },
    DialogPua {
        call_id: String,
        owner: Recipient<DialogRequest>,
    },
    DialogGone {
        call_id: String,
    },
    /// `watcher` has no dialog left with `presentity` (ended, refused, or a fetch): it no
    /// longer counts against the watcher's subscription limit.
    WatchGone {
        watcher: BareJid,
        presentity: BareJid,
    },
}

/// Tells an XMPP presentity translator that the component link came back after being down:
/// the server may have restarted, so the presentity is probed again (the core decides from
/// which watcher: `Presentity::probe_after_restart`).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ProbeAfterReconnect;

// ---- to the notifier shards ------------------------------------------------------------

/// What the registry hands to the shard of X.
#[derive(Debug)]
pub enum NotifierEvent {
    /// An initial SUBSCRIBE (`watcher` = S') or an in-dialog one (`watcher` = None).
    Sip {
        req: Box<SipRequest>,
        txn: ServerTxnId,
        watcher: Option<BareJid>,
    },
    /// A presence stanza from X.
    Stanza(InPresence),
    /// Persisted relations and dialogs of X, at start.
    Restore(RestoreNotifier),
}

/// An event for the presentity X (created if new); an in-dialog request names none and is
/// found by its Call-ID.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ToNotifier {
    pub x: Option<BareJid>,
    pub event: NotifierEvent,
}

/// Asks a notifier shard for the dialogs of presentity `x`, optionally of one watcher only.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Vec<SubscriptionInfo>")]
pub struct DumpNotifier {
    pub x: BareJid,
    pub watcher: Option<BareJid>,
}

// ---- to the PUA translators ------------------------------------------------------------

/// Resumes the stored publication of a PUA-mode presentity after `delay` (restarts are
/// staggered); `rec.lease_left` is what is left of it now.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct RestorePublication {
    pub rec: pua_xmpp::publisher::PublicationRecord,
    pub delay: std::time::Duration,
}

// ---- to the link status ----------------------------------------------------------------

/// Stops the [`LinkStatus`] actor (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopLinkStatus;

/// Asks whether the component link is up.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct GetLinkStatus;

/// A SIP URI the registry's address mapper decoded (a SIP watcher's From): the Messenger's
/// own mapper (a clone made when it started) learns its spelling too, so a message to that
/// user goes to the URI as the user spelled it (mapping case 9), as presence requests do.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LearnSpelling(pub String);

/// The ordered targets of out-of-dialog requests (RFC 3263), from the locator to the SIP
/// transport: the first gets the next request. Replaces `outbound_proxy` once received.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SetTargets {
    pub targets: Vec<(SocketAddr, Transport)>,
    /// Where to report how requests to these targets went ([`TargetReport`]).
    pub report_to: Option<Recipient<TargetReport>>,
}

/// How a request to one of the [`SetTargets`] addresses went, as far as location cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetOutcome {
    /// Timer F fired with no response.
    Timeout,
    /// Connection refused or closed under the request, or the send failed.
    Refused,
    /// A response came back (the target is alive).
    Answered,
}

/// From the SIP transport to the locator: one request's fate at a target of the list.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct TargetReport {
    pub addr: SocketAddr,
    pub outcome: TargetOutcome,
}
