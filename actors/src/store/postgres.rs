//! The PostgreSQL backend (`store.url`, issue 17): the same records and the same writer thread
//! as SQLite, for two gateway instances sharing one database (active/standby, see `lease`).
//!
//! The writer thread owns a pool of up to `store.pool_size` connections (deadpool-postgres),
//! driven by a current-thread tokio runtime that lives on that thread. A batch is coalesced
//! by key (one op per record key) and written with one multi-row statement per record kind
//! (`INSERT … SELECT * FROM UNNEST($1::text[], …) ON CONFLICT … DO UPDATE`, `DELETE … = ANY`),
//! prepared once per connection and sent pipelined: one round trip for the batch whatever
//! its size. A failed batch (the server restarted, the network broke, the statement timed out)
//! drops its connection and every idle one; the writer's retry with back-off connects afresh,
//! so while the database is away `/health` says the store is not writable, the batch is kept
//! coalesced by key, and new subscriptions are refused, exactly as with a SQLite file that
//! cannot be written. While idle the writer probes (`SELECT 1` on a pooled connection, see
//! [`Store::probe`]), so an outage shows within about 2 s without traffic too.
//!
//! # What the pool is for
//!
//! - **Loading** (startup, takeover): each connection reads its `n`-th of every table's
//!   blocks (`ctid` ranges: TID range scans, so the parts share one pass over the table),
//!   sorted by key on the server, all in one snapshot (exported by the first connection,
//!   imported by the others); the parts are decoded on threads of their own and merged back
//!   into key order.
//! - **Large batches** (at least [`SPLIT_MIN_OPS`] ops per part) are split by a hash of the
//!   record key over up to `pool_size` parts, each its own transaction on its own connection,
//!   committed in parallel. All ops of one key are in the same part and batches stay
//!   sequential (the next starts once this one is acknowledged), so the order of the ops of a
//!   key is kept. The batch is acknowledged only once every part committed.
//!
//! A part may commit while another fails. The writer then retries the whole batch (with what
//! arrived meanwhile coalesced in), and that is safe because every op is idempotent: each is
//! a full-record upsert (every non-key column set from the op) or a delete by key, and winfo
//! is an insert-if-absent or a delete. Writing a part twice leaves the same rows, and a newer
//! op of a key replaces the older one in the retried batch. Until the retry succeeds the
//! database may hold some parts of a batch that was never acknowledged; that is the state
//! after a crash between a commit and its acknowledgement, which restore already handles:
//! nothing acknowledged is missing. Within a part the keys are unique, so the order of its
//! statements does not matter (a put and a delete of one key in one batch coalesce to the
//! last one).
//!
//! With a [`Fence`], every part of a batch first checks, in its own transaction, that the lease
//! row still carries this instance's fencing number (`SELECT … FOR SHARE`): a taker-over bumps
//! the number with an `UPDATE` of that row, which waits for every part holding the share lock
//! to end, and a part that starts after the bump finds no row and rolls back; the batch is
//! then refused ([`StoreError::Fenced`]). So a paused old leader can never write over the new
//! one: a part that committed did so before the bump, hence before the new leader's load.

use super::{
    encode_routes, relation_code, rows, watcher_code, Snapshot, Store, StoreError, StoreOp,
};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

/// How long one batch (or one load) may take before the connection is presumed dead: a
/// network split leaves a socket that neither answers nor fails.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection attempt may take (the writer retries with back-off).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the server lets a session of ours sit idle inside a transaction before it ends
/// it, releasing its locks: under the default lease (3 s), so a taker-over never waits for
/// a vanished leader's batch longer than for the lease itself.
pub const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(2);
/// How long reading the whole store may take (a takeover's restore of every pair).
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the idle probe (`SELECT 1`) may take: with the writer's 1 s idle interval, an
/// outage shows in `/health` within about 2 s even without traffic.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections when `store.pool_size` is not given.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// A batch is split over the pool only when each part gets at least this many ops: the
/// writer's batches (at most `max_ops`, 1,000) stay whole, and the backlog of an outage is
/// split. Measured on a 2-core host shared with the database (BENCHMARKS.md, session 9),
/// splitting 1,000-op batches in 3 parts cost ~13 % of the set-up rate: parallel commits pay
/// only where the database has cores to spare.
pub const SPLIT_MIN_OPS: usize = 1000;
/// Serializes concurrent migrations of two instances starting together.
const MIGRATION_LOCK: i64 = 0x7075_612d_786d_7070; // "pua-xmpp"

/// PostgreSQL schema migrations, applied in order at connect and recorded in
/// `pua_schema_version`. Natural primary keys: the server's buffer pool absorbs what made
/// SQLite key its burst-filled tables by row id. Integers are BIGINT (the records' `u32`),
/// enums SMALLINT with SQLite's codes, route sets JSON text.
pub const PG_MIGRATIONS: &[(i32, &str)] = &[(1, PG_MIGRATION_1)];

const PG_MIGRATION_1: &str = "
CREATE TABLE subscription (
    watcher TEXT NOT NULL,
    presentity TEXT NOT NULL,
    watcher_uri TEXT NOT NULL,
    presentity_uri TEXT NOT NULL,
    relation SMALLINT NOT NULL,
    lease_left BIGINT,
    expires_at BIGINT,
    call_id TEXT,
    local_tag TEXT,
    remote_tag TEXT,
    local_cseq BIGINT,
    remote_cseq BIGINT,
    remote_target TEXT,
    route_set TEXT,
    requested BIGINT,
    PRIMARY KEY (watcher, presentity)
);
CREATE TABLE watcher_relation (
    presentity TEXT NOT NULL,
    watcher TEXT NOT NULL,
    state SMALLINT NOT NULL,
    PRIMARY KEY (presentity, watcher)
);
CREATE TABLE notifier_dialog (
    call_id TEXT NOT NULL PRIMARY KEY,
    presentity TEXT NOT NULL,
    local_tag TEXT NOT NULL,
    remote_tag TEXT NOT NULL,
    remote_uri TEXT NOT NULL,
    remote_display TEXT,
    watcher TEXT NOT NULL,
    remote_target TEXT NOT NULL,
    route_set TEXT,
    local_cseq BIGINT NOT NULL,
    remote_cseq BIGINT NOT NULL,
    event_id TEXT,
    active BOOLEAN NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE publication (
    presentity TEXT NOT NULL PRIMARY KEY,
    uri TEXT NOT NULL,
    etag TEXT,
    call_id TEXT NOT NULL,
    cseq BIGINT NOT NULL,
    body TEXT,
    available BOOLEAN NOT NULL,
    lease_left BIGINT,
    expires_at BIGINT
);
CREATE TABLE winfo (
    presentity TEXT NOT NULL PRIMARY KEY
);
CREATE TABLE gateway_lease (
    name TEXT NOT NULL PRIMARY KEY,
    holder TEXT NOT NULL,
    fence BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
";

// One statement per record kind and batch: the rows come as one array per column and
// `UNNEST` turns them back into rows. Each key appears once per batch (coalesced), so an
// upsert never meets its own row twice.
const PUT_SUBSCRIPTIONS: &str = "INSERT INTO subscription (watcher, presentity, watcher_uri,
    presentity_uri, relation, lease_left, expires_at, call_id, local_tag, remote_tag,
    local_cseq, remote_cseq, remote_target, route_set, requested)
  SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::smallint[],
    $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::text[], $11::bigint[],
    $12::bigint[], $13::text[], $14::text[], $15::bigint[])
  ON CONFLICT (watcher, presentity) DO UPDATE SET watcher_uri = EXCLUDED.watcher_uri,
    presentity_uri = EXCLUDED.presentity_uri, relation = EXCLUDED.relation,
    lease_left = EXCLUDED.lease_left, expires_at = EXCLUDED.expires_at,
    call_id = EXCLUDED.call_id, local_tag = EXCLUDED.local_tag,
    remote_tag = EXCLUDED.remote_tag, local_cseq = EXCLUDED.local_cseq,
    remote_cseq = EXCLUDED.remote_cseq, remote_target = EXCLUDED.remote_target,
    route_set = EXCLUDED.route_set, requested = EXCLUDED.requested";
const DELETE_SUBSCRIPTIONS: &str = "DELETE FROM subscription s
  USING UNNEST($1::text[], $2::text[]) AS d(watcher, presentity)
  WHERE s.watcher = d.watcher AND s.presentity = d.presentity";
const PUT_RELATIONS: &str = "INSERT INTO watcher_relation (presentity, watcher, state)
  SELECT * FROM UNNEST($1::text[], $2::text[], $3::smallint[])
  ON CONFLICT (presentity, watcher) DO UPDATE SET state = EXCLUDED.state";
const PUT_DIALOGS: &str = "INSERT INTO notifier_dialog (call_id, presentity, local_tag,
    remote_tag, remote_uri, remote_display, watcher, remote_target, route_set, local_cseq,
    remote_cseq, event_id, active, expires_at)
  SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
    $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bigint[], $12::text[],
    $13::boolean[], $14::bigint[])
  ON CONFLICT (call_id) DO UPDATE SET presentity = EXCLUDED.presentity,
    local_tag = EXCLUDED.local_tag, remote_tag = EXCLUDED.remote_tag,
    remote_uri = EXCLUDED.remote_uri, remote_display = EXCLUDED.remote_display,
    watcher = EXCLUDED.watcher, remote_target = EXCLUDED.remote_target,
    route_set = EXCLUDED.route_set, local_cseq = EXCLUDED.local_cseq,
    remote_cseq = EXCLUDED.remote_cseq, event_id = EXCLUDED.event_id,
    active = EXCLUDED.active, expires_at = EXCLUDED.expires_at";
const DELETE_DIALOGS: &str = "DELETE FROM notifier_dialog WHERE call_id = ANY($1::text[])";
const PUT_PUBLICATIONS: &str = "INSERT INTO publication (presentity, uri, etag, call_id, cseq,
    body, available, lease_left, expires_at)
  SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
    $6::text[], $7::boolean[], $8::bigint[], $9::bigint[])
  ON CONFLICT (presentity) DO UPDATE SET
    uri = EXCLUDED.uri, etag = EXCLUDED.etag, call_id = EXCLUDED.call_id, cseq = EXCLUDED.cseq,
    body = EXCLUDED.body, available = EXCLUDED.available, lease_left = EXCLUDED.lease_left,
    expires_at = EXCLUDED.expires_at";
const PUT_WINFOS: &str =
    "INSERT INTO winfo (presentity) SELECT * FROM UNNEST($1::text[]) ON CONFLICT DO NOTHING";
const DELETE_WINFOS: &str = "DELETE FROM winfo WHERE presentity = ANY($1::text[])";
/// The fencing guard of a batch: the row lock it takes is held until the batch ends.
const FENCE_CHECK: &str =
    "SELECT fence FROM gateway_lease WHERE name = $1 AND fence = $2 FOR SHARE";

/// Takes the lease `$1` for holder `$2` with a time to live of `$3` milliseconds if it is
/// free, expired, or already ours, and returns the new fencing number. Judged by the
/// database's clock, so the instances' clocks need not agree. A takeover (or a re-acquire
/// after a restart) always bumps the number.
pub const LEASE_ACQUIRE: &str = "INSERT INTO gateway_lease AS l (name, holder, fence, expires_at)
  VALUES ($1, $2, 1, clock_timestamp() + $3::bigint * interval '1 millisecond')
  ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, fence = l.fence + 1,
    expires_at = EXCLUDED.expires_at
  WHERE l.expires_at < clock_timestamp() OR l.holder = EXCLUDED.holder
  RETURNING fence";
/// Extends the lease `$1` of holder `$2` with fencing number `$3` by `$4` milliseconds from
/// now; no row when the lease was taken over meanwhile.
pub const LEASE_RENEW: &str = "UPDATE gateway_lease
  SET expires_at = clock_timestamp() + $4::bigint * interval '1 millisecond'
  WHERE name = $1 AND holder = $2 AND fence = $3 RETURNING fence";
/// Gives the lease `$1` (fence `$2`) up at once, for a graceful stop.
pub const LEASE_RELEASE: &str = "UPDATE gateway_lease SET expires_at = '-infinity'
  WHERE name = $1 AND fence = $2";

/// The fencing number every batch carries; 0 means no lease is held (every batch is refused).
/// Cloned between the lease's driver (which sets it) and the store (which checks it).
#[derive(Clone, Debug)]
pub struct Fence {
    name: String,
    value: Arc<AtomicI64>,
}

impl Fence {
    /// A fence for the lease row `name`, holding nothing yet.
    pub fn new(name: &str) -> Fence {
        Fence {
            name: name.to_owned(),
            value: Arc::new(AtomicI64::new(0)),
        }
    }

    /// From now on batches carry `fence` (0: refuse every batch).
    pub fn set(&self, fence: i64) {
        self.value.store(fence, Ordering::Release);
    }

    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Acquire)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("postgresql {what}: {e}"))
}

/// `url` with the password replaced by `<redacted>` (URL and `key=value` forms alike).
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if let Some(at) = authority.rfind('@') {
            let (userinfo, host) = authority.split_at(at);
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:<redacted>{host}{tail}");
            }
        }
        // A password may also come as a query parameter.
        if let Some((head, query)) = url.split_once('?') {
            let q: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some(("password", _)) => "password=<redacted>".to_owned(),
                    _ => kv.to_owned(),
                })
                .collect();
            return format!("{head}?{}", q.join("&"));
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some(("password", _)) => "password=<redacted>".to_owned(),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The PostgreSQL backend. Blocking: used on the writer thread (or a thread of its own at
/// startup), never on an actix thread.
pub struct PostgresStore {
    /// `store.url` with its password hidden, for error messages.
    shown: String,
    rt: tokio::runtime::Runtime,
    pool: Pool,
    size: usize,
    fence: Option<Fence>,
    /// A batch is split only when every part gets at least this many ops.
    split_min_ops: usize,
    /// Tests only: run the parts of a split batch one after the other, calling this with the
    /// part's index before each part after the first.
    between_parts: Option<Box<dyn FnMut(usize) + Send>>,
}

impl PostgresStore {
    /// [`PostgresStore::open_pooled`] with [`DEFAULT_POOL_SIZE`] connections.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        Self::open_pooled(url, DEFAULT_POOL_SIZE)
    }

    /// Connects to `url` (`postgres://user:password@host:port/db` or `key=value` pairs) with a
    /// pool of up to `size` connections (at least 1) and brings the schema up to date. Fails if
    /// the database cannot be reached now; once open, losing it only makes batches fail until
    /// it is back.
    pub fn open_pooled(url: &str, size: usize) -> Result<PostgresStore, StoreError> {
        let shown = redact_url(url);
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("store.url {shown}: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("pua-xmpp");
        }
        // A client cut off mid-transaction (a network split, a frozen VM) would keep its locks
        // (a batch's FOR SHARE on the lease row, which a taker-over's UPDATE waits for; the
        // migration lock) until the server's TCP gives up on it, minutes later. Our
        // transactions never leave the server waiting for the client's next statement longer
        // than a round trip, so the server may end one that does after IDLE_IN_TRANSACTION.
        let limit = format!(
            "-c idle_in_transaction_session_timeout={}",
            IDLE_IN_TRANSACTION.as_millis()
        );
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {limit}"),
            _ => limit,
        };
        config.options(&options);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| backend("runtime", e))?;
        let size = size.max(1);
        // `Fast`: a checkout only drops a connection seen closed; one that fails under a batch
        // is taken out of the pool with every idle one (see `drop_idle`).
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size)
            .build()
            .map_err(|e| backend("pool", e))?;
        let store = PostgresStore {
            shown,
            rt,
            pool,
            size,
            fence: None,
            split_min_ops: SPLIT_MIN_OPS,
            between_parts: None,
        };
        let pool = &store.pool;
        let shown = &store.shown;
        store.rt.block_on(async {
            let first = async {
                let mut conn = pool
                    .get()
                    .await
                    .map_err(|e| backend(&format!("connect to {shown}"), e))?;
                migrate(&mut conn).await
            };
            match tokio::time::timeout(BATCH_TIMEOUT, first).await {
                Ok(r) => r,
                Err(_) => Err(backend(
                    &format!("connect to {shown}"),
                    format!("no answer within {} s", BATCH_TIMEOUT.as_secs()),
                )),
            }
        })?;
        tracing::info!(url = %store.shown, pool_size = size, "postgresql store connected");
        Ok(store)
    }

    /// Every batch from now on checks `fence` (see the module doc).
    pub fn with_fence(mut self, fence: Fence) -> PostgresStore {
        self.fence = Some(fence);
        self
    }

    /// Tests: split batches of at least `2 * n` ops (default [`SPLIT_MIN_OPS`] per part).
    #[doc(hidden)]
    pub fn with_split_min_ops(mut self, n: usize) -> PostgresStore {
        self.split_min_ops = n.max(1);
        self
    }

    /// Tests: run the parts of a split batch in turn, calling `f(i)` before part `i` ≥ 1.
    #[doc(hidden)]
    pub fn with_between_parts(mut self, f: Box<dyn FnMut(usize) + Send>) -> PostgresStore {
        self.between_parts = Some(f);
        self
    }

    /// The most connections this store opens.
    pub fn pool_size(&self) -> usize {
        self.size
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&mut self) -> Result<i32, StoreError> {
        let (rt, conn) = self.client()?;
        let r = rt.block_on(async {
            tokio::time::timeout(
                BATCH_TIMEOUT,
                conn.query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM pua_schema_version",
                    &[],
                ),
            )
            .await
        });
        match r {
            Ok(Ok(row)) => row.try_get(0).map_err(|e| backend("schema version", e)),
            Ok(Err(e)) => {
                let _ = Object::take(conn);
                Err(self.lost("schema version", e))
            }
            Err(_) => {
                let _ = Object::take(conn);
                Err(self.lost("schema version", "timed out"))
            }
        }
    }

    /// The runtime and a pooled connection (made first if none is idle), for the lease driver.
    /// A connection that fails should be dropped with [`Object::take`] and [`Self::lost`].
    pub fn client(&mut self) -> Result<(&tokio::runtime::Runtime, Object), StoreError> {
        let pool = &self.pool;
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(BATCH_TIMEOUT, pool.get()).await });
        match r {
            Ok(Ok(conn)) => Ok((&self.rt, conn)),
            Ok(Err(e)) => Err(self.lost(&format!("connect to {}", self.shown), e)),
            Err(_) => Err(self.lost(&format!("connect to {}", self.shown), "timed out")),
        }
    }

    /// A connection failed under `what`: every idle connection is dropped too (a server restart
    /// closes them all, but each would show it only at its next use), so the next checkout
    /// connects afresh.
    pub fn lost(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        self.drop_idle();
        backend(what, e)
    }

    fn drop_idle(&self) {
        let _ = self.pool.retain(|_, _| false);
    }

    /// Into how many parts a batch of `ops` coalesced ops is split.
    fn parts_for(&self, ops: usize) -> usize {
        (ops / self.split_min_ops).clamp(1, self.size)
    }
}

/// The part (of `parts`) of a split batch that `op` goes to: a hash of the op's record key,
/// so every op of one key goes to the same connection.
#[doc(hidden)]
pub fn part_of(op: &StoreOp, parts: usize) -> usize {
    if parts <= 1 {
        return 0;
    }
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(op.key());
    (h % parts as u64) as usize
}

/// The last op of each key, in order: the state the batch leaves (the writer has coalesced
/// already; a direct caller may not have). One op per key is what lets one multi-row upsert
/// carry each record kind.
fn last_per_key(ops: &[StoreOp]) -> Vec<&StoreOp> {
    let mut seen: HashSet<_, foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher(ops.len(), Default::default());
    let mut keep: Vec<&StoreOp> = ops
        .iter()
        .rev()
        .filter(|op| seen.insert(op.key()))
        .collect();
    keep.reverse();
    keep
}

fn i64_of(v: u32) -> i64 {
    i64::from(v)
}

/// The subscription columns of a batch part (one vector per column, one entry per row).
#[derive(Default)]
struct SubscriptionRows<'a> {
    watcher: Vec<&'a str>,
    presentity: Vec<&'a str>,
    watcher_uri: Vec<&'a str>,
    presentity_uri: Vec<&'a str>,
    relation: Vec<i16>,
    lease_left: Vec<Option<i64>>,
    expires_at: Vec<Option<i64>>,
    call_id: Vec<Option<&'a str>>,
    local_tag: Vec<Option<&'a str>>,
    remote_tag: Vec<Option<&'a str>>,
    local_cseq: Vec<Option<i64>>,
    remote_cseq: Vec<Option<i64>>,
    remote_target: Vec<Option<&'a str>>,
    route_set: Vec<Option<String>>,
    requested: Vec<Option<i64>>,
}

#[derive(Default)]
struct DialogRows<'a> {
    call_id: Vec<&'a str>,
    presentity: Vec<&'a str>,
    local_tag: Vec<&'a str>,
    remote_tag: Vec<&'a str>,
    remote_uri: Vec<&'a str>,
    remote_display: Vec<Option<&'a str>>,
    watcher: Vec<&'a str>,
    remote_target: Vec<&'a str>,
    route_set: Vec<Option<String>>,
    local_cseq: Vec<i64>,
    remote_cseq: Vec<i64>,
    event_id: Vec<Option<&'a str>>,
    active: Vec<bool>,
    expires_at: Vec<i64>,
}

#[derive(Default)]
struct PublicationRows<'a> {
    presentity: Vec<&'a str>,
    uri: Vec<&'a str>,
    etag: Vec<Option<&'a str>>,
    call_id: Vec<&'a str>,
    cseq: Vec<i64>,
    body: Vec<Option<&'a str>>,
    available: Vec<bool>,
    lease_left: Vec<Option<i64>>,
    expires_at: Vec<Option<i64>>,
}

/// One part of a batch as column arrays, one statement per non-empty kind.
#[derive(Default)]
struct Part<'a> {
    subs: SubscriptionRows<'a>,
    sub_gone: (Vec<&'a str>, Vec<&'a str>),
    relations: (Vec<&'a str>, Vec<&'a str>, Vec<i16>),
    dialogs: DialogRows<'a>,
    dialog_gone: Vec<&'a str>,
    pubs: PublicationRows<'a>,
    winfo: Vec<&'a str>,
    winfo_gone: Vec<&'a str>,
}

type Params<'p> = Vec<&'p (dyn ToSql + Sync)>;

impl<'a> Part<'a> {
    fn push(&mut self, op: &'a StoreOp) -> Result<(), StoreError> {
        match op {
            StoreOp::PutSubscription {
                rec,
                expires_at_unix,
            } => {
                let s = &mut self.subs;
                let d = rec.dialog.as_ref();
                s.watcher.push(rec.pair.watcher.as_str());
                s.presentity.push(rec.pair.presentity.as_str());
                s.watcher_uri.push(&rec.pair.watcher_uri);
                s.presentity_uri.push(&rec.pair.presentity_uri);
                s.relation.push(i16::from(relation_code(rec.relation)));
                s.lease_left.push(rec.lease_left.map(i64_of));
                s.expires_at.push(*expires_at_unix);
                s.call_id.push(d.map(|d| d.call_id.as_str()));
                s.local_tag.push(d.map(|d| d.local_tag.as_str()));
                s.remote_tag.push(d.and_then(|d| d.remote_tag.as_deref()));
                s.local_cseq.push(d.map(|d| i64_of(d.local_cseq)));
                s.remote_cseq
                    .push(d.and_then(|d| d.remote_cseq).map(i64_of));
                s.remote_target
                    .push(d.and_then(|d| d.remote_target.as_deref()));
                s.route_set.push(match d {
                    Some(d) => encode_routes(&d.route_set)?,
                    None => None,
                });
                s.requested.push(d.map(|d| i64_of(d.requested)));
            }
            StoreOp::DeleteSubscription {
                watcher,
                presentity,
            } => {
                self.sub_gone.0.push(watcher.as_str());
                self.sub_gone.1.push(presentity.as_str());
            }
            StoreOp::PutRelation {
                presentity,
                watcher,
                state,
            } => {
                self.relations.0.push(presentity.as_str());
                self.relations.1.push(watcher.as_str());
                self.relations.2.push(i16::from(watcher_code(*state)));
            }
            StoreOp::PutNotifierDialog { presentity, dialog } => {
                let (r, d) = (&mut self.dialogs, dialog);
                r.call_id.push(&d.call_id);
                r.presentity.push(presentity.as_str());
                r.local_tag.push(&d.local_tag);
                r.remote_tag.push(&d.remote_tag);
                r.remote_uri.push(&d.remote_uri);
                r.remote_display.push(d.remote_display.as_deref());
                r.watcher.push(d.watcher.as_str());
                r.remote_target.push(&d.remote_target);
                r.route_set.push(encode_routes(&d.route_set)?);
                r.local_cseq.push(i64_of(d.local_cseq));
                r.remote_cseq.push(i64_of(d.remote_cseq));
                r.event_id.push(d.event_id.as_deref());
                r.active.push(d.active);
                r.expires_at.push(d.expires_at_unix);
            }
            StoreOp::DeleteNotifierDialog { call_id } => self.dialog_gone.push(call_id),
            StoreOp::PutPublication {
                presentity,
                rec,
                expires_at_unix,
            } => {
                let p = &mut self.pubs;
                p.presentity.push(presentity.as_str());
                p.uri.push(&rec.uri);
                p.etag.push(rec.etag.as_deref());
                p.call_id.push(&rec.call_id);
                p.cseq.push(i64_of(rec.cseq));
                p.body.push(rec.body.as_deref());
                p.available.push(rec.available);
                p.lease_left.push(rec.lease_left.map(i64_of));
                p.expires_at.push(*expires_at_unix);
            }
            StoreOp::PutWinfo { presentity, wanted } => {
                if *wanted {
                    self.winfo.push(presentity.as_str());
                } else {
                    self.winfo_gone.push(presentity.as_str());
                }
            }
        }
        Ok(())
    }

    /// The statements of this part with their array parameters; kinds without rows are left
    /// out. Keys are unique in a part, so their order does not matter.
    fn statements(&self) -> Vec<(&'static str, Params<'_>)> {
        let mut out: Vec<(&'static str, Params<'_>)> = Vec::new();
        let s = &self.subs;
        if !s.watcher.is_empty() {
            out.push((
                PUT_SUBSCRIPTIONS,
                vec![
                    &s.watcher,
                    &s.presentity,
                    &s.watcher_uri,
                    &s.presentity_uri,
                    &s.relation,
                    &s.lease_left,
                    &s.expires_at,
                    &s.call_id,
                    &s.local_tag,
                    &s.remote_tag,
                    &s.local_cseq,
                    &s.remote_cseq,
                    &s.remote_target,
                    &s.route_set,
                    &s.requested,
                ],
            ));
        }
        if !self.sub_gone.0.is_empty() {
            out.push((
                DELETE_SUBSCRIPTIONS,
                vec![&self.sub_gone.0, &self.sub_gone.1],
            ));
        }
        if !self.relations.0.is_empty() {
            let r = &self.relations;
            out.push((PUT_RELATIONS, vec![&r.0, &r.1, &r.2]));
        }
        let d = &self.dialogs;
        if !d.call_id.is_empty() {
            out.push((
                PUT_DIALOGS,
                vec![
                    &d.call_id,
                    &d.presentity,
                    &d.local_tag,
                    &d.remote_tag,
                    &d.remote_uri,
                    &d.remote_display,
                    &d.watcher,
                    &d.remote_target,
                    &d.route_set,
                    &d.local_cseq,
                    &d.remote_cseq,
                    &d.event_id,
                    &d.active,
                    &d.expires_at,
                ],
            ));
        }
        if !self.dialog_gone.is_empty() {
            out.push((DELETE_DIALOGS, vec![&self.dialog_gone]));
        }
        let p = &self.pubs;
        if !p.presentity.is_empty() {
            out.push((
                PUT_PUBLICATIONS,
                vec![
                    &p.presentity,
                    &p.uri,
                    &p.etag,
                    &p.call_id,
                    &p.cseq,
                    &p.body,
                    &p.available,
                    &p.lease_left,
                    &p.expires_at,
                ],
            ));
        }
        if !self.winfo.is_empty() {
            out.push((PUT_WINFOS, vec![&self.winfo]));
        }
        if !self.winfo_gone.is_empty() {
            out.push((DELETE_WINFOS, vec![&self.winfo_gone]));
        }
        out
    }
}

/// How a part failed: the lease moved on (nothing of the part was written), or the
/// connection or the database failed (the connection is in doubt: reconnect).
enum PartError {
    Fenced(i64),
    Lost(String),
}

/// One part of a batch in its own transaction on its own pooled connection: fence check and
/// one statement per record kind sent pipelined, then the commit.
async fn apply_part(
    pool: &Pool,
    fence: Option<(&str, i64)>,
    part: &Part<'_>,
) -> Result<(), PartError> {
    if let Some((_, value)) = fence {
        if value <= 0 {
            return Err(PartError::Fenced(value));
        }
    }
    let mut conn = pool
        .get()
        .await
        .map_err(|e| PartError::Lost(format!("connection: {e}")))?;
    let r = write_part(&mut conn, fence, part).await;
    if matches!(r, Err(PartError::Lost(_))) {
        // Out of the pool: the next checkout connects afresh.
        let _ = Object::take(conn);
    }
    r
}

async fn write_part(
    conn: &mut Object,
    fence: Option<(&str, i64)>,
    part: &Part<'_>,
) -> Result<(), PartError> {
    let lost = |e: tokio_postgres::Error| PartError::Lost(e.to_string());
    let statements = part.statements();
    // Prepared once per connection (the pool's statement cache), in one round trip.
    let prepared = futures::future::try_join_all(
        statements
            .iter()
            .map(|(sql, _)| *sql)
            .chain(fence.map(|_| FENCE_CHECK))
            .map(|sql| conn.prepare_cached(sql)),
    )
    .await
    .map_err(lost)?;
    let tx = conn.transaction().await.map_err(lost)?;
    let writes = futures::future::try_join_all(
        statements
            .iter()
            .zip(&prepared)
            .map(|((_, params), stmt)| tx.execute(stmt, params)),
    );
    // The fence check goes first on the wire and the writes right behind it (pipelined): if
    // it finds no row, the transaction is rolled back and nothing of the writes stays.
    match (fence, prepared.get(statements.len())) {
        (Some((name, value)), Some(check)) => {
            let args: [&(dyn ToSql + Sync); 2] = [&name, &value];
            let guard = tx.query(check, &args);
            let (rows, _) = futures::future::try_join(guard, writes)
                .await
                .map_err(lost)?;
            if rows.is_empty() {
                return Err(PartError::Fenced(value));
            }
        }
        _ => {
            writes.await.map_err(lost)?;
        }
    }
    tx.commit().await.map_err(lost)
}

impl Store for PostgresStore {
    /// Coalesces `ops` by key and, when the batch is large enough and the pool has more than
    /// one connection, splits it by key over the connections, the parts committed in
    /// parallel. Acknowledged (Ok) only once every part committed; see the module doc for a
    /// part that fails while another committed.
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let ops = last_per_key(ops);
        let n = self.parts_for(ops.len());
        let mut parts: Vec<Part<'_>> = (0..n).map(|_| Part::default()).collect();
        for op in ops {
            if let Some(part) = parts.get_mut(part_of(op, n)) {
                part.push(op)?;
            }
        }
        let fence = self.fence.as_ref().map(|f| (f.name.clone(), f.get()));
        let fence = fence.as_ref().map(|(n, v)| (n.as_str(), *v));
        let pool = &self.pool;
        let timed = |part| async move {
            match tokio::time::timeout(BATCH_TIMEOUT, apply_part(pool, fence, part)).await {
                Ok(r) => r,
                Err(_) => Err(PartError::Lost(format!(
                    "no answer within {} s",
                    BATCH_TIMEOUT.as_secs()
                ))),
            }
        };
        let results: Vec<Result<(), PartError>> = match self.between_parts.as_mut() {
            Some(hook) if n > 1 => {
                let mut out = Vec::with_capacity(n);
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        hook(i);
                    }
                    out.push(self.rt.block_on(timed(part)));
                }
                out
            }
            _ => self
                .rt
                .block_on(futures::future::join_all(parts.iter().map(timed))),
        };
        let mut lost = None;
        let mut fenced = None;
        for r in results {
            match r {
                Ok(()) => {}
                Err(PartError::Fenced(v)) => fenced = Some(v),
                Err(PartError::Lost(e)) => lost = Some(e),
            }
        }
        if let Some(e) = lost {
            // Whatever failed (the server restarted, a statement was refused, I/O), the next
            // attempt starts on new connections: a restart first shows as a server error
            // (57P01) on a socket not yet seen closed.
            self.drop_idle();
            if fenced.is_none() {
                return Err(backend("batch", e));
            }
        }
        match fenced {
            Some(fence) => Err(StoreError::Fenced { fence }),
            None => Ok(()),
        }
    }

    /// Every table, read over the whole pool: part `i` of `n` holds the rows of the `i`-th
    /// `n`-th of the table's blocks, each part is decoded on a thread of its own, and the
    /// parts are merged back into key order.
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let n = self.size;
        let pool = &self.pool;
        let started = std::time::Instant::now();
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(LOAD_TIMEOUT, load_parts(pool, n)).await });
        let parts = match r {
            Ok(Ok(parts)) => parts,
            Ok(Err(e)) => return Err(self.lost("load", e)),
            Err(_) => return Err(self.lost("load", "timed out")),
        };
        let fetched = started.elapsed();
        let mut decoded = if n == 1 {
            parts.iter().map(decode).collect::<Vec<_>>()
        } else {
            std::thread::scope(|s| {
                let running: Vec<_> = parts.iter().map(|p| s.spawn(|| decode(p))).collect();
                running
                    .into_iter()
                    .map(|t| t.join())
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|_| backend("load", "a decoding thread panicked"))?
        };
        let decoded_at = started.elapsed();
        let snap = if decoded.len() == 1 {
            decoded.pop().ok_or_else(|| backend("load", "no part"))?
        } else {
            merge(decoded)
        };
        // What a takeover spends before it serves (its target is 5 s in all).
        tracing::info!(
            connections = n,
            subscriptions = snap.subscriptions.len(),
            fetch_ms = fetched.as_millis() as u64,
            decoded_ms = decoded_at.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "postgresql store loaded"
        );
        Ok(snap)
    }

    fn probe(&mut self) -> Option<Result<(), StoreError>> {
        let pool = &self.pool;
        let r = self.rt.block_on(async {
            tokio::time::timeout(PROBE_TIMEOUT, async {
                let conn = pool.get().await.map_err(|e| format!("connection: {e}"))?;
                match conn.simple_query("SELECT 1").await {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let _ = Object::take(conn);
                        Err(e.to_string())
                    }
                }
            })
            .await
        });
        Some(match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.lost("probe", e)),
            Err(_) => Err(self.lost(
                "probe",
                format!("no answer within {} ms", PROBE_TIMEOUT.as_millis()),
            )),
        })
    }
}

/// The rows of one load part, per table.
struct LoadedPart {
    subs: Vec<Row>,
    rels: Vec<Row>,
    dialogs: Vec<Row>,
    pubs: Vec<Row>,
    winfo: Vec<Row>,
}

const LOAD_SUBSCRIPTIONS: &str = "SELECT watcher, presentity, watcher_uri, presentity_uri,
    relation, lease_left, expires_at, call_id, local_tag, remote_tag, local_cseq, remote_cseq,
    remote_target, route_set, requested FROM subscription";
const LOAD_RELATIONS: &str = "SELECT presentity, watcher, state FROM watcher_relation";
const LOAD_DIALOGS: &str = "SELECT call_id, presentity, local_tag, remote_tag, remote_uri,
    remote_display, watcher, remote_target, route_set, local_cseq, remote_cseq, event_id,
    active, expires_at FROM notifier_dialog";
const LOAD_PUBLICATIONS: &str = "SELECT presentity, uri, etag, call_id, cseq, body, available,
    lease_left, expires_at FROM publication";
const LOAD_WINFO: &str = "SELECT presentity FROM winfo";

/// The size in blocks of each table, in the order of `LOAD_*` (for splitting the load).
const TABLE_BLOCKS: &str = "SELECT pg_relation_size(t.c) / current_setting('block_size')::bigint
  FROM unnest(ARRAY['subscription', 'watcher_relation', 'notifier_dialog', 'publication',
    'winfo']::regclass[]) WITH ORDINALITY AS t(c, i) ORDER BY t.i";

/// The sizes in blocks of the five tables (0 where unknown): one round trip.
async fn table_blocks(conn: &Object) -> Result<[u64; 5], String> {
    let rows = conn
        .query(TABLE_BLOCKS, &[])
        .await
        .map_err(|e| e.to_string())?;
    let mut out = [0u64; 5];
    for (slot, row) in out.iter_mut().zip(&rows) {
        let blocks: i64 = row.try_get(0).map_err(|e| e.to_string())?;
        *slot = u64::try_from(blocks).unwrap_or(0);
    }
    Ok(out)
}

/// `select` restricted to part `i` of `n` of the table's `blocks` blocks, by physical
/// position (`ctid`: a TID range scan reads only those blocks, so the parts share the scan
/// instead of each reading the whole table), in the key order SQLite gives (byte order:
/// `COLLATE "C"`). The first part is open below and the last above, so every row is in
/// exactly one part whatever the table's size.
fn part_query(select: &str, order: &str, blocks: u64, i: usize, n: usize) -> String {
    if n <= 1 {
        return format!("{select} ORDER BY {order}");
    }
    let per = blocks.div_ceil(n as u64);
    let lo = per * i as u64;
    let hi = lo + per;
    let mut range = Vec::new();
    if i > 0 {
        range.push(format!("ctid >= '({lo},0)'::tid"));
    }
    if i + 1 < n {
        range.push(format!("ctid < '({hi},0)'::tid"));
    }
    if range.is_empty() {
        format!("{select} ORDER BY {order}")
    } else {
        format!("{select} WHERE {} ORDER BY {order}", range.join(" AND "))
    }
}

/// Part `i` of `n` of every table, on `conn` (the five queries pipelined).
async fn load_part(
    conn: &Object,
    blocks: [u64; 5],
    i: usize,
    n: usize,
) -> Result<LoadedPart, String> {
    let [b0, b1, b2, b3, b4] = blocks;
    let q = [
        part_query(
            LOAD_SUBSCRIPTIONS,
            "watcher COLLATE \"C\", presentity COLLATE \"C\"",
            b0,
            i,
            n,
        ),
        part_query(
            LOAD_RELATIONS,
            "presentity COLLATE \"C\", watcher COLLATE \"C\"",
            b1,
            i,
            n,
        ),
        part_query(LOAD_DIALOGS, "call_id COLLATE \"C\"", b2, i, n),
        part_query(LOAD_PUBLICATIONS, "presentity COLLATE \"C\"", b3, i, n),
        part_query(LOAD_WINFO, "presentity COLLATE \"C\"", b4, i, n),
    ];
    let [q0, q1, q2, q3, q4] = &q;
    let r = futures::future::try_join5(
        conn.query(q0.as_str(), &[]),
        conn.query(q1.as_str(), &[]),
        conn.query(q2.as_str(), &[]),
        conn.query(q3.as_str(), &[]),
        conn.query(q4.as_str(), &[]),
    )
    .await;
    match r {
        Ok((subs, rels, dialogs, pubs, winfo)) => Ok(LoadedPart {
            subs,
            rels,
            dialogs,
            pubs,
            winfo,
        }),
        Err(e) => Err(e.to_string()),
    }
}

/// Every table over `n` pooled connections. With more than one, they read one snapshot:
/// the first exports it (`pg_export_snapshot`) and the others import it before any reads,
/// so a row that a concurrent write moves to another block is neither missed nor read twice.
/// A connection that failed is dropped, not returned to the pool.
async fn load_parts(pool: &Pool, n: usize) -> Result<Vec<LoadedPart>, String> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(pool.get().await.map_err(|e| format!("connection: {e}"))?);
    }
    let r = if n <= 1 {
        match conns.first() {
            Some(c) => load_part(c, [0; 5], 0, 1).await.map(|p| vec![p]),
            None => Err("no connection".to_owned()),
        }
    } else {
        load_snapshot(&conns).await
    };
    if r.is_err() {
        for c in conns {
            let _ = Object::take(c);
        }
    }
    r
}

const BEGIN_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

async fn load_snapshot(conns: &[Object]) -> Result<Vec<LoadedPart>, String> {
    let err = |e: tokio_postgres::Error| e.to_string();
    let Some(lead) = conns.first() else {
        return Err("no connection".to_owned());
    };
    lead.batch_execute(BEGIN_READ).await.map_err(err)?;
    let id: String = lead
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(err)?;
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(format!("unexpected snapshot id {id:?}"));
    }
    let import = format!("{BEGIN_READ}; SET TRANSACTION SNAPSHOT '{id}'");
    futures::future::try_join_all(conns.iter().skip(1).map(|c| c.batch_execute(&import)))
        .await
        .map_err(err)?;
    let blocks = table_blocks(lead).await?;
    let n = conns.len();
    let parts = futures::future::try_join_all(
        conns
            .iter()
            .enumerate()
            .map(|(i, c)| load_part(c, blocks, i, n)),
    )
    .await?;
    futures::future::try_join_all(conns.iter().map(|c| c.batch_execute("COMMIT")))
        .await
        .map_err(err)?;
    Ok(parts)
}

fn decode(p: &LoadedPart) -> Snapshot {
    Snapshot {
        subscriptions: convert("subscription", &p.subs, rows::subscription),
        relations: convert("watcher_relation", &p.rels, rows::relation),
        notifier_dialogs: convert("notifier_dialog", &p.dialogs, rows::dialog),
        publications: convert("publication", &p.pubs, rows::publication),
        winfo: convert("winfo", &p.winfo, rows::winfo),
    }
}

/// The parts of a load, each in key order, as one snapshot in key order.
fn merge(parts: Vec<Snapshot>) -> Snapshot {
    let mut subs = Vec::with_capacity(parts.len());
    let mut rels = Vec::with_capacity(parts.len());
    let mut dialogs = Vec::with_capacity(parts.len());
    let mut pubs = Vec::with_capacity(parts.len());
    let mut winfo = Vec::with_capacity(parts.len());
    for p in parts {
        subs.push(p.subscriptions);
        rels.push(p.relations);
        dialogs.push(p.notifier_dialogs);
        pubs.push(p.publications);
        winfo.push(p.winfo);
    }
    Snapshot {
        subscriptions: merge_sorted(subs, |(r, _)| {
            (r.pair.watcher.as_str(), r.pair.presentity.as_str())
        }),
        relations: merge_sorted(rels, |(x, w, _)| (x.as_str(), w.as_str())),
        notifier_dialogs: merge_sorted(dialogs, |(_, d)| (d.call_id.as_str(), "")),
        publications: merge_sorted(pubs, |(x, _, _)| (x.as_str(), "")),
        winfo: merge_sorted(winfo, |x| (x.as_str(), "")),
    }
}

/// Merges `runs`, each sorted by `key` (unique keys: the tables' primary keys), into one
/// sorted list, moving each element once (records are a few hundred bytes: a sort of the
/// concatenation moved them several times and cost more than decoding them).
fn merge_sorted<T>(runs: Vec<Vec<T>>, key: fn(&T) -> (&str, &str)) -> Vec<T> {
    let total = runs.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(total);
    let mut heads: Vec<std::vec::IntoIter<T>> = runs.into_iter().map(Vec::into_iter).collect();
    loop {
        let mut best: Option<(usize, (&str, &str))> = None;
        for (i, run) in heads.iter().enumerate() {
            if let Some(k) = run.as_slice().first().map(key) {
                if best.is_none_or(|(_, b)| k < b) {
                    best = Some((i, k));
                }
            }
        }
        let Some((i, _)) = best else {
            break;
        };
        match heads.get_mut(i).and_then(Iterator::next) {
            Some(v) => out.push(v),
            None => break,
        }
    }
    out
}
async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| backend("migration", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| backend("migration lock", e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS pua_schema_version (
            version INTEGER NOT NULL PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .map_err(|e| backend("migration", e))?;
    let found: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM pua_schema_version",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| backend("schema version", e))?;
    let known = PG_MIGRATIONS.last().map_or(0, |m| m.0);
    if found > known {
        return Err(StoreError::SchemaTooNew {
            found: u32::try_from(found).unwrap_or(0),
            known: u32::try_from(known).unwrap_or(0),
        });
    }
    for &(version, sql) in PG_MIGRATIONS.iter().filter(|m| m.0 > found) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| backend(&format!("migration {version}"), e))?;
        tx.execute(
            "INSERT INTO pua_schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(|e| backend(&format!("migration {version}"), e))?;
        tracing::info!(version, "postgresql store schema migrated");
    }
    tx.commit().await.map_err(|e| backend("migration", e))
}

/// Converts each row; one that does not convert is logged and skipped (as with SQLite).
fn convert<T>(table: &str, rows: &[Row], f: impl Fn(&Row) -> Result<T, String>) -> Vec<T> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        match f(row) {
            Ok(v) => out.push(v),
            Err(reason) => {
                let key: Option<String> = row.try_get(0).ok();
                tracing::error!(table, key = ?key, %reason, "skipping a stored row that does not load");
            }
        }
    }
    out
}
/// The lease operations on a connection of its own (the lease driver's, not the writer's, so
/// a renewal never waits behind a batch).
pub struct PgLease {
    store: PostgresStore,
    name: String,
    holder: String,
}

/// What the database answered to an acquire or renew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// The lease is ours with this fencing number.
    Held(i64),
    /// Someone else holds it (acquire), or it was taken over (renew).
    NotHeld,
}

impl PgLease {
    /// Connects to `url` for the lease row `name`, as `holder` (unique per instance).
    pub fn open(url: &str, name: &str, holder: &str) -> Result<PgLease, StoreError> {
        Ok(PgLease {
            store: PostgresStore::open_pooled(url, 1)?,
            name: name.to_owned(),
            holder: holder.to_owned(),
        })
    }

    /// Tries to take the lease for `ttl`.
    pub fn acquire(&mut self, ttl: Duration) -> Result<LeaseAnswer, StoreError> {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let (name, holder) = (self.name.clone(), self.holder.clone());
        self.run(LEASE_ACQUIRE, &[&name, &holder, &ms])
    }

    /// Extends the lease held with `fence` by `ttl` from now.
    pub fn renew(&mut self, fence: i64, ttl: Duration) -> Result<LeaseAnswer, StoreError> {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let (name, holder) = (self.name.clone(), self.holder.clone());
        self.run(LEASE_RENEW, &[&name, &holder, &fence, &ms])
    }

    /// Gives the lease up (graceful stop): the standby may take it at once.
    pub fn release(&mut self, fence: i64) -> Result<(), StoreError> {
        let name = self.name.clone();
        let (rt, client) = self.store.client()?;
        let r = rt.block_on(async {
            tokio::time::timeout(
                BATCH_TIMEOUT,
                client.execute(LEASE_RELEASE, &[&name, &fence]),
            )
            .await
        });
        if !matches!(r, Ok(Ok(_))) {
            let _ = Object::take(client);
        }
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.store.lost("lease release", e)),
            Err(_) => Err(self.store.lost("lease release", "timed out")),
        }
    }

    fn run(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<LeaseAnswer, StoreError> {
        let (rt, client) = self.store.client()?;
        let r = rt.block_on(async {
            tokio::time::timeout(BATCH_TIMEOUT, client.query_opt(sql, params)).await
        });
        if !matches!(r, Ok(Ok(_))) {
            let _ = Object::take(client);
        }
        match r {
            Ok(Ok(Some(row))) => row
                .try_get::<_, i64>(0)
                .map(LeaseAnswer::Held)
                .map_err(|e| backend("lease", e)),
            Ok(Ok(None)) => Ok(LeaseAnswer::NotHeld),
            Ok(Err(e)) => Err(self.store.lost("lease", e)),
            Err(_) => Err(self.store.lost("lease", "timed out")),
        }
    }
}
