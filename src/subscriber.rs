//! The gateway as SIP *subscriber*: one XMPP watcher X watching one SIP presentity S
//! (XmppWatchesSip, §4.1–4.5, §4.8, §5.2, §6).
//!
//! A [`Subscription`] holds the long-lived relation (what X's roster believes) and the
//! short-lived SIP lease that implements it. The rule that matters most (§1.2, §6.3): a SIP
//! timeout, expiry or restart is a transport event and never becomes an XMPP roster change;
//! only explicit decisions (`rejected`, `noresource`, 403/404/603/604) do.
//!
//! Sans-IO: feed [`Input`]s with [`Subscription::handle_input`], drain [`Output`]s with
//! [`Subscription::poll_output`], and call `handle_input(Input::Timeout, now)` once
//! [`Subscription::poll_timeout`] is reached.

use crate::ids::IdGen;
use crate::packed::{Deadlines, Strs};
use crate::pidf;
use crate::presence::{self, Announced, TupleView};
use crate::sip::{
    Destination, Method, NameAddr, OutRequest, OutResponse, SipRequest, SipResponse, SubState,
};
use crate::stanza::{
    BareJid, DefinedCondition, InPresence, Jid, OutPresence, PresenceType, StanzaErrorOut,
};
use crate::timers::{self, Backoff};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings shared by every subscription of a gateway.
#[derive(Clone, Debug)]
pub struct SubscriberConfig {
    /// The `Expires` we ask for (§6.2: 3600 s by default).
    pub expires: u32,
    /// `host:port` (and `;transport=` if needed) put in our Contact.
    pub contact_host: String,
    /// Host part of the Call-IDs we make.
    pub call_id_host: String,
    /// Largest NOTIFY body accepted (413 above).
    pub max_body: usize,
    /// `<status>` texts are cut to this many characters (`limits.max_status_chars`).
    pub max_status_chars: usize,
}

impl SubscriberConfig {
    pub fn new(expires: u32, contact_host: &str, call_id_host: &str) -> SubscriberConfig {
        SubscriberConfig {
            expires,
            contact_host: contact_host.to_owned(),
            call_id_host: call_id_host.to_owned(),
            max_body: 65536,
            max_status_chars: crate::pidf::MAX_STATUS_CHARS,
        }
    }
}

/// The two identities of one pair, already mapped by the caller (§2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// X: the XMPP watcher, `romeo@example.net`.
    pub watcher: BareJid,
    /// X': X as a SIP URI, `sip:romeo*example.net@xmpp.example.com`.
    pub watcher_uri: String,
    /// S': the SIP presentity as a JID, `juliet*example.com@sip.example.net`.
    pub presentity: BareJid,
    /// S: the SIP presentity, `sip:juliet@example.com` (learned spelling).
    pub presentity_uri: String,
}

/// The persistent relation X → S (§6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// X asked; S has not approved yet.
    Pending,
    /// S approved (a NOTIFY said `active`).
    Approved,
    /// Not known: this machine only answers a probe by a fetch (§4.5 case 3).
    Unknown,
}

impl Relation {
    /// The relation a stanza from X starts for a pair that has no state yet: `subscribe` asks
    /// (pending), `probe` only fetches (unknown); anything else, e.g. an `unsubscribe`, starts
    /// nothing and gets no output (case 25).
    pub fn for_new_pair(kind: &Result<PresenceType, String>) -> Option<Relation> {
        match kind {
            Ok(PresenceType::Subscribe) => Some(Relation::Pending),
            Ok(PresenceType::Probe) => Some(Relation::Unknown),
            _ => None,
        }
    }
}

/// Where the SIP lease stands (§6.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No lease and none scheduled.
    Idle,
    /// SUBSCRIBE sent, no NOTIFY yet (Timer N runs). `fetch` for an `Expires: 0` poll.
    Waiting {
        fetch: bool,
    },
    Pending,
    Active,
    /// `Expires: 0` sent after X's `unsubscribe`; waiting for the final NOTIFY.
    Unsubscribing,
    /// Waiting to retry after a failure.
    Backoff,
    /// Finished: the caller drops the machine.
    Done,
}

/// The SIP dialog of the current lease (§6.4, subscriber side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    /// Last CSeq we sent.
    pub local_cseq: u32,
    /// Last CSeq received in a NOTIFY.
    pub remote_cseq: Option<u32>,
    /// Contact of the last NOTIFY.
    pub remote_target: Option<String>,
    /// From the first NOTIFY's Record-Route, in order (UAS rule, §6.4).
    pub route_set: Vec<String>,
    /// Expires of the last SUBSCRIBE we sent.
    pub requested: u32,
}

/// What is persisted about a pair: enough to resume after a restart (§6.3, issue 6).
#[derive(Clone, Debug, PartialEq)]
pub struct SubscriptionRecord {
    pub pair: Pair,
    pub relation: Relation,
    pub dialog: Option<Dialog>,
    /// Seconds of lease left when the record was written.
    pub lease_left: Option<u32>,
}

/// Events fed to a [`Subscription`].
#[derive(Debug)]
pub enum Input<'a> {
    /// A presence stanza from X to S' (`subscribe`, `unsubscribe`, `probe`).
    Stanza(&'a InPresence),
    /// A NOTIFY whose Call-ID and To-tag are ours; `now_unix` is wall-clock time for RPID.
    Notify { req: &'a SipRequest, now_unix: i64 },
    /// The final response to one of our requests.
    Response(&'a SipResponse),
    /// A request of ours got no final response (Timer F) or could not be sent.
    RequestFailed { call_id: &'a str, cseq: u32 },
    /// [`Subscription::poll_timeout`] was reached.
    Timeout,
}

/// Actions for the runtime.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Request(OutRequest),
    /// The response to the request just handled.
    Response(OutResponse),
    Stanza(OutPresence),
    /// What the store must hold for this pair changed: write [`Subscription::record`]. The
    /// runtime may do so later and once for several of these (a set-up asks three to four
    /// times within milliseconds), as long as it writes before it deletes or shuts down.
    /// The responses and stanzas queued with it ([`Subscription::awaits_durable`]) tell a peer
    /// about the change (`subscribed`, the first presence, the 200 to the NOTIFY that
    /// activated the dialog): the runtime sends them only once the record is durable.
    Persist,
    /// The relation is gone: delete it from the store.
    Forget,
    /// Something worth counting went wrong (a metric label, e.g. `pidf_not_well_formed`).
    Problem(&'static str),
}

/// The pair's strings, in one heap block (one allocation per pair instead of eight): X' and
/// S, the current dialog's Call-ID, tags, remote target and route set (joined by newlines,
/// which no header value contains), and the cached presence view.
const W_URI: usize = 0;
const P_URI: usize = 1;
const CALL_ID: usize = 2;
const LOCAL_TAG: usize = 3;
const REMOTE_TAG: usize = 4;
const REMOTE_TARGET: usize = 5;
const ROUTE_SET: usize = 6;
const VIEW: usize = 7;

/// The numbers of the current dialog; its strings are in the pair's block.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DialogNums {
    has_remote_tag: bool,
    has_remote_target: bool,
    local_cseq: u32,
    remote_cseq: Option<u32>,
    requested: u32,
}

/// The current dialog, read from the pair.
#[derive(Clone, Copy)]
struct DialogRef<'a> {
    n: &'a DialogNums,
    s: &'a Strs<8>,
}

impl<'a> DialogRef<'a> {
    fn unpack(self) -> Dialog {
        Dialog {
            call_id: self.call_id().to_owned(),
            local_tag: self.local_tag().to_owned(),
            remote_tag: self.remote_tag().map(str::to_owned),
            local_cseq: self.n.local_cseq,
            remote_cseq: self.n.remote_cseq,
            remote_target: self.remote_target().map(str::to_owned),
            route_set: self.route_set().map(str::to_owned).collect(),
            requested: self.n.requested,
        }
    }
    fn call_id(self) -> &'a str {
        self.s.str(CALL_ID)
    }
    fn local_tag(self) -> &'a str {
        self.s.str(LOCAL_TAG)
    }
    fn remote_tag(self) -> Option<&'a str> {
        self.n.has_remote_tag.then(|| self.s.str(REMOTE_TAG))
    }
    fn remote_target(self) -> Option<&'a str> {
        self.n.has_remote_target.then(|| self.s.str(REMOTE_TARGET))
    }
    fn route_set(self) -> impl Iterator<Item = &'a str> {
        let r = self.s.str(ROUTE_SET);
        r.split('\n').filter(move |_| !r.is_empty())
    }
}

/// Indexes of the pair's deadlines.
const TIMER_N: usize = 0;
const REFRESH: usize = 1;
const EXPIRES: usize = 2;
const RETRY: usize = 3;
const GIVE_UP: usize = 4;

/// One XMPP watcher's subscription to one SIP presentity.
#[derive(Debug)]
pub struct Subscription {
    /// Shared by every pair of the gateway: a million pairs must not hold a million copies.
    cfg: Arc<SubscriberConfig>,
    /// X.
    watcher: BareJid,
    /// S'.
    presentity: BareJid,
    /// X', S, the dialog's strings and the cached view (see [`VIEW`]).
    strs: Strs<8>,
    relation: Relation,
    phase: Phase,
    error_sent: bool,
    dialog: Option<DialogNums>,
    announced: Announced,
    /// A NOTIFY's state is cached in the block, for answering probes without SIP traffic
    /// (case 26).
    has_view: bool,
    /// Probes waiting for the first NOTIFY (§4.5: answered from one result). Boxed: rarely
    /// any, and 8 bytes instead of 24 in every pair.
    #[allow(clippy::box_collection)]
    probe_waiters: Option<Box<Vec<Jid>>>,
    backoff: Backoff,
    /// Timer N, refresh, lease expiry, retry, unsubscribe give-up.
    timers: Deadlines<5>,
    rng: IdGen,
    out: VecDeque<Output>,
}

impl Subscription {
    /// A machine for a pair with the given relation; call [`Subscription::handle_input`] with the
    /// stanza that created it. `seed` feeds tags, Call-IDs and jitter.
    pub fn new(
        cfg: impl Into<Arc<SubscriberConfig>>,
        pair: Pair,
        relation: Relation,
        seed: u64,
    ) -> Subscription {
        Subscription {
            cfg: cfg.into(),
            strs: Strs::new([
                pair.watcher_uri.as_bytes(),
                pair.presentity_uri.as_bytes(),
                b"",
                b"",
                b"",
                b"",
                b"",
                b"",
            ]),
            watcher: pair.watcher,
            presentity: pair.presentity,
            relation,
            phase: Phase::Idle,
            error_sent: false,
            dialog: None,
            announced: Announced::default(),
            has_view: false,
            probe_waiters: None,
            backoff: Backoff::default(),
            timers: Deadlines::default(),
            rng: IdGen::new(seed),
            out: VecDeque::new(),
        }
    }

    /// Resumes a persisted pair after a restart: a dialog with lease left is refreshed in-dialog
    /// (same Call-ID), anything else subscribes anew (§6.3). The runtime staggers the calls.
    pub fn restore(
        cfg: impl Into<Arc<SubscriberConfig>>,
        rec: SubscriptionRecord,
        seed: u64,
        now: Instant,
    ) -> Subscription {
        let mut s = Subscription::new(cfg, rec.pair, rec.relation, seed);
        match (rec.dialog, rec.lease_left) {
            (Some(d), Some(left)) if left > 0 && d.remote_tag.is_some() => {
                s.set_dialog(Some(&d));
                s.phase = if rec.relation == Relation::Approved {
                    Phase::Active
                } else {
                    Phase::Pending
                };
                s.timers
                    .set(EXPIRES, Some(now + Duration::from_secs(u64::from(left))));
                let requested = s.cfg.expires;
                s.send_in_dialog(requested);
            }
            _ => s.start_subscribe(now, false),
        }
        s
    }

    /// The pair's identities (a copy: they are stored packed).
    pub fn pair(&self) -> Pair {
        Pair {
            watcher: self.watcher.clone(),
            watcher_uri: self.watcher_uri().to_owned(),
            presentity: self.presentity.clone(),
            presentity_uri: self.presentity_uri().to_owned(),
        }
    }
    /// X.
    pub fn watcher(&self) -> &BareJid {
        &self.watcher
    }
    /// S'.
    pub fn presentity(&self) -> &BareJid {
        &self.presentity
    }
    /// X'.
    pub fn watcher_uri(&self) -> &str {
        self.strs.str(W_URI)
    }
    /// S.
    pub fn presentity_uri(&self) -> &str {
        self.strs.str(P_URI)
    }
    pub fn relation(&self) -> Relation {
        self.relation
    }
    pub fn phase(&self) -> Phase {
        self.phase
    }
    /// The current dialog (a copy: it is stored packed).
    pub fn dialog(&self) -> Option<Dialog> {
        self.dialog_ref().map(DialogRef::unpack)
    }
    /// The Call-ID of the current dialog.
    pub fn call_id(&self) -> Option<&str> {
        self.dialog_ref().map(DialogRef::call_id)
    }
    fn dialog_ref(&self) -> Option<DialogRef<'_>> {
        self.dialog.as_ref().map(|n| DialogRef { n, s: &self.strs })
    }

    /// Installs `d` as the current dialog (or none): one new block for the pair's strings.
    fn set_dialog(&mut self, d: Option<&Dialog>) {
        let routes = d.map(|d| d.route_set.join("\n")).unwrap_or_default();
        let mut parts = self.strs.parts();
        parts[CALL_ID] = d.map_or(&b""[..], |d| d.call_id.as_bytes());
        parts[LOCAL_TAG] = d.map_or(&b""[..], |d| d.local_tag.as_bytes());
        parts[REMOTE_TAG] = d
            .and_then(|d| d.remote_tag.as_deref())
            .map_or(&b""[..], str::as_bytes);
        parts[REMOTE_TARGET] = d
            .and_then(|d| d.remote_target.as_deref())
            .map_or(&b""[..], str::as_bytes);
        parts[ROUTE_SET] = routes.as_bytes();
        self.strs = Strs::new(parts);
        self.dialog = d.map(|d| DialogNums {
            has_remote_tag: d.remote_tag.is_some(),
            has_remote_target: d.remote_target.is_some(),
            local_cseq: d.local_cseq,
            remote_cseq: d.remote_cseq,
            requested: d.requested,
        });
    }

    fn set_view(&mut self, view: Option<&[TupleView]>) {
        self.has_view = view.is_some();
        let bytes = view.map(crate::packed::pack_view).unwrap_or_default();
        self.strs.set(VIEW, &bytes);
    }

    fn cached_view(&self) -> Option<Vec<TupleView>> {
        if !self.has_view {
            return None;
        }
        crate::packed::unpack_view(self.strs.get(VIEW))
    }

    /// Releases the memory of the drained output queue. A machine spends nearly all its life
    /// idle between events; keeping a queue's capacity (four requests, ~1.4 KB) per pair would
    /// dominate the memory of a million subscriptions. The buffer goes to `spare` if that has
    /// none, for the next [`Self::lend_queue`]: one buffer per shard instead of an allocation
    /// (and its growth) per event.
    pub fn shrink(&mut self, spare: &mut VecDeque<Output>) {
        if self.out.is_empty() {
            if spare.capacity() == 0 {
                std::mem::swap(&mut self.out, spare);
            } else {
                self.out = VecDeque::new();
            }
        }
    }

    /// Gives the machine `spare`'s empty buffer for its output queue if it has none (see
    /// [`Self::shrink`]). Only memory moves: the outputs are the same either way.
    pub fn lend_queue(&mut self, spare: &mut VecDeque<Output>) {
        if self.out.capacity() == 0 && spare.is_empty() {
            std::mem::swap(&mut self.out, spare);
        }
    }

    /// Ends the pair after a fault in handling it (issue 14: a fault stays in its pair): what
    /// the failed input left queued is dropped, X is told `unavailable` for what it was
    /// announced, the SIP dialog is unsubscribed (`Expires: 0`) and the record forgotten.
    pub fn abort(&mut self, now: Instant) {
        self.out.clear();
        self.probe_waiters = None;
        self.unsubscribe(now);
    }

    /// True once the machine has finished and can be dropped.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Time left on the SIP lease, if one is running.
    pub fn lease_left(&self, now: Instant) -> Option<Duration> {
        self.timers
            .get(EXPIRES)
            .map(|t| t.saturating_duration_since(now))
    }

    /// The record to persist now.
    pub fn record(&self, now: Instant) -> SubscriptionRecord {
        SubscriptionRecord {
            pair: self.pair(),
            relation: self.relation,
            dialog: self.dialog(),
            lease_left: self
                .timers
                .get(EXPIRES)
                .map(|t| t.saturating_duration_since(now).as_secs() as u32),
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Whether the queued outputs must wait until the record is durable (issue 14): they
    /// include a [`Output::Persist`] and tell a peer about it (a response or a stanza). The
    /// runtime then sends all of them, in order, once the record is committed.
    pub fn awaits_durable(&self) -> bool {
        self.out.iter().any(|o| matches!(o, Output::Persist))
            && self
                .out
                .iter()
                .any(|o| matches!(o, Output::Response(_) | Output::Stanza(_)))
    }

    /// The earliest instant at which [`Input::Timeout`] must be fed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.earliest()
    }

    pub fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        if self.phase == Phase::Done {
            if let Input::Notify { req, .. } = input {
                self.respond(req, 481, None);
            }
            return;
        }
        match input {
            Input::Stanza(p) => self.on_stanza(p, now),
            Input::Notify { req, now_unix } => self.on_notify(req, now_unix, now),
            Input::Response(r) => self.on_response(r, now),
            Input::RequestFailed { call_id, cseq } => {
                if self.is_current(call_id, cseq) {
                    self.on_failure(408, None, now);
                }
            }
            Input::Timeout => self.on_timeout(now),
        }
    }

    // ---- XMPP side -------------------------------------------------------------------------

    fn on_stanza(&mut self, p: &InPresence, now: Instant) {
        match p.kind {
            Ok(PresenceType::Subscribe) => match self.phase {
                Phase::Active if self.relation == Relation::Approved => {
                    // Case 23: already approved; answer like RFC 6121's auto-reply.
                    self.stanza(PresenceType::Subscribed);
                    self.resend_cached(Jid::from(self.watcher.clone()));
                }
                Phase::Idle => {
                    if self.relation == Relation::Unknown {
                        self.relation = Relation::Pending;
                    }
                    self.start_subscribe(now, false);
                }
                _ => {
                    // Pending, waiting or backing off: do not duplicate (§4.1).
                    if self.relation == Relation::Unknown {
                        self.relation = Relation::Pending;
                        self.persist();
                    }
                }
            },
            Ok(PresenceType::Unsubscribe) => self.unsubscribe(now),
            Ok(PresenceType::Probe) => self.on_probe(p, now),
            _ => {
                tracing::debug!(watcher = %self.watcher, kind = ?p.kind, "presence ignored by subscriber");
            }
        }
    }

    fn on_probe(&mut self, p: &InPresence, now: Instant) {
        match self.phase {
            Phase::Active => {
                self.resend_cached(p.from.clone());
            }
            Phase::Pending => self.push_stanza_to(PresenceType::Unavailable, p.from.clone()),
            Phase::Waiting { .. } => self.add_probe_waiter(p.from.clone()),
            Phase::Idle | Phase::Backoff => {
                self.add_probe_waiter(p.from.clone());
                let fetch = self.relation == Relation::Unknown;
                self.timers.set(RETRY, None);
                self.start_subscribe(now, fetch);
            }
            Phase::Unsubscribing | Phase::Done => {}
        }
    }

    fn resend_cached(&mut self, to: Jid) {
        match self.cached_view() {
            Some(view) => {
                let mut scratch = self.announced.clone();
                let stanzas =
                    presence::stanzas_for_pidf(&view, &mut scratch, &self.presentity, &to, true);
                if to == self.watcher {
                    self.announced = scratch;
                }
                self.out.extend(stanzas.into_iter().map(Output::Stanza));
            }
            None => self.push_stanza_to(PresenceType::Unavailable, to),
        }
    }

    fn unsubscribe(&mut self, now: Instant) {
        for s in presence::unavailable_for_announced(
            &mut self.announced,
            &self.presentity,
            &Jid::from(self.watcher.clone()),
        ) {
            self.out.push_back(Output::Stanza(s));
        }
        self.out.push_back(Output::Forget);
        self.relation = Relation::Unknown;
        self.set_view(None);
        self.clear_timers();
        match self.phase {
            Phase::Waiting { .. } | Phase::Pending | Phase::Active if self.dialog.is_some() => {
                self.send_in_dialog(0);
                self.phase = Phase::Unsubscribing;
                self.timers
                    .set(GIVE_UP, Some(now + timers::UNSUBSCRIBE_WAIT));
            }
            _ => self.phase = Phase::Done,
        }
    }

    // ---- SIP requests we send ---------------------------------------------------------------

    fn contact(&self) -> String {
        let user = self
            .watcher_uri()
            .split_once(':')
            .and_then(|(_, rest)| rest.split_once('@'))
            .map(|(u, _)| u)
            .unwrap_or("gw");
        crate::text::concat(&["sip:", user, "@", &self.cfg.contact_host])
    }

    /// A new subscription: new Call-ID, new From-tag, CSeq 1 (§6.4: never reuse a dialog).
    fn start_subscribe(&mut self, now: Instant, fetch: bool) {
        let dialog = Dialog {
            call_id: self.rng.call_id(&self.cfg.call_id_host),
            local_tag: self.rng.tag("gw-"),
            remote_tag: None,
            local_cseq: 0,
            remote_cseq: None,
            remote_target: None,
            route_set: Vec::new(),
            requested: if fetch { 0 } else { self.cfg.expires },
        };
        self.set_dialog(Some(&dialog));
        self.phase = Phase::Waiting { fetch };
        self.timers.set(REFRESH, None);
        self.timers.set(RETRY, None);
        self.timers.set(TIMER_N, Some(now + timers::TIMER_N));
        let expires = if fetch { 0 } else { self.cfg.expires };
        self.send_subscribe(expires, false);
        if !fetch {
            self.persist();
        }
    }

    fn send_in_dialog(&mut self, expires: u32) {
        self.send_subscribe(expires, true);
    }

    fn send_subscribe(&mut self, expires: u32, in_dialog: bool) {
        let contact = self.contact();
        let Some(d) = self.dialog.as_mut() else {
            return;
        };
        d.local_cseq += 1;
        d.requested = expires;
        let Some(d) = self.dialog_ref() else {
            return;
        };
        let established = in_dialog && d.remote_tag().is_some();
        let uri = match (d.remote_target(), established) {
            (Some(t), true) => t.to_owned(),
            _ => self.presentity_uri().to_owned(),
        };
        let req = OutRequest {
            method: Method::Subscribe,
            uri,
            route: if established {
                d.route_set().map(str::to_owned).collect()
            } else {
                Vec::new()
            },
            from: NameAddr {
                display: None,
                uri: self.watcher_uri().to_owned(),
                tag: Some(d.local_tag().to_owned()),
            },
            to: NameAddr {
                display: None,
                uri: self.presentity_uri().to_owned(),
                tag: if established {
                    d.remote_tag().map(str::to_owned)
                } else {
                    None
                },
            },
            call_id: d.call_id().to_owned(),
            cseq: d.n.local_cseq,
            contact: Some(contact),
            headers: vec![
                ("Event", "presence".to_owned()),
                ("Accept", "application/pidf+xml".to_owned()),
                ("Allow-Events", "presence".to_owned()),
                ("Expires", expires.to_string()),
            ],
            content_type: None,
            body: Vec::new(),
            destination: if established {
                Destination::InDialog
            } else {
                Destination::OutboundProxy
            },
        };
        self.out.push_back(Output::Request(req));
    }

    fn is_current(&self, call_id: &str, cseq: u32) -> bool {
        self.dialog
            .as_ref()
            .is_some_and(|d| d.local_cseq == cseq && self.strs.get(CALL_ID) == call_id.as_bytes())
    }

    // ---- responses to our SUBSCRIBEs ----------------------------------------------------------

    fn on_response(&mut self, r: &SipResponse, now: Instant) {
        if r.cseq_method != Method::Subscribe || !self.is_current(&r.call_id, r.cseq) {
            tracing::debug!(call_id = %r.call_id, cseq = r.cseq, "stale response ignored");
            return;
        }
        if self.phase == Phase::Unsubscribing {
            if !(200..300).contains(&r.status) {
                self.finish();
            }
            return;
        }
        match r.status {
            200..=299 => {
                let in_dialog = self.dialog.as_ref().is_some_and(|d| d.has_remote_tag);
                if let Some(d) = self.dialog.as_mut() {
                    if !d.has_remote_tag {
                        d.has_remote_tag = r.to.tag.is_some();
                        self.strs
                            .set(REMOTE_TAG, r.to.tag.as_deref().unwrap_or("").as_bytes());
                    }
                }
                let requested = self.dialog.as_ref().map_or(0, |d| d.requested);
                // The notifier may shorten but never lengthen (§4.2).
                let granted = r.expires.map_or(requested, |e| e.min(requested));
                if granted > 0 {
                    self.set_lease(granted, now);
                }
                if in_dialog {
                    self.backoff.reset();
                }
                self.persist();
            }
            423 => {
                let min = r.min_expires.unwrap_or(self.cfg.expires.max(60));
                let fetch = matches!(self.phase, Phase::Waiting { fetch: true });
                self.send_subscribe(if fetch { 0 } else { min }, true);
            }
            481 if matches!(self.phase, Phase::Active | Phase::Pending) => {
                // Case 85: the dialog is gone; a new subscription, no stanza.
                self.start_subscribe(now, false);
            }
            code => self.on_failure(code, r.retry_after, now),
        }
    }

    /// A final failure of a SUBSCRIBE (or a transaction timeout as 408), per §4.8.
    fn on_failure(&mut self, code: u16, retry_after: Option<u32>, now: Instant) {
        if self.phase == Phase::Unsubscribing {
            self.finish();
            return;
        }
        let fetch = matches!(self.phase, Phase::Waiting { fetch: true });
        match code {
            403 | 603 | 404 | 604 | 410 | 484 | 485 => {
                // Declined or no such presentity: a permanent decision (cases 29, 30).
                // Subscription stanzas go to the bare JID, once, probers included.
                self.probe_waiters = None;
                self.stanza(PresenceType::Unsubscribed);
                self.out.push_back(Output::Forget);
                self.finish();
            }
            408 | 480 | 486 | 500 | 503 | 504 => {
                if fetch {
                    self.answer_probes(PresenceType::Unavailable);
                    self.finish_or_idle();
                    return;
                }
                self.schedule_retry(retry_after, code, now);
            }
            300..=399 => self.schedule_retry(retry_after, code, now),
            401 | 407 => self.fatal_error(DefinedCondition::NotAuthorized, code),
            489 => self.fatal_error(DefinedCondition::FeatureNotImplemented, code),
            _ => {
                let cond = crate::error_map::sip_to_condition(code)
                    .unwrap_or(DefinedCondition::UndefinedCondition);
                self.fatal_error(cond, code);
            }
        }
    }

    fn fatal_error(&mut self, cond: DefinedCondition, code: u16) {
        self.answer_probes(PresenceType::Unavailable);
        self.error_stanza(cond, code);
        self.out.push_back(Output::Forget);
        self.finish();
    }

    fn schedule_retry(&mut self, retry_after: Option<u32>, code: u16, now: Instant) {
        let wait = self.backoff.fail(retry_after, &mut self.rng);
        if self.backoff.failures >= timers::FAILURES_BEFORE_ERROR
            && !self.error_sent
            && self.relation == Relation::Pending
        {
            self.error_sent = true;
            let cond = crate::error_map::sip_to_condition(code)
                .unwrap_or(DefinedCondition::ServiceUnavailable);
            self.error_stanza_typed(cond, code, crate::stanza::ErrorType::Wait);
        }
        // §6.3: a lapsed lease means unknown state, announced resources go unavailable.
        if self.timers.get(EXPIRES).is_some_and(|t| t <= now + wait) {
            self.drop_announced();
        }
        self.answer_probes(PresenceType::Unavailable);
        self.phase = Phase::Backoff;
        self.timers.set(TIMER_N, None);
        self.timers.set(REFRESH, None);
        self.timers.set(RETRY, Some(now + wait));
    }

    fn finish_or_idle(&mut self) {
        if self.relation == Relation::Unknown {
            self.finish();
        } else {
            self.phase = Phase::Idle;
            self.clear_timers();
        }
    }

    fn finish(&mut self) {
        self.clear_timers();
        self.phase = Phase::Done;
    }

    fn clear_timers(&mut self) {
        self.timers.clear();
    }

    fn set_lease(&mut self, granted: u32, now: Instant) {
        self.timers
            .set(EXPIRES, Some(now + Duration::from_secs(u64::from(granted))));
        self.timers.set(
            REFRESH,
            Some(now + timers::refresh_after(granted, &mut self.rng)),
        );
    }

    // ---- NOTIFY -------------------------------------------------------------------------------

    fn respond(&mut self, req: &SipRequest, code: u16, extra: Option<(&'static str, &str)>) {
        let mut resp = OutResponse::to_request(req, code, None);
        if let Some((n, v)) = extra {
            resp.headers.push((n, v.to_owned()));
        }
        self.out.push_back(Output::Response(resp));
    }

    fn on_notify(&mut self, req: &SipRequest, now_unix: i64, now: Instant) {
        // §5.2 validation, in order; the registry already matched Call-ID and To-tag.
        let Some(event) = &req.event else {
            return self.respond(req, 400, None);
        };
        if event.package != "presence" {
            return self.respond(req, 489, Some(("Allow-Events", "presence")));
        }
        let state = match &req.subscription_state {
            Some(Ok(s)) => s.clone(),
            _ => return self.respond(req, 400, None),
        };
        let Some(dialog) = self.dialog_ref() else {
            return self.respond(req, 481, None);
        };
        if req.to.tag.as_deref() != Some(dialog.local_tag()) || req.call_id != dialog.call_id() {
            return self.respond(req, 481, None);
        }
        if let (Some(ours), Some(theirs)) = (dialog.remote_tag(), req.from.tag.as_deref()) {
            if ours != theirs && dialog.n.remote_cseq.is_some() {
                // A second fork after the dialog was set up: not supported, refuse it.
                return self.respond(req, 481, None);
            }
        }
        if dialog.n.remote_cseq.is_some_and(|c| req.cseq <= c) {
            return self.respond(req, 500, None);
        }
        if !req.body.is_empty() {
            let ct = req.content_type.as_deref().unwrap_or("");
            if ct != "application/pidf+xml" {
                return self.respond(req, 415, Some(("Accept", "application/pidf+xml")));
            }
            if req.body.len() > self.cfg.max_body {
                return self.respond(req, 413, None);
            }
        }
        // The NOTIFY is accepted: it creates or updates the dialog (UAS rules, §6.4).
        let first = dialog.n.remote_cseq.is_none();
        if let Some(d) = self.dialog.as_mut() {
            d.remote_cseq = Some(req.cseq);
            if let Some(tag) = req.from.tag.as_deref() {
                d.has_remote_tag = true;
                self.strs.set(REMOTE_TAG, tag.as_bytes());
            }
            if let Some(c) = &req.contact {
                d.has_remote_target = true;
                self.strs.set(REMOTE_TARGET, c.uri.as_bytes());
            }
        }
        if first {
            self.strs
                .set(ROUTE_SET, req.record_route.join("\n").as_bytes());
        }
        self.respond(req, 200, None);
        self.timers.set(TIMER_N, None);

        // No body in an `active` or `pending` NOTIFY: the notifier has no document for the
        // presentity now (Kamailio, once a publication expired or was removed): it has no
        // presence, like a PIDF without tuples (issue 14, no stale presence).
        let view = if req.body.is_empty() {
            Some(Vec::new())
        } else {
            match pidf::parse(&req.body, self.cfg.max_body) {
                Ok(doc) => Some(presence::view_pidf_with(
                    &doc,
                    now_unix,
                    self.cfg.max_status_chars,
                )),
                Err(e) => {
                    self.out.push_back(Output::Problem(match e {
                        pidf::PidfError::TooLarge => "pidf_too_large",
                        pidf::PidfError::Doctype => "pidf_doctype",
                        pidf::PidfError::NotWellFormed(_) => "pidf_not_well_formed",
                        pidf::PidfError::NotPidf => "pidf_not_pidf",
                        pidf::PidfError::TooManyElements => "pidf_too_many_elements",
                    }));
                    // Case 68/69: keep the previous state; a non-2xx could kill the subscription.
                    let excerpt: String = String::from_utf8_lossy(&req.body)
                        .chars()
                        .take(120)
                        .collect();
                    tracing::warn!(presentity = %self.presentity_uri(), error = %e, body = %excerpt.escape_debug(), "NOTIFY body rejected, previous state kept");
                    None
                }
            }
        };

        let was_fetch = matches!(self.phase, Phase::Waiting { fetch: true });
        match state.state {
            SubState::Active => {
                if self.phase == Phase::Unsubscribing {
                    return;
                }
                self.phase = Phase::Active;
                self.backoff.reset();
                self.error_sent = false;
                if let Some(e) = state.expires {
                    self.set_lease(e, now);
                }
                self.became_approved();
                self.deliver(view);
            }
            SubState::Pending | SubState::Other(_) => {
                if self.phase == Phase::Unsubscribing {
                    return;
                }
                self.phase = Phase::Pending;
                if let Some(e) = state.expires {
                    self.set_lease(e, now);
                }
                self.answer_probes(PresenceType::Unavailable);
                // Back to pending (no longer authorised): what X was told is no longer true.
                self.drop_announced();
                self.persist();
            }
            SubState::Terminated => {
                if self.phase == Phase::Unsubscribing {
                    return self.finish();
                }
                // A final NOTIFY without a body carries no state (a fetch not answered).
                let view = view.filter(|_| !req.body.is_empty());
                self.on_terminated(&state, view, was_fetch, now);
            }
        }
    }

    fn became_approved(&mut self) {
        if self.relation != Relation::Approved {
            let tell = self.relation == Relation::Pending;
            self.relation = Relation::Approved;
            if tell {
                self.stanza(PresenceType::Subscribed);
            }
            self.persist();
        }
    }

    /// Turns a parsed NOTIFY body into stanzas for X (and waiting probers).
    fn deliver(&mut self, view: Option<Vec<TupleView>>) {
        let waiters = self.take_probe_waiters();
        let Some(view) = view else {
            for w in waiters {
                self.resend_cached(w);
            }
            return;
        };
        let watcher = Jid::from(self.watcher.clone());
        let probe = !waiters.is_empty();
        let stanzas = presence::stanzas_for_pidf(
            &view,
            &mut self.announced,
            &self.presentity,
            &watcher,
            probe,
        );
        self.out.extend(stanzas.into_iter().map(Output::Stanza));
        self.set_view(Some(&view));
        for w in waiters {
            if w != watcher {
                self.resend_cached(w);
            }
        }
    }

    fn on_terminated(
        &mut self,
        state: &crate::sip::SubscriptionState,
        view: Option<Vec<TupleView>>,
        was_fetch: bool,
        now: Instant,
    ) {
        let reason = state.reason.as_deref().unwrap_or("");
        match reason {
            "rejected" | "noresource" => {
                self.probe_waiters = None;
                self.stanza(PresenceType::Unsubscribed);
                self.out.push_back(Output::Forget);
                self.finish();
            }
            _ if was_fetch => {
                // Case 28: a fetch answered with state; record the relation and subscribe.
                if view.is_some() {
                    self.relation = Relation::Approved;
                    self.deliver(view);
                } else {
                    self.answer_probes(PresenceType::Unavailable);
                }
                if self.relation == Relation::Approved {
                    self.start_subscribe(now, false);
                } else {
                    self.finish();
                }
            }
            "deactivated" | "timeout" => {
                // Cases 76, 77: re-subscribe at once, new dialog, no stanza.
                if view.is_some() {
                    self.deliver(view);
                }
                self.start_subscribe(now, false);
            }
            "probation" => {
                self.drop_announced();
                self.wait_then_resubscribe(
                    state.retry_after.map(|s| Duration::from_secs(u64::from(s))),
                    now,
                );
            }
            "giveup" => self.wait_then_resubscribe(
                Some(state.retry_after.map_or(timers::GIVEUP_DEFAULT, |s| {
                    Duration::from_secs(u64::from(s))
                })),
                now,
            ),
            "invariant" => {
                // Case 81: the state is final; keep it, never retry.
                self.phase = Phase::Idle;
                self.clear_timers();
                self.set_dialog(None);
                self.persist();
            }
            _ => self.wait_then_resubscribe(None, now),
        }
    }

    fn wait_then_resubscribe(&mut self, after: Option<Duration>, now: Instant) {
        let wait = match after {
            Some(d) => d,
            None => self.backoff.fail(None, &mut self.rng),
        };
        self.phase = Phase::Backoff;
        self.set_dialog(None);
        self.timers.set(TIMER_N, None);
        self.timers.set(REFRESH, None);
        self.timers.set(EXPIRES, None);
        self.timers.set(RETRY, Some(now + wait));
        self.persist();
    }

    fn drop_announced(&mut self) {
        let watcher = Jid::from(self.watcher.clone());
        let stanzas =
            presence::unavailable_for_announced(&mut self.announced, &self.presentity, &watcher);
        self.out.extend(stanzas.into_iter().map(Output::Stanza));
    }

    // ---- timers -------------------------------------------------------------------------------

    fn on_timeout(&mut self, now: Instant) {
        if self.timers.get(GIVE_UP).is_some_and(|t| t <= now) {
            // No final NOTIFY after our Expires: 0; we are done anyway.
            self.finish();
            return;
        }
        if self.timers.get(TIMER_N).is_some_and(|t| t <= now) {
            self.timers.set(TIMER_N, None);
            // Case 19: no NOTIFY within Timer N: failure, retry later with a new Call-ID.
            let fetch = matches!(self.phase, Phase::Waiting { fetch: true });
            if fetch {
                self.answer_probes(PresenceType::Unavailable);
                self.finish_or_idle();
            } else {
                self.schedule_retry(None, 408, now);
            }
            return;
        }
        if self.timers.get(RETRY).is_some_and(|t| t <= now) {
            self.timers.set(RETRY, None);
            let fetch = self.relation == Relation::Unknown;
            self.start_subscribe(now, fetch);
            return;
        }
        if self.timers.get(EXPIRES).is_some_and(|t| t <= now) {
            // §6.3: the lease lapsed without a successful refresh.
            self.timers.set(EXPIRES, None);
            self.drop_announced();
            self.start_subscribe(now, false);
            return;
        }
        if self.timers.get(REFRESH).is_some_and(|t| t <= now) {
            self.timers.set(REFRESH, None);
            let expires = self.cfg.expires;
            self.send_in_dialog(expires);
        }
    }

    // ---- helpers ------------------------------------------------------------------------------

    fn add_probe_waiter(&mut self, who: Jid) {
        self.probe_waiters.get_or_insert_default().push(who);
    }

    fn take_probe_waiters(&mut self) -> Vec<Jid> {
        self.probe_waiters.take().map(|w| *w).unwrap_or_default()
    }

    fn answer_probes(&mut self, kind: PresenceType) {
        for w in self.take_probe_waiters() {
            self.push_stanza_to(kind, w);
        }
    }

    fn stanza(&mut self, kind: PresenceType) {
        let to = Jid::from(self.watcher.clone());
        self.push_stanza_to(kind, to);
    }

    fn push_stanza_to(&mut self, kind: PresenceType, to: Jid) {
        let from = Jid::from(self.presentity.clone());
        self.out
            .push_back(Output::Stanza(OutPresence::new(from, to, kind)));
    }

    fn error_stanza(&mut self, cond: DefinedCondition, code: u16) {
        let kind = crate::error_map::default_error_type(&cond);
        self.error_stanza_typed(cond, code, kind);
    }

    fn error_stanza_typed(
        &mut self,
        cond: DefinedCondition,
        code: u16,
        kind: crate::stanza::ErrorType,
    ) {
        let mut p = OutPresence::new(
            Jid::from(self.presentity.clone()),
            Jid::from(self.watcher.clone()),
            PresenceType::Error,
        );
        p.error = Some(StanzaErrorOut {
            kind,
            condition: cond,
            text: Some(format!("SIP {code} {}", crate::sip::reason_phrase(code))),
            by: Some(self.presentity.domain().to_string()),
        });
        self.out.push_back(Output::Stanza(p));
    }

    /// Asks for a write, once per batch of outputs: a `Persist` already queued and not
    /// followed by a `Forget` covers this change too (the runtime reads the record later).
    fn persist(&mut self) {
        if self.relation == Relation::Unknown {
            return;
        }
        let queued = self
            .out
            .iter()
            .rev()
            .find(|o| matches!(o, Output::Persist | Output::Forget))
            .is_some_and(|o| matches!(o, Output::Persist));
        if !queued {
            self.out.push_back(Output::Persist);
        }
    }
}

#[cfg(test)]
#[path = "subscriber_tests.rs"]
mod tests;
