//! Subscriber shards: the XMPP-watches-SIP pairs (X → S), the gateway's most numerous state.
//!
//! One [`SubscriberShard`] actor per worker arbiter owns the pairs whose watcher URI (X') hashes
//! to it ([`shard_for`]). Inside, a pair is its boxed core machine
//! ([`pua_xmpp::subscriber::Subscription`]) in a slab slot plus a few words: two hash tables
//! of slot numbers (pair → slot, current Call-ID → slot), one ordered timer queue and one armed
//! wake-up for the whole shard. A pair costs no actor, task, mailbox or timer of its own, which
//! is what lets one instance hold a million subscriptions (issue 7).
//!
//! Routing: stanzas come from the registry (which maps the addresses); NOTIFYs come from the
//! registry to the shard of their To URI (our own X', echoed by the notifier). A shard that
//! does not know the Call-ID hands the NOTIFY back for the next shard, so a peer that rewrites
//! the To URI still reaches the pair; the last shard asked answers 481 (case 73).

use crate::clock::{unix_now, Wakeup};
use crate::deadlines::{Deadlines, Due};
use crate::durable::{Gate, Held};
use crate::gauges::{phase_label, ShardGauges};
use crate::idhash::IdMap;
use crate::links::{Links, Outstanding};
use crate::messages::*;
use crate::store::StoreOp;
use actix::prelude::*;
use hashbrown::HashTable;
use pua_xmpp::sip::{Method, OutResponse};
use pua_xmpp::stanza::{DefinedCondition, OutPresence};
use pua_xmpp::subscriber::{self, SubscriberConfig, Subscription};
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shard that owns the pairs of the watcher whose SIP URI (X') is `watcher_uri`.
/// Deterministic (SipHash with fixed keys), so the registry and every shard agree.
pub fn shard_for(watcher_uri: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut h = std::hash::DefaultHasher::new();
    watcher_uri.hash(&mut h);
    (h.finish() % shards as u64) as usize
}

/// Settings shared by the shards of one gateway.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub subscriber: Arc<SubscriberConfig>,
    /// Pairs one XMPP watcher may have (all its pairs are in one shard).
    pub max_per_user: usize,
    /// Pairs across all shards.
    pub max_total: usize,
    /// The live count behind `max_total`, shared by the shards.
    pub total: Arc<AtomicUsize>,
    /// This shard's part of `total`: what the registry takes off it if the shard dies.
    pub live: Arc<AtomicUsize>,
    /// This shard's part of the subscription gauges, likewise.
    pub gauges: Arc<ShardGauges>,
    /// How long a changed record waits for more changes of its pair before it goes to the
    /// store (whose own batch adds at most `store::BatchConfig::max_delay`); shutdown writes
    /// the waiting ones first ([`FlushPersists`]).
    pub persist_delay: Duration,
}

/// One pair: the machine and what the shard's indexes need to find it again.
struct Slot {
    sub: Box<Subscription>,
    /// Hash of (watcher, presentity), the key of `by_pair`.
    pair_hash: u64,
    /// Hash of the Call-ID indexed in `by_call` (the pair's current dialog); [`NO_CALL`] if
    /// none (a real hash of 0 is stored as 1).
    call_hash: u64,
    /// The deadline this slot has in `timers`.
    due: Due,
}

const NO_CALL: u64 = 0;

/// How a pair is named in fault logs and by the fault-injection hook: its SIP presentity S'.
fn pair_key(s: &Subscription) -> &str {
    s.presentity().as_str()
}

/// The live slot `i` of a slab (the hash tables' closures borrow the slab, not the shard).
fn slot_at(slots: &[Option<Slot>], i: u32) -> Option<&Slot> {
    slots.get(i as usize).and_then(Option::as_ref)
}

pub struct SubscriberShard {
    cfg: ShardConfig,
    links: Links,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    by_pair: HashTable<u32>,
    by_call: HashTable<u32>,
    /// (deadline, slot), earliest first: one armed wake-up serves every pair of the shard.
    timers: Deadlines,
    /// Pairs per watcher (by hash of the bare JID), for `max_subscriptions_per_user`.
    per_watcher: IdMap<u64, u32>,
    outstanding: Outstanding,
    hasher: std::hash::RandomState,
    wakeup: Wakeup,
    /// Responses and stanzas of the batch being handled, sent as one message each by
    /// [`SubscriberShard::flush`] when the handler ends.
    out_responses: Vec<SendResponse>,
    out_stanzas: Vec<OutPresence>,
    /// Slots whose record changed since the last write ([`subscriber::Output::Persist`]),
    /// written together `persist_delay` after the first: a set-up asks three to four times
    /// within milliseconds and becomes one row write instead of four records built and sent.
    dirty: Vec<u32>,
    /// The output buffer lent to the pair being fed (`Subscription::lend_queue`).
    spare_out: VecDeque<subscriber::Output>,
    /// Outputs waiting for their pair's record to be committed (issue 14).
    gate: Gate,
    /// Pairs whose record must be written at the end of this handler, before the marker.
    urgent: Vec<u32>,
    me: Option<Recipient<Durable>>,
}

impl SubscriberShard {
    pub fn new(cfg: ShardConfig, links: Links) -> SubscriberShard {
        SubscriberShard {
            cfg,
            links,
            slots: Vec::new(),
            free: Vec::new(),
            by_pair: HashTable::new(),
            by_call: HashTable::new(),
            timers: Deadlines::default(),
            per_watcher: IdMap::default(),
            outstanding: Outstanding::default(),
            hasher: std::hash::RandomState::new(),
            wakeup: Wakeup::default(),
            out_responses: Vec::new(),
            out_stanzas: Vec::new(),
            dirty: Vec::new(),
            spare_out: VecDeque::new(),
            gate: Gate::default(),
            urgent: Vec::new(),
            me: None,
        }
    }

    /// Writes the records of the pairs whose outputs wait in the gate, now rather than after
    /// the coalescing delay, then queues the commit marker behind them.
    fn seal(&mut self) {
        if !self.gate.is_due() {
            return;
        }
        let mut urgent = std::mem::take(&mut self.urgent);
        urgent.sort_unstable();
        urgent.dedup();
        let (now, unix) = (Instant::now(), unix_now());
        for &i in &urgent {
            if let Some(s) = slot_at(&self.slots, i) {
                self.links
                    .store
                    .send(StoreOp::subscription(s.sub.record(now), unix));
            }
        }
        if !self.dirty.is_empty() {
            // Written now: the coalescing timer must not write them again.
            self.dirty.retain(|i| urgent.binary_search(i).is_err());
        }
        urgent.clear();
        self.urgent = urgent;
        if let Some(me) = &self.me {
            self.gate.seal(&self.links.store, me);
        }
    }

    /// Writes the record of every pair changed since the last call (once each).
    fn write_dirty(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let (now, unix) = (Instant::now(), unix_now());
        for &i in &dirty {
            if let Some(s) = slot_at(&self.slots, i) {
                let op = StoreOp::subscription(s.sub.record(now), unix);
                self.links.store.send(op);
            }
        }
        dirty.clear();
        if dirty.capacity() > 4096 {
            dirty.shrink_to(4096);
        }
        self.dirty = dirty;
    }

    /// Counts a pair in (`1`) or out (`-1`) of `total` and of this shard's `live`.
    fn count(&self, d: isize) {
        for c in [&self.cfg.total, &self.cfg.live] {
            if d > 0 {
                c.fetch_add(1, Ordering::Relaxed);
            } else {
                c.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn pair_hash(&self, watcher: &str, presentity: &str) -> u64 {
        self.hasher.hash_one((watcher, presentity))
    }

    fn slot(&self, idx: u32) -> Option<&Slot> {
        slot_at(&self.slots, idx)
    }

    fn find_pair(&self, watcher: &str, presentity: &str) -> Option<u32> {
        let h = self.pair_hash(watcher, presentity);
        let slots = &self.slots;
        self.by_pair
            .find(h, |&i| {
                slot_at(slots, i).is_some_and(|s| {
                    s.sub.watcher().as_str() == watcher && s.sub.presentity().as_str() == presentity
                })
            })
            .copied()
    }

    /// The key of `by_call`; never [`NO_CALL`].
    fn call_hash(&self, call_id: &str) -> u64 {
        self.hasher.hash_one(call_id).max(1)
    }

    /// The pair whose current dialog has this Call-ID.
    fn find_call(&self, call_id: &str) -> Option<u32> {
        let h = self.call_hash(call_id);
        let slots = &self.slots;
        self.by_call
            .find(h, |&i| {
                slot_at(slots, i)
                    .is_some_and(|s| s.call_hash == h && s.sub.call_id() == Some(call_id))
            })
            .copied()
    }

    fn insert(&mut self, sub: Subscription) -> u32 {
        let pair_hash = self.pair_hash(sub.watcher().as_str(), sub.presentity().as_str());
        let watcher_hash = self.hasher.hash_one(sub.watcher().as_str());
        let slot = Slot {
            sub: Box::new(sub),
            pair_hash,
            call_hash: NO_CALL,
            due: Due::NONE,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        self.by_pair.insert_unique(pair_hash, idx, |&i| {
            slot_at(slots, i).map_or(0, |s| s.pair_hash)
        });
        *self.per_watcher.entry(watcher_hash).or_default() += 1;
        idx
    }

    fn unindex_call(&mut self, idx: u32) {
        let Some(h) = self
            .slots
            .get_mut(idx as usize)
            .and_then(Option::as_mut)
            .map(|s| std::mem::replace(&mut s.call_hash, NO_CALL))
            .filter(|&h| h != NO_CALL)
        else {
            return;
        };
        if let Ok(e) = self.by_call.find_entry(h, |&i| i == idx) {
            e.remove();
        }
    }

    /// Points `by_call` at this slot for `call_id` (a request of the pair's current dialog).
    fn index_call(&mut self, idx: u32, call_id: &str) {
        let h = self.call_hash(call_id);
        if self.slot(idx).is_some_and(|s| s.call_hash == h) {
            return;
        }
        self.unindex_call(idx);
        let slots = &mut self.slots;
        if let Some(s) = slots.get_mut(idx as usize).and_then(Option::as_mut) {
            s.call_hash = h;
        }
        let slots = &self.slots;
        self.by_call
            .insert_unique(h, idx, |&i| slot_at(slots, i).map_or(0, |s| s.call_hash));
    }

    fn remove(&mut self, idx: u32) {
        self.unindex_call(idx);
        if !self.dirty.is_empty() {
            // The slot may be reused before the write: it must not write the next pair early.
            self.dirty.retain(|&i| i != idx);
        }
        self.urgent.retain(|&i| i != idx);
        self.gate.forget(idx);
        let Some(mut slot) = self.slots.get_mut(idx as usize).and_then(Option::take) else {
            return;
        };
        if let Ok(e) = self.by_pair.find_entry(slot.pair_hash, |&i| i == idx) {
            e.remove();
        }
        self.timers.reschedule(idx, &mut slot.due, None);
        let wh = self.hasher.hash_one(slot.sub.watcher().as_str());
        if let Some(n) = self.per_watcher.get_mut(&wh) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_watcher.remove(&wh);
            }
        }
        self.count(-1);
        self.free.push(idx);
    }

    /// Feeds one input to the pair in `idx` and carries out what it asks for.
    fn input(
        &mut self,
        idx: u32,
        input: subscriber::Input<'_>,
        txn: Option<ServerTxnId>,
        ctx: &mut Context<Self>,
    ) {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        let before = phase_label(slot.sub.phase());
        slot.sub.lend_queue(&mut self.spare_out);
        let request = match &input {
            subscriber::Input::Notify { req, .. } => Some(*req),
            _ => None,
        };
        if crate::fault::contain("subscriber", &mut *slot.sub, pair_key, |s| {
            s.handle_input(input, now)
        })
        .is_err()
        {
            // The request that failed still gets its answer; then the pair ends cleanly.
            if let (Some(req), Some(txn)) = (request, txn) {
                let resp = OutResponse::to_request(req, 500, None);
                self.out_responses.push(SendResponse { txn, resp });
            }
            return self.abort(idx, before, now, ctx);
        }
        let after = self.drain(idx, txn, ctx);
        self.cfg.gauges.moved(Some(before), after);
    }

    /// Ends the pair in `idx` after a fault (its SIP dialog unsubscribed, X told
    /// `unavailable`, its record deleted); if ending it fails too, drops it and its record.
    fn abort(&mut self, idx: u32, before: &'static str, now: Instant, ctx: &mut Context<Self>) {
        let Some(slot) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        if crate::fault::contain("subscriber_abort", &mut *slot.sub, pair_key, |s| {
            s.abort(now)
        })
        .is_ok()
        {
            let after = self.drain(idx, None, ctx);
            return self.cfg.gauges.moved(Some(before), after);
        }
        let Some(slot) = self.slots.get(idx as usize).and_then(Option::as_ref) else {
            return;
        };
        let op = StoreOp::DeleteSubscription {
            watcher: slot.sub.watcher().clone(),
            presentity: slot.sub.presentity().clone(),
        };
        self.links.store.send(op);
        self.remove(idx);
        self.rearm(ctx);
        self.cfg.gauges.moved(Some(before), None);
    }

    /// Drains the pair's outputs; returns its phase label, or `None` if it ended.
    fn drain(
        &mut self,
        idx: u32,
        txn: Option<ServerTxnId>,
        ctx: &mut Context<Self>,
    ) -> Option<&'static str> {
        // Durable before acknowledged: the responses and stanzas of an input that changed the
        // record wait for its commit, and so do those of a pair that still has some waiting.
        let awaits = self.slot(idx).is_some_and(|s| s.sub.awaits_durable());
        if awaits {
            self.urgent.push(idx);
        }
        let hold = self.gate.hold_for(idx, awaits);
        loop {
            let slot = self.slots.get_mut(idx as usize).and_then(Option::as_mut)?;
            let Some(out) = slot.sub.poll_output() else {
                break;
            };
            match out {
                subscriber::Output::Request(req) => {
                    self.index_call(idx, &req.call_id);
                    if let Some(t) = hold {
                        self.gate.hold(t, Held::Request(idx, req));
                        continue;
                    }
                    // Keep the order the core asked for: responses produced before this
                    // request leave first (both go to the transport).
                    self.flush_responses();
                    let reply_to = ctx.address().recipient();
                    self.outstanding.send(&self.links, req, reply_to);
                }
                subscriber::Output::Response(resp) => {
                    if let Some(txn) = txn {
                        let r = SendResponse { txn, resp };
                        match hold {
                            Some(t) => self.gate.hold(t, Held::Response(r)),
                            None => self.out_responses.push(r),
                        }
                    }
                }
                subscriber::Output::Stanza(p) => match hold {
                    Some(t) => self.gate.hold(t, Held::Stanza(p)),
                    None => self.out_stanzas.push(p),
                },
                subscriber::Output::Persist => {
                    if self.dirty.is_empty() {
                        ctx.run_later(self.cfg.persist_delay, |a, _| a.write_dirty());
                    }
                    self.dirty.push(idx);
                }
                subscriber::Output::Problem(kind) => {
                    metrics::counter!("pua_xmpp_translation_errors_total", "kind" => kind)
                        .increment(1);
                }
                subscriber::Output::Forget => {
                    let (watcher, presentity) = (slot.sub.watcher(), slot.sub.presentity());
                    tracing::info!(%watcher, %presentity, "subscription relation ended");
                    let op = StoreOp::DeleteSubscription {
                        watcher: watcher.clone(),
                        presentity: presentity.clone(),
                    };
                    // A write still waiting would come after the delete: drop it.
                    self.dirty.retain(|&i| i != idx);
                    self.links.store.send(op);
                }
            }
        }
        let slot = self.slots.get_mut(idx as usize).and_then(Option::as_mut)?;
        slot.sub.shrink(&mut self.spare_out);
        if slot.sub.is_done() {
            self.remove(idx);
            self.rearm(ctx);
            return None;
        }
        let label = phase_label(slot.sub.phase());
        let next = slot.sub.poll_timeout();
        if self.timers.advance(idx, &mut slot.due, next) {
            self.rearm(ctx);
        }
        Some(label)
    }

    /// Sends what the handled batch produced: one message per peer actor, however many
    /// NOTIFYs the batch held (a cross-thread hand-off costs a wake-up, not the data); and
    /// the records and commit marker that held outputs wait for.
    fn flush(&mut self) {
        self.seal();
        self.flush_responses();
        match self.out_stanzas.len() {
            0 => {}
            1 => {
                if let Some(p) = self.out_stanzas.pop() {
                    self.links.stanzas.do_send(SendPresence(p));
                }
            }
            _ => {
                let batch = crate::batch::take_sized(&mut self.out_stanzas);
                self.links.stanza_batches.do_send(SendPresences(batch));
            }
        }
    }

    fn flush_responses(&mut self) {
        match self.out_responses.len() {
            0 => {}
            1 => {
                if let Some(r) = self.out_responses.pop() {
                    self.links.responses.do_send(r);
                }
            }
            _ => {
                let batch = crate::batch::take_sized(&mut self.out_responses);
                self.links.response_batches.do_send(SendResponses(batch));
            }
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
            if let Some(s) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) {
                s.due = Due::NONE;
            }
            self.input(idx, subscriber::Input::Timeout, None, ctx);
        }
        self.flush();
        self.rearm(ctx);
    }

    /// The error for a stanza over the limits, in order with the batch's other stanzas.
    fn refuse(&mut self, p: &pua_xmpp::stanza::InPresence, why: &str) {
        self.out_stanzas.push(OutPresence::error_reply(
            p,
            DefinedCondition::ResourceConstraint,
            Some(why.to_owned()),
        ));
    }
}

impl Actor for SubscriberShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.me = Some(ctx.address().recipient());
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.write_dirty();
    }
}

impl Handler<ToSubscriber> for SubscriberShard {
    type Result = ();
    fn handle(&mut self, msg: ToSubscriber, ctx: &mut Context<Self>) {
        self.on_stanza(msg, ctx);
        self.flush();
    }
}

impl Handler<ToSubscribers> for SubscriberShard {
    type Result = ();
    fn handle(&mut self, msg: ToSubscribers, ctx: &mut Context<Self>) {
        for one in msg.0 {
            self.on_stanza(one, ctx);
        }
        self.flush();
    }
}

impl SubscriberShard {
    /// One stanza for a pair: found or created (within the limits), then fed to its machine.
    /// The outputs wait in the shard's batch until [`SubscriberShard::flush`].
    fn on_stanza(&mut self, msg: ToSubscriber, ctx: &mut Context<Self>) {
        let (w, s) = (msg.pair.watcher.as_str(), msg.pair.presentity.as_str());
        let idx = match self.find_pair(w, s) {
            Some(i) => i,
            None => {
                let Some(relation) = subscriber::Relation::for_new_pair(&msg.stanza.kind) else {
                    // Case 25: unsubscribe (or anything else) with no state: no output.
                    tracing::debug!(
                        watcher = w,
                        presentity = s,
                        "stanza for unknown pair ignored"
                    );
                    return;
                };
                if relation == subscriber::Relation::Pending {
                    let mine = self
                        .per_watcher
                        .get(&self.hasher.hash_one(w))
                        .copied()
                        .unwrap_or(0) as usize;
                    let total = self.cfg.total.load(Ordering::Relaxed);
                    if mine >= self.cfg.max_per_user || total >= self.cfg.max_total {
                        tracing::warn!(
                            watcher = w,
                            presentity = s,
                            mine,
                            total,
                            "subscription refused: limit reached"
                        );
                        metrics::counter!("pua_xmpp_limit_refusals_total", "direction" => "xmpp_to_sip")
                            .increment(1);
                        return self.refuse(&msg.stanza, "too many subscriptions");
                    }
                    if !self.links.store.accepting() {
                        // Issue 14: no promise the store cannot keep.
                        tracing::warn!(
                            watcher = w,
                            presentity = s,
                            "subscription refused: the store is not writing"
                        );
                        metrics::counter!("pua_xmpp_store_refusals_total", "direction" => "xmpp_to_sip")
                            .increment(1);
                        return self.refuse(&msg.stanza, "store unavailable, retry later");
                    }
                }
                tracing::info!(watcher = w, presentity = s, sip = %msg.pair.presentity_uri, ?relation, "subscription created (XMPP watcher of a SIP user)");
                self.count(1);
                let seed = pua_xmpp::ids::fresh_stream();
                let cfg = Arc::clone(&self.cfg.subscriber);
                let sub = Subscription::new(cfg, msg.pair, relation, seed);
                self.cfg.gauges.moved(None, Some(phase_label(sub.phase())));
                self.insert(sub)
            }
        };
        self.input(idx, subscriber::Input::Stanza(&msg.stanza), None, ctx);
    }
}

impl SubscriberShard {
    /// One NOTIFY: to its pair, else on to the next shard, else 481.
    fn notify(&mut self, msg: ShardNotify, ctx: &mut Context<Self>) {
        // Test hook: a fault outside any pair's containment ends this shard actor.
        crate::fault::tripwire(&msg.req.call_id);
        let found = match msg.req.method {
            Method::Notify => self.find_call(&msg.req.call_id),
            _ => None,
        };
        match found {
            Some(idx) => {
                let input = subscriber::Input::Notify {
                    req: &msg.req,
                    now_unix: unix_now(),
                };
                self.input(idx, input, Some(msg.txn), ctx);
            }
            None if msg.tried < msg.shards => self.links.renotify.do_send(msg),
            None => {
                // Case 73: a NOTIFY for no subscription.
                tracing::debug!(call_id = %msg.req.call_id, "NOTIFY for no subscription");
                let resp = OutResponse::to_request(&msg.req, 481, None);
                self.out_responses.push(SendResponse { txn: msg.txn, resp });
            }
        }
    }
}

impl Handler<ShardNotify> for SubscriberShard {
    type Result = ();
    fn handle(&mut self, msg: ShardNotify, ctx: &mut Context<Self>) {
        self.notify(msg, ctx);
        self.flush();
    }
}

impl Handler<ShardNotifies> for SubscriberShard {
    type Result = ();
    fn handle(&mut self, msg: ShardNotifies, ctx: &mut Context<Self>) {
        for one in msg.0 {
            self.notify(one, ctx);
        }
        self.flush();
    }
}

impl Handler<TransactionOutcome> for SubscriberShard {
    type Result = ();
    fn handle(&mut self, msg: TransactionOutcome, ctx: &mut Context<Self>) {
        let Some((call_id, cseq)) = self.outstanding.finish(&msg) else {
            return;
        };
        // The pair whose current dialog it is; an outcome of a replaced dialog is stale.
        let Some(idx) = self.find_call(&call_id) else {
            return;
        };
        match msg.result {
            TxnResult::Response(r) => self.input(idx, subscriber::Input::Response(&r), None, ctx),
            TxnResult::Timeout | TxnResult::TransportError(_) => {
                let input = subscriber::Input::RequestFailed {
                    call_id: &call_id,
                    cseq,
                };
                self.input(idx, input, None, ctx)
            }
        }
        self.flush();
    }
}

impl Handler<RestorePairs> for SubscriberShard {
    type Result = ();
    fn handle(&mut self, msg: RestorePairs, ctx: &mut Context<Self>) {
        ctx.run_later(msg.delay, move |a, ctx| {
            let now = Instant::now();
            for (mut rec, left) in msg.pairs {
                rec.lease_left = left;
                if a.find_pair(rec.pair.watcher.as_str(), rec.pair.presentity.as_str())
                    .is_some()
                {
                    continue; // already live (a stanza came first)
                }
                a.count(1);
                let seed = pua_xmpp::ids::fresh_stream();
                let cfg = Arc::clone(&a.cfg.subscriber);
                let sub = Subscription::restore(cfg, rec, seed, now);
                let idx = a.insert(sub);
                let after = a.drain(idx, None, ctx);
                a.cfg.gauges.moved(None, after);
            }
            a.flush();
        });
    }
}

fn relation_label(r: subscriber::Relation) -> &'static str {
    match r {
        subscriber::Relation::Pending => "pending",
        subscriber::Relation::Approved => "approved",
        subscriber::Relation::Unknown => "unknown",
    }
}

impl Handler<Durable> for SubscriberShard {
    type Result = ();
    fn handle(&mut self, msg: Durable, ctx: &mut Context<Self>) {
        let released: Vec<Held> = self.gate.release(msg.0).collect();
        for h in released {
            match h {
                Held::Response(r) => self.out_responses.push(r),
                Held::Stanza(s) => self.out_stanzas.push(s),
                Held::Request(_, req) => {
                    self.flush_responses();
                    let reply_to = ctx.address().recipient();
                    self.outstanding.send(&self.links, req, reply_to);
                }
            }
        }
        self.flush();
    }
}

impl Handler<FlushPersists> for SubscriberShard {
    type Result = ();
    fn handle(&mut self, _: FlushPersists, _: &mut Context<Self>) {
        self.write_dirty();
    }
}

impl Handler<DumpPairs> for SubscriberShard {
    type Result = MessageResult<DumpPairs>;
    fn handle(&mut self, msg: DumpPairs, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        let list = self
            .slots
            .iter()
            .flatten()
            .map(|s| &s.sub)
            .filter(|s| *s.watcher() == msg.user || *s.presentity() == msg.user)
            .map(|s| SubscriptionInfo {
                direction: "xmpp_to_sip",
                watcher: s.watcher().to_string(),
                presentity: s.presentity_uri().to_owned(),
                relation: relation_label(s.relation()).to_owned(),
                state: phase_label(s.phase()).to_owned(),
                call_id: s.call_id().map(str::to_owned),
                expires_in: s.lease_left(now).map(|d: Duration| d.as_secs()),
            })
            .collect();
        MessageResult(list)
    }
}
