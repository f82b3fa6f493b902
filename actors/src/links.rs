//! How a translator reaches the rest of the gateway ([`Links`]: the SIP transport, the XMPP
//! component, the registry's indexes, the store) and keeps track of the requests it sent
//! ([`Outstanding`]). Shared by the subscriber shards, the notifier shards and the PUA
//! translators; it names none of them, so none of them depends on another.

use crate::idhash::IdMap;
use crate::messages::*;
use crate::store::StoreHandle;
use actix::prelude::*;
use pua_xmpp::sip::{Method, OutRequest};
use std::time::Instant;

/// Where translators send what the core asks for.
#[derive(Clone)]
pub struct Links {
    pub requests: Recipient<SendRequest>,
    pub responses: Recipient<SendResponse>,
    pub stanzas: Recipient<SendPresence>,
    /// The same two, for batches (the subscriber shards' hot path).
    pub response_batches: Recipient<SendResponses>,
    pub stanza_batches: Recipient<SendPresences>,
    /// The registry's indexes (dialogs, watch counts).
    pub registry: Recipient<RegistryEvent>,
    /// The registry, for a NOTIFY this shard does not know (on to the next shard).
    pub renotify: Recipient<ShardNotify>,
    pub store: StoreHandle,
}

/// Requests of a translator awaiting their outcome: key → (Call-ID, CSeq, method, sent at).
#[derive(Default)]
pub(crate) struct Outstanding {
    txns: IdMap<u64, (String, u32, Method, Instant)>,
    next_key: u64,
}

impl Outstanding {
    pub(crate) fn send(
        &mut self,
        links: &Links,
        req: OutRequest,
        reply_to: Recipient<TransactionOutcome>,
    ) {
        self.send_over(links, req, reply_to, None);
    }

    /// [`Outstanding::send`] over `transport` instead of the request's default one.
    pub(crate) fn send_over(
        &mut self,
        links: &Links,
        req: OutRequest,
        reply_to: Recipient<TransactionOutcome>,
        transport: Option<Transport>,
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
        tracing::debug!(method = req.method.as_str(), uri = %req.uri, call_id = %req.call_id, cseq = req.cseq, "sending request");
        links.requests.do_send(SendRequest {
            req,
            key,
            reply_to,
            transport,
        });
    }

    /// The (Call-ID, CSeq) an outcome belongs to; records the request's latency.
    pub(crate) fn finish(&mut self, msg: &TransactionOutcome) -> Option<(String, u32)> {
        let (call_id, cseq, method, sent) = self.txns.remove(&msg.key)?;
        if self.txns.is_empty() {
            // A translator is idle nearly all its life: keep no table room between requests.
            self.txns = IdMap::default();
        }
        if matches!(msg.result, TxnResult::Response(_)) {
            crate::gauges::observe_latency(&method, sent);
        }
        Some((call_id, cseq))
    }
}

pub(crate) fn send_request(
    links: &Links,
    req: OutRequest,
    key: u64,
    reply_to: Recipient<TransactionOutcome>,
) {
    tracing::debug!(method = req.method.as_str(), uri = %req.uri, call_id = %req.call_id, cseq = req.cseq, "sending request");
    links.requests.do_send(SendRequest {
        req,
        key,
        reply_to,
        transport: None,
    });
}
