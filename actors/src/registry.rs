//! The subscription registry: routes every inbound stanza and SIP request to the translator
//! that owns it, and answers what belongs to nobody (481, 404, `item-not-found`).
//!
//! It owns the address mapper (and its learned-spelling table) and two indexes: presentity →
//! translator, and SIP Call-ID → translator. It holds no protocol state of its own.

use crate::messages::*;
use crate::store::{lease_left_at, StoreHandle, StoreOp};
use crate::translator::{Links, PuaTranslator, SipPresentityTranslator, XmppPresentityTranslator};
use actix::prelude::*;
use futures::FutureExt;
use pua_xmpp::address::AddressMapper;
use pua_xmpp::notifier::{self, NotifierConfig};
use pua_xmpp::pua::PuaConfig;
use pua_xmpp::sip::{Method, OutResponse, SipRequest};
use pua_xmpp::stanza::{BareJid, DefinedCondition, InPresence, OutPresence, PresenceType};
use pua_xmpp::subscriber::{Pair, SubscriberConfig};
use std::collections::HashMap;

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
    pub seed: u64,
    pub limits: Limits,
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
    Sip(Addr<SipPresentityTranslator>),
    Xmpp(Addr<XmppPresentityTranslator>),
    Pua(Addr<PuaTranslator>),
}

/// Index updates sent by the translators.
#[derive(Message)]
#[rtype(result = "()")]
pub enum RegistryEvent {
    DialogSip {
        call_id: String,
        owner: Addr<SipPresentityTranslator>,
    },
    DialogXmpp {
        call_id: String,
        owner: Addr<XmppPresentityTranslator>,
    },
    DialogPua {
        call_id: String,
        owner: Addr<PuaTranslator>,
    },
    DialogGone {
        call_id: String,
    },
    /// A subscriber pair ended (its relation is gone).
    PairGone {
        watcher: BareJid,
        presentity: BareJid,
    },
}

pub struct Registry {
    cfg: RegistryConfig,
    mapper: AddressMapper,
    requests: Recipient<SendRequest>,
    responses: Recipient<SendResponse>,
    stanzas: Recipient<SendPresence>,
    store: StoreHandle,
    sip_presentities: HashMap<BareJid, Addr<SipPresentityTranslator>>,
    xmpp_presentities: HashMap<BareJid, Addr<XmppPresentityTranslator>>,
    pua_presentities: HashMap<BareJid, Addr<PuaTranslator>>,
    dialogs: HashMap<String, Owner>,
    /// XMPP watcher X → SIP presentities S' it subscribed to (for `/subscriptions`).
    watching: HashMap<BareJid, std::collections::HashSet<BareJid>>,
    /// Worker threads the translators run on (one actix Arbiter per core): the registry,
    /// the transport and the component stay on the main thread; parsing and translation
    /// spread over the workers.
    workers: Vec<actix::ArbiterHandle>,
    next_worker: usize,
    /// Pairs in `watching`, and notifier dialogs in `dialogs` (for the limits).
    xmpp_to_sip: usize,
    sip_to_xmpp: usize,
    /// SIP watcher S' → XMPP presentities X it subscribed to (notifier mode).
    sip_watching: HashMap<BareJid, std::collections::HashSet<BareJid>>,
    seed: u64,
    /// The component link has been up at least once, and went down since it was last up:
    /// the XMPP server may have restarted and forgotten every presence it had (§6.3).
    link_was_up: bool,
    link_dropped: bool,
}

/// Tells an XMPP presentity translator that the component link came back after being down:
/// the server may have restarted, so the presentity is probed again (the core decides from
/// which watcher: `Presentity::probe_after_restart`).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ProbeAfterReconnect;

impl Registry {
    pub fn new(
        cfg: RegistryConfig,
        mapper: AddressMapper,
        requests: Recipient<SendRequest>,
        responses: Recipient<SendResponse>,
        stanzas: Recipient<SendPresence>,
        store: StoreHandle,
    ) -> Registry {
        Registry {
            seed: cfg.seed,
            cfg,
            mapper,
            requests,
            responses,
            stanzas,
            store,
            sip_presentities: HashMap::new(),
            xmpp_presentities: HashMap::new(),
            pua_presentities: HashMap::new(),
            dialogs: HashMap::new(),
            watching: HashMap::new(),
            workers: Vec::new(),
            next_worker: 0,
            xmpp_to_sip: 0,
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
            registry: ctx.address(),
            store: self.store.clone(),
        }
    }

    fn next_seed(&mut self) -> u64 {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.seed
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

    fn xmpp_translator(
        &mut self,
        x: &BareJid,
        ctx: &Context<Self>,
    ) -> Option<Addr<XmppPresentityTranslator>> {
        if let Some(a) = self.xmpp_presentities.get(x) {
            return Some(a.clone());
        }
        let sip_uri = match self.mapper.xmpp_to_sip(x) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(jid = %x, error = %e, "XMPP presentity cannot be mapped to SIP");
                return None;
            }
        };
        let seed = self.next_seed();
        let t = XmppPresentityTranslator::new(
            x.clone(),
            sip_uri,
            self.cfg.notifier.clone(),
            self.links(ctx),
            seed,
        );
        let addr = self.spawn(t);
        self.xmpp_presentities.insert(x.clone(), addr.clone());
        Some(addr)
    }

    fn pua_translator(
        &mut self,
        x: &BareJid,
        ctx: &Context<Self>,
    ) -> Result<Addr<PuaTranslator>, String> {
        if let Some(a) = self.pua_presentities.get(x) {
            return Ok(a.clone());
        }
        let uri = self.mapper.xmpp_to_sip(x).map_err(|e| e.to_string())?;
        let seed = self.next_seed();
        let t = PuaTranslator::new(
            x.clone(),
            uri,
            self.cfg.pua.clone(),
            self.mapper.clone(),
            self.links(ctx),
            seed,
        );
        let addr = self.spawn(t);
        self.pua_presentities.insert(x.clone(), addr.clone());
        Ok(addr)
    }

    fn sip_translator(
        &mut self,
        presentity: &BareJid,
        ctx: &Context<Self>,
    ) -> Addr<SipPresentityTranslator> {
        if let Some(a) = self.sip_presentities.get(presentity) {
            return a.clone();
        }
        let seed = self.next_seed();
        let t = SipPresentityTranslator::new(
            presentity.clone(),
            self.cfg.subscriber.clone(),
            self.links(ctx),
            seed,
        );
        let a = self.spawn(t);
        self.sip_presentities.insert(presentity.clone(), a.clone());
        a
    }

    fn on_subscriber_stanza(&mut self, p: InPresence, ctx: &Context<Self>) {
        let presentity = p.to.to_bare();
        let presentity_uri = match self.mapper.jid_to_sip(&presentity) {
            Ok(u) => u,
            Err(e) => {
                // Cases 11, 12: an address outside what we serve; never forwarded.
                tracing::info!(to = %p.to, error = %e, "stanza to an unmappable address refused");
                return self.error_reply(&p, e.xmpp_condition(), e.to_string());
            }
        };
        let watcher = p.from.to_bare();
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
        let addr = self.sip_translator(&presentity, ctx);
        let known = self
            .watching
            .get(&pair.watcher)
            .is_some_and(|s| s.contains(&pair.presentity));
        if !known && p.kind == Ok(PresenceType::Subscribe) {
            let mine = self.watching.get(&pair.watcher).map_or(0, |s| s.len());
            let limits = &self.cfg.limits;
            if mine >= limits.max_per_user || self.xmpp_to_sip >= limits.max_subscriptions {
                tracing::warn!(watcher = %pair.watcher, presentity = %pair.presentity, mine, total = self.xmpp_to_sip, "subscription refused: limit reached");
                metrics::counter!("pua_xmpp_limit_refusals_total", "direction" => "xmpp_to_sip")
                    .increment(1);
                return self.error_reply(
                    &p,
                    DefinedCondition::ResourceConstraint,
                    "too many subscriptions".to_owned(),
                );
            }
        }
        if self
            .watching
            .entry(pair.watcher.clone())
            .or_default()
            .insert(pair.presentity.clone())
        {
            self.xmpp_to_sip += 1;
        }
        addr.do_send(ToSubscriber { pair, stanza: p });
    }

    fn on_subscribe(&mut self, req: SipRequest, txn: ServerTxnId, ctx: &Context<Self>) {
        if let Some(resp) = notifier::pre_checks(&req) {
            return self.respond(txn, resp);
        }
        if req.to.tag.is_some() {
            // Case 58: a refresh must match a dialog.
            return match self.dialogs.get(&req.call_id) {
                Some(Owner::Xmpp(a)) => a.do_send(DialogRequest {
                    req,
                    txn,
                    watcher: None,
                }),
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
        self.sip_watching
            .entry(watcher.clone())
            .or_default()
            .insert(presentity.clone());
        match self.xmpp_translator(&presentity, ctx) {
            Some(a) => a.do_send(DialogRequest {
                req,
                txn,
                watcher: Some(watcher),
            }),
            None => self.respond(txn, OutResponse::to_request(&req, 404, None)),
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

impl Handler<StanzaIn> for Registry {
    type Result = ();
    fn handle(&mut self, StanzaIn(p): StanzaIn, ctx: &mut Context<Self>) {
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
                self.on_subscriber_stanza(p, ctx)
            }
            PresenceType::Available
            | PresenceType::Unavailable
            | PresenceType::Subscribed
            | PresenceType::Unsubscribed
            | PresenceType::Error => {
                let x = p.from.to_bare();
                match self.cfg.mode {
                    Mode::Notifier => {
                        let existing = self.xmpp_presentities.get(&x).cloned();
                        let addr = match (existing, kind) {
                            (Some(a), _) => Some(a),
                            (None, PresenceType::Error) => None,
                            (None, _) => self.xmpp_translator(&x, ctx),
                        };
                        if let Some(a) = addr {
                            a.do_send(FromPresentity(p));
                        }
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

impl Handler<SipRequestIn> for Registry {
    type Result = ();
    fn handle(&mut self, msg: SipRequestIn, ctx: &mut Context<Self>) {
        let SipRequestIn { req, txn, source } = msg;
        let trusted = &self.cfg.limits.trusted_peers;
        if !trusted.is_empty() && !trusted.contains(&source.peer.ip()) {
            tracing::warn!(peer = %source.peer, method = req.method.as_str(), "SIP request from an untrusted peer refused");
            let resp = OutResponse::to_request(&req, 403, None).with_reason("Untrusted Peer");
            return self.respond(txn, resp);
        }
        match req.method {
            Method::Notify => match self.dialogs.get(&req.call_id) {
                Some(Owner::Sip(a)) => a.do_send(DialogRequest {
                    req,
                    txn,
                    watcher: None,
                }),
                Some(Owner::Pua(a)) => a.do_send(DialogRequest {
                    req,
                    txn,
                    watcher: None,
                }),
                _ => {
                    // Case 73.
                    tracing::debug!(call_id = %req.call_id, "NOTIFY for no subscription");
                    self.respond(txn, OutResponse::to_request(&req, 481, None));
                }
            },
            Method::Subscribe => self.on_subscribe(req, txn, ctx),
            Method::Options => {
                let resp = OutResponse::to_request(&req, 200, None)
                    .with_header("Allow", "SUBSCRIBE, NOTIFY, OPTIONS")
                    .with_header("Allow-Events", "presence")
                    .with_header("Accept", "application/pidf+xml");
                self.respond(txn, resp);
            }
            _ => {
                let resp = OutResponse::to_request(&req, 405, None)
                    .with_header("Allow", "SUBSCRIBE, NOTIFY, OPTIONS");
                self.respond(txn, resp);
            }
        }
    }
}

impl Handler<RegistryEvent> for Registry {
    type Result = ();
    fn handle(&mut self, ev: RegistryEvent, _ctx: &mut Context<Self>) {
        match ev {
            RegistryEvent::DialogSip { call_id, owner } => {
                self.dialogs.insert(call_id, Owner::Sip(owner));
            }
            RegistryEvent::DialogXmpp { call_id, owner } => {
                if self.dialogs.insert(call_id, Owner::Xmpp(owner)).is_none() {
                    self.sip_to_xmpp += 1;
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
            RegistryEvent::PairGone {
                watcher,
                presentity,
            } => {
                if let Some(set) = self.watching.get_mut(&watcher) {
                    if set.remove(&presentity) {
                        self.xmpp_to_sip = self.xmpp_to_sip.saturating_sub(1);
                    }
                    if set.is_empty() {
                        self.watching.remove(&watcher);
                    }
                }
            }
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
        if !msg.online {
            self.link_dropped |= self.link_was_up;
            return;
        }
        self.link_was_up = true;
        if !std::mem::take(&mut self.link_dropped) {
            return;
        }
        tracing::info!(
            presentities = self.xmpp_presentities.len(),
            "XMPP component link back: probing XMPP presentities again"
        );
        for addr in self.xmpp_presentities.values() {
            addr.do_send(ProbeAfterReconnect);
        }
    }
}

impl Handler<Restore> for Registry {
    type Result = ();
    fn handle(&mut self, Restore(snap): Restore, ctx: &mut Context<Self>) {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        // Subscriber pairs, grouped by presentity, staggered over a window that grows with
        // their number (§6.3: "SUBSCRIBE again (staggered)").
        let mut by_presentity: HashMap<BareJid, Vec<_>> = HashMap::new();
        let count = snap.subscriptions.len();
        for (rec, exp) in snap.subscriptions {
            let left = lease_left_at(exp, now_unix);
            by_presentity
                .entry(rec.pair.presentity.clone())
                .or_default()
                .push((rec, left));
        }
        let window_ms = (count as u64).min(60_000);
        let groups = by_presentity.len().max(1) as u64;
        for (i, (presentity, pairs)) in by_presentity.into_iter().enumerate() {
            let delay = std::time::Duration::from_millis(window_ms * i as u64 / groups);
            self.sip_translator(&presentity, ctx)
                .do_send(RestorePairs { pairs, delay });
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
        let notifier_count = xs.len();
        if self.cfg.mode == Mode::Notifier {
            for x in xs {
                if let Some(a) = self.xmpp_translator(&x, ctx) {
                    a.do_send(RestoreNotifier {
                        relations: relations.remove(&x).unwrap_or_default(),
                        dialogs: dialogs.remove(&x).unwrap_or_default(),
                    });
                }
            }
        }
        let winfo = snap.winfo.len();
        let publications = snap.publications.len();
        if self.cfg.mode == Mode::Pua {
            // PUA publications: refreshed with their stored entity-tag (or published anew with
            // their stored body) without waiting for X's next presence; staggered like pairs,
            // after a short settle: the transport's first UDP sends right at start can fail
            // with WouldBlock (tokio's try_send_to before the reactor saw the socket writable).
            let window_ms = (publications as u64).min(60_000);
            let n = publications.max(1) as u64;
            for (i, (x, mut rec, exp)) in snap.publications.into_iter().enumerate() {
                rec.lease_left = lease_left_at(exp, now_unix);
                let delay = std::time::Duration::from_millis(200 + window_ms * i as u64 / n);
                if let Ok(a) = self.pua_translator(&x, ctx) {
                    a.do_send(crate::translator::RestorePublication { rec, delay });
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
        // As a SIP presentity (S') or an XMPP presentity (X): everything of that translator.
        if let Some(a) = self.sip_presentities.get(&jid) {
            asks.push(a.send(DumpSubscriptions { watcher: None }).boxed_local());
        }
        if let Some(a) = self.xmpp_presentities.get(&jid) {
            asks.push(a.send(DumpSubscriptions { watcher: None }).boxed_local());
        }
        // As an XMPP watcher (X) or a SIP watcher (S'): that watcher's pairs.
        for s in self.watching.get(&jid).into_iter().flatten() {
            if let Some(a) = self.sip_presentities.get(s) {
                asks.push(
                    a.send(DumpSubscriptions {
                        watcher: Some(jid.clone()),
                    })
                    .boxed_local(),
                );
            }
        }
        for x in self.sip_watching.get(&jid).into_iter().flatten() {
            if let Some(a) = self.xmpp_presentities.get(x) {
                asks.push(
                    a.send(DumpSubscriptions {
                        watcher: Some(jid.clone()),
                    })
                    .boxed_local(),
                );
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
