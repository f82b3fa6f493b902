//! [`PuaTranslator`]: one actor per XMPP presentity in PUA mode (PUBLISH + presence.winfo), a
//! thin shell around the core state machine. The XMPP-watches-SIP pairs live in
//! [`crate::shard`], the notifier-mode XMPP presentities in [`crate::notifier_shard`]; what
//! they all share is in [`crate::links`], [`crate::clock`] and [`crate::gauges`].
//! The actors own the clock (`Instant::now()`, wall time for RPID) and one wake-up timer each;
//! every protocol decision is in the core.

use crate::clock::{unix_now, Wakeup};
use crate::links::{Links, Outstanding};
use crate::messages::*;
use crate::store::StoreOp;
use actix::prelude::*;
use pua_xmpp::address::AddressMapper;
use pua_xmpp::pua::{self, PuaConfig, PuaPresentity};
use pua_xmpp::sip::Method;
use pua_xmpp::stanza::BareJid;
use std::time::Instant;

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
    /// Responses and stanzas waiting for a publication record to be committed (issue 14).
    gate: crate::durable::Gate,
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
            gate: crate::durable::Gate::default(),
        }
    }

    fn apply_pending_restore(&mut self, ctx: &mut Context<Self>) {
        if let Some(rec) = self.pending_restore.take() {
            self.machine.restore_publication(rec, Instant::now());
            self.drain(None, ctx);
        }
    }

    fn input(&mut self, input: pua::Input<'_>, txn: Option<ServerTxnId>, ctx: &mut Context<Self>) {
        let request = match &input {
            pua::Input::Notify(req) => Some(*req),
            _ => None,
        };
        let now = Instant::now();
        let fed = crate::fault::contain("pua", &mut self.machine, pua_key, |m| {
            m.handle_input(input, now)
        });
        if fed.is_err() {
            // Contained to this presentity: what the failed input left queued is dropped, the
            // request answered 500; its publication and winfo dialog keep their last state.
            while self.machine.poll_output().is_some() {}
            if let (Some(req), Some(txn)) = (request, txn) {
                let resp = pua_xmpp::sip::OutResponse::to_request(req, 500, None);
                self.links.responses.do_send(SendResponse { txn, resp });
            }
            return self.drain(None, ctx);
        }
        self.drain(txn, ctx);
    }

    fn drain(&mut self, txn: Option<ServerTxnId>, ctx: &mut Context<Self>) {
        use crate::durable::Held;
        let outs: Vec<pua::Output> = std::iter::from_fn(|| self.machine.poll_output()).collect();
        // Durable before acknowledged: with a new publication record (a new entity-tag), the
        // responses and stanzas wait for its commit, and later ones wait behind them.
        let tells =
            |o: &pua::Output| matches!(o, pua::Output::Response(_) | pua::Output::Stanza(_));
        let persists = |o: &pua::Output| matches!(o, pua::Output::Persist(_));
        let hold = self
            .gate
            .hold_for(0, outs.iter().any(persists) && outs.iter().any(tells));
        for out in outs {
            match out {
                pua::Output::Request(req) => match hold {
                    Some(t) => self.gate.hold(t, Held::Request(0, req)),
                    None => {
                        let reply_to = ctx.address().recipient();
                        self.outstanding.send(&self.links, req, reply_to);
                    }
                },
                pua::Output::Response(resp) => {
                    if let Some(txn) = txn {
                        let r = SendResponse { txn, resp };
                        match hold {
                            Some(t) => self.gate.hold(t, Held::Response(r)),
                            None => self.links.responses.do_send(r),
                        }
                    }
                }
                pua::Output::Stanza(p) => match hold {
                    Some(t) => self.gate.hold(t, Held::Stanza(p)),
                    None => self.links.stanzas.do_send(SendPresence(p)),
                },
                pua::Output::Persist(rec) => self.links.store.send(StoreOp::publication(
                    self.machine.jid().clone(),
                    rec,
                    unix_now(),
                )),
            }
        }
        self.gate
            .seal(&self.links.store, &ctx.address().recipient());
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
                    owner: ctx.address().recipient(),
                });
            }
            self.winfo_call_id = current;
        }
        let next = self.machine.poll_timeout();
        self.wakeup.arm(next, ctx, |a, ctx| {
            a.wakeup.fired();
            a.input(pua::Input::Timeout, None, ctx);
        });
    }
}

/// How a PUA presentity is named in fault logs and by the fault-injection hook: X.
fn pua_key(m: &PuaPresentity) -> &str {
    m.jid().as_str()
}

impl Actor for PuaTranslator {
    type Context = Context<Self>;
}

impl Handler<Durable> for PuaTranslator {
    type Result = ();
    fn handle(&mut self, msg: Durable, ctx: &mut Context<Self>) {
        let released: Vec<crate::durable::Held> = self.gate.release(msg.0).collect();
        let mut requests = Vec::new();
        crate::durable::send_released(released, &self.links, |_, req| requests.push(req));
        for req in requests {
            let reply_to = ctx.address().recipient();
            self.outstanding.send(&self.links, req, reply_to);
        }
    }
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
