//! Notifier shards: the XMPP presentities of notifier mode (X, fanned out to its SIP watchers).
//!
//! One [`NotifierShard`] actor per thread owns the presentities whose bare JID hashes to it
//! ([`crate::shard::shard_for`] of X). Inside, a presentity is its boxed core machine
//! ([`pua_xmpp::notifier::Presentity`]) in a slab slot, found by JID or by the Call-ID of one
//! of its dialogs, with one ordered timer queue and one wake-up for the whole shard: no actor,
//! task, mailbox or timer per presentity (issue 7, the same pattern as [`crate::shard`]).

use crate::clock::{unix_now, Wakeup};
use crate::deadlines::{Deadlines, Due};
use crate::durable::{send_released, Gate, Held};
use crate::idhash::IdMap;
use crate::links::Links;
use crate::messages::*;
use crate::store::StoreOp;
use actix::prelude::*;
use pua_xmpp::address::AddressMapper;
use pua_xmpp::notifier::{self, NotifierConfig, Presentity};
use pua_xmpp::sip::OutRequest;
use pua_xmpp::sip::{Method, OutResponse};
use pua_xmpp::stanza::BareJid;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

struct Slot {
    machine: Box<Presentity>,
    /// The deadline this slot has in `timers`.
    due: Due,
}

/// A request of ours awaiting its outcome.
struct Pending {
    slot: u32,
    call_id: String,
    cseq: u32,
    method: Method,
    sent: Instant,
}

pub struct NotifierShard {
    index: usize,
    cfg: Arc<NotifierConfig>,
    /// For X' (X's SIP URI), computed once when X's presentity is created.
    mapper: AddressMapper,
    links: Links,
    slots: Vec<Slot>,
    by_jid: HashMap<BareJid, u32>,
    /// Call-ID of every live dialog → its presentity (in-dialog SUBSCRIBEs).
    by_call: HashMap<String, u32>,
    timers: Deadlines,
    pending: IdMap<u64, Pending>,
    next_key: u64,
    wakeup: Wakeup,
    /// The output buffer lent to the presentity being fed (`Presentity::lend_queue`).
    spare_out: VecDeque<notifier::Output>,
    /// Outputs waiting for their presentity's records to be committed (issue 14: durable
    /// before acknowledged).
    gate: Gate,
    me: Option<Recipient<Durable>>,
}

impl NotifierShard {
    pub fn new(
        index: usize,
        cfg: NotifierConfig,
        mapper: AddressMapper,
        links: Links,
    ) -> NotifierShard {
        NotifierShard {
            index,
            cfg: Arc::new(cfg),
            mapper,
            links,
            slots: Vec::new(),
            by_jid: HashMap::new(),
            by_call: HashMap::new(),
            timers: Deadlines::default(),
            pending: IdMap::default(),
            next_key: 0,
            wakeup: Wakeup::default(),
            spare_out: VecDeque::new(),
            gate: Gate::default(),
            me: None,
        }
    }

    /// The slot of X, created if `create` (presentities live as long as the process, as the
    /// per-presentity actors did).
    fn slot_of(&mut self, x: &BareJid, create: bool) -> Option<u32> {
        if let Some(&i) = self.by_jid.get(x) {
            return Some(i);
        }
        if !create {
            return None;
        }
        let sip_uri = match self.mapper.xmpp_to_sip(x) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(jid = %x, error = %e, "XMPP presentity cannot be mapped to SIP");
                return None;
            }
        };
        let stream = pua_xmpp::ids::fresh_stream();
        let machine = Presentity::new(Arc::clone(&self.cfg), x.clone(), sip_uri, stream);
        let idx = self.slots.len() as u32;
        self.slots.push(Slot {
            machine: Box::new(machine),
            due: Due::NONE,
        });
        self.by_jid.insert(x.clone(), idx);
        Some(idx)
    }

    fn input(
        &mut self,
        idx: u32,
        input: notifier::Input<'_>,
        txn: Option<ServerTxnId>,
        ctx: &mut Context<Self>,
    ) {
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        let before = dialog_counts(&slot.machine);
        slot.machine.lend_queue(&mut self.spare_out);
        let request = match &input {
            notifier::Input::Subscribe { req, .. } => Some(*req),
            _ => None,
        };
        let now = Instant::now();
        if crate::fault::contain("notifier", &mut *slot.machine, presentity_key, |p| {
            p.handle_input(input, now)
        })
        .is_err()
        {
            if let (Some(req), Some(txn)) = (request, txn) {
                let resp = OutResponse::to_request(req, 500, None);
                self.links.responses.do_send(SendResponse { txn, resp });
            }
            let ended =
                crate::fault::contain("notifier_abort", &mut *slot.machine, presentity_key, |p| {
                    p.abort(now)
                });
            if ended.is_err() {
                // Nothing sensible left to send for X: drop what the failures left queued.
                while slot.machine.poll_output().is_some() {}
            }
            self.drain(idx, None, ctx);
        } else {
            self.drain(idx, txn, ctx);
        }
        if let Some(slot) = self.slots.get(idx as usize) {
            gauge_dialogs(before, dialog_counts(&slot.machine));
        }
    }

    fn drain(&mut self, idx: u32, txn: Option<ServerTxnId>, ctx: &mut Context<Self>) {
        // The responses and stanzas of an input that persisted something wait for its commit
        // (the records are sent below, the marker after them), and so do the later ones of a
        // presentity that still has some waiting.
        let awaits = self
            .slots
            .get(idx as usize)
            .is_some_and(|s| s.machine.awaits_durable());
        let hold = self.gate.hold_for(idx, awaits);
        loop {
            let Some(slot) = self.slots.get_mut(idx as usize) else {
                return;
            };
            let Some(out) = slot.machine.poll_output() else {
                break;
            };
            match out {
                notifier::Output::Request(req) => {
                    if let Some(t) = hold {
                        self.gate.hold(t, Held::Request(idx, req));
                        continue;
                    }
                    self.send_request(idx, req, ctx);
                }
                notifier::Output::Response(resp) => {
                    if let Some(txn) = txn {
                        let r = SendResponse { txn, resp };
                        match hold {
                            Some(t) => self.gate.hold(t, Held::Response(r)),
                            None => self.links.responses.do_send(r),
                        }
                    }
                }
                notifier::Output::Stanza(p) => match hold {
                    Some(t) => self.gate.hold(t, Held::Stanza(p)),
                    None => self.links.stanzas.do_send(SendPresence(p)),
                },
                notifier::Output::Persist(op) => {
                    let x = slot.machine.jid().clone();
                    let store_op = StoreOp::from_persist(&x, &op, Instant::now(), unix_now());
                    self.links.store.send(store_op);
                    self.index_op(idx, &x, op);
                }
            }
        }
        if let Some(me) = &self.me {
            self.gate.seal(&self.links.store, me);
        }
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        slot.machine.shrink(&mut self.spare_out);
        let next = slot.machine.poll_timeout();
        if self.timers.reschedule(idx, &mut slot.due, next) {
            self.rearm(ctx);
        }
    }

    /// Starts a client transaction for the presentity in slot `idx`.
    fn send_request(&mut self, idx: u32, req: OutRequest, ctx: &mut Context<Self>) {
        self.next_key += 1;
        let key = self.next_key;
        self.pending.insert(
            key,
            Pending {
                slot: idx,
                call_id: req.call_id.clone(),
                cseq: req.cseq,
                method: req.method.clone(),
                sent: Instant::now(),
            },
        );
        let reply_to = ctx.address().recipient();
        crate::links::send_request(&self.links, req, key, reply_to);
    }

    /// Keeps the Call-ID indexes (this shard's and the registry's) in step with the dialogs.
    fn index_op(&mut self, idx: u32, x: &BareJid, op: notifier::PersistOp) {
        match op {
            notifier::PersistOp::Dialog(d) => {
                tracing::info!(call_id = %d.call_id, watcher = %d.remote.uri, presentity = %x, state = ?d.state, "SIP watcher subscription (created, refreshed or approved)");
                if self.by_call.insert(d.call_id.clone(), idx).is_none() {
                    self.links.registry.do_send(RegistryEvent::DialogXmpp {
                        call_id: d.call_id.clone(),
                        shard: self.index,
                        watcher: d.watcher.clone(),
                        presentity: x.clone(),
                    });
                }
            }
            notifier::PersistOp::DialogGone { call_id, watcher } => {
                tracing::info!(%call_id, presentity = %x, "SIP watcher subscription ended");
                self.by_call.remove(&call_id);
                self.links
                    .registry
                    .do_send(RegistryEvent::DialogGone { call_id });
                self.watch_gone_unless_watched(idx, watcher, x);
            }
            notifier::PersistOp::Relation { watcher, state } => {
                tracing::info!(%watcher, presentity = %x, ?state, "watcher relation");
            }
        }
    }

    /// Tells the registry that `watcher` no longer watches X (slot `idx`) unless it still has a
    /// dialog with X (another device, or the dialog just made).
    fn watch_gone_unless_watched(&mut self, idx: u32, watcher: BareJid, x: &BareJid) {
        let watched = self
            .slots
            .get(idx as usize)
            .is_some_and(|s| s.machine.watched_by(&watcher));
        if !watched {
            self.links.registry.do_send(RegistryEvent::WatchGone {
                watcher,
                presentity: x.clone(),
            });
        }
    }

    fn rearm(&mut self, ctx: &mut Context<Self>) {
        let next = self.timers.first();
        self.wakeup.arm(next, ctx, |a, ctx| {
            a.wakeup.fired();
            a.on_wakeup(ctx)
        });
    }

    fn on_wakeup(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        while let Some(idx) = self.timers.pop_due(now) {
            if let Some(s) = self.slots.get_mut(idx as usize) {
                s.due = Due::NONE;
            }
            self.input(idx, notifier::Input::Timeout, None, ctx);
        }
        self.rearm(ctx);
    }

    fn restore(&mut self, idx: u32, msg: RestoreNotifier, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        for (watcher, state) in msg.relations {
            slot.machine.restore_relation(watcher, state);
        }
        let mut restored = Vec::new();
        for d in msg.dialogs {
            let left = std::time::Duration::from_secs(
                d.expires_at_unix.saturating_sub(unix_now()).max(0) as u64,
            );
            if left.is_zero() {
                continue;
            }
            restored.push((d.call_id.clone(), d.watcher.clone()));
            let dialog = notifier::NotifierDialog::stored(
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
            slot.machine.restore_dialog(dialog, left, now);
        }
        slot.machine.resume_after_restart(now);
        let x = slot.machine.jid().clone();
        for (call_id, watcher) in restored {
            self.by_call.insert(call_id.clone(), idx);
            self.links.registry.do_send(RegistryEvent::DialogXmpp {
                call_id,
                shard: self.index,
                watcher,
                presentity: x.clone(),
            });
        }
        self.drain(idx, None, ctx);
        if let Some(slot) = self.slots.get(idx as usize) {
            gauge_dialogs((0, 0), dialog_counts(&slot.machine));
        }
    }
}

/// How a presentity is named in fault logs and by the fault-injection hook: X.
fn presentity_key(p: &Presentity) -> &str {
    p.jid().as_str()
}

/// (pending, active) dialogs, for the `pua_xmpp_subscriptions` gauge.
fn dialog_counts(p: &Presentity) -> (i64, i64) {
    p.dialogs().iter().fold((0, 0), |(pe, a), d| match d.state {
        notifier::DialogState::Pending => (pe + 1, a),
        notifier::DialogState::Active => (pe, a + 1),
    })
}

fn gauge_dialogs(before: (i64, i64), after: (i64, i64)) {
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

impl Actor for NotifierShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.me = Some(ctx.address().recipient());
    }
}

impl Handler<Durable> for NotifierShard {
    type Result = ();
    fn handle(&mut self, msg: Durable, ctx: &mut Context<Self>) {
        let released: Vec<Held> = self.gate.release(msg.0).collect();
        let mut requests = Vec::new();
        send_released(released, &self.links, |slot, req| {
            requests.push((slot, req))
        });
        // Requests leave after the released responses (the core queues a response first).
        for (slot, req) in requests {
            self.send_request(slot, req, ctx);
        }
    }
}

impl Handler<ToNotifier> for NotifierShard {
    type Result = ();
    fn handle(&mut self, msg: ToNotifier, ctx: &mut Context<Self>) {
        let create = !matches!(
            &msg.event,
            NotifierEvent::Stanza(p) if p.kind == Ok(pua_xmpp::stanza::PresenceType::Error)
        );
        let idx = match (&msg.x, &msg.event) {
            (Some(x), _) => self.slot_of(x, create),
            (None, NotifierEvent::Sip { req, .. }) => self.by_call.get(&req.call_id).copied(),
            (None, _) => None,
        };
        match msg.event {
            NotifierEvent::Sip { req, txn, watcher } => {
                let Some(idx) = idx.filter(|_| req.method == Method::Subscribe) else {
                    // An initial SUBSCRIBE for an X that cannot be mapped: 404; else no dialog.
                    let code = if msg.x.is_some() { 404 } else { 481 };
                    let resp = OutResponse::to_request(&req, code, None);
                    return self.links.responses.do_send(SendResponse { txn, resp });
                };
                // In-dialog refreshes carry no mapped watcher; the dialog knows it.
                let initial = watcher.is_some();
                let watcher = match watcher {
                    Some(w) => w,
                    None => match self.slots.get(idx as usize) {
                        Some(s) => s.machine.jid().clone(),
                        None => return,
                    },
                };
                let input = notifier::Input::Subscribe {
                    req: &req,
                    watcher: &watcher,
                };
                self.input(idx, input, Some(txn), ctx);
                // An initial SUBSCRIBE that made no dialog (refused, or a fetch) leaves the
                // watcher's count at once; one that did leaves it with its last dialog.
                if initial {
                    let x = self
                        .slots
                        .get(idx as usize)
                        .map(|s| s.machine.jid().clone());
                    if let Some(x) = x {
                        self.watch_gone_unless_watched(idx, watcher, &x);
                    }
                }
            }
            NotifierEvent::Stanza(p) => {
                if let Some(idx) = idx {
                    self.input(idx, notifier::Input::Stanza(&p), None, ctx);
                }
            }
            NotifierEvent::Restore(r) => {
                if let Some(idx) = idx {
                    self.restore(idx, r, ctx);
                }
            }
        }
    }
}

impl Handler<TransactionOutcome> for NotifierShard {
    type Result = ();
    fn handle(&mut self, msg: TransactionOutcome, ctx: &mut Context<Self>) {
        let Some(p) = self.pending.remove(&msg.key) else {
            return;
        };
        if self.pending.is_empty() {
            self.pending = IdMap::default();
        }
        match msg.result {
            TxnResult::Response(r) => {
                crate::gauges::observe_latency(&p.method, p.sent);
                self.input(p.slot, notifier::Input::Response(&r), None, ctx)
            }
            TxnResult::Timeout | TxnResult::TransportError(_) => {
                let input = notifier::Input::RequestFailed {
                    call_id: &p.call_id,
                    cseq: p.cseq,
                };
                self.input(p.slot, input, None, ctx)
            }
        }
    }
}

/// The component link came back after a drop: every presentity is probed again.
impl Handler<ProbeAfterReconnect> for NotifierShard {
    type Result = ();
    fn handle(&mut self, _: ProbeAfterReconnect, ctx: &mut Context<Self>) {
        for idx in 0..self.slots.len() as u32 {
            if let Some(s) = self.slots.get_mut(idx as usize) {
                s.machine.probe_after_restart();
            }
            self.drain(idx, None, ctx);
        }
    }
}

impl Handler<DumpNotifier> for NotifierShard {
    type Result = MessageResult<DumpNotifier>;
    fn handle(&mut self, msg: DumpNotifier, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        let Some(slot) = self
            .by_jid
            .get(&msg.x)
            .and_then(|&i| self.slots.get(i as usize))
        else {
            return MessageResult(Vec::new());
        };
        let m = &slot.machine;
        let list = m
            .dialogs()
            .iter()
            .filter(|d| msg.watcher.as_ref().is_none_or(|w| &d.watcher == w))
            .map(|d| SubscriptionInfo {
                direction: "sip_to_xmpp",
                watcher: d.remote.uri.clone(),
                presentity: m.jid().to_string(),
                relation: match m.relation(&d.watcher) {
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
