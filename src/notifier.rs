//! The gateway as SIP *notifier* for one XMPP presentity X (SipWatchesXmpp, notifier mode:
//! §4.4, §5.1, §5.4, §6).
//!
//! A [`Presentity`] keeps X's aggregated XMPP presence, the relation of every SIP watcher S to X
//! (pending / approved / denied, persistent) and the SIP dialogs (leases) of those watchers.
//! One XMPP presence change is aggregated once and fanned out to every active dialog once; each
//! dialog has its own expiry, its own rate limit and at most one NOTIFY outstanding (RFC 6665).

use crate::ids::IdGen;
use crate::pidf;
use crate::presence::XmppAggregate;
use crate::sip::{Destination, Method, NameAddr, OutRequest, OutResponse, SipRequest, SipResponse};
use crate::stanza::{BareJid, InPresence, Jid, OutPresence, PresenceType};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Settings shared by every notifier of a gateway (§6.2).
#[derive(Clone, Debug)]
pub struct NotifierConfig {
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    /// At most one presence NOTIFY per dialog per interval; changes in between are coalesced.
    pub min_interval: Duration,
    /// How often a `subscribe` may be re-sent to X for the same watcher while undecided.
    pub resubscribe_interval: Duration,
    /// How long a fetch (`Expires: 0`) waits for X's answer.
    pub fetch_wait: Duration,
    /// `host:port` put in our Contact.
    pub contact_host: String,
    /// X's statuses are cut to this many characters in the PIDF (`limits.max_status_chars`).
    pub max_status_chars: usize,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            min_interval: Duration::from_secs(5),
            resubscribe_interval: Duration::from_secs(24 * 3600),
            fetch_wait: Duration::from_secs(2),
            contact_host: "127.0.0.1:5080".to_owned(),
            max_status_chars: crate::pidf::MAX_STATUS_CHARS,
        }
    }
}

/// The decision of X about one SIP watcher (§6.1, persistent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatcherRelation {
    Pending,
    Approved,
    Denied,
}

#[derive(Clone, Debug)]
struct Relation {
    state: WatcherRelation,
    /// When a `subscribe` stanza was last sent for it (anti-spam, §6.2).
    asked_at: Option<Instant>,
}

/// Subscription state of one dialog as told to the watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogState {
    Pending,
    Active,
}

/// One SIP watcher's dialog with us (§6.4, notifier side).
#[derive(Clone, Debug, PartialEq)]
pub struct NotifierDialog {
    pub call_id: String,
    /// Our tag (in `To` of their requests, `From` of our NOTIFYs).
    pub local_tag: String,
    pub remote_tag: String,
    /// The watcher as it appears in their `From` (display, URI).
    pub remote: NameAddr,
    /// S' for the watcher.
    pub watcher: BareJid,
    pub remote_target: String,
    pub route_set: Vec<String>,
    pub local_cseq: u32,
    pub remote_cseq: u32,
    pub event_id: Option<String>,
    pub state: DialogState,
    pub expires_at: Instant,
    /// CSeq of the NOTIFY awaiting its response.
    inflight: Option<u32>,
    /// A presence change not yet sent (coalesced).
    dirty: bool,
    /// Earliest time for the next presence NOTIFY.
    next_allowed: Option<Instant>,
    /// `Some(reason, retry-after)`: the next NOTIFY is the final one.
    terminate: Option<(&'static str, Option<u32>)>,
    /// A fetch: one final NOTIFY once X answered or this deadline passed.
    fetch_deadline: Option<Instant>,
    /// The final NOTIFY was sent; the dialog is dropped at the end of the current input.
    closed: bool,
}

impl NotifierDialog {
    /// A dialog rebuilt from stored fields; `restore_dialog` sets its expiry.
    #[allow(clippy::too_many_arguments)]
    pub fn stored(
        call_id: String,
        local_tag: String,
        remote_tag: String,
        remote: NameAddr,
        watcher: BareJid,
        remote_target: String,
        route_set: Vec<String>,
        local_cseq: u32,
        remote_cseq: u32,
        event_id: Option<String>,
        active: bool,
        now: Instant,
    ) -> NotifierDialog {
        NotifierDialog {
            call_id,
            local_tag,
            remote_tag,
            remote,
            watcher,
            remote_target,
            route_set,
            local_cseq,
            remote_cseq,
            event_id,
            state: if active {
                DialogState::Active
            } else {
                DialogState::Pending
            },
            expires_at: now,
            inflight: None,
            dirty: false,
            next_allowed: None,
            terminate: None,
            fetch_deadline: None,
            closed: false,
        }
    }
}

/// What the store should record.
#[derive(Clone, Debug, PartialEq)]
pub enum PersistOp {
    Relation {
        watcher: BareJid,
        state: WatcherRelation,
    },
    Dialog(Box<NotifierDialog>),
    /// A dialog ended; `watcher` (S') lets the runtime count what each watcher still has.
    DialogGone {
        call_id: String,
        watcher: BareJid,
    },
}

/// Events fed to a [`Presentity`].
#[derive(Debug)]
pub enum Input<'a> {
    /// A SUBSCRIBE for X that passed [`pre_checks`] and address mapping; `watcher` is S'.
    Subscribe {
        req: &'a SipRequest,
        watcher: &'a BareJid,
    },
    /// A stanza from X: presence, or its decision about a watcher (`to` = S').
    Stanza(&'a InPresence),
    /// The final response to one of our NOTIFYs.
    Response(&'a SipResponse),
    /// A NOTIFY of ours timed out or could not be sent.
    RequestFailed {
        call_id: &'a str,
        cseq: u32,
    },
    Timeout,
}

/// Actions for the runtime.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Request(OutRequest),
    Response(OutResponse),
    Stanza(OutPresence),
    Persist(PersistOp),
}

/// Checks 2–4 of §5.1 that need no state: Max-Forwards, Require, Event. The caller runs them
/// before routing a SUBSCRIBE (then 481 for an unknown To-tag, 404/416/400 for addresses).
pub fn pre_checks(req: &SipRequest) -> Option<OutResponse> {
    if req.max_forwards == Some(0) {
        return Some(OutResponse::to_request(req, 483, None));
    }
    if !req.require.is_empty() {
        return Some(
            OutResponse::to_request(req, 420, None)
                .with_header("Unsupported", req.require.join(", ")),
        );
    }
    match &req.event {
        Some(e) if e.package == "presence" => None,
        _ => Some(OutResponse::to_request(req, 489, None).with_header("Allow-Events", "presence")),
    }
}

/// The notifier state of one XMPP presentity.
#[derive(Debug)]
pub struct Presentity {
    /// Shared by every presentity of the gateway.
    cfg: std::sync::Arc<NotifierConfig>,
    /// X.
    jid: BareJid,
    /// X' (`sip:romeo*example.net@xmpp.example.com`).
    sip_uri: String,
    agg: XmppAggregate,
    /// Whether X's presence has been seen since start (else probe X when a watcher arrives).
    presence_known: bool,
    relations: HashMap<BareJid, Relation>,
    dialogs: Vec<NotifierDialog>,
    rng: IdGen,
    out: VecDeque<Output>,
}

impl Presentity {
    pub fn new(
        cfg: impl Into<std::sync::Arc<NotifierConfig>>,
        jid: BareJid,
        sip_uri: String,
        seed: u64,
    ) -> Presentity {
        let cfg = cfg.into();
        Presentity {
            agg: XmppAggregate::with_max_status_chars(cfg.max_status_chars),
            cfg,
            jid,
            sip_uri,
            presence_known: false,
            relations: HashMap::new(),
            dialogs: Vec::new(),
            rng: IdGen::new(seed),
            out: VecDeque::new(),
        }
    }

    /// Restores a persisted relation (after a restart).
    /// Restores a persisted dialog (after a restart) with `left` of its lease. The dialog
    /// resumes as it was: the watcher's next refresh is accepted and the next change of X is
    /// NOTIFYed in it; nothing is sent now (the watcher already has our last state).
    pub fn restore_dialog(&mut self, mut d: NotifierDialog, left: Duration, now: Instant) {
        d.expires_at = now + left;
        // NOTIFYs sent after the last write are not in the store: skip ahead so the watcher
        // never sees a CSeq it already had (it would answer 500).
        d.local_cseq = d.local_cseq.saturating_add(100);
        d.inflight = None;
        d.dirty = false;
        d.next_allowed = None;
        d.terminate = None;
        d.fetch_deadline = None;
        d.closed = false;
        self.dialogs.retain(|x| x.call_id != d.call_id);
        self.dialogs.push(d);
    }

    /// After a restart X's presence is unknown: probe X from one approved watcher so the XMPP
    /// server sends it again (it does so for a contact with a `from` subscription).
    pub fn probe_after_restart(&mut self) {
        let approved = self
            .relations
            .iter()
            .filter(|(_, r)| r.state == WatcherRelation::Approved)
            .map(|(w, _)| w)
            .min_by(|a, b| a.as_str().cmp(b.as_str()))
            .cloned();
        if let Some(w) = approved {
            self.send_probe(&w);
        }
    }

    /// After a restart, once X's relations and dialogs are restored: X is probed
    /// ([`Presentity::probe_after_restart`]), and every SIP watcher still waiting for X's
    /// decision is asked for again and told its state: a crash between the 200 to its
    /// SUBSCRIBE and the `subscribe` stanza or the first NOTIFY would otherwise leave it
    /// waiting until its refresh (issue 14), and both are idempotent.
    pub fn resume_after_restart(&mut self, now: Instant) {
        self.probe_after_restart();
        let waiting: Vec<(usize, BareJid)> = self
            .dialogs
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.closed && d.state == DialogState::Pending)
            .filter(|(_, d)| {
                self.relations
                    .get(&d.watcher)
                    .is_none_or(|r| r.state == WatcherRelation::Pending)
            })
            .map(|(i, d)| (i, d.watcher.clone()))
            .collect();
        for (i, watcher) in waiting {
            self.ask(&watcher, now);
            self.send_notify(i, now);
        }
    }

    pub fn restore_relation(&mut self, watcher: BareJid, state: WatcherRelation) {
        self.relations.insert(
            watcher,
            Relation {
                state,
                asked_at: None,
            },
        );
    }

    pub fn jid(&self) -> &BareJid {
        &self.jid
    }
    pub fn dialogs(&self) -> &[NotifierDialog] {
        &self.dialogs
    }
    /// Whether `watcher` (S') still has a dialog with X that has not ended: what the runtime's
    /// per-watcher subscription limit counts.
    pub fn watched_by(&self, watcher: &BareJid) -> bool {
        self.dialogs
            .iter()
            .any(|d| !d.closed && d.watcher == *watcher)
    }
    pub fn relation(&self, watcher: &BareJid) -> Option<WatcherRelation> {
        self.relations.get(watcher).map(|r| r.state)
    }
    /// True when nothing is left worth keeping in memory.
    pub fn is_idle(&self) -> bool {
        self.dialogs.is_empty() && self.out.is_empty()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Whether the queued outputs must wait until what they persist is durable (issue 14):
    /// they include a [`Output::Persist`], and everything queued with it tells a peer about
    /// the change (the 200 to an initial SUBSCRIBE, the `active` NOTIFY of an approval, the
    /// `subscribe` stanza of a new watcher). The runtime sends them, in order, once it is
    /// committed. Only set-ups, refreshes, decisions and ends persist: the NOTIFYs of presence
    /// changes do not, so they are never held.
    pub fn awaits_durable(&self) -> bool {
        self.out.iter().any(|o| matches!(o, Output::Persist(_)))
    }

    /// Releases spare capacity once the outputs are drained. A presentity spends its life idle
    /// between events; a drained queue that once held a few outputs (~700 bytes each) and a
    /// dialog list grown by doubling would otherwise dominate its memory.
    ///
    /// The output buffer goes to `spare` if that has none, for the next
    /// [`Self::lend_queue`]: one buffer per shard instead of an allocation per event.
    pub fn shrink(&mut self, spare: &mut VecDeque<Output>) {
        if self.out.is_empty() {
            if spare.capacity() == 0 {
                std::mem::swap(&mut self.out, spare);
            } else {
                self.out = VecDeque::new();
            }
        }
        if self.dialogs.capacity() >= 2 * self.dialogs.len() + 2 {
            self.dialogs.shrink_to_fit();
        }
    }

    /// The next instant at which [`Input::Timeout`] has work to do. Only timers that can fire
    /// are reported: a fetch waits for its deadline only (its lease is already over), and a
    /// dialog whose final NOTIFY waits behind an outstanding one waits for that response, so a
    /// runtime never spins on an instant in the past.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.dialogs
            .iter()
            .filter(|d| !d.closed)
            .flat_map(|d| {
                if d.fetch_deadline.is_some() {
                    return [d.fetch_deadline, None];
                }
                if d.terminate.is_some() {
                    return [None, None];
                }
                let rate = if d.dirty && d.inflight.is_none() {
                    d.next_allowed
                } else {
                    None
                };
                [Some(d.expires_at), rate]
            })
            .flatten()
            .min()
    }

    /// Gives the machine `spare`'s empty buffer for its output queue if it has none (see
    /// [`Self::shrink`]). Only memory moves: the outputs are the same either way.
    pub fn lend_queue(&mut self, spare: &mut VecDeque<Output>) {
        if self.out.capacity() == 0 && spare.is_empty() {
            std::mem::swap(&mut self.out, spare);
        }
    }

    pub fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        match input {
            Input::Subscribe { req, watcher } => self.on_subscribe(req, watcher, now),
            Input::Stanza(p) => self.on_stanza(p, now),
            Input::Response(r) => self.on_response(r.status, &r.call_id, r.cseq, now),
            Input::RequestFailed { call_id, cseq } => self.on_response(408, call_id, cseq, now),
            Input::Timeout => self.on_timeout(now),
        }
        // Dialogs that sent their final NOTIFY are dropped only now, so that loops over the
        // dialogs above never see indices shift under them.
        self.dialogs.retain(|d| !d.closed);
    }

    // ---- SUBSCRIBE ----------------------------------------------------------------------------

    fn contact(&self) -> String {
        let user = self
            .sip_uri
            .split_once(':')
            .and_then(|(_, r)| r.split_once('@'))
            .map(|(u, _)| u)
            .unwrap_or("gw");
        format!("sip:{user}@{}", self.cfg.contact_host)
    }

    fn find(&self, call_id: &str, local_tag: Option<&str>) -> Option<usize> {
        self.dialogs.iter().position(|d| {
            !d.closed && d.call_id == call_id && local_tag.is_none_or(|t| t == d.local_tag)
        })
    }

    fn on_subscribe(&mut self, req: &SipRequest, watcher: &BareJid, now: Instant) {
        // §5.1 check 5 comes before the content checks: a refresh for no dialog is 481. So is
        // one for a dialog already ending (its final NOTIFY waits behind an outstanding one):
        // granting a new lease there would contradict the `terminated` about to be sent.
        if let Some(tag) = req.to.tag.as_deref() {
            let live = self
                .find(&req.call_id, Some(tag))
                .is_some_and(|i| self.dialogs[i].terminate.is_none());
            if !live {
                return self.respond(OutResponse::to_request(req, 481, None));
            }
        }
        // §5.1 checks 8–10.
        if !req.accept.is_empty()
            && !req
                .accept
                .iter()
                .any(|a| a == "application/pidf+xml" || a == "*/*" || a == "application/*")
        {
            return self.respond(OutResponse::to_request(req, 406, None));
        }
        if !req.body.is_empty() {
            return self.respond(
                OutResponse::to_request(req, 415, None)
                    .with_header("Accept", "application/pidf+xml"),
            );
        }
        let requested = req.expires.unwrap_or(self.cfg.default_expires);
        if requested > 0 && requested < self.cfg.min_expires {
            return self.respond(
                OutResponse::to_request(req, 423, None)
                    .with_header("Min-Expires", self.cfg.min_expires.to_string()),
            );
        }
        let granted = requested.min(self.cfg.max_expires);
        match req.to.tag.as_deref() {
            Some(tag) => self.on_refresh(req, tag, granted, now),
            None => self.on_initial(req, watcher, granted, now),
        }
    }

    fn on_initial(&mut self, req: &SipRequest, watcher: &BareJid, granted: u32, now: Instant) {
        let Some(remote_tag) = req.from.tag.clone() else {
            return self
                .respond(OutResponse::to_request(req, 400, None).with_reason("Missing From tag"));
        };
        let Some(contact) = req.contact.as_ref().map(|c| c.uri.clone()) else {
            return self
                .respond(OutResponse::to_request(req, 400, None).with_reason("Missing Contact"));
        };
        let local_tag = self.rng.tag("gw-");
        let mut resp = OutResponse::to_request(req, 200, Some(&local_tag));
        resp.contact = Some(self.contact());
        resp.record_route = req.record_route.clone();
        resp.headers.push(("Expires", granted.to_string()));
        resp.headers.push(("Allow-Events", "presence".to_owned()));
        self.respond(resp);

        let fetch = granted == 0;
        let approved = self.relation(watcher) == Some(WatcherRelation::Approved);
        let dialog = NotifierDialog {
            call_id: req.call_id.clone(),
            local_tag,
            remote_tag,
            remote: NameAddr {
                tag: None,
                ..req.from.clone()
            },
            watcher: watcher.clone(),
            remote_target: contact,
            route_set: req.record_route.clone(),
            local_cseq: 0,
            remote_cseq: req.cseq,
            event_id: req.event.as_ref().and_then(|e| e.id.clone()),
            state: if approved {
                DialogState::Active
            } else {
                DialogState::Pending
            },
            expires_at: now + Duration::from_secs(u64::from(granted)),
            inflight: None,
            dirty: false,
            next_allowed: None,
            terminate: None,
            fetch_deadline: fetch.then(|| now + self.cfg.fetch_wait),
            closed: false,
        };
        self.dialogs.push(dialog);
        let idx = self.dialogs.len() - 1;
        if !fetch {
            self.out
                .push_back(Output::Persist(PersistOp::Dialog(Box::new(
                    self.dialogs[idx].clone(),
                ))));
        }
        if approved {
            if fetch {
                self.send_probe(watcher);
            } else {
                // Active at once with what we have (closed document if nothing yet).
                self.send_notify(idx, now);
                if !self.presence_known {
                    self.send_probe(watcher);
                }
            }
        } else {
            if !fetch {
                self.send_notify(idx, now);
            }
            self.ask(watcher, now);
        }
    }

    fn on_refresh(&mut self, req: &SipRequest, tag: &str, granted: u32, now: Instant) {
        let Some(idx) = self.find(&req.call_id, Some(tag)) else {
            return self.respond(OutResponse::to_request(req, 481, None));
        };
        let d = &mut self.dialogs[idx];
        if req.cseq <= d.remote_cseq {
            return self
                .respond(OutResponse::to_request(req, 500, None).with_reason("CSeq out of order"));
        }
        d.remote_cseq = req.cseq;
        if let Some(c) = &req.contact {
            d.remote_target = c.uri.clone();
        }
        let mut resp = OutResponse::to_request(req, 200, None);
        resp.contact = Some(self.contact());
        resp.headers.push(("Expires", granted.to_string()));
        self.respond(resp);
        let d = &mut self.dialogs[idx];
        if granted == 0 {
            // Case 53: unsubscribe; final NOTIFY, relation kept, no stanza (§6.3).
            d.terminate = Some(("timeout", None));
        } else {
            d.expires_at = now + Duration::from_secs(u64::from(granted));
            let persisted = PersistOp::Dialog(Box::new(d.clone()));
            self.out.push_back(Output::Persist(persisted));
        }
        self.send_notify(idx, now);
    }

    /// Sends `subscribe` from S' to X, at most once per interval while undecided (§5.1 ◆).
    fn ask(&mut self, watcher: &BareJid, now: Instant) {
        let interval = self.cfg.resubscribe_interval;
        let rel = self.relations.entry(watcher.clone()).or_insert(Relation {
            state: WatcherRelation::Pending,
            asked_at: None,
        });
        let due = rel
            .asked_at
            .is_none_or(|t| now.saturating_duration_since(t) >= interval);
        let new = rel.asked_at.is_none() && rel.state == WatcherRelation::Pending;
        if !due {
            return;
        }
        rel.asked_at = Some(now);
        if new {
            self.out.push_back(Output::Persist(PersistOp::Relation {
                watcher: watcher.clone(),
                state: WatcherRelation::Pending,
            }));
        }
        self.out.push_back(Output::Stanza(OutPresence::new(
            Jid::from(watcher.clone()),
            Jid::from(self.jid.clone()),
            PresenceType::Subscribe,
        )));
    }

    fn send_probe(&mut self, watcher: &BareJid) {
        self.out.push_back(Output::Stanza(OutPresence::new(
            Jid::from(watcher.clone()),
            Jid::from(self.jid.clone()),
            PresenceType::Probe,
        )));
    }

    // ---- XMPP side ------------------------------------------------------------------------------

    fn on_stanza(&mut self, p: &InPresence, now: Instant) {
        let kind = match &p.kind {
            Ok(k) => *k,
            Err(_) => return,
        };
        let to = p.to_bare();
        match kind {
            PresenceType::Available | PresenceType::Unavailable => {
                // Cases 37/38: a bad show or priority counts as absent; logged, never an error.
                if let Some(v) = &p.invalid_show {
                    tracing::warn!(from = %p.from, show = %v, "invalid <show/> treated as absent");
                }
                if let Some(v) = &p.invalid_priority {
                    tracing::warn!(from = %p.from, priority = %v, "invalid <priority/> treated as absent");
                }
                let resource = p.from.resource().map(|r| r.as_str().to_owned());
                let changed = self
                    .agg
                    .apply(resource.as_deref(), kind, &p.body, p.lang.as_deref());
                self.presence_known = true;
                for d in &mut self.dialogs {
                    if d.fetch_deadline.is_some() {
                        // X answered the probe of an approved fetch: answer it now. A fetch
                        // that is not approved waits for X's decision or the deadline.
                        if d.state == DialogState::Active {
                            d.fetch_deadline = Some(now);
                        }
                    } else if changed && d.state == DialogState::Active {
                        d.dirty = true;
                    }
                }
                self.flush(now);
            }
            PresenceType::Subscribed => {
                self.set_relation(&to, WatcherRelation::Approved);
                for i in 0..self.dialogs.len() {
                    let d = &self.dialogs[i];
                    if !d.closed && d.watcher == to && d.state == DialogState::Pending {
                        self.dialogs[i].state = DialogState::Active;
                        if self.dialogs[i].fetch_deadline.is_none() {
                            // The store must know the dialog is active, for a restart.
                            let persisted = PersistOp::Dialog(Box::new(self.dialogs[i].clone()));
                            self.out.push_back(Output::Persist(persisted));
                            self.send_notify(i, now);
                        }
                    }
                }
            }
            PresenceType::Unsubscribed => {
                self.set_relation(&to, WatcherRelation::Denied);
                self.terminate_watcher(&to, ("rejected", None), now);
            }
            PresenceType::Error => {
                // A bounce of our subscribe or probe from S' to X: §5.4 ends S's pending or
                // active dialogs with the mapped reason (and its retry-after).
                let cond = p
                    .error
                    .clone()
                    .unwrap_or(crate::stanza::DefinedCondition::UndefinedCondition);
                let reason = crate::error_map::reason_for_xmpp_error(&cond);
                self.terminate_watcher(&to, reason, now);
            }
            _ => {}
        }
    }

    fn set_relation(&mut self, watcher: &BareJid, state: WatcherRelation) {
        let rel = self.relations.entry(watcher.clone()).or_insert(Relation {
            state,
            asked_at: None,
        });
        rel.state = state;
        self.out.push_back(Output::Persist(PersistOp::Relation {
            watcher: watcher.clone(),
            state,
        }));
    }

    /// Ends X's dialogs after a fault in handling X (issue 14: a fault stays where it
    /// happened): what the failed input left queued is dropped and every open dialog gets
    /// `terminated;reason=deactivated`, so its watcher subscribes again at once (RFC 6665
    /// §4.1.3) and starts from a fresh dialog.
    pub fn abort(&mut self, now: Instant) {
        self.out.clear();
        for i in 0..self.dialogs.len() {
            if !self.dialogs[i].closed {
                self.dialogs[i].terminate = Some(("deactivated", None));
                self.send_notify(i, now);
            }
        }
    }

    fn terminate_watcher(
        &mut self,
        watcher: &BareJid,
        reason: (&'static str, Option<u32>),
        now: Instant,
    ) {
        for i in 0..self.dialogs.len() {
            if !self.dialogs[i].closed && &self.dialogs[i].watcher == watcher {
                self.dialogs[i].terminate = Some(reason);
                self.send_notify(i, now);
            }
        }
    }

    // ---- NOTIFY ---------------------------------------------------------------------------------

    /// Sends every coalesced change whose rate limit allows it.
    fn flush(&mut self, now: Instant) {
        for i in 0..self.dialogs.len() {
            let d = &self.dialogs[i];
            if d.closed {
                continue;
            }
            let due = d.fetch_deadline.is_some_and(|t| t <= now)
                || (d.dirty && d.next_allowed.is_none_or(|t| t <= now));
            if due && d.inflight.is_none() {
                self.send_notify(i, now);
            }
        }
    }

    /// Sends the dialog's current state now, or marks it dirty when a NOTIFY is outstanding.
    fn send_notify(&mut self, idx: usize, now: Instant) {
        let contact = self.contact();
        let mut body = None;
        let Some(d) = self.dialogs.get_mut(idx).filter(|d| !d.closed) else {
            return;
        };
        if d.inflight.is_some() {
            d.dirty = true;
            return;
        }
        let fetch = d.fetch_deadline.is_some();
        let reason = if fetch {
            Some(("timeout", None))
        } else {
            d.terminate
        };
        let state = match reason {
            Some((r, None)) => format!("terminated;reason={r}"),
            Some((r, Some(after))) => format!("terminated;reason={r};retry-after={after}"),
            None => {
                let left = d.expires_at.saturating_duration_since(now).as_secs();
                match d.state {
                    DialogState::Active => format!("active;expires={left}"),
                    DialogState::Pending => format!("pending;expires={left}"),
                }
            }
        };
        // A body with state, unless pending or rejected (§4.4, §5.1).
        let with_body =
            d.state == DialogState::Active && !matches!(reason, Some((r, _)) if r != "timeout");
        if with_body {
            let mut s = String::with_capacity(512);
            let entity = format!("pres:{}", self.sip_uri.trim_start_matches("sip:"));
            pidf::write_from_xmpp(&entity, &self.sip_uri, &self.agg, &mut s);
            body = Some(s);
        }
        d.local_cseq += 1;
        d.dirty = false;
        d.fetch_deadline = None;
        if reason.is_none() && d.state == DialogState::Active {
            d.next_allowed = Some(now + self.cfg.min_interval);
        }
        let event = match &d.event_id {
            Some(id) => format!("presence;id={id}"),
            None => "presence".to_owned(),
        };
        let headers = vec![("Event", event), ("Subscription-State", state)];
        let req = OutRequest {
            method: Method::Notify,
            uri: d.remote_target.clone(),
            route: d.route_set.clone(),
            from: NameAddr {
                display: None,
                uri: self.sip_uri.clone(),
                tag: Some(d.local_tag.clone()),
            },
            to: NameAddr {
                tag: Some(d.remote_tag.clone()),
                ..d.remote.clone()
            },
            call_id: d.call_id.clone(),
            cseq: d.local_cseq,
            contact: Some(contact),
            headers,
            content_type: body.as_ref().map(|_| "application/pidf+xml"),
            body: body.map(String::into_bytes).unwrap_or_default(),
            destination: Destination::InDialog,
        };
        let (call_id, watcher) = (d.call_id.clone(), d.watcher.clone());
        if reason.is_some() {
            // The final NOTIFY: the dialog ends here; its response is not needed.
            d.closed = true;
            self.out.push_back(Output::Request(req));
            self.out
                .push_back(Output::Persist(PersistOp::DialogGone { call_id, watcher }));
        } else {
            d.inflight = Some(d.local_cseq);
            self.out.push_back(Output::Request(req));
        }
    }

    fn on_response(&mut self, status: u16, call_id: &str, cseq: u32, now: Instant) {
        let Some(idx) = self
            .dialogs
            .iter()
            .position(|d| !d.closed && d.call_id == call_id && d.inflight == Some(cseq))
        else {
            return;
        };
        self.dialogs[idx].inflight = None;
        match status {
            200..=299 => {}
            408 | 481 => {
                // §5.1: the watcher is gone. Delete the dialog, no XMPP action.
                let d = &mut self.dialogs[idx];
                d.closed = true;
                tracing::info!(call_id = %d.call_id, status, "SIP watcher gone, dialog removed");
                let (call_id, watcher) = (d.call_id.clone(), d.watcher.clone());
                self.out
                    .push_back(Output::Persist(PersistOp::DialogGone { call_id, watcher }));
                return;
            }
            _ => {
                tracing::warn!(
                    call_id,
                    status,
                    "NOTIFY failed; update dropped, dialog kept"
                );
            }
        }
        let d = &self.dialogs[idx];
        if d.terminate.is_some() || (d.dirty && d.next_allowed.is_none_or(|t| t <= now)) {
            self.send_notify(idx, now);
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        // Expired leases first: NOTIFY terminated;reason=timeout, relation kept (§6.3). A NOTIFY
        // still outstanding is waited for (never two outstanding): its response or failure
        // sends the final one.
        for i in 0..self.dialogs.len() {
            let d = &mut self.dialogs[i];
            if !d.closed
                && d.expires_at <= now
                && d.terminate.is_none()
                && d.fetch_deadline.is_none()
            {
                d.terminate = Some(("timeout", None));
                self.send_notify(i, now);
            }
        }
        self.flush(now);
    }

    fn respond(&mut self, resp: OutResponse) {
        self.out.push_back(Output::Response(resp));
    }
}

#[cfg(test)]
#[path = "notifier_tests.rs"]
mod tests;
