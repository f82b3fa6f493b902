//! Transaction tables and timer queues of the SIP transport (RFC 3261 §17.1.2, §17.2.2),
//! kept compact: the gateway may have many transactions in flight.

use actix::Recipient;
use pua_xmpp::sip::encode::via_branch;
use pua_xmpp::sip::{Method, SipRequest};
use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::messages::{ServerTxnId, Source, TransactionOutcome, TxnResult};

/// RFC 3261 magic cookie of branches.
const COOKIE: &str = "z9hG4bK";

/// Makes branches that carry the client transaction id, so a response finds its transaction
/// without a branch → id map: `z9hG4bK` + 16 hex digits random per process + the id in hex.
pub struct BranchGen {
    prefix: String,
}

impl BranchGen {
    pub fn new() -> Self {
        let seed = RandomState::new().hash_one(std::process::id());
        BranchGen {
            prefix: format!("{COOKIE}{seed:016x}"),
        }
    }

    pub fn branch(&self, id: u64) -> String {
        format!("{}{id:x}", self.prefix)
    }

    /// The transaction id a branch of ours carries; `None` for anyone else's branch.
    pub fn id_of(&self, branch: &str) -> Option<u64> {
        let rest = branch.strip_prefix(self.prefix.as_str())?;
        if rest.is_empty() || rest.len() > 16 {
            return None;
        }
        u64::from_str_radix(rest, 16).ok()
    }
}

impl Default for BranchGen {
    fn default() -> Self {
        Self::new()
    }
}

/// The sent-by of a Via value: `SIP/2.0/UDP host:port;...` → `host:port`.
fn sent_by(via: &str) -> &str {
    let after_proto = via
        .trim()
        .split_once(char::is_whitespace)
        .map_or("", |x| x.1);
    after_proto.split(';').next().unwrap_or("").trim()
}

/// Server transaction key (RFC 3261 §17.2.3): top Via branch, sent-by and method. For
/// pre-RFC 3261 branches (no magic cookie) Call-ID, CSeq and From tag are added.
pub fn server_key(req: &SipRequest) -> Box<str> {
    let top = req.via.first().map(String::as_str).unwrap_or("");
    let branch = via_branch(top).unwrap_or("");
    let mut key = format!("{branch}\u{0}{}\u{0}{}", sent_by(top), req.method.as_str());
    if !branch.starts_with(COOKIE) {
        key.push('\u{0}');
        key.push_str(&req.call_id);
        key.push('\u{0}');
        key.push_str(&req.cseq.to_string());
        key.push('\u{0}');
        key.push_str(req.from.tag.as_deref().unwrap_or(""));
    }
    key.into_boxed_str()
}

/// One non-INVITE server transaction: Trying until the gateway answers, then Completed (UDP
/// only) holding the encoded final response for retransmissions until Timer J.
pub struct ServerTxn {
    key: Box<str>,
    pub source: Source,
    pub response: Option<Box<[u8]>>,
    /// When it is dropped: TU deadline while Trying, Timer J once Completed.
    pub deadline: Instant,
}

#[derive(Default)]
pub struct ServerTxns {
    by_key: HashMap<Box<str>, ServerTxnId>,
    by_id: HashMap<ServerTxnId, ServerTxn>,
    next: ServerTxnId,
}

impl ServerTxns {
    pub fn find(&self, key: &str) -> Option<ServerTxnId> {
        self.by_key.get(key).copied()
    }

    pub fn get(&self, id: ServerTxnId) -> Option<&ServerTxn> {
        self.by_id.get(&id)
    }

    pub fn insert(&mut self, key: Box<str>, source: Source, deadline: Instant) -> ServerTxnId {
        self.next += 1;
        let id = self.next;
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(
            id,
            ServerTxn {
                key,
                source,
                response: None,
                deadline,
            },
        );
        id
    }

    pub fn complete(&mut self, id: ServerTxnId, response: Box<[u8]>, deadline: Instant) {
        if let Some(t) = self.by_id.get_mut(&id) {
            t.response = Some(response);
            t.deadline = deadline;
        }
    }

    pub fn remove(&mut self, id: ServerTxnId) {
        if let Some(t) = self.by_id.remove(&id) {
            self.by_key.remove(&t.key);
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// One non-INVITE client transaction, Trying or Proceeding (a final response removes it, so
/// late retransmitted finals find nothing and are dropped: Timer K's effect without state).
pub struct ClientTxn {
    pub key: u64,
    pub reply_to: Recipient<TransactionOutcome>,
    pub method: Method,
    pub target: SocketAddr,
    pub conn_id: Option<u64>,
    /// The encoded request, kept on UDP for Timer E.
    pub retransmit: Option<Box<[u8]>>,
    pub interval: Duration,
    pub next_retx: Option<Instant>,
}

impl ClientTxn {
    pub fn finish(self, result: TxnResult) {
        self.reply_to.do_send(TransactionOutcome {
            key: self.key,
            result,
        });
    }
}

/// Timer queues. Entries are not removed when a transaction ends; a popped entry is checked
/// against the transaction's current state instead.
#[derive(Default)]
pub struct Timers {
    /// Server deadlines, all `now + 64*T1`, hence in order.
    pub server: VecDeque<(Instant, ServerTxnId)>,
    /// Timer F, all `now + 64*T1`, hence in order.
    pub client_f: VecDeque<(Instant, u64)>,
    /// Timer E retransmissions.
    pub retx: BinaryHeap<Reverse<(Instant, u64)>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_round_trips_and_rejects_foreign_branches() {
        let g = BranchGen::new();
        let b = g.branch(0x2a);
        assert!(b.starts_with("z9hG4bK"));
        assert_eq!(g.id_of(&b), Some(42));
        assert_eq!(g.id_of("z9hG4bKabc"), None);
        assert_eq!(g.id_of(&format!("{}zz", &b[..23])), None);
    }

    #[test]
    fn sent_by_is_host_and_port() {
        assert_eq!(
            sent_by("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport"),
            "10.0.0.1:5060"
        );
        assert_eq!(sent_by("SIP/2.0/TCP  p.example.com"), "p.example.com");
    }
}
