//! [`Messenger`]: instant messaging (issue 15), one actor around the core's one
//! [`ImGateway`] (§10: XMPP `<message/>` ⇄ SIP MESSAGE, page mode).
//!
//! The registry starts it when `[im] enabled` and hands it the inbound `<message/>` stanzas
//! ([`MessageIn`]), the inbound MESSAGE requests ([`SipMessageIn`]) and every change of the
//! component link ([`ComponentStatus`]). It maps the core's response keys to the transport's
//! server transactions, sends the core's MESSAGEs (over TCP when the core says `reliable`),
//! feeds their outcomes back, and keeps one wake-up at the core's `poll_timeout`. Like the
//! other translators, every input is fed inside [`crate::fault::contain`]. Its address mapper
//! is a clone of the registry's; the spellings the registry learns later come as
//! [`LearnSpelling`].

use crate::clock::Wakeup;
use crate::links::{Links, Outstanding};
use crate::messages::*;
use actix::prelude::*;
use pua_xmpp::im::{self, Failure, ImGateway};
use pua_xmpp::sip::OutResponse;
use std::collections::HashMap;
use std::time::Instant;

/// Where the instant messages of one input came from, for `pua_xmpp_im_messages_total`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum From {
    /// A `<message/>` from the component stream.
    Stanza,
    /// A 2xx to one of our MESSAGEs.
    Delivered,
    Other,
}

pub struct Messenger {
    machine: ImGateway,
    links: Links,
    stanzas: Recipient<SendMessage>,
    outstanding: Outstanding,
    /// The core's response key → the transport's server transaction.
    txns: HashMap<u64, ServerTxnId>,
    next_key: u64,
    wakeup: Wakeup,
}

impl Messenger {
    pub fn new(machine: ImGateway, links: Links, stanzas: Recipient<SendMessage>) -> Messenger {
        Messenger {
            machine,
            links,
            stanzas,
            outstanding: Outstanding::default(),
            txns: HashMap::new(),
            next_key: 0,
            wakeup: Wakeup::default(),
        }
    }

    /// Feeds one input inside the fault containment, then sends what it produced. `answer`:
    /// the server transaction of an inbound MESSAGE, answered 500 if the core fails on it.
    fn input(
        &mut self,
        input: im::Input<'_>,
        from: From,
        answer: Option<(u64, ServerTxnId, OutResponse)>,
        ctx: &mut Context<Self>,
    ) {
        self.input_keyed(input, from, answer, "im", ctx);
    }

    /// [`Messenger::input`] with the name of the input in fault logs and for the
    /// fault-injection hook: a MESSAGE's Call-ID, a stanza's id.
    fn input_keyed(
        &mut self,
        input: im::Input<'_>,
        from: From,
        answer: Option<(u64, ServerTxnId, OutResponse)>,
        fault_key: &str,
        ctx: &mut Context<Self>,
    ) {
        let now = Instant::now();
        // The machine serves every message: the fault is named by the input, not the machine.
        let fed = crate::fault::contain(
            "im",
            &mut self.machine,
            |_| "im",
            |m| {
                crate::fault::tripwire(fault_key);
                m.handle_input(input, now)
            },
        );
        if fed.is_err() {
            tracing::error!(
                input = fault_key,
                "instant-messaging fault contained to one input"
            );
            // What the failed input left queued is dropped; the MESSAGE it was (if any) gets 500.
            while self.machine.poll_output().is_some() {}
            if let Some((key, txn, resp)) = answer {
                if self.txns.remove(&key).is_some() {
                    self.links.responses.do_send(SendResponse { txn, resp });
                }
            }
        }
        self.drain(from, ctx);
    }

    fn drain(&mut self, from: From, ctx: &mut Context<Self>) {
        if from == From::Delivered {
            count("xmpp_to_sip", "delivered");
        }
        while let Some(out) = self.machine.poll_output() {
            match out {
                im::Output::Request { req, reliable } => {
                    let transport = reliable.then_some(Transport::Tcp);
                    let reply_to = ctx.address().recipient();
                    self.outstanding
                        .send_over(&self.links, req, reply_to, transport);
                }
                im::Output::Response { key, resp } => {
                    let Some(txn) = self.txns.remove(&key) else {
                        tracing::debug!(key, "MESSAGE response for no transaction dropped");
                        continue;
                    };
                    let result = if resp.status < 300 {
                        "delivered"
                    } else {
                        "error"
                    };
                    count("sip_to_xmpp", result);
                    self.links.responses.do_send(SendResponse { txn, resp });
                }
                im::Output::Stanza(m) => {
                    if m.error.is_some() {
                        let result = if from == From::Stanza {
                            "refused"
                        } else {
                            "error"
                        };
                        count("xmpp_to_sip", result);
                    }
                    self.stanzas.do_send(SendMessage(m));
                }
                im::Output::Problem(kind) => {
                    metrics::counter!("pua_xmpp_translation_errors_total", "kind" => kind)
                        .increment(1);
                }
            }
        }
        if self.txns.is_empty() && self.txns.capacity() > 1024 {
            self.txns = HashMap::new();
        }
        let next = self.machine.poll_timeout();
        self.wakeup.arm(next, ctx, |a, ctx| {
            a.wakeup.fired();
            a.input(im::Input::Timeout, From::Other, None, ctx);
        });
    }
}

fn count(direction: &'static str, result: &'static str) {
    metrics::counter!("pua_xmpp_im_messages_total", "direction" => direction, "result" => result)
        .increment(1);
}

impl Actor for Messenger {
    type Context = Context<Self>;
}

impl Handler<MessageIn> for Messenger {
    type Result = ();
    fn handle(&mut self, MessageIn(m): MessageIn, ctx: &mut Context<Self>) {
        let key = m.id.clone().unwrap_or_else(|| "im".to_owned());
        self.input_keyed(im::Input::Stanza(&m), From::Stanza, None, &key, ctx);
    }
}

impl Handler<SipMessageIn> for Messenger {
    type Result = ();
    fn handle(&mut self, msg: SipMessageIn, ctx: &mut Context<Self>) {
        self.next_key = self.next_key.wrapping_add(1);
        let key = self.next_key;
        self.txns.insert(key, msg.txn);
        let answer = OutResponse::to_request(&msg.req, 500, None);
        let input = im::Input::Message {
            req: &msg.req,
            headers: &msg.headers,
            source: msg.source.peer.ip(),
            key,
        };
        let answer = Some((key, msg.txn, answer));
        self.input_keyed(input, From::Other, answer, &msg.req.call_id, ctx);
    }
}

impl Handler<LearnSpelling> for Messenger {
    type Result = ();
    fn handle(&mut self, LearnSpelling(uri): LearnSpelling, _: &mut Context<Self>) {
        if let Err(e) = self.machine.mapper_mut().sip_to_jid(&uri) {
            tracing::debug!(%uri, error = %e, "spelling not learned");
        }
    }
}

impl Handler<ComponentStatus> for Messenger {
    type Result = ();
    fn handle(&mut self, msg: ComponentStatus, ctx: &mut Context<Self>) {
        self.input(
            im::Input::XmppLink { up: msg.online },
            From::Other,
            None,
            ctx,
        );
    }
}

impl Handler<TransactionOutcome> for Messenger {
    type Result = ();
    fn handle(&mut self, msg: TransactionOutcome, ctx: &mut Context<Self>) {
        let Some((call_id, cseq)) = self.outstanding.finish(&msg) else {
            return;
        };
        match msg.result {
            TxnResult::Response(r) => {
                let from = if (200..300).contains(&r.status) {
                    From::Delivered
                } else {
                    From::Other
                };
                self.input_keyed(im::Input::Response(&r), from, None, &r.call_id, ctx)
            }
            TxnResult::Timeout => self.input(
                im::Input::RequestFailed {
                    call_id: &call_id,
                    cseq,
                    failure: Failure::Timeout,
                },
                From::Other,
                None,
                ctx,
            ),
            TxnResult::TransportError(e) => {
                tracing::info!(%call_id, cseq, error = %e, "MESSAGE not sent");
                self.input(
                    im::Input::RequestFailed {
                        call_id: &call_id,
                        cseq,
                        failure: Failure::Transport,
                    },
                    From::Other,
                    None,
                    ctx,
                )
            }
        }
    }
}
