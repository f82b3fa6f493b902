//! The subscription registry: routes every inbound stanza and SIP request to the translator
//! that owns it, and answers what belongs to nobody (481, 404, `item-not-found`).
//!
//! It owns the address mapper (and its learned-spelling table), the subscriber shards (the
//! XMPP-watches-SIP pairs, spread over the worker threads by watcher, see [`crate::shard`]),
//! and two indexes for the XMPP presentities: presentity → translator and SIP Call-ID →
//! translator. It holds no protocol state of its own.

use crate::links::Links;
use crate::messages::*;
use crate::messenger::Messenger;
use crate::notifier_shard::NotifierShard;
use crate::shard::{shard_for, ShardConfig, SubscriberShard};
use crate::store::{lease_left_at, StoreHandle, StoreOp};
use crate::translator::PuaTranslator;
use actix::prelude::*;
use futures::FutureExt;
use pua_xmpp::address::AddressMapper;
use pua_xmpp::notifier::{self, NotifierConfig};
use pua_xmpp::pua::PuaConfig;
use pua_xmpp::sip::{Method, OutResponse, SipRequest};
use pua_xmpp::stanza::{BareJid, DefinedCondition, InPresence, OutPresence, PresenceType};
use pua_xmpp::subscriber::{Pair, SubscriberConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Who serves SIP watchers of XMPP users (§1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Notifier,
    Pua,
}

#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub mode: Mode,
    pub subscriber: SubscriberConfig,
    pub notifier: NotifierConfig,
    pub pua: PuaConfig,
    pub limits: Limits,
    /// How long a subscriber pair's changed record waits for more changes before it is
    /// written (`store.coalesce_ms`).
    pub persist_delay: Duration,
    /// Instant messaging (`[im]`): with `enabled`, a [`Messenger`] takes MESSAGE and
    /// `<message/>`; without, MESSAGE gets 405 (and the component answers `<message/>`).
    pub im: pua_xmpp::im::ImConfig,
}

/// What one instance accepts (issue 6): beyond these, new subscriptions are refused with 503 +
/// Retry-After (SIP) or `resource-constraint` (XMPP), and a log line.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Peers allowed to send SIP requests; empty = anyone.
    pub trusted_peers: Vec<std::net::IpAddr>,
    /// Subscriptions in each direction.
    pub max_subscriptions: usize,
    /// Subscriptions of one watcher in each direction.
    pub max_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            trusted_peers: Vec::new(),
            max_subscriptions: 1_000_000,
            max_per_user: 1000,
        }
    }
}

enum Owner {
    /// A notifier dialog, in this notifier shard.
    Xmpp(usize),
    Pua(Recipient<DialogRequest>),
}

/// The actors the registry and its translators send to: the SIP transport and the component.
pub struct Peers {
    pub requests: Recipient<SendRequest>,
    pub responses: Recipient<SendResponse>,
    pub stanzas: Recipient<SendPresence>,
    pub response_batches: Recipient<SendResponses>,
    pub stanza_batches: Recipient<SendPresences>,
    /// The component, for `<message/>` stanzas.
    pub messages: Recipient<SendMessage>,
}

/// The methods of a 405's and an OPTIONS 200's `Allow`.
const ALLOW: &str = "SUBSCRIBE, NOTIFY, OPTIONS";
const ALLOW_WITH_IM: &str = "SUBSCRIBE, NOTIFY, OPTIONS, MESSAGE";

pub struct Registry {
    cfg: RegistryConfig,
    mapper: AddressMapper,
    requests: Recipient<SendRequest>,
    responses: Recipient<SendResponse>,
    stanzas: Recipient<SendPresence>,
    response_batches: Recipient<SendResponses>,
    stanza_batches: Recipient<SendPresences>,
    messages: Recipient<SendMessage>,
    /// The instant-messaging actor, when `[im] enabled`.
    messenger: Option<Addr<Messenger>>,
    /// The component link is up (told to a restarted [`Messenger`]).
    link_up: bool,
    store: StoreHandle,
    /// The XMPP-watches-SIP pairs, by [`shard_for`] of the watcher's SIP URI.
    shards: Vec<Addr<SubscriberShard>>,
    /// Pairs in the shards (the `max_subscriptions` limit of that direction).
    subscriber_total: Arc<AtomicUsize>,
    /// Each subscriber shard's part of `subscriber_total` and of the subscription gauges
    /// (taken off when it dies).
    subscriber_live: Vec<(Arc<AtomicUsize>, Arc<crate::gauges::ShardGauges>)>,
    /// The notifier-mode XMPP presentities, by [`shard_for`] of X.
    notifier_shards: Vec<Addr<NotifierShard>>,
    pua_presentities: HashMap<BareJid, Addr<PuaTranslator>>,
    dialogs: HashMap<String, Owner>,
    /// Worker threads the translators run on (one actix Arbiter per core): the registry,
    /// the transport and the component stay on the main thread; parsing and translation
    /// spread over the workers.
    workers: Vec<actix::ArbiterHandle>,
    next_worker: usize,
    /// Notifier dialogs in `dialogs` (for the limits).
    sip_to_xmpp: usize,
    /// SIP watcher S' → XMPP presentities X it has a dialog with, or a SUBSCRIBE on its way to
    /// one (notifier mode): what `max_subscriptions_per_user` counts. Entries leave with the
    /// watcher's last dialog with X (`RegistryEvent::WatchGone`).
    /// A list, not a set: most SIP watchers watch a few XMPP users, and an empty hash set
    /// alone costs more than a short list (the per-user limit bounds the scan).
    sip_watching: HashMap<BareJid, Vec<BareJid>>,
    /// The component link has been up at least once, and went down since it was last up:
    /// the XMPP server may have restarted and forgotten every presence it had (§6.3).
    link_was_up: bool,
    link_dropped: bool,
}

impl Registry {
    pub fn new(
        cfg: RegistryConfig,
        mapper: AddressMapper,
        peers: Peers,
        store: StoreHandle,
    ) -> Registry {
        Registry {
            cfg,
            mapper,
            requests: peers.requests,
            responses: peers.responses,
            stanzas: peers.stanzas,
            response_batches: peers.response_batches,
            stanza_batches: peers.stanza_batches,
            messages: peers.messages,
            messenger: None,
            link_up: false,
            store,
            shards: Vec::new(),
            subscriber_total: Arc::new(AtomicUsize::new(0)),
            subscriber_live: Vec::new(),
            notifier_shards: Vec::new(),
            pua_presentities: HashMap::new(),
            dialogs: HashMap::new(),
            workers: Vec::new(),
            next_worker: 0,
            sip_to_xmpp: 0,
            sip_watching: HashMap::new(),
            link_was_up: false,
            link_dropped: false,
        }
    }

    /// Runs translators on these arbiters (round robin) instead of the registry's thread.
    pub fn with_workers(mut self, workers: Vec<actix::ArbiterHandle>) -> Registry {
        self.workers = workers;
        self
    }

    fn spawn<A>(&mut self, actor: A) -> Addr<A>
    where
        A: Actor<Context = Context<A>> + Send,
    {
        if self.workers.is_empty() {
            return actor.start();
        }
        let i = self.next_worker % self.workers.len();
        self.next_worker = self.next_worker.wrapping_add(1);
        A::start_in_arbiter(&self.workers[i], move |_| actor)
    }

    fn links(&self, ctx: &Context<Self>) -> Links {
        Links {
            requests: self.requests.clone(),
            responses: self.responses.clone(),
            stanzas: self.stanzas.clone(),
            response_batches: self.response_batches.clone(),
            stanza_batches: self.stanza_batches.clone(),
            registry: ctx.address().recipient(),
            renotify: ctx.address().recipient(),
            store: self.store.clone(),
        }
    }

    fn respond(&self, txn: ServerTxnId, resp: OutResponse) {
        self.responses.do_send(SendResponse { txn, resp });
    }

    fn error_reply(&self, p: &InPresence, cond: DefinedCondition, text: String) {
        if p.kind == Ok(PresenceType::Error) {
            return; // never answer an error with an error
        }
        self.stanzas
            .do_send(SendPresence(OutPresence::error_reply(p, cond, Some(text))));
    }

    /// The notifier shard of X.
    fn notifier_shard_of(&self, x: &BareJid) -> usize {
        shard_for(x.as_str(), self.notifier_shards.len())
    }

    fn to_notifier(&self, shard: usize, x: Option<BareJid>, event: NotifierEvent) {
        match self.notifier_shards.get(shard) {
            Some(s) => s.do_send(ToNotifier { x, event }),
            None => tracing::error!("no notifier shard running"),
        }
    }

    fn pua_translator(
        &mut self,
        x: &BareJid,
        ctx: &Context<Self>,
    ) -> Result<Addr<PuaTranslator>, String> {
        if let Some(a) = self.pua_presentities.get(x) {
            if a.connected() {
                return Ok(a.clone());
            }
            // Its actor died (a fault outside its containment): a new one serves X from now
            // on; X's next presence publishes again.
            tracing::error!(presentity = %x, "PUA translator died: starting a new one");
            metrics::counter!("pua_xmpp_actor_restarts_total", "actor" => "pua_translator")
                .increment(1);
        }
        let uri = self.mapper.xmpp_to_sip(x).map_err(|e| e.to_string())?;
        let t = PuaTranslator::new(
            x.clone(),
            uri,
            self.cfg.pua.clone(),
            self.mapper.clone(),
            self.links(ctx),
            pua_xmpp::ids::fresh_stream(),
        );
        let addr = self.spawn(t);
        self.pua_presentities.insert(x.clone(), addr.clone());
        Ok(addr)
    }

    /// Maps the pair of a subscription stanza; the message for its shard joins `to_shards`.
    fn on_subscriber_stanza(&mut self, p: InPresence, to_shards: &mut [Vec<ToSubscriber>]) {
        let presentity = p.to_bare();
        let presentity_uri = match self.mapper.jid_to_sip(&presentity) {
            Ok(u) => u,
            Err(e) => {
                // Cases 11, 12: an address outside what we serve; never forwarded.
                tracing::info!(to = %p.to, error = %e, "stanza to an unmappable address refused");
                return self.error_reply(&p, e.xmpp_condition(), e.to_string());
            }
        };
        let watcher = p.from_bare();
        let watcher_uri = match self.mapper.xmpp_to_sip(&watcher) {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(from = %p.from, error = %e, "watcher cannot be mapped to SIP");
                return self.error_reply(&p, e.xmpp_condition(), e.to_string());
            }
        };
        let pair = Pair {
            watcher,
            watcher_uri,
            presentity: presentity.clone(),
            presentity_uri,
        };
        // Limits are checked by the shard: it holds every pair of this watcher.
        let i = shard_for(&pair.watcher_uri, self.shards.len());
        match to_shards.get_mut(i) {
            Some(list) => list.push(ToSubscriber { pair, stanza: p }),
            None => tracing::error!("no subscriber shard running"),
        }
    }

    fn on_subscribe(&mut self, req: SipRequest, txn: ServerTxnId) {
        if let Some(resp) = notifier::pre_checks(&req) {
            return self.respond(txn, resp);
        }
        if req.to.tag.is_some() {
            // Case 58: a refresh must match a dialog.
            return match self.dialogs.get(&req.call_id) {
                Some(Owner::Xmpp(shard)) => {
                    let event = NotifierEvent::Sip {
                        req: Box::new(req),
                        txn,
                        watcher: None,
                    };
                    self.to_notifier(*shard, None, event)
                }
                _ => self.respond(txn, OutResponse::to_request(&req, 481, None)),
            };
        }
        let presentity = match self.mapper.sip_to_xmpp(&req.uri) {
            Ok(j) => j,
            Err(e) => {
                tracing::info!(uri = %req.uri, error = %e, "SUBSCRIBE for an unknown presentity");
                let resp = OutResponse::to_request(&req, 404, None).with_reason(e.to_string());
                return self.respond(txn, resp);
            }
        };
        let watcher = match self.mapper.sip_to_jid(&req.from.uri) {
            Ok(j) => j,
            Err(e) => {
                tracing::info!(from = %req.from.uri, error = %e, "SUBSCRIBE from an unmappable watcher");
                let code = e.watcher_sip_status();
                let resp = OutResponse::to_request(&req, code, None).with_reason(e.to_string());
                return self.respond(txn, resp);
            }
        };
        // Only a spelling the algorithm cannot give back is news to the Messenger's mapper
        // (most watchers are spelled canonically: no message per SUBSCRIBE).
        if let (Some(m), Some(uri)) = (&self.messenger, self.mapper.learned_spelling(&watcher)) {
            m.do_send(LearnSpelling(uri.to_owned()));
        }
        let known = self
            .sip_watching
            .get(&watcher)
            .is_some_and(|s| s.contains(&presentity));
        let mine = self.sip_watching.get(&watcher).map_or(0, |s| s.len());
        let limits = &self.cfg.limits;
        if !known && (mine >= limits.max_per_user || self.sip_to_xmpp >= limits.max_subscriptions) {
            tracing::warn!(%watcher, %presentity, mine, total = self.sip_to_xmpp, "SUBSCRIBE refused: limit reached");
            metrics::counter!("pua_xmpp_limit_refusals_total", "direction" => "sip_to_xmpp")
                .increment(1);
            let resp = OutResponse::to_request(&req, 503, None)
                .with_reason("Too Many Subscriptions")
                .with_header("Retry-After", "3600");
            return self.respond(txn, resp);
        }
        if !known && !self.store.accepting() {
            // Issue 14: no promise the store cannot keep (disk full, read-only, far behind).
            tracing::warn!(%watcher, %presentity, "SUBSCRIBE refused: the store is not writing");
            metrics::counter!("pua_xmpp_store_refusals_total", "direction" => "sip_to_xmpp")
                .increment(1);
            let resp = OutResponse::to_request(&req, 503, None)
                .with_reason("Store Unavailable")
                .with_header("Retry-After", "60");
            return self.respond(txn, resp);
        }
        if !known {
            let list = self.sip_watching.entry(watcher.clone()).or_default();
            list.push(presentity.clone());
            list.shrink_to_fit();
        }
        let shard = self.notifier_shard_of(&presentity);
        let event = NotifierEvent::Sip {
            req: Box::new(req),
            txn,
            watcher: Some(watcher),
        };
        self.to_notifier(shard, Some(presentity), event)
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    /// Starts the subscriber shards on the worker threads only (at least two shards, so the
    /// in-process tests exercise the hand-over between shards): the registry's own thread also
    /// runs the SIP transport and the XMPP component, and with a shard of its own it was the
    /// first to saturate (2 cores, BENCHMARKS.md session 4: set-up 38,000-43,000/s against
    /// 46,000-51,000/s; at the 150,000/s step 139,500-144,000 against 147,000-150,000
    /// delivered). Without workers (`threads = 1`)
    /// everything runs here. The notifier shards: one per worker and one here.
    fn started(&mut self, ctx: &mut Context<Self>) {
        let subscriber_shards = self.workers.len().max(2);
        for i in 0..subscriber_shards {
            let (addr, live) = self.spawn_subscriber_shard(i, ctx);
            self.shards.push(addr);
            self.subscriber_live.push(live);
        }
        let count = (self.workers.len() + 1).max(2);
        for i in 0..count {
            let addr = self.spawn_notifier_shard(i, ctx);
            self.notifier_shards.push(addr);
        }
        if self.cfg.im.enabled {
            self.messenger = Some(self.spawn_messenger(ctx));
        }
        ctx.run_interval(SUPERVISE_EVERY, |a, ctx| a.supervise(ctx));
    }
}

/// How often the registry looks for shard actors that died.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);

/// Which stored state a [`Restore`] brings back: all of it at start, or what a restarted
/// shard held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    SubscriberShard(usize),
    NotifierShard(usize),
}

/// The store's state read back for a restarted shard.
#[derive(Message)]
#[rtype(result = "()")]
struct Reload {
    scope: Scope,
    snapshot: Result<crate::store::Snapshot, crate::store::StoreError>,
}

impl Handler<Reload> for Registry {
    type Result = ();
    fn handle(&mut self, msg: Reload, ctx: &mut Context<Self>) {
        match msg.snapshot {
            Ok(snap) => self.restore(snap, msg.scope, ctx),
            Err(e) => tracing::error!(scope = ?msg.scope, error = %e,
                "restarted shard: its pairs could not be read back from the store"),
        }
    }
}

impl Registry {
    /// Starts subscriber shard `i` on its worker; returns it and its live-pair count.
    fn spawn_subscriber_shard(
        &self,
        i: usize,
        ctx: &Context<Self>,
    ) -> (
        Addr<SubscriberShard>,
        (Arc<AtomicUsize>, Arc<crate::gauges::ShardGauges>),
    ) {
        let live = Arc::new(AtomicUsize::new(0));
        let gauges = Arc::new(crate::gauges::ShardGauges::default());
        let cfg = ShardConfig {
            subscriber: Arc::new(self.cfg.subscriber.clone()),
            max_per_user: self.cfg.limits.max_per_user,
            max_total: self.cfg.limits.max_subscriptions,
            total: Arc::clone(&self.subscriber_total),
            live: Arc::clone(&live),
            gauges: Arc::clone(&gauges),
            persist_delay: self.cfg.persist_delay,
        };
        let shard = SubscriberShard::new(cfg, self.links(ctx));
        let addr = match self.workers.get(i % self.workers.len().max(1)) {
            Some(w) => SubscriberShard::start_in_arbiter(w, move |_| shard),
            None => shard.start(),
        };
        (addr, (live, gauges))
    }

    /// Starts the instant-messaging actor on this thread, told the link state.
    fn spawn_messenger(&self, ctx: &Context<Self>) -> Addr<Messenger> {
        let cseq_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| (d.as_secs() % (1 << 30)) as u32);
        let machine = pua_xmpp::im::ImGateway::new(
            self.cfg.im.clone(),
            self.mapper.clone(),
            pua_xmpp::ids::fresh_stream(),
            cseq_seed,
        );
        let addr = Messenger::new(machine, self.links(ctx), self.messages.clone()).start();
        addr.do_send(ComponentStatus {
            online: self.link_up,
        });
        addr
    }

    fn allow(&self) -> &'static str {
        if self.messenger.is_some() {
            ALLOW_WITH_IM
        } else {
            ALLOW
        }
    }

    fn spawn_notifier_shard(&self, i: usize, ctx: &Context<Self>) -> Addr<NotifierShard> {
        let shard = NotifierShard::new(
            i,
            self.cfg.notifier.clone(),
            self.mapper.clone(),
            self.links(ctx),
        );
        match self.workers.get(i) {
            Some(w) => NotifierShard::start_in_arbiter(w, move |_| shard),
            None => shard.start(),
        }
    }

    /// The supervisor (OTP's one-for-one): a shard actor that died (a panic outside the
    /// per-pair containment ends the actor, and its mailbox with it) is started again on its
    /// thread and given back its pairs from the store. Its NOTIFYs in flight were counted off
    /// the overload backlog as they were dropped (`backlog::Ticket`).
    fn supervise(&mut self, ctx: &mut Context<Self>) {
        if self.messenger.as_ref().is_some_and(|m| !m.connected()) {
            tracing::error!("instant-messaging actor died: starting a new one");
            metrics::counter!("pua_xmpp_actor_restarts_total", "actor" => "messenger").increment(1);
            self.messenger = Some(self.spawn_messenger(ctx));
        }
        for i in 0..self.shards.len() {
            if self.shards[i].connected() {
                continue;
            }
            let (live, gauges) = &self.subscriber_live[i];
            let lost = live.swap(0, Ordering::Relaxed);
            self.subscriber_total.fetch_sub(lost, Ordering::Relaxed);
            gauges.forget();
            tracing::error!(
                shard = i,
                pairs = lost,
                "subscriber shard died: restarting it and restoring its pairs from the store"
            );
            metrics::counter!("pua_xmpp_actor_restarts_total", "actor" => "subscriber_shard")
                .increment(1);
            let (addr, live) = self.spawn_subscriber_shard(i, ctx);
            self.shards[i] = addr;
            self.subscriber_live[i] = live;
            self.reload(Scope::SubscriberShard(i), ctx);
        }
        for i in 0..self.notifier_shards.len() {
            if self.notifier_shards[i].connected() {
                continue;
            }
            tracing::error!(
                shard = i,
                "notifier shard died: restarting it and restoring its dialogs from the store"
            );
            metrics::counter!("pua_xmpp_actor_restarts_total", "actor" => "notifier_shard")
                .increment(1);
            self.notifier_shards[i] = self.spawn_notifier_shard(i, ctx);
            self.reload(Scope::NotifierShard(i), ctx);
        }
    }

    /// Reads the store back off the actor threads and restores `scope` from it.
    fn reload(&self, scope: Scope, ctx: &Context<Self>) {
        let store = self.store.clone();
        let me = ctx.address();
        let spawned = std::thread::Builder::new()
            .name("store-reload".to_owned())
            .spawn(move || {
                let snapshot = store.load();
                me.do_send(Reload { scope, snapshot });
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the store reload thread");
        }
    }
}

/// One read's stanzas: each routed as a [`StanzaIn`], those for the subscriber shards sent as
/// one [`ToSubscribers`] per shard, in order.
impl Handler<StanzasIn> for Registry {
    type Result = ();
    fn handle(&mut self, StanzasIn(list): StanzasIn, ctx: &mut Context<Self>) {
        self.route_stanzas(list, ctx);
    }
}

/// Sends one shard its list: nothing, a lone message as itself, or several as one batch.
fn send_list<M, B>(shard: &Addr<SubscriberShard>, mut list: Vec<M>, batch: fn(Vec<M>) -> B)
where
    M: Message<Result = ()> + Send + 'static,
    B: Message<Result = ()> + Send + 'static,
    SubscriberShard: Handler<M> + Handler<B>,
{
    match list.len() {
        0 => {}
        1 => {
            if let Some(one) = list.pop() {
                shard.do_send(one);
            }
        }
        _ => shard.do_send(batch(list)),
    }
}

impl Handler<StanzaIn> for Registry {
    type Result = ();
    fn handle(&mut self, StanzaIn(p): StanzaIn, ctx: &mut Context<Self>) {
        self.route_stanzas(vec![p], ctx);
    }
}

impl Registry {
    /// Routes inbound presence stanzas in order; those for the subscriber shards leave as one
    /// message per shard at the end.
    fn route_stanzas(&mut self, list: Vec<InPresence>, ctx: &mut Context<Self>) {
        let mut to_shards: Vec<Vec<ToSubscriber>> =
            crate::batch::shard_lists(self.shards.len(), list.len());
        for p in list {
            self.on_stanza(p, ctx, &mut to_shards);
        }
        for (shard, list) in self.shards.iter().zip(to_shards) {
            send_list(shard, list, ToSubscribers);
        }
    }

    /// Routes one inbound presence stanza (subscription handling or X's own presence).
    fn on_stanza(
        &mut self,
        p: InPresence,
        ctx: &mut Context<Self>,
        to_shards: &mut [Vec<ToSubscriber>],
    ) {
        let kind = match &p.kind {
            Ok(k) => *k,
            Err(t) => {
                // Case 46.
                tracing::info!(from = %p.from, r#type = %t, "presence with an unknown type");
                return self.error_reply(
                    &p,
                    DefinedCondition::BadRequest,
                    format!("unknown presence type '{t}'"),
                );
            }
        };
        match kind {
            PresenceType::Subscribe | PresenceType::Unsubscribe | PresenceType::Probe => {
                self.on_subscriber_stanza(p, to_shards)
            }
            PresenceType::Available
            | PresenceType::Unavailable
            | PresenceType::Subscribed
            | PresenceType::Unsubscribed
            | PresenceType::Error => {
                let x = p.from_bare();
                match self.cfg.mode {
                    Mode::Notifier => {
                        // The shard creates X for anything but an error (which needs state).
                        let shard = self.notifier_shard_of(&x);
                        self.to_notifier(shard, Some(x), NotifierEvent::Stanza(p));
                    }
                    Mode::Pua => {
                        let existing = self.pua_presentities.get(&x).cloned();
                        let addr = match (existing, kind) {
                            (Some(a), _) => Some(a),
                            (None, PresenceType::Error) => None,
                            (None, _) => self.pua_translator(&x, ctx).ok(),
                        };
                        if let Some(a) = addr {
                            a.do_send(FromPresentity(p));
                        }
                    }
                }
            }
        }
    }
}

impl Registry {
    /// Routes one inbound request; NOTIFYs for the subscriber shards are collected in
    /// `to_shards` (one list per shard) and sent by the caller, one message per shard.
    fn route(&mut self, msg: SipRequestIn, to_shards: &mut [Vec<ShardNotify>]) {
        let SipRequestIn {
            req,
            txn,
            source,
            im,
        } = msg;
        let trusted = &self.cfg.limits.trusted_peers;
        if !trusted.is_empty() && !trusted.contains(&source.peer.ip()) {
            tracing::warn!(peer = %source.peer, method = req.method.as_str(), "SIP request from an untrusted peer refused");
            let resp = OutResponse::to_request(&req, 403, None).with_reason("Untrusted Peer");
            return self.respond(txn, resp);
        }
        match req.method {
            Method::Notify => match self.dialogs.get(&req.call_id) {
                Some(Owner::Pua(a)) => a.do_send(DialogRequest {
                    req,
                    txn,
                    watcher: None,
                }),
                _ if !self.shards.is_empty() => {
                    // Our From (X') comes back as the NOTIFY's To: its shard has the dialog.
                    let shards = self.shards.len();
                    let first = shard_for(&req.to.uri, shards);
                    if let Some(list) = to_shards.get_mut(first) {
                        list.push(ShardNotify {
                            req,
                            txn,
                            first,
                            tried: 1,
                            shards,
                            counted: crate::backlog::Ticket::new(),
                        });
                    }
                }
                _ => {
                    // Case 73.
                    tracing::debug!(call_id = %req.call_id, "NOTIFY for no subscription");
                    self.respond(txn, OutResponse::to_request(&req, 481, None));
                }
            },
            Method::Subscribe => self.on_subscribe(req, txn),
            Method::Message if self.messenger.is_some() => {
                if let Some(m) = &self.messenger {
                    m.do_send(SipMessageIn {
                        req,
                        txn,
                        source,
                        headers: im.unwrap_or_default(),
                    });
                }
            }
            Method::Options => {
                let resp = OutResponse::to_request(&req, 200, None)
                    .with_header("Allow", self.allow())
                    .with_header("Allow-Events", "presence")
                    .with_header("Accept", "application/pidf+xml");
                self.respond(txn, resp);
            }
            _ => {
                let resp =
                    OutResponse::to_request(&req, 405, None).with_header("Allow", self.allow());
                self.respond(txn, resp);
            }
        }
    }

    fn send_to_shards(&self, to_shards: Vec<Vec<ShardNotify>>) {
        for (shard, list) in self.shards.iter().zip(to_shards) {
            send_list(shard, list, ShardNotifies);
        }
    }
}

impl Handler<SipRequestIn> for Registry {
    type Result = ();
    fn handle(&mut self, msg: SipRequestIn, _: &mut Context<Self>) {
        let mut to_shards: Vec<Vec<ShardNotify>> = crate::batch::shard_lists(self.shards.len(), 1);
        self.route(msg, &mut to_shards);
        self.send_to_shards(to_shards);
    }
}

/// A batch read by the transport: routed like single requests, one message per shard.
impl Handler<SipRequestsIn> for Registry {
    type Result = ();
    fn handle(&mut self, msg: SipRequestsIn, _: &mut Context<Self>) {
        let mut to_shards: Vec<Vec<ShardNotify>> =
            crate::batch::shard_lists(self.shards.len(), msg.0.len());
        for m in msg.0 {
            self.route(m, &mut to_shards);
        }
        self.send_to_shards(to_shards);
    }
}

impl Handler<RegistryEvent> for Registry {
    type Result = ();
    fn handle(&mut self, ev: RegistryEvent, _ctx: &mut Context<Self>) {
        match ev {
            RegistryEvent::DialogXmpp {
                call_id,
                shard,
                watcher,
                presentity,
            } => {
                if self.dialogs.insert(call_id, Owner::Xmpp(shard)).is_none() {
                    self.sip_to_xmpp += 1;
                }
                // Restored dialogs are counted here (live ones already at their SUBSCRIBE).
                let list = self.sip_watching.entry(watcher).or_default();
                if !list.contains(&presentity) {
                    list.push(presentity);
                    list.shrink_to_fit();
                }
            }
            RegistryEvent::DialogPua { call_id, owner } => {
                self.dialogs.insert(call_id, Owner::Pua(owner));
            }
            RegistryEvent::DialogGone { call_id } => {
                if let Some(Owner::Xmpp(_)) = self.dialogs.remove(&call_id) {
                    self.sip_to_xmpp = self.sip_to_xmpp.saturating_sub(1);
                }
            }
            RegistryEvent::WatchGone {
                watcher,
                presentity,
            } => {
                if let Some(list) = self.sip_watching.get_mut(&watcher) {
                    list.retain(|x| *x != presentity);
                    if list.is_empty() {
                        self.sip_watching.remove(&watcher);
                    }
                }
            }
        }
    }
}

/// A NOTIFY the shard it was sent to did not know: on to the next shard.
impl Handler<ShardNotify> for Registry {
    type Result = ();
    fn handle(&mut self, mut msg: ShardNotify, _: &mut Context<Self>) {
        let next = (msg.first + msg.tried) % self.shards.len().max(1);
        msg.tried += 1;
        match self.shards.get(next) {
            Some(shard) => shard.do_send(msg),
            None => self.respond(msg.txn, OutResponse::to_request(&msg.req, 481, None)),
        }
    }
}

impl Handler<ReqWinfo> for Registry {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: ReqWinfo, ctx: &mut Context<Self>) -> Self::Result {
        if self.cfg.mode != Mode::Pua {
            return Err("not in PUA mode (presence.mode = \"notifier\")".to_owned());
        }
        let x = self
            .mapper
            .sip_to_xmpp(&msg.uri)
            .map_err(|e| format!("{}: {e}", msg.uri))?;
        let addr = self.pua_translator(&x, ctx)?;
        tracing::info!(presentity = %x, expires = msg.expires, watcher = ?msg.watcher, "req_winfo");
        self.store.send(StoreOp::PutWinfo {
            presentity: x.clone(),
            wanted: msg.expires > 0,
        });
        addr.do_send(msg);
        Ok(())
    }
}

/// Probes every XMPP presentity again when the link is back after having been up and down.
/// The first link-up needs none: [`Restore`] already probed, and stanzas wait for the link.
impl Handler<ComponentStatus> for Registry {
    type Result = ();
    fn handle(&mut self, msg: ComponentStatus, _: &mut Context<Self>) {
        self.link_up = msg.online;
        if let Some(m) = &self.messenger {
            m.do_send(msg);
        }
        if !msg.online {
            self.link_dropped |= self.link_was_up;
            return;
        }
        self.link_was_up = true;
        if !std::mem::take(&mut self.link_dropped) {
            return;
        }
        tracing::info!("XMPP component link back: probing XMPP presentities again");
        for shard in &self.notifier_shards {
            shard.do_send(ProbeAfterReconnect);
        }
    }
}

/// A `<message/>` from the component: to the instant-messaging actor.
impl Handler<MessageIn> for Registry {
    type Result = ();
    fn handle(&mut self, msg: MessageIn, _: &mut Context<Self>) {
        match &self.messenger {
            Some(m) => m.do_send(msg),
            None => tracing::debug!(to = %msg.0.to, "message dropped: instant messaging is off"),
        }
    }
}

impl Handler<GetLiveness> for Registry {
    type Result = MessageResult<GetLiveness>;
    fn handle(&mut self, _: GetLiveness, _: &mut Context<Self>) -> Self::Result {
        let shards = self
            .shards
            .iter()
            .enumerate()
            .filter(|(_, a)| !a.connected());
        let mut dead: Vec<String> = shards
            .map(|(i, _)| format!("subscriber shard {i}"))
            .collect();
        let notifiers = self.notifier_shards.iter().enumerate();
        dead.extend(
            notifiers
                .filter(|(_, a)| !a.connected())
                .map(|(i, _)| format!("notifier shard {i}")),
        );
        MessageResult(dead)
    }
}

impl Handler<Restore> for Registry {
    type Result = ();
    fn handle(&mut self, Restore(snap): Restore, ctx: &mut Context<Self>) {
        self.restore(snap, Scope::All, ctx);
    }
}

impl Registry {
    /// Hands the stored state in `scope` to the shards and translators that own it.
    fn restore(&mut self, snap: crate::store::Snapshot, scope: Scope, ctx: &mut Context<Self>) {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        // Subscriber pairs, each to its shard, in batches staggered over a window that grows
        // with their number (§6.3: "SUBSCRIBE again (staggered)").
        let shards = self.shards.len().max(1);
        let mut per_shard: Vec<Vec<_>> = (0..shards).map(|_| Vec::new()).collect();
        for (rec, exp) in snap.subscriptions {
            let left = lease_left_at(exp, now_unix);
            let i = shard_for(&rec.pair.watcher_uri, shards);
            if matches!(scope, Scope::All) || scope == Scope::SubscriberShard(i) {
                per_shard[i].push((rec, left));
            }
        }
        let count = per_shard.iter().map(Vec::len).sum::<usize>();
        const BATCH: usize = 500;
        let window_ms = (count as u64).min(60_000);
        let batches = count.div_ceil(BATCH).max(1) as u64;
        let mut n = 0u64;
        for (i, pairs) in per_shard.into_iter().enumerate() {
            let Some(shard) = self.shards.get(i) else {
                continue;
            };
            let mut pairs = pairs.into_iter().peekable();
            while pairs.peek().is_some() {
                let batch: Vec<_> = pairs.by_ref().take(BATCH).collect();
                let delay = std::time::Duration::from_millis(window_ms * n / batches);
                shard.do_send(RestorePairs {
                    pairs: batch,
                    delay,
                });
                n += 1;
            }
        }
        // Notifier relations and dialogs.
        let mut relations: HashMap<BareJid, Vec<_>> = HashMap::new();
        for (x, w, state) in snap.relations {
            relations.entry(x).or_default().push((w, state));
        }
        let mut dialogs: HashMap<BareJid, Vec<_>> = HashMap::new();
        for (x, d) in snap.notifier_dialogs {
            dialogs.entry(x).or_default().push(d);
        }
        let mut xs: Vec<BareJid> = relations.keys().chain(dialogs.keys()).cloned().collect();
        xs.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        xs.dedup();
        match scope {
            Scope::All => {}
            Scope::NotifierShard(i) => xs.retain(|x| self.notifier_shard_of(x) == i),
            Scope::SubscriberShard(_) => xs.clear(),
        }
        let notifier_count = xs.len();
        if self.cfg.mode == Mode::Notifier {
            for x in xs {
                let event = NotifierEvent::Restore(RestoreNotifier {
                    relations: relations.remove(&x).unwrap_or_default(),
                    dialogs: dialogs.remove(&x).unwrap_or_default(),
                });
                self.to_notifier(self.notifier_shard_of(&x), Some(x), event);
            }
        }
        let winfo = snap.winfo.len();
        let publications = snap.publications.len();
        if self.cfg.mode == Mode::Pua && scope == Scope::All {
            // PUA publications: refreshed with their stored entity-tag (or published anew with
            // their stored body) without waiting for X's next presence; staggered like pairs
            // (a presence of X arriving first applies its restore at once).
            let window_ms = (publications as u64).min(60_000);
            let n = publications.max(1) as u64;
            for (i, (x, mut rec, exp)) in snap.publications.into_iter().enumerate() {
                rec.lease_left = lease_left_at(exp, now_unix);
                let delay = std::time::Duration::from_millis(window_ms * i as u64 / n);
                if let Ok(a) = self.pua_translator(&x, ctx) {
                    a.do_send(RestorePublication { rec, delay });
                }
            }
            for x in snap.winfo {
                if let Ok(a) = self.pua_translator(&x, ctx) {
                    let uri = self.mapper.xmpp_to_sip(&x).unwrap_or_default();
                    a.do_send(ReqWinfo {
                        uri,
                        expires: self.cfg.pua.winfo_expires,
                        watcher: None,
                    });
                }
            }
        }
        tracing::info!(
            subscriptions = count,
            notifier_presentities = notifier_count,
            winfo,
            publications,
            "state restored from the store"
        );
    }
}

impl Handler<FlushPersists> for Registry {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: FlushPersists, _: &mut Context<Self>) -> Self::Result {
        let asks: Vec<_> = self.shards.iter().map(|s| s.send(msg)).collect();
        Box::pin(async move {
            for a in asks {
                if let Err(e) = a.await {
                    tracing::warn!(error = %e, "a subscriber shard did not flush its records");
                }
            }
        })
    }
}

impl Handler<ListSubscriptions> for Registry {
    type Result = ResponseFuture<Result<Vec<SubscriptionInfo>, String>>;
    fn handle(&mut self, msg: ListSubscriptions, _: &mut Context<Self>) -> Self::Result {
        let user = msg.user.trim();
        let jid =
            if user.starts_with("sip:") || user.starts_with("sips:") || user.starts_with("pres:") {
                if self.mapper.is_gateway_uri(user) {
                    self.mapper.sip_to_xmpp(user)
                } else {
                    self.mapper.sip_to_jid(user)
                }
                .map_err(|e| format!("{user}: {e}"))
            } else {
                BareJid::new(user).map_err(|e| format!("{user}: not a JID ({e})"))
            };
        let jid = match jid {
            Ok(j) => j,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let mut asks = Vec::new();
        // As an XMPP watcher (X) or a SIP presentity (S'): the shards scan their pairs.
        for shard in &self.shards {
            asks.push(shard.send(DumpPairs { user: jid.clone() }).boxed_local());
        }
        // As an XMPP presentity (X): all its dialogs.
        let shards = self.notifier_shards.len();
        if let Some(s) = self.notifier_shards.get(shard_for(jid.as_str(), shards)) {
            let ask = DumpNotifier {
                x: jid.clone(),
                watcher: None,
            };
            asks.push(s.send(ask).boxed_local());
        }
        // As a SIP watcher (S'): that watcher's dialogs.
        for x in self.sip_watching.get(&jid).into_iter().flatten() {
            if let Some(s) = self.notifier_shards.get(shard_for(x.as_str(), shards)) {
                let ask = DumpNotifier {
                    x: x.clone(),
                    watcher: Some(jid.clone()),
                };
                asks.push(s.send(ask).boxed_local());
            }
        }
        Box::pin(async move {
            let mut out = Vec::new();
            for ask in asks {
                if let Ok(list) = ask.await {
                    out.extend(list);
                }
            }
            Ok(out)
        })
    }
}
