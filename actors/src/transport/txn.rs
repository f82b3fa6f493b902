//! Transaction tables and timer queues of the SIP transport (RFC 3261 §17.1.2, §17.2.2),
//! kept compact: the gateway may have many transactions in flight.

use crate::idhash::IdMap;
use actix::Recipient;
use pua_xmpp::sip::encode::via_branch;
use pua_xmpp::sip::{reason_phrase, Method, NameAddr, OutResponse, SipRequest};
use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::messages::{ServerTxnId, Source, TransactionOutcome, TxnResult};

/// RFC 3261 magic cookie of branches.
const COOKIE: &str = "z9hG4bK";

/// Makes branches that carry the client transaction id, so a response finds its transaction
/// without a branch → id map: `z9hG4bK` + 16 hex digits keyed per process + the id under the
/// process's keyed permutation (unique, and no outsider can tell the next one).
pub struct BranchGen {
    prefix: String,
}

impl BranchGen {
    pub fn new() -> Self {
        let seed = pua_xmpp::ids::prf(0x00b7_a9c4, 0);
        BranchGen {
            prefix: format!("{COOKIE}{seed:016x}"),
        }
    }

    pub fn branch(&self, id: u64) -> String {
        let mut b = String::with_capacity(self.prefix.len() + 16);
        b.push_str(&self.prefix);
        pua_xmpp::text::push_hex(&mut b, pua_xmpp::ids::permute(id), 16);
        b
    }

    /// The transaction id a branch of ours carries; `None` for anyone else's branch.
    pub fn id_of(&self, branch: &str) -> Option<u64> {
        let rest = branch.strip_prefix(self.prefix.as_str())?;
        if rest.len() != 16 {
            return None;
        }
        u64::from_str_radix(rest, 16)
            .ok()
            .map(pua_xmpp::ids::unpermute)
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

/// A server transaction key (RFC 3261 §17.2.3) hashed to 128 bits with per-process random
/// keys: 16 bytes per transaction instead of the key text, and no allocation to look it up.
/// Two different keys collide with probability 2^-128 per pair, and the random keys make
/// collisions impossible to aim at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxnKey(u64, u64);

/// Computes [`TxnKey`]s; cloned into the UDP reader thread so keys are hashed off the
/// transport actor's thread.
#[derive(Clone)]
pub struct KeyHasher {
    a: RandomState,
    b: RandomState,
}

impl KeyHasher {
    pub fn new() -> Self {
        KeyHasher {
            a: RandomState::new(),
            b: RandomState::new(),
        }
    }

    /// The key of `req`: top Via branch, sent-by and method; for pre-RFC 3261 branches (no
    /// magic cookie) Call-ID, CSeq and From tag are added.
    pub fn key(&self, req: &SipRequest) -> TxnKey {
        let top = req.via.first().map(String::as_str).unwrap_or("");
        let branch = via_branch(top).unwrap_or("");
        let method = req.method.as_str();
        if branch.starts_with(COOKIE) {
            let parts = (branch, sent_by(top), method);
            TxnKey(self.a.hash_one(parts), self.b.hash_one(parts))
        } else {
            let parts = (
                branch,
                sent_by(top),
                method,
                req.call_id.as_str(),
                req.cseq,
                req.from.tag.as_deref().unwrap_or(""),
            );
            TxnKey(self.a.hash_one(parts), self.b.hash_one(parts))
        }
    }
}

impl Default for KeyHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// Fingerprint of the header fields a response copies from its request (Via, From, To,
/// Call-ID, CSeq), as [`OutResponse::to_request`] copies them, with the final To tag.
pub fn copied_fields_fp(
    via: &[String],
    from: &NameAddr,
    to: &NameAddr,
    to_tag: Option<&str>,
    call_id: &str,
    cseq: u32,
    cseq_method: &Method,
) -> u64 {
    let mut h = pua_xmpp::ids::FxHasher::default();
    via.hash(&mut h);
    from.display.hash(&mut h);
    from.uri.hash(&mut h);
    from.tag.hash(&mut h);
    to.display.hash(&mut h);
    to.uri.hash(&mut h);
    to_tag.hash(&mut h);
    call_id.hash(&mut h);
    cseq.hash(&mut h);
    cseq_method.as_str().hash(&mut h);
    h.finish()
}

/// The fingerprint of the copied fields of `to_request(req, status >= 200, None)`.
pub fn request_fp(req: &SipRequest) -> u64 {
    let derived;
    let to_tag = match req.to.tag.as_deref() {
        Some(t) => Some(t),
        None => {
            // The tag `to_request` derives (stable per Call-ID and From tag).
            derived = OutResponse::to_request(req, 200, None).to.tag;
            derived.as_deref()
        }
    };
    copied_fields_fp(
        &req.via,
        &req.from,
        &req.to,
        to_tag,
        &req.call_id,
        req.cseq,
        &req.cseq_method,
    )
}

/// The fingerprint of `resp`'s copied fields, comparable with [`request_fp`].
pub fn response_fp(resp: &OutResponse) -> u64 {
    copied_fields_fp(
        &resp.via,
        &resp.from,
        &resp.to,
        resp.to.tag.as_deref(),
        &resp.call_id,
        resp.cseq,
        &resp.cseq_method,
    )
}

/// True when `resp` is exactly `OutResponse::to_request(req, resp.status, None)` for the
/// request whose [`request_fp`] is `req_fp`: then it can be rebuilt from a retransmission of
/// that request, and need not be kept.
pub fn is_plain(resp: &OutResponse, req_fp: u64) -> bool {
    resp.reason == reason_phrase(resp.status)
        && resp.contact.is_none()
        && resp.record_route.is_empty()
        && resp.headers.is_empty()
        && resp.content_type.is_none()
        && resp.body.is_empty()
        && response_fp(resp) == req_fp
}

/// A non-INVITE server transaction in the Trying state (the gateway has not answered yet).
pub struct TryingTxn {
    key: TxnKey,
    pub source: Source,
    /// [`request_fp`] of the request.
    pub fp: u64,
    /// Dropped at this instant if the gateway never answers (64*T1).
    pub deadline: Instant,
}

/// A completed UDP server transaction, kept until Timer J to answer retransmissions
/// (RFC 3261 §17.2.2). The response itself is kept only when it cannot be rebuilt: a plain
/// `to_request` response (the 200 to a NOTIFY, most errors) is re-encoded from the
/// retransmitted request, which carries every copied header field, byte for byte the same.
pub struct CompletedTxn {
    /// [`request_fp`] of the original request: a retransmission with other copied fields
    /// (a broken peer) is logged.
    pub fp: u64,
    pub status: u16,
    /// The encoded response when it is not plain. A thin pointer (8 bytes, not the 16 of a
    /// `Box<[u8]>`): there is one record per request of the last 64*T1 seconds.
    #[allow(clippy::box_collection)]
    pub bytes: Option<Box<Vec<u8>>>,
}

/// What a key finds.
pub enum Found<'a> {
    Trying,
    Completed(&'a CompletedTxn),
}

enum Entry {
    Trying(ServerTxnId),
    Completed(CompletedTxn),
}

/// The server transactions: Trying ones by id (the gateway answers by id) and by key;
/// completed ones by key only (nothing refers to them by id any more).
#[derive(Default)]
pub struct ServerTxns {
    by_key: IdMap<TxnKey, Entry>,
    trying: IdMap<ServerTxnId, TryingTxn>,
    next: ServerTxnId,
}

impl ServerTxns {
    pub fn find(&self, key: &TxnKey) -> Option<Found<'_>> {
        match self.by_key.get(key)? {
            Entry::Trying(_) => Some(Found::Trying),
            Entry::Completed(c) => Some(Found::Completed(c)),
        }
    }

    pub fn trying(&self, id: ServerTxnId) -> Option<&TryingTxn> {
        self.trying.get(&id)
    }

    pub fn insert(
        &mut self,
        key: TxnKey,
        source: Source,
        fp: u64,
        deadline: Instant,
    ) -> ServerTxnId {
        self.next += 1;
        let id = self.next;
        self.by_key.insert(key, Entry::Trying(id));
        self.trying.insert(
            id,
            TryingTxn {
                key,
                source,
                fp,
                deadline,
            },
        );
        id
    }

    /// Trying → Completed; returns the key for Timer J.
    pub fn complete(&mut self, id: ServerTxnId, done: CompletedTxn) -> Option<TxnKey> {
        let t = self.trying.remove(&id)?;
        self.by_key.insert(t.key, Entry::Completed(done));
        Some(t.key)
    }

    /// Removes a Trying transaction (answered on a reliable transport, or never answered).
    pub fn remove_trying(&mut self, id: ServerTxnId) {
        if let Some(t) = self.trying.remove(&id) {
            if matches!(self.by_key.get(&t.key), Some(Entry::Trying(i)) if *i == id) {
                self.by_key.remove(&t.key);
            }
        }
    }

    /// Timer J fired for `key`.
    pub fn expire_completed(&mut self, key: &TxnKey) {
        if matches!(self.by_key.get(key), Some(Entry::Completed(_))) {
            self.by_key.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Completed transactions that keep their encoded response (not rebuildable).
    pub fn kept_responses(&self) -> usize {
        self.by_key
            .values()
            .filter(|e| matches!(e, Entry::Completed(c) if c.bytes.is_some()))
            .count()
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
pub struct Timers {
    /// Origin of the `timer_j` deadlines.
    pub base: Instant,
    /// Deadlines of Trying server transactions, all `now + 64*T1`, hence in order.
    pub server: VecDeque<(Instant, ServerTxnId)>,
    /// Timer J of completed UDP server transactions, all `now + 64*T1`, hence in order.
    /// Deadlines are milliseconds since `base` (24 bytes an entry: there may be millions).
    pub timer_j: VecDeque<(u32, TxnKey)>,
    /// Timer F, all `now + 64*T1`, hence in order.
    pub client_f: VecDeque<(Instant, u64)>,
    /// Timer E retransmissions.
    pub retx: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            base: Instant::now(),
            server: VecDeque::new(),
            timer_j: VecDeque::new(),
            client_f: VecDeque::new(),
            retx: BinaryHeap::new(),
        }
    }
}

impl Timers {
    /// `at` as whole milliseconds since `base`, wrapping every 49 days: compare with
    /// [`Timers::due`], which is right while deadlines are within 24 days of now (they are
    /// 64*T1 away). Deadlines add 1 so that they never fire early.
    pub fn ms(&self, at: Instant) -> u32 {
        let ms = at.saturating_duration_since(self.base).as_millis();
        (ms & u128::from(u32::MAX)) as u32
    }

    /// Whether the deadline `at_ms` has come at `now_ms` (both from [`Timers::ms`]).
    pub fn due(at_ms: u32, now_ms: u32) -> bool {
        now_ms.wrapping_sub(at_ms) < 1 << 31
    }
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
    fn completed_transaction_records_are_compact() {
        // Per completed UDP transaction until Timer J: a 16-byte key, a 32-byte entry and a
        // 24-byte Timer J slot (plus the hash table's spare capacity).
        assert_eq!(std::mem::size_of::<TxnKey>(), 16);
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        assert_eq!(std::mem::size_of::<(u32, TxnKey)>(), 24);
    }

    #[test]
    fn timer_j_deadlines_compare_across_the_wrap() {
        assert!(Timers::due(5, 5));
        assert!(Timers::due(5, 6));
        assert!(!Timers::due(6, 5));
        assert!(Timers::due(u32::MAX - 1, 3), "after the wrap");
        assert!(!Timers::due(3, u32::MAX - 1), "before the wrap");
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
