//! Per-presentity translator actors for the XMPP presentities: thin shells around the core
//! state machines.
//!
//! [`XmppPresentityTranslator`]: one per XMPP presentity X in notifier mode; it holds the
//! [`pua_xmpp::notifier::Presentity`] that fans X's presence out to its SIP watchers.
//! [`PuaTranslator`]: one per XMPP presentity in PUA mode (PUBLISH + presence.winfo).
//! The XMPP-watches-SIP pairs, by far the most numerous, live in [`crate::shard`] instead.
//! The actors own the clock (`Instant::now()`, wall time for RPID) and one wake-up timer each;
//! every protocol decision is in the core.

use crate::messages::*;
use crate::registry::{Registry, RegistryEvent};
use crate::store::{StoreHandle, StoreOp};
use actix::prelude::*;
use pua_xmpp::address::AddressMapper;
use pua_xmpp::notifier::{self, NotifierConfig, Presentity};
use pua_xmpp::pua::{self, PuaConfig, PuaPresentity};
use pua_xmpp::sip::{Method, OutRequest};
use pua_xmpp::stanza::BareJid;
use pua_xmpp::subscriber;
use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where translators send what the core asks for.
#[derive(Clone)]
pub struct Links {
    pub requests: Recipient<SendRequest>,
    pub responses: Recipient<SendResponse>,
    pub stanzas: Recipient<SendPresence>,
    /// The same two, for batches (the subscriber shards' hot path).
    pub response_batches: Recipient<SendResponses>,
    pub stanza_batches: Recipient<SendPresences>,
    pub registry: Addr<Registry>,
    pub store: StoreHandle,
}

/// The state label of a subscriber pair, for the `pua_xmpp_subscriptions` gauge.
pub(crate) fn phase_label(p: subscriber::Phase) -> &'static str {
    match p {
        subscriber::Phase::Idle => "idle",
        subscriber::Phase::Waiting { .. } => "waiting",
        subscriber::Phase::Pending => "pending",
        subscriber::Phase::Active => "active",
        subscriber::Phase::Unsubscribing => "ending",
        subscriber::Phase::Backoff => "retrying",
        subscriber::Phase::Done => "done",
    }
}

pub(crate) fn gauge_move(
    direction: &'static str,
    from: Option<&'static str>,
    to: Option<&'static str>,
) {
    if from == to {
        return;
    }
    if let Some(f) = from {
        metrics::gauge!("pua_xmpp_subscriptions", "direction" => direction, "state" => f)
            .decrement(1.0);
    }
    if let Some(t) = to {
        metrics::gauge!("pua_xmpp_subscriptions", "direction" => direction, "state" => t)
            .increment(1.0);
    }
}

/// Records how long a request of ours took to get its final response.
fn observe_latency(method: &Method, sent: Instant) {
    let secs = sent.elapsed().as_secs_f64();
    match method {
        Method::Notify => metrics::histogram!("pua_xmpp_notify_latency_seconds").record(secs),
        Method::Publish => metrics::histogram!("pua_xmpp_publish_latency_seconds").record(secs),
        _ => metrics::histogram!("pua_xmpp_subscribe_latency_seconds").record(secs),
    }
}

/// Requests of a translator awaiting their outcome: key → (Call-ID, CSeq, method, sent at).
#[derive(Default)]
pub(crate) struct Outstanding {
    txns: HashMap<u64, (String, u32, Method, Instant)>,
    next_key: u64,
}

impl Outstanding {
    pub(crate) fn send(
        &mut self,
        links: &Links,
        req: OutRequest,
        reply_to: Recipient<TransactionOutcome>,
    ) {
        self.next_key += 1;
        let key = self.next_key;
        let entry = (
            req.call_id.clone(),
            req.cseq,
            req.method.clone(),
            Instant::now(),
        );
        self.txns.insert(key, entry);
        send_request(links, req, key, reply_to);
    }

    /// The (Call-ID, CSeq) an outcome belongs to; records the request's latency.
    pub(crate) fn finish(&mut self, msg: &TransactionOutcome) -> Option<(String, u32)> {
        let (call_id, cseq, method, sent) = self.txns.remove(&msg.key)?;
        if self.txns.is_empty() {
            // A translator is idle nearly all its life: keep no table room between requests.
            self.txns = HashMap::new();
        }
        if matches!(msg.result, TxnResult::Response(_)) {
            observe_latency(&method, sent);
        }
        Some((call_id, cseq))
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Keeps a single wake-up armed at the earliest deadline of the machines.
#[derive(Default)]
pub(crate) struct Wakeup {
    pub(crate) at: Option<Instant>,
    pub(crate) handle: Option<SpawnHandle>,
}

impl Wakeup {
    pub(crate) fn arm<A>(
        &mut self,
        next: Option<Instant>,
        ctx: &mut Context<A>,
        fire: fn(&mut A, &mut Context<A>),
    ) where
        A: Actor<Context = Context<A>>,
    {
        if next == self.at {
            return;
        }
        if let Some(h) = self.handle.take() {
            ctx.cancel_future(h);
        }
        self.at = next;
        if let Some(t) = next {
            let delay = t.saturating_duration_since(Instant::now());
            self.handle = Some(ctx.run_later(delay, fire));
        }
    }
}

pub(crate) fn send_request(
    links: &Links,
    req: OutRequest,
    key: u64,
    reply_to: Recipient<TransactionOutcome>,
) {
    tracing::debug!(method = req.method.as_str(), uri = %req.uri, call_id = %req.call_id, cseq = req.cseq, "sending request");
    links.requests.do_send(SendRequest { req, key, reply_to });
}

// ==== XMPP presentity: SIP watchers of one XMPP user (notifier mode) ===============================

pub struct XmppPresentityTranslator {
    machine: Presentity,
    links: Links,
    outstanding: Outstanding,
    wakeup: Wakeup,
}

impl XmppPresentityTranslator {
    pub fn new(
        jid: BareJid,
        sip_uri: String,
        cfg: NotifierConfig,
        links: Links,
        seed: u64,
    ) -> Self {
        XmppPresentityTranslator {
            machine: Presentity::new(cfg, jid, sip_uri, seed),
            links,
            outstanding: Outstanding::default(),
            wakeup: Wakeup::default(),
        }
    }

    fn input(
        &mut self,
        input: notifier::Input<'_>,
        txn: Option<ServerTxnId>,
        ctx: &mut Context<Self>,
    ) {
        let before = self.dialog_counts();
        self.machine.handle_input(input, Instant::now());
        self.drain(txn, ctx);
        self.gauge_dialogs(before);
    }

    /// (pending, active) dialogs, for the `pua_xmpp_subscriptions` gauge.
    fn dialog_counts(&self) -> (i64, i64) {
        self.machine
            .dialogs()
            .iter()
            .fold((0, 0), |(p, a), d| match d.state {
                notifier::DialogState::Pending => (p + 1, a),
                notifier::DialogState::Active => (p, a + 1),
            })
    }

    fn gauge_dialogs(&self, before: (i64, i64)) {
        let after = self.dialog_counts();
        for (state, delta) in [
            ("pending", after.0 - before.0),
            ("active", after.1 - before.1),
        ] {
            if delta != 0 {
                metrics::gauge!("pua_xmpp_subscriptions", "direction" => "sip_to_xmpp", "state" => state)
                    .increment(delta as f64);
            }
        }
    }

    /// Keeps the registry's Call-ID index in step with the dialogs.
    fn index(&mut self, op: notifier::PersistOp, ctx: &mut Context<Self>) {
        match op {
            notifier::PersistOp::Dialog(d) => {
                tracing::info!(call_id = %d.call_id, watcher = %d.remote.uri, presentity = %self.machine.jid(), state = ?d.state, "SIP watcher subscription (created, refreshed or approved)");
                self.links.registry.do_send(RegistryEvent::DialogXmpp {
                    call_id: d.call_id.clone(),
                    owner: ctx.address(),
                });
            }
            notifier::PersistOp::DialogGone { call_id } => {
                tracing::info!(%call_id, presentity = %self.machine.jid(), "SIP watcher subscription ended");
                self.links
                    .registry
                    .do_send(RegistryEvent::DialogGone { call_id });
            }
            notifier::PersistOp::Relation { watcher, state } => {
                tracing::info!(%watcher, presentity = %self.machine.jid(), ?state, "watcher relation");
            }
        }
    }

    fn drain(&mut self, txn: Option<ServerTxnId>, ctx: &mut Context<Self>) {
        while let Some(out) = self.machine.poll_output() {
            match out {
                notifier::Output::Request(req) => {
                    let reply_to = ctx.address().recipient();
                    self.outstanding.send(&self.links, req, reply_to);
                }
                notifier::Output::Response(resp) => {
                    if let Some(txn) = txn {
                        self.links.responses.do_send(SendResponse { txn, resp });
                    }
                }
                notifier::Output::Stanza(p) => self.links.stanzas.do_send(SendPresence(p)),
                notifier::Output::Persist(op) => {
                    let store_op =
                        StoreOp::from_persist(self.machine.jid(), &op, Instant::now(), unix_now());
                    self.links.store.send(store_op);
                    self.index(op, ctx);
                }
            }
        }
        self.machine.shrink();
        let next = self.machine.poll_timeout();
        self.wakeup.arm(next, ctx, |a, ctx| {
            a.wakeup.at = None;
            a.wakeup.handle = None;
            a.input(notifier::Input::Timeout, None, ctx);
        });
    }
}

impl Actor for XmppPresentityTranslator {
    type Context = Context<Self>;
}

impl Handler<DialogRequest> for XmppPresentityTranslator {
    type Result = ();
    fn handle(&mut self, msg: DialogRequest, ctx: &mut Context<Self>) {
        if msg.req.method != Method::Subscribe {
            let resp = pua_xmpp::sip::OutResponse::to_request(&msg.req, 481, None);
            self.links
                .responses
                .do_send(SendResponse { txn: msg.txn, resp });
            return;
        }
        // In-dialog refreshes carry no mapped watcher; the dialog knows it.
        let watcher = msg
            .watcher
            .clone()
            .unwrap_or_else(|| self.machine.jid().clone());
        let input = notifier::Input::Subscribe {
            req: &msg.req,
            watcher: &watcher,
        };
        self.input(input, Some(msg.txn), ctx);
    }
}

impl Handler<FromPresentity> for XmppPresentityTranslator {
    type Result = ();
    fn handle(&mut self, msg: FromPresentity, ctx: &mut Context<Self>) {
        self.input(notifier::Input::Stanza(&msg.0), None, ctx);
    }
}

impl Handler<TransactionOutcome> for XmppPresentityTranslator {
    type Result = ();
    fn handle(&mut self, msg: TransactionOutcome, ctx: &mut Context<Self>) {
        let Some((call_id, cseq)) = self.outstanding.finish(&msg) else {
            return;
        };
        match msg.result {
            TxnResult::Response(r) => self.input(notifier::Input::Response(&r), None, ctx),
            TxnResult::Timeout | TxnResult::TransportError(_) => self.input(
                notifier::Input::RequestFailed {
                    call_id: &call_id,
                    cseq,
                },
                None,
                ctx,
            ),
        }
    }
}

// ==== XMPP presentity in PUA mode: PUBLISH + presence.winfo ========================================

pub struct PuaTranslator {
    machine: PuaPresentity,
    links: Links,
    outstanding: Outstanding,
    winfo_call_id: Option<String>,
    wakeup: Wakeup,
    /// A stored publication waiting for its staggered restore. Applied early if X's presence
    /// comes first, so that presence modifies the restored publication instead of creating a
    /// second one next to it.
    pending_restore: Option<pua_xmpp::publisher::PublicationRecord>,
}

impl PuaTranslator {
    pub fn new(
        jid: BareJid,
        uri: String,
        cfg: PuaConfig,
        mapper: AddressMapper,
        links: Links,
        seed: u64,
    ) -> Self {
        PuaTranslator {
            machine: PuaPresentity::new(cfg, jid, uri, mapper, seed),
            links,
            outstanding: Outstanding::default(),
            winfo_call_id: None,
            wakeup: Wakeup::default(),
            pending_restore: None,
        }
    }

    fn apply_pending_restore(&mut self, ctx: &mut Context<Self>) {
        if let Some(rec) = self.pending_restore.take() {
            self.machine.restore_publication(rec, Instant::now());
            self.drain(None, ctx);
        }
    }

    fn input(&mut self, input: pua::Input<'_>, txn: Option<ServerTxnId>, ctx: &mut Context<Self>) {
        self.machine.handle_input(input, Instant::now());
        self.drain(txn, ctx);
    }

    fn drain(&mut self, txn: Option<ServerTxnId>, ctx: &mut Context<Self>) {
        while let Some(out) = self.machine.poll_output() {
            match out {
                pua::Output::Request(req) => {
                    let reply_to = ctx.address().recipient();
                    self.outstanding.send(&self.links, req, reply_to);
                }
                pua::Output::Response(resp) => {
                    if let Some(txn) = txn {
                        self.links.responses.do_send(SendResponse { txn, resp });
                    }
                }
                pua::Output::Stanza(p) => self.links.stanzas.do_send(SendPresence(p)),
                pua::Output::Persist(rec) => self.links.store.send(StoreOp::publication(
                    self.machine.jid().clone(),
                    rec,
                    unix_now(),
                )),
            }
        }
        let current = self.machine.winfo_call_id().map(str::to_owned);
        if current != self.winfo_call_id {
            if let Some(old) = self.winfo_call_id.take() {
                self.links
                    .registry
                    .do_send(RegistryEvent::DialogGone { call_id: old });
            }
            if let Some(c) = &current {
                self.links.registry.do_send(RegistryEvent::DialogPua {
                    call_id: c.clone(),
                    owner: ctx.address(),
                });
            }
            self.winfo_call_id = current;
        }
        let next = self.machine.poll_timeout();
        self.wakeup.arm(next, ctx, |a, ctx| {
            a.wakeup.at = None;
            a.wakeup.handle = None;
            a.input(pua::Input::Timeout, None, ctx);
        });
    }
}

impl Actor for PuaTranslator {
    type Context = Context<Self>;
}

/// Resumes the stored publication of a PUA-mode presentity after `delay` (restarts are
/// staggered); `rec.lease_left` is what is left of it now.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct RestorePublication {
    pub rec: pua_xmpp::publisher::PublicationRecord,
    pub delay: std::time::Duration,
}

impl Handler<RestorePublication> for PuaTranslator {
    type Result = ();
    fn handle(&mut self, msg: RestorePublication, ctx: &mut Context<Self>) {
        self.pending_restore = Some(msg.rec);
        if msg.delay.is_zero() {
            return self.apply_pending_restore(ctx);
        }
        ctx.run_later(msg.delay, |a, ctx| a.apply_pending_restore(ctx));
    }
}

impl Handler<FromPresentity> for PuaTranslator {
    type Result = ();
    fn handle(&mut self, msg: FromPresentity, ctx: &mut Context<Self>) {
        self.apply_pending_restore(ctx);
        self.input(pua::Input::Stanza(&msg.0), None, ctx);
    }
}

impl Handler<ReqWinfo> for PuaTranslator {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: ReqWinfo, ctx: &mut Context<Self>) -> Self::Result {
        let input = pua::Input::ReqWinfo {
            expires: msg.expires,
            watcher: msg.watcher.as_deref(),
        };
        self.input(input, None, ctx);
        Ok(())
    }
}

impl Handler<DialogRequest> for PuaTranslator {
    type Result = ();
    fn handle(&mut self, msg: DialogRequest, ctx: &mut Context<Self>) {
        if msg.req.method == Method::Notify {
            self.input(pua::Input::Notify(&msg.req), Some(msg.txn), ctx);
        } else {
            let resp = pua_xmpp::sip::OutResponse::to_request(&msg.req, 481, None);
            self.links
                .responses
                .do_send(SendResponse { txn: msg.txn, resp });
        }
    }
}

impl Handler<TransactionOutcome> for PuaTranslator {
    type Result = ();
    fn handle(&mut self, msg: TransactionOutcome, ctx: &mut Context<Self>) {
        let Some((call_id, cseq)) = self.outstanding.finish(&msg) else {
            return;
        };
        match msg.result {
            TxnResult::Response(r) => self.input(pua::Input::Response(&r), None, ctx),
            TxnResult::Timeout | TxnResult::TransportError(_) => self.input(
                pua::Input::RequestFailed {
                    call_id: &call_id,
                    cseq,
                },
                None,
                ctx,
            ),
        }
    }
}

fn unix_to_left(expires_at_unix: i64) -> std::time::Duration {
    std::time::Duration::from_secs(expires_at_unix.saturating_sub(unix_now()).max(0) as u64)
}

impl Handler<RestoreNotifier> for XmppPresentityTranslator {
    type Result = ();
    fn handle(&mut self, msg: RestoreNotifier, ctx: &mut Context<Self>) {
        let now = Instant::now();
        for (watcher, state) in msg.relations {
            self.machine.restore_relation(watcher, state);
        }
        for d in msg.dialogs {
            let left = unix_to_left(d.expires_at_unix);
            if left.is_zero() {
                continue;
            }
            let call_id = d.call_id.clone();
            let dialog = pua_xmpp::notifier::NotifierDialog::stored(
                d.call_id,
                d.local_tag,
                d.remote_tag,
                pua_xmpp::sip::NameAddr {
                    display: d.remote_display,
                    uri: d.remote_uri,
                    tag: None,
                },
                d.watcher,
                d.remote_target,
                d.route_set,
                d.local_cseq,
                d.remote_cseq,
                d.event_id,
                d.active,
                now,
            );
            self.machine.restore_dialog(dialog, left, now);
            self.links.registry.do_send(RegistryEvent::DialogXmpp {
                call_id,
                owner: ctx.address(),
            });
        }
        self.machine.probe_after_restart();
        self.drain(None, ctx);
        self.gauge_dialogs((0, 0));
    }
}

impl Handler<crate::registry::ProbeAfterReconnect> for XmppPresentityTranslator {
    type Result = ();
    fn handle(&mut self, _: crate::registry::ProbeAfterReconnect, ctx: &mut Context<Self>) {
        self.machine.probe_after_restart();
        self.drain(None, ctx);
    }
}

impl Handler<DumpSubscriptions> for XmppPresentityTranslator {
    type Result = MessageResult<DumpSubscriptions>;
    fn handle(&mut self, msg: DumpSubscriptions, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        let list = self
            .machine
            .dialogs()
            .iter()
            .filter(|d| msg.watcher.as_ref().is_none_or(|w| &d.watcher == w))
            .map(|d| SubscriptionInfo {
                direction: "sip_to_xmpp",
                watcher: d.remote.uri.clone(),
                presentity: self.machine.jid().to_string(),
                relation: match self.machine.relation(&d.watcher) {
                    Some(notifier::WatcherRelation::Approved) => "approved",
                    Some(notifier::WatcherRelation::Denied) => "denied",
                    _ => "pending",
                }
                .to_owned(),
                state: match d.state {
                    notifier::DialogState::Active => "active",
                    notifier::DialogState::Pending => "pending",
                }
                .to_owned(),
                call_id: Some(d.call_id.clone()),
                expires_in: Some(d.expires_at.saturating_duration_since(now).as_secs()),
            })
            .collect();
        MessageResult(list)
    }
}
