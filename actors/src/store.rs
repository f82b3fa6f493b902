//! Persistence of everything the gateway needs to resume after a restart (issue 6, §6.3):
//! subscriber pairs with their SIP dialog, the watcher relations decided by XMPP users, the
//! notifier dialogs of SIP watchers, PUBLISH state and presence.winfo wishes.
//!
//! Actors never touch the database: they [`StoreHandle::send`] a [`StoreOp`] (never blocks) and
//! one writer thread applies the ops in batches, one transaction per batch, so a burst of
//! NOTIFYs costs one fsync, not one per NOTIFY. Within a batch only the last op per key is
//! applied (coalescing). A failed batch is logged and retried with backoff; the gateway keeps
//! running on its in-memory state. [`Store`] is the seam between the writer and a backend:
//! [`SqliteStore`] here, [`PostgresStore`] in [`postgres`] (`store.url`, issue 17).
//!
//! # Several instances on one PostgreSQL store
//!
//! Every row belongs to exactly one XMPP user X of the served domain: `subscription.watcher`
//! (X watches a SIP presentity), `watcher_relation.presentity`, `notifier_dialog.presentity`,
//! `publication.presentity` and `winfo.presentity` (X is watched / published). Sharding by a
//! hash of X keeps all of one user's state on one instance, which is also how the traffic
//! routes: stanzas *from* X (presence, subscribe, probe) carry X in `from`; SUBSCRIBEs for X
//! carry X' in the Request-URI (a SIP dispatcher hashes its user part the same way); in-dialog
//! requests reach the owning instance by its own Contact (the dialog's remote target).
//!
//! - Each table gets a `shard SMALLINT NOT NULL` column = `hash(X) mod 1024` (a fixed number
//!   of virtual shards, independent of the instance count), and the table is `PARTITION BY
//!   LIST (shard)` or simply indexed on `shard`. Primary keys: `subscription (watcher,
//!   presentity)`, `watcher_relation (presentity, watcher)`, `notifier_dialog (call_id)`
//!   (SQLite keys these three by a row id, see below; a server database with its own buffer
//!   pool can key them naturally), `publication (presentity)`, `winfo (presentity)`.
//! - A `shard_owner (shard PRIMARY KEY, instance, lease_until)` table assigns shards to
//!   instances; an instance renews its lease periodically, loads `WHERE shard = ANY($owned)` at
//!   start, and takes over the shards of an instance whose lease ran out (after loading them).
//!   Every write carries `AND shard_owner.instance = $me` in a `WHERE EXISTS` guard (or the
//!   writer checks its lease before each batch) so a partitioned old owner cannot overwrite.
//! - Writes keep the same shape: one transaction per batch, `INSERT … ON CONFLICT … DO
//!   UPDATE` (multi-row `VALUES` or `COPY` into a temp table for large batches).
//! - The simpler split is by component domain: each instance is its own XEP-0114 component
//!   (`sip1.example.net`, `sip2.example.net`) with `shard` = the component domain; no
//!   coordination is needed, but there is no failover of a domain to another instance.
//!
//! # SQLite layout
//!
//! WAL mode, `synchronous=NORMAL` (a power cut may lose the last batches, never corrupts),
//! `WITHOUT ROWID` tables keyed by their natural key (no second copy of the key in an index),
//! except the three that set-up bursts fill (`subscription`, schema 3; `watcher_relation` and
//! `notifier_dialog`, schema 4): those are keyed by a row id the writer hands out in order, so
//! new rows append whatever their JIDs or Call-IDs, and the writer keeps natural key → row id in
//! memory (a keyed 128-bit hash, ~30 bytes per row). Enums are small integers, route sets JSON
//! text (NULL when empty). Schema changes are numbered entries of
//! [`MIGRATIONS`], applied in order at open and recorded in `schema_version`.

use pua_xmpp::notifier::{DialogState, NotifierDialog, PersistOp, WatcherRelation};
use pua_xmpp::publisher::PublicationRecord;
use pua_xmpp::subscriber::{Relation, SubscriptionRecord};
use rusqlite::{params, CachedStatement, Connection, Row};
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use xmpp_parsers::jid::BareJid;

use crate::idhash::IdMap;

pub mod lease_driver;
pub mod postgres;
mod rows;
pub use postgres::{Fence, PostgresStore};

/// One change to persist.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreOp {
    /// Key (watcher X, presentity S'). `expires_at_unix`: wall-clock end of the lease.
    PutSubscription {
        rec: SubscriptionRecord,
        expires_at_unix: Option<i64>,
    },
    DeleteSubscription {
        watcher: BareJid,
        presentity: BareJid,
    },
    /// Key (presentity X = the XMPP user, watcher S' = the SIP watcher's JID).
    PutRelation {
        presentity: BareJid,
        watcher: BareJid,
        state: WatcherRelation,
    },
    /// Key `dialog.call_id`.
    PutNotifierDialog {
        presentity: BareJid,
        dialog: StoredNotifierDialog,
    },
    DeleteNotifierDialog {
        call_id: String,
    },
    /// Key presentity X. `expires_at_unix`: wall-clock end of the publication.
    PutPublication {
        presentity: BareJid,
        rec: PublicationRecord,
        expires_at_unix: Option<i64>,
    },
    /// Key presentity X; `wanted: false` deletes the row.
    PutWinfo {
        presentity: BareJid,
        wanted: bool,
    },
}

impl StoreOp {
    /// The op for a subscriber record; the lease end is computed from `lease_left` now.
    pub fn subscription(rec: SubscriptionRecord, now_unix: i64) -> StoreOp {
        let expires_at_unix = rec.lease_left.map(|left| now_unix + i64::from(left));
        StoreOp::PutSubscription {
            rec,
            expires_at_unix,
        }
    }

    /// The op for a publication record of `presentity`; its end is computed from `lease_left`.
    pub fn publication(presentity: BareJid, rec: PublicationRecord, now_unix: i64) -> StoreOp {
        let expires_at_unix = rec.lease_left.map(|left| now_unix + i64::from(left));
        StoreOp::PutPublication {
            presentity,
            rec,
            expires_at_unix,
        }
    }

    /// The op for one [`PersistOp`] of the notifier of `presentity`.
    pub fn from_persist(
        presentity: &BareJid,
        op: &PersistOp,
        now: Instant,
        now_unix: i64,
    ) -> StoreOp {
        match op {
            PersistOp::Relation { watcher, state } => StoreOp::PutRelation {
                presentity: presentity.clone(),
                watcher: watcher.clone(),
                state: *state,
            },
            PersistOp::Dialog(d) => StoreOp::PutNotifierDialog {
                presentity: presentity.clone(),
                dialog: StoredNotifierDialog::from_dialog(d, now, now_unix),
            },
            PersistOp::DialogGone { call_id, .. } => StoreOp::DeleteNotifierDialog {
                call_id: call_id.clone(),
            },
        }
    }

    /// The key the op writes, for coalescing: the last op per key wins.
    fn key(&self) -> Key<'_> {
        match self {
            StoreOp::PutSubscription { rec, .. } => {
                Key::Subscription(&rec.pair.watcher, &rec.pair.presentity)
            }
            StoreOp::DeleteSubscription {
                watcher,
                presentity,
            } => Key::Subscription(watcher, presentity),
            StoreOp::PutRelation {
                presentity,
                watcher,
                ..
            } => Key::Relation(presentity, watcher),
            StoreOp::PutNotifierDialog { dialog, .. } => Key::Dialog(&dialog.call_id),
            StoreOp::DeleteNotifierDialog { call_id } => Key::Dialog(call_id),
            StoreOp::PutPublication { presentity, .. } => Key::Publication(presentity),
            StoreOp::PutWinfo { presentity, .. } => Key::Winfo(presentity),
        }
    }
}

#[derive(Hash, PartialEq, Eq)]
enum Key<'a> {
    Subscription(&'a BareJid, &'a BareJid),
    Relation(&'a BareJid, &'a BareJid),
    Dialog(&'a str),
    Publication(&'a BareJid),
    Winfo(&'a BareJid),
}

/// Keeps only the last op per key, in their original order: the final state is the same and
/// a NOTIFY burst on one pair becomes one row write. The set hashes with foldhash (seeded, and
/// cheaper than SipHash on JIDs): it lives for one batch, so even keys crafted to collide
/// cost time bounded by the batch size.
pub fn coalesce(ops: Vec<StoreOp>) -> Vec<StoreOp> {
    let keep: Vec<bool> = {
        let mut seen: HashSet<_, foldhash::fast::RandomState> =
            HashSet::with_capacity_and_hasher(ops.len(), Default::default());
        let mut keep: Vec<bool> = ops.iter().rev().map(|op| seen.insert(op.key())).collect();
        keep.reverse();
        keep
    };
    ops.into_iter()
        .zip(keep)
        .filter_map(|(op, k)| k.then_some(op))
        .collect()
}

/// A notifier dialog as stored: [`NotifierDialog`] with its expiry in wall-clock seconds
/// (an `Instant` means nothing after a restart) and without the transient send state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredNotifierDialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    pub remote_uri: String,
    pub remote_display: Option<String>,
    /// S' for the watcher.
    pub watcher: BareJid,
    pub remote_target: String,
    pub route_set: Vec<String>,
    pub local_cseq: u32,
    pub remote_cseq: u32,
    pub event_id: Option<String>,
    /// `true` for an active subscription, `false` for pending.
    pub active: bool,
    pub expires_at_unix: i64,
}

impl StoredNotifierDialog {
    /// Converts `d.expires_at` with the pair (`now`, `now_unix`) taken at the time of the write.
    pub fn from_dialog(d: &NotifierDialog, now: Instant, now_unix: i64) -> Self {
        let expires_at_unix = if d.expires_at >= now {
            let secs = d.expires_at.duration_since(now).as_secs();
            now_unix.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX))
        } else {
            let secs = now.duration_since(d.expires_at).as_secs();
            now_unix.saturating_sub(i64::try_from(secs).unwrap_or(i64::MAX))
        };
        StoredNotifierDialog {
            call_id: d.call_id.clone(),
            local_tag: d.local_tag.clone(),
            remote_tag: d.remote_tag.clone(),
            remote_uri: d.remote.uri.clone(),
            remote_display: d.remote.display.clone(),
            watcher: d.watcher.clone(),
            remote_target: d.remote_target.clone(),
            route_set: d.route_set.clone(),
            local_cseq: d.local_cseq,
            remote_cseq: d.remote_cseq,
            event_id: d.event_id.clone(),
            active: d.state == DialogState::Active,
            expires_at_unix,
        }
    }
}

/// Everything stored, as loaded at startup. Each list is ordered by its key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// With the wall-clock lease end written alongside (`lease_left` is as written).
    pub subscriptions: Vec<(SubscriptionRecord, Option<i64>)>,
    /// (presentity X, watcher S', state).
    pub relations: Vec<(BareJid, BareJid, WatcherRelation)>,
    /// (presentity X, dialog).
    pub notifier_dialogs: Vec<(BareJid, StoredNotifierDialog)>,
    /// (presentity X, record as written, wall-clock end of the publication).
    pub publications: Vec<(BareJid, PublicationRecord, Option<i64>)>,
    /// Presentities whose presence.winfo is wanted.
    pub winfo: Vec<BareJid>,
}

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// The database could not be opened or set up (path, cause).
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The database has a schema newer than this binary knows.
    SchemaTooNew {
        found: u32,
        known: u32,
    },
    /// Migration `version` failed.
    Migration {
        version: u32,
        source: rusqlite::Error,
    },
    Sqlite(rusqlite::Error),
    /// A route set could not be encoded.
    Encode(String),
    /// Another backend's failure, as text.
    Backend(String),
    /// The writer thread has stopped (closed or panicked).
    WriterGone,
    /// [`StoreHandle::flush_timeout`] ran out before the ops were committed.
    FlushTimeout,
    /// The batch carried fencing number `fence`, and the lease has moved on (or is not held):
    /// another instance is active, and nothing of the batch was written.
    Fenced {
        fence: i64,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Open { path, source } => {
                write!(f, "cannot open store {}: {source}", path.display())
            }
            StoreError::SchemaTooNew { found, known } => write!(
                f,
                "store schema version {found} is newer than this binary knows ({known})"
            ),
            StoreError::Migration { version, source } => {
                write!(f, "store migration {version} failed: {source}")
            }
            StoreError::Sqlite(e) => write!(f, "sqlite: {e}"),
            StoreError::Encode(e) => write!(f, "cannot encode a stored value: {e}"),
            StoreError::Backend(e) => write!(f, "store backend: {e}"),
            StoreError::WriterGone => write!(f, "the store writer thread has stopped"),
            StoreError::FlushTimeout => write!(f, "the store did not commit in time"),
            StoreError::Fenced { fence } => write!(
                f,
                "fenced: the lease is no longer held with fencing number {fence} (another \
                 instance is active); the batch was not written"
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Open { source, .. } | StoreError::Migration { source, .. } => Some(source),
            StoreError::Sqlite(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

/// A persistence backend. Called only from the writer thread (or at startup).
pub trait Store: Send + 'static {
    /// Applies all `ops` atomically (one transaction), in order.
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError>;
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// A cheap check that the backend could write now, run by the writer after
    /// [`BatchConfig::idle_probe`] without a batch, so an outage shows in `/health` without
    /// waiting for traffic. `None`: this backend has nothing to probe (a local file).
    fn probe(&mut self) -> Option<Result<(), StoreError>> {
        None
    }
}

/// Schema migrations, applied in order: `(version, SQL)`. Add a change as the next entry;
/// never edit an applied one.
pub const MIGRATIONS: &[(u32, &str)] = &[
    (1, MIGRATION_1),
    (2, MIGRATION_2),
    (3, MIGRATION_3),
    (4, MIGRATION_4),
];

const MIGRATION_1: &str = "
CREATE TABLE subscription (
    watcher TEXT NOT NULL,
    presentity TEXT NOT NULL,
    watcher_uri TEXT NOT NULL,
    presentity_uri TEXT NOT NULL,
    relation INTEGER NOT NULL,
    lease_left INTEGER,
    expires_at INTEGER,
    call_id TEXT,
    local_tag TEXT,
    remote_tag TEXT,
    local_cseq INTEGER,
    remote_cseq INTEGER,
    remote_target TEXT,
    route_set TEXT,
    requested INTEGER,
    PRIMARY KEY (watcher, presentity)
) WITHOUT ROWID;
CREATE TABLE watcher_relation (
    presentity TEXT NOT NULL,
    watcher TEXT NOT NULL,
    state INTEGER NOT NULL,
    PRIMARY KEY (presentity, watcher)
) WITHOUT ROWID;
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
    local_cseq INTEGER NOT NULL,
    remote_cseq INTEGER NOT NULL,
    event_id TEXT,
    active INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE publication (
    presentity TEXT NOT NULL PRIMARY KEY,
    uri TEXT NOT NULL,
    etag TEXT,
    call_id TEXT NOT NULL,
    cseq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE winfo (
    presentity TEXT NOT NULL PRIMARY KEY
) WITHOUT ROWID;
";

/// PUA mode resumes a publication after a restart: the document the server holds (X's last
/// presence sent), whether X was available, and the lease (as written, and its wall-clock end).
const MIGRATION_2: &str = "
ALTER TABLE publication ADD COLUMN body TEXT;
ALTER TABLE publication ADD COLUMN available INTEGER NOT NULL DEFAULT 1;
ALTER TABLE publication ADD COLUMN lease_left INTEGER;
ALTER TABLE publication ADD COLUMN expires_at INTEGER;
";

/// Issue 7: subscriber pairs arrive in no particular key order, and a B-tree keyed by the two
/// JIDs dirtied one page per new row, so every batch rewrote about as many 4 KB pages as it had
/// rows (WAL, then checkpoint): 29 µs of CPU per row in random order against 4 µs in key
/// order (200,000 rows, batches of 1,000). Keyed by a row id the writer hands out in order,
/// new rows append to the last page whatever their JIDs: 3.3 µs in either order. The pair's
/// uniqueness is kept by the writer's map (pair → row id) and by the shards' own tables.
const MIGRATION_3: &str = "
CREATE TABLE subscription_v3 (
    id INTEGER PRIMARY KEY,
    watcher TEXT NOT NULL,
    presentity TEXT NOT NULL,
    watcher_uri TEXT NOT NULL,
    presentity_uri TEXT NOT NULL,
    relation INTEGER NOT NULL,
    lease_left INTEGER,
    expires_at INTEGER,
    call_id TEXT,
    local_tag TEXT,
    remote_tag TEXT,
    local_cseq INTEGER,
    remote_cseq INTEGER,
    remote_target TEXT,
    route_set TEXT,
    requested INTEGER
);
INSERT INTO subscription_v3 (watcher, presentity, watcher_uri, presentity_uri, relation,
    lease_left, expires_at, call_id, local_tag, remote_tag, local_cseq, remote_cseq,
    remote_target, route_set, requested)
  SELECT watcher, presentity, watcher_uri, presentity_uri, relation, lease_left, expires_at,
    call_id, local_tag, remote_tag, local_cseq, remote_cseq, remote_target, route_set, requested
  FROM subscription ORDER BY watcher, presentity;
DROP TABLE subscription;
ALTER TABLE subscription_v3 RENAME TO subscription;
";

/// The notifier's tables, as schema 3 did for `subscription`: SIP watchers arrive in no order
/// of Call-ID or JID either, and each set-up writes one row of each.
const MIGRATION_4: &str = "
CREATE TABLE watcher_relation_v4 (
    id INTEGER PRIMARY KEY,
    presentity TEXT NOT NULL,
    watcher TEXT NOT NULL,
    state INTEGER NOT NULL
);
INSERT INTO watcher_relation_v4 (presentity, watcher, state)
  SELECT presentity, watcher, state FROM watcher_relation ORDER BY presentity, watcher;
DROP TABLE watcher_relation;
ALTER TABLE watcher_relation_v4 RENAME TO watcher_relation;
CREATE TABLE notifier_dialog_v4 (
    id INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL,
    presentity TEXT NOT NULL,
    local_tag TEXT NOT NULL,
    remote_tag TEXT NOT NULL,
    remote_uri TEXT NOT NULL,
    remote_display TEXT,
    watcher TEXT NOT NULL,
    remote_target TEXT NOT NULL,
    route_set TEXT,
    local_cseq INTEGER NOT NULL,
    remote_cseq INTEGER NOT NULL,
    event_id TEXT,
    active INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
INSERT INTO notifier_dialog_v4 (call_id, presentity, local_tag, remote_tag, remote_uri,
    remote_display, watcher, remote_target, route_set, local_cseq, remote_cseq, event_id,
    active, expires_at)
  SELECT call_id, presentity, local_tag, remote_tag, remote_uri, remote_display, watcher,
    remote_target, route_set, local_cseq, remote_cseq, event_id, active, expires_at
  FROM notifier_dialog ORDER BY call_id;
DROP TABLE notifier_dialog;
ALTER TABLE notifier_dialog_v4 RENAME TO notifier_dialog;
";

const PUT_SUBSCRIPTION: &str = "INSERT OR REPLACE INTO subscription (id, watcher, presentity,
    watcher_uri, presentity_uri, relation, lease_left, expires_at, call_id, local_tag,
    remote_tag, local_cseq, remote_cseq, remote_target, route_set, requested)
  VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";
const DELETE_SUBSCRIPTION: &str = "DELETE FROM subscription WHERE id = ?1";
const PUT_RELATION: &str = "INSERT OR REPLACE INTO watcher_relation (id, presentity, watcher,
    state) VALUES (?1, ?2, ?3, ?4)";
const PUT_DIALOG: &str = "INSERT OR REPLACE INTO notifier_dialog (id, call_id, presentity,
    local_tag, remote_tag, remote_uri, remote_display, watcher, remote_target, route_set,
    local_cseq, remote_cseq, event_id, active, expires_at)
  VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";
const DELETE_DIALOG: &str = "DELETE FROM notifier_dialog WHERE id = ?1";
const PUT_PUBLICATION: &str = "INSERT INTO publication (presentity, uri, etag, call_id, cseq,
    body, available, lease_left, expires_at)
  VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (presentity) DO UPDATE SET
    uri = excluded.uri, etag = excluded.etag, call_id = excluded.call_id, cseq = excluded.cseq,
    body = excluded.body, available = excluded.available, lease_left = excluded.lease_left,
    expires_at = excluded.expires_at";
const PUT_WINFO: &str = "INSERT INTO winfo (presentity) VALUES (?1) ON CONFLICT DO NOTHING";
const DELETE_WINFO: &str = "DELETE FROM winfo WHERE presentity = ?1";

/// The write statements, by their index in [`BatchStatements`].
const STATEMENTS: [&str; 8] = [
    PUT_SUBSCRIPTION,
    DELETE_SUBSCRIPTION,
    PUT_RELATION,
    PUT_DIALOG,
    DELETE_DIALOG,
    PUT_PUBLICATION,
    PUT_WINFO,
    DELETE_WINFO,
];
const S_PUT_SUBSCRIPTION: usize = 0;
const S_DELETE_SUBSCRIPTION: usize = 1;
const S_PUT_RELATION: usize = 2;
const S_PUT_DIALOG: usize = 3;
const S_DELETE_DIALOG: usize = 4;
const S_PUT_PUBLICATION: usize = 5;
const S_PUT_WINFO: usize = 6;
const S_DELETE_WINFO: usize = 7;

/// The statements of one batch, each taken from the connection's cache once per batch rather
/// than once per op: every `prepare_cached` trims and hashes the SQL text twice and copies it
/// into a new `Arc<str>` key (rusqlite 0.43), which cost more than binding the row.
struct BatchStatements<'c> {
    conn: &'c Connection,
    stmts: [Option<CachedStatement<'c>>; STATEMENTS.len()],
}

impl<'c> BatchStatements<'c> {
    fn new(conn: &'c Connection) -> Self {
        BatchStatements {
            conn,
            stmts: Default::default(),
        }
    }

    fn get(&mut self, which: usize) -> Result<&mut CachedStatement<'c>, StoreError> {
        let (Some(slot), Some(sql)) = (self.stmts.get_mut(which), STATEMENTS.get(which)) else {
            return Err(StoreError::Backend(format!("no statement {which}")));
        };
        let stmt = match slot.take() {
            Some(s) => s,
            None => self.conn.prepare_cached(sql)?,
        };
        Ok(slot.insert(stmt))
    }
}

/// The SQLite backend (one file per gateway instance).
pub struct SqliteStore {
    conn: Connection,
    /// Row ids of the tables keyed by a row id (schema 3 and 4), by a keyed 128-bit hash of
    /// the natural key: ~30 bytes per row instead of the key text (2^-128 per pair of keys to
    /// collide, not aimable: the hash keys are random per process).
    subscriptions: RowIds,
    relations: RowIds,
    dialogs: RowIds,
}

/// Natural key → row id of one table, and the next id to hand out.
struct RowIds {
    by_key: IdMap<(u64, u64), i64>,
    next: i64,
    /// Keys removed by the open batch: put back if it fails (the retry must find them again).
    /// Ids handed out to a failed batch stay assigned; its retry writes them.
    removed: Vec<((u64, u64), i64)>,
    a: std::hash::RandomState,
    b: std::hash::RandomState,
}

impl RowIds {
    fn key(&self, parts: &[&str]) -> (u64, u64) {
        (self.a.hash_one(parts), self.b.hash_one(parts))
    }

    /// The row id of `key`, a new one (after every id in use) for a new key.
    fn id_for(&mut self, key: (u64, u64)) -> i64 {
        let next = &mut self.next;
        *self.by_key.entry(key).or_insert_with(|| {
            let id = *next;
            *next += 1;
            id
        })
    }

    /// The row id of `key` if it has one; the key is forgotten (put back by `finish_batch` if
    /// the batch fails).
    fn remove(&mut self, key: (u64, u64)) -> Option<i64> {
        let id = self.by_key.remove(&key)?;
        self.removed.push((key, id));
        Some(id)
    }

    /// The open batch committed (`true`) or failed.
    fn finish_batch(&mut self, committed: bool) {
        for (key, id) in self.removed.drain(..) {
            if !committed {
                self.by_key.insert(key, id);
            }
        }
    }

    /// Reads the id and natural key (`key_columns`, text) of every row of `table`. A key
    /// stored twice (not written by this code, which keeps one row per key) keeps its newest
    /// row; the older ones are deleted.
    fn load(conn: &Connection, table: &str, key_columns: &[&str]) -> Result<RowIds, StoreError> {
        let mut rows = RowIds {
            by_key: IdMap::default(),
            next: 1,
            removed: Vec::new(),
            a: std::hash::RandomState::new(),
            b: std::hash::RandomState::new(),
        };
        let mut stale = Vec::new();
        {
            let sql = format!(
                "SELECT id, {} FROM {table} ORDER BY id",
                key_columns.join(", ")
            );
            let mut stmt = conn.prepare(&sql)?;
            let mut q = stmt.query([])?;
            let mut texts: Vec<String> = Vec::with_capacity(key_columns.len());
            while let Some(r) = q.next()? {
                let id: i64 = r.get(0)?;
                texts.clear();
                for i in 1..=key_columns.len() {
                    texts.push(r.get(i)?);
                }
                let parts: Vec<&str> = texts.iter().map(String::as_str).collect();
                if let Some(old) = rows.by_key.insert(rows.key(&parts), id) {
                    stale.push(old);
                }
                rows.next = rows.next.max(id.saturating_add(1));
            }
        }
        for id in stale {
            tracing::warn!(
                table,
                id,
                "row stored twice under one key; the older is deleted"
            );
            conn.execute(&format!("DELETE FROM {table} WHERE id = ?1"), [id])?;
        }
        Ok(rows)
    }
}

impl SqliteStore {
    /// Opens (or creates) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let wrap = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(wrap)?;
        Self::setup(conn, true).map_err(|e| match e {
            StoreError::Sqlite(source) => wrap(source),
            other => other,
        })
    }

    /// A private in-memory database (tests, or running without persistence).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::setup(conn, false)
    }

    fn setup(mut conn: Connection, file: bool) -> Result<Self, StoreError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        if file {
            // Returns the mode in force; "wal" unless the file system cannot do it.
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(mode = %mode, "sqlite store is not in WAL mode");
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.set_prepared_statement_cache_capacity(32);
        migrate(&mut conn)?;
        Ok(SqliteStore {
            subscriptions: RowIds::load(&conn, "subscription", &["watcher", "presentity"])?,
            relations: RowIds::load(&conn, "watcher_relation", &["presentity", "watcher"])?,
            dialogs: RowIds::load(&conn, "notifier_dialog", &["call_id"])?,
            conn,
        })
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(current_version(&self.conn)?)
    }
}

fn current_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )
}

/// Applies every migration newer than the recorded version, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER NOT NULL PRIMARY KEY,
            applied_at INTEGER NOT NULL)",
    )?;
    let found = current_version(conn)?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    for &(version, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?1, unixepoch())",
                [version],
            )?;
            tx.commit()
        };
        run(conn).map_err(|source| StoreError::Migration { version, source })?;
        tracing::info!(version, "store schema migrated");
    }
    Ok(())
}

fn relation_code(r: Relation) -> u8 {
    match r {
        Relation::Pending => 0,
        Relation::Approved => 1,
        Relation::Unknown => 2,
    }
}

fn relation_from(code: i64) -> Result<Relation, String> {
    match code {
        0 => Ok(Relation::Pending),
        1 => Ok(Relation::Approved),
        2 => Ok(Relation::Unknown),
        other => Err(format!("unknown relation code {other}")),
    }
}

fn watcher_code(r: WatcherRelation) -> u8 {
    match r {
        WatcherRelation::Pending => 0,
        WatcherRelation::Approved => 1,
        WatcherRelation::Denied => 2,
    }
}

fn watcher_from(code: i64) -> Result<WatcherRelation, String> {
    match code {
        0 => Ok(WatcherRelation::Pending),
        1 => Ok(WatcherRelation::Approved),
        2 => Ok(WatcherRelation::Denied),
        other => Err(format!("unknown watcher relation code {other}")),
    }
}

/// JSON array text, or NULL for an empty route set (the usual case: keeps rows small).
fn encode_routes(routes: &[String]) -> Result<Option<String>, StoreError> {
    if routes.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(routes)
        .map(Some)
        .map_err(|e| StoreError::Encode(e.to_string()))
}

fn decode_routes(text: Option<String>) -> Result<Vec<String>, String> {
    match text {
        None => Ok(Vec::new()),
        Some(t) => serde_json::from_str(&t).map_err(|e| format!("route_set {t:?}: {e}")),
    }
}

impl Store for SqliteStore {
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let r = self.apply_batch(ops);
        for rows in [
            &mut self.subscriptions,
            &mut self.relations,
            &mut self.dialogs,
        ] {
            rows.finish_batch(r.is_ok());
        }
        r
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        load_all(&self.conn)
    }
}

impl SqliteStore {
    /// One transaction for `ops`; the row-id maps are settled by the caller.
    fn apply_batch(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let (subs, relations, dialogs) = (
            &mut self.subscriptions,
            &mut self.relations,
            &mut self.dialogs,
        );
        let tx = self.conn.transaction()?;
        let mut stmts = BatchStatements::new(&tx);
        for op in ops {
            match op {
                StoreOp::PutSubscription {
                    rec,
                    expires_at_unix,
                } => {
                    let d = rec.dialog.as_ref();
                    let routes = match d {
                        Some(d) => encode_routes(&d.route_set)?,
                        None => None,
                    };
                    let id = subs.id_for(
                        subs.key(&[rec.pair.watcher.as_str(), rec.pair.presentity.as_str()]),
                    );
                    stmts.get(S_PUT_SUBSCRIPTION)?.execute(params![
                        id,
                        rec.pair.watcher.as_str(),
                        rec.pair.presentity.as_str(),
                        rec.pair.watcher_uri,
                        rec.pair.presentity_uri,
                        relation_code(rec.relation),
                        rec.lease_left,
                        expires_at_unix,
                        d.map(|d| &d.call_id),
                        d.map(|d| &d.local_tag),
                        d.and_then(|d| d.remote_tag.as_ref()),
                        d.map(|d| d.local_cseq),
                        d.and_then(|d| d.remote_cseq),
                        d.and_then(|d| d.remote_target.as_ref()),
                        routes,
                        d.map(|d| d.requested),
                    ])?;
                }
                StoreOp::DeleteSubscription {
                    watcher,
                    presentity,
                } => {
                    if let Some(id) =
                        subs.remove(subs.key(&[watcher.as_str(), presentity.as_str()]))
                    {
                        stmts.get(S_DELETE_SUBSCRIPTION)?.execute(params![id])?;
                    }
                }
                StoreOp::PutRelation {
                    presentity,
                    watcher,
                    state,
                } => {
                    let id =
                        relations.id_for(relations.key(&[presentity.as_str(), watcher.as_str()]));
                    stmts.get(S_PUT_RELATION)?.execute(params![
                        id,
                        presentity.as_str(),
                        watcher.as_str(),
                        watcher_code(*state)
                    ])?;
                }
                StoreOp::PutNotifierDialog { presentity, dialog } => {
                    let d = dialog;
                    let id = dialogs.id_for(dialogs.key(&[d.call_id.as_str()]));
                    stmts.get(S_PUT_DIALOG)?.execute(params![
                        id,
                        d.call_id,
                        presentity.as_str(),
                        d.local_tag,
                        d.remote_tag,
                        d.remote_uri,
                        d.remote_display,
                        d.watcher.as_str(),
                        d.remote_target,
                        encode_routes(&d.route_set)?,
                        d.local_cseq,
                        d.remote_cseq,
                        d.event_id,
                        d.active,
                        d.expires_at_unix,
                    ])?;
                }
                StoreOp::DeleteNotifierDialog { call_id } => {
                    if let Some(id) = dialogs.remove(dialogs.key(&[call_id.as_str()])) {
                        stmts.get(S_DELETE_DIALOG)?.execute(params![id])?;
                    }
                }
                StoreOp::PutPublication {
                    presentity,
                    rec,
                    expires_at_unix,
                } => {
                    stmts.get(S_PUT_PUBLICATION)?.execute(params![
                        presentity.as_str(),
                        rec.uri,
                        rec.etag,
                        rec.call_id,
                        rec.cseq,
                        rec.body,
                        rec.available,
                        rec.lease_left,
                        expires_at_unix,
                    ])?;
                }
                StoreOp::PutWinfo { presentity, wanted } => {
                    let which = if *wanted { S_PUT_WINFO } else { S_DELETE_WINFO };
                    stmts.get(which)?.execute([presentity.as_str()])?;
                }
            }
        }
        drop(stmts);
        tx.commit()?;
        Ok(())
    }
}

/// Every table, for the restore at start.
fn load_all(conn: &Connection) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        subscriptions: load_rows(
            conn,
            "subscription",
            "SELECT watcher, presentity, watcher_uri, presentity_uri, relation, lease_left,
                   expires_at, call_id, local_tag, remote_tag, local_cseq, remote_cseq,
                   remote_target, route_set, requested
                 FROM subscription ORDER BY watcher, presentity",
            |r| rows::subscription(r),
        )?,
        relations: load_rows(
            conn,
            "watcher_relation",
            "SELECT presentity, watcher, state FROM watcher_relation
                 ORDER BY presentity, watcher",
            |r| rows::relation(r),
        )?,
        notifier_dialogs: load_rows(
            conn,
            "notifier_dialog",
            "SELECT call_id, presentity, local_tag, remote_tag, remote_uri, remote_display,
                   watcher, remote_target, route_set, local_cseq, remote_cseq, event_id, active,
                   expires_at
                 FROM notifier_dialog ORDER BY call_id",
            |r| rows::dialog(r),
        )?,
        publications: load_rows(
            conn,
            "publication",
            "SELECT presentity, uri, etag, call_id, cseq, body, available, lease_left,
                   expires_at
                 FROM publication ORDER BY presentity",
            |r| rows::publication(r),
        )?,
        winfo: load_rows(
            conn,
            "winfo",
            "SELECT presentity FROM winfo ORDER BY presentity",
            |r| rows::winfo(r),
        )?,
    })
}

/// Runs `sql` and converts each row; a row that does not convert is logged and skipped so
/// one bad row does not stop the gateway from resuming everything else.
fn load_rows<T>(
    conn: &Connection,
    table: &str,
    sql: &str,
    convert: impl Fn(&Row<'_>) -> Result<T, String>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        match convert(row) {
            Ok(v) => out.push(v),
            Err(reason) => {
                let key: Option<String> = row.get(0).ok();
                tracing::error!(table, key = ?key, %reason, "skipping a stored row that does not load");
            }
        }
    }
    Ok(out)
}

/// Opens the store at `path` (creating and migrating it if needed) and loads it: for startup.
pub fn load_snapshot(path: &Path) -> Result<Snapshot, StoreError> {
    SqliteStore::open(path)?.load()
}

/// The backend the configuration names (`store.url` non-empty: PostgreSQL, else the SQLite
/// file `store.path`), opened and migrated, with what it holds now: for startup. PostgreSQL is
/// opened on a thread of its own (its client runs a runtime, which cannot start inside the
/// caller's actix one).
/// With `fence` (active/standby), every PostgreSQL batch carries it; `pool_size`: the
/// PostgreSQL connections (`store.pool_size`).
pub fn open_configured(
    path: &str,
    url: &str,
    pool_size: usize,
    fence: Option<Fence>,
) -> Result<(Box<dyn Store>, Snapshot), StoreError> {
    if url.is_empty() {
        let path = Path::new(path);
        let snapshot = load_snapshot(path)?;
        return Ok((Box::new(SqliteStore::open(path)?), snapshot));
    }
    let url = url.to_owned();
    let opened = std::thread::Builder::new()
        .name("store-open".to_owned())
        .spawn(move || {
            let mut store = PostgresStore::open_pooled(&url, pool_size)?;
            if let Some(f) = fence {
                store = store.with_fence(f);
            }
            let snapshot = store.load()?;
            Ok::<(Box<dyn Store>, Snapshot), StoreError>((Box::new(store), snapshot))
        })
        .map_err(|e| StoreError::Backend(format!("cannot start a thread: {e}")))?;
    opened.join().unwrap_or(Err(StoreError::WriterGone))
}

/// When the writer commits a batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    /// Commit once this many ops are waiting.
    pub max_ops: usize,
    /// Commit at most this long after the first op of a batch arrived.
    pub max_delay: Duration,
    /// First retry delay after a failed batch; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Attempts for the last batch once [`StoreHandle::close`] was called.
    pub attempts_at_close: u32,
    /// Commit at most this long after a batch opened when someone waits for it
    /// ([`StoreHandle::after_commit`]): outputs a peer must not see before their record is
    /// durable wait this plus the commit (group commit: one transaction for every waiter).
    pub durable_wait: Duration,
    /// Ops sent and not yet committed beyond which [`StoreHandle::accepting`] says no: new
    /// subscriptions are refused instead of queueing promises the store cannot keep.
    pub max_queued: u64,
    /// Without a batch for this long, the writer probes the backend ([`Store::probe`]).
    pub idle_probe: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_ops: 1000,
            max_delay: Duration::from_millis(20),
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(5),
            attempts_at_close: 5,
            durable_wait: Duration::from_millis(2),
            max_queued: 200_000,
            idle_probe: Duration::from_secs(1),
        }
    }
}

/// Counters of the writer, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Ops handed to [`StoreHandle::send`] (`sent - ops - dropped` are still queued).
    pub sent: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Ops received by the writer and committed (before coalescing).
    pub ops: u64,
    /// Ops dropped by coalescing (a later op on the same key replaced them).
    pub coalesced: u64,
    /// Failed attempts to commit a batch.
    pub failures: u64,
    /// Ops given up: their batch still failed while closing, or they came after `close`.
    pub dropped: u64,
}

/// What `/health` and the admission checks need to know of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreHealth {
    /// The writer thread runs (false once it ended, by close or by a panic).
    pub writer_alive: bool,
    /// The last attempt to commit failed (disk full, read-only file, ...): the writer retries
    /// with backoff until it works again.
    pub failing: bool,
    /// The error of the last failed attempt, while failing.
    pub last_error: Option<String>,
    /// Ops sent and not yet committed (or dropped).
    pub queued: u64,
}

impl StoreHealth {
    /// Whether the store keeps what it is given: alive, writing, and not too far behind.
    pub fn ok(&self, max_queued: u64) -> bool {
        self.writer_alive && !self.failing && self.queued <= max_queued
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    batches: AtomicU64,
    ops: AtomicU64,
    coalesced: AtomicU64,
    failures: AtomicU64,
    dropped: AtomicU64,
    failing: std::sync::atomic::AtomicBool,
    writer_alive: std::sync::atomic::AtomicBool,
    last_error: std::sync::Mutex<Option<String>>,
}

/// Marks the writer dead when its thread ends, however it ends (a panic included).
struct AliveGuard(Arc<Counters>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.writer_alive.store(false, Ordering::Release);
        if std::thread::panicking() {
            tracing::error!("store writer thread panicked: nothing is written any more");
        }
    }
}

// Nearly every message is an `Op`: boxing it would cost an allocation per op for nothing.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Op(StoreOp),
    /// Reply once everything before it is committed.
    Flush(SyncSender<()>),
    /// Like `Flush`, then stop.
    Close(SyncSender<()>),
    /// Run once every op sent before it is committed (from the writer thread).
    AfterCommit(Box<dyn FnOnce() + Send>),
    /// Commit what is open, then read everything back (a restarted actor's state).
    Load(SyncSender<Result<Snapshot, StoreError>>),
}

/// A cloneable handle used by actors: [`StoreHandle::send`] never blocks; one writer thread
/// commits the ops in batches.
#[derive(Clone)]
pub struct StoreHandle {
    tx: Sender<Msg>,
    counters: Arc<Counters>,
    max_queued: u64,
}

impl StoreHandle {
    /// Starts the writer thread with the default batching (1000 ops or 20 ms).
    pub fn start(store: Box<dyn Store>) -> (StoreHandle, JoinHandle<()>) {
        Self::start_with(store, BatchConfig::default())
    }

    pub fn start_with(store: Box<dyn Store>, cfg: BatchConfig) -> (StoreHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        counters.writer_alive.store(true, Ordering::Release);
        let writer = Writer {
            store,
            cfg,
            counters: Arc::clone(&counters),
        };
        // A thread of its own: SQLite calls block and must not stall the actix arbiters.
        let join = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || {
                let _alive = AliveGuard(Arc::clone(&writer.counters));
                writer.run(rx)
            });
        let join = match join {
            Ok(j) => j,
            // Cannot spawn a thread at startup: nothing sensible to run without one.
            Err(e) => panic!("cannot start the store writer thread: {e}"),
        };
        let max_queued = cfg.max_queued;
        (
            StoreHandle {
                tx,
                counters,
                max_queued,
            },
            join,
        )
    }

    /// Queues `op`; never blocks. After [`StoreHandle::close`] the op is dropped (logged).
    pub fn send(&self, op: StoreOp) {
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Msg::Op(op)).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("store writer stopped; dropping a store op");
        }
    }

    /// Runs `f` on the writer thread once every op this thread sent before the call is
    /// committed (group commit: the batch is committed within `durable_wait`). Never runs if
    /// those ops are given up (close with a failing database, or the writer is gone).
    pub fn after_commit(&self, f: Box<dyn FnOnce() + Send>) {
        if self.tx.send(Msg::AfterCommit(f)).is_err() {
            tracing::warn!("store writer stopped; a commit notification is lost");
        }
    }

    /// Blocks until the ops sent before the call are committed, then reads the whole store
    /// back on the writer (what a restarted actor restores). Not for actor threads.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let (reply, done) = mpsc::sync_channel(1);
        self.tx
            .send(Msg::Load(reply))
            .map_err(|_| StoreError::WriterGone)?;
        done.recv().map_err(|_| StoreError::WriterGone)?
    }

    /// The store's state, for `/health` and metrics.
    pub fn health(&self) -> StoreHealth {
        let c = &self.counters;
        let sent = c.sent.load(Ordering::Relaxed);
        let done = c.ops.load(Ordering::Relaxed) + c.dropped.load(Ordering::Relaxed);
        let failing = c.failing.load(Ordering::Acquire);
        StoreHealth {
            writer_alive: c.writer_alive.load(Ordering::Acquire),
            failing,
            last_error: if failing {
                c.last_error.lock().ok().and_then(|e| e.clone())
            } else {
                None
            },
            queued: sent.saturating_sub(done),
        }
    }

    /// Whether new subscriptions may be accepted: the store writes and is not too far behind.
    /// When not, callers refuse with a retry hint (SIP 503 + Retry-After, XMPP
    /// `resource-constraint`): nothing is promised that the store could not keep.
    pub fn accepting(&self) -> bool {
        let c = &self.counters;
        if c.failing.load(Ordering::Relaxed) || !c.writer_alive.load(Ordering::Relaxed) {
            return false;
        }
        let sent = c.sent.load(Ordering::Relaxed);
        let done = c.ops.load(Ordering::Relaxed) + c.dropped.load(Ordering::Relaxed);
        sent.saturating_sub(done) <= self.max_queued
    }

    /// Blocks until every op sent so far (by any clone) is committed.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (reply, done) = mpsc::sync_channel(1);
        self.tx
            .send(Msg::Flush(reply))
            .map_err(|_| StoreError::WriterGone)?;
        done.recv().map_err(|_| StoreError::WriterGone)
    }

    /// Like [`StoreHandle::flush`], giving up after `timeout` (the writer may be retrying).
    pub fn flush_timeout(&self, timeout: Duration) -> Result<(), StoreError> {
        let (reply, done) = mpsc::sync_channel(1);
        self.tx
            .send(Msg::Flush(reply))
            .map_err(|_| StoreError::WriterGone)?;
        done.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => StoreError::FlushTimeout,
            RecvTimeoutError::Disconnected => StoreError::WriterGone,
        })
    }

    /// Commits everything sent so far and stops the writer (graceful shutdown). If the last
    /// batch keeps failing it is dropped after `attempts_at_close` tries (logged).
    pub fn close(self) {
        let (reply, done) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Close(reply)).is_ok() {
            let _ = done.recv();
        }
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            sent: self.counters.sent.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            ops: self.counters.ops.load(Ordering::Relaxed),
            coalesced: self.counters.coalesced.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
        }
    }

    /// Transactions committed so far.
    pub fn batches(&self) -> u64 {
        self.counters.batches.load(Ordering::Relaxed)
    }
}

struct Writer {
    store: Box<dyn Store>,
    cfg: BatchConfig,
    counters: Arc<Counters>,
}

/// The writer's inbox: messages read while a failed batch waits for its retry are kept in
/// `backlog`, so a `close` is noticed even while the database keeps failing.
struct Inbox {
    rx: Receiver<Msg>,
    backlog: VecDeque<Msg>,
    /// A `Close` was received or every handle is gone: retries are bounded from now on.
    closing: bool,
    disconnected: bool,
}

impl Inbox {
    /// The first message of a batch, waiting at most `wait` (`None`: without limit); `Ok(None)`
    /// when every handle is gone, `Err(())` when `wait` passed quietly. Blocks in the channel:
    /// no batch is open, so there is no burst to drain.
    fn first(&mut self, wait: Option<Duration>) -> Result<Option<Msg>, ()> {
        let Some(wait) = wait else {
            return Ok(self.next(None));
        };
        if let Some(m) = self.backlog.pop_front() {
            return Ok(Some(m));
        }
        if self.disconnected {
            return Ok(None);
        }
        match self.rx.recv_timeout(wait) {
            Ok(m) => Ok(Some(m)),
            Err(RecvTimeoutError::Timeout) => Err(()),
            Err(RecvTimeoutError::Disconnected) => {
                self.disconnected = true;
                self.closing = true;
                Ok(None)
            }
        }
    }

    /// The next message, waiting at most until `due` (`None`: wait without limit).
    fn next(&mut self, due: Option<Instant>) -> Option<Msg> {
        if let Some(m) = self.backlog.pop_front() {
            return Some(m);
        }
        if self.disconnected {
            return None;
        }
        let got = match due {
            None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(due) => Self::poll_until(&self.rx, due),
        };
        match got {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                self.disconnected = true;
                self.closing = true;
                None
            }
        }
    }

    /// The next message before `due`. While a batch is open the writer naps in short steps and
    /// drains what arrived, rather than blocking in `recv_timeout`: a blocked receiver makes
    /// every `send` a futex wake-up and a context switch, one per op in a burst of thousands.
    fn poll_until(rx: &Receiver<Msg>, due: Instant) -> Result<Msg, RecvTimeoutError> {
        const NAP: Duration = Duration::from_millis(2);
        loop {
            match rx.try_recv() {
                Ok(m) => return Ok(m),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            std::thread::sleep(left.min(NAP));
        }
    }

    /// Sleeps `delay` while reading messages into the backlog.
    fn wait(&mut self, delay: Duration) {
        let due = Instant::now() + delay;
        loop {
            if self.disconnected {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                return;
            }
            match self
                .rx
                .recv_timeout(due.saturating_duration_since(Instant::now()))
            {
                Ok(m) => {
                    if matches!(m, Msg::Close(_)) {
                        self.closing = true;
                    }
                    self.backlog.push_back(m);
                }
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => {
                    self.disconnected = true;
                    self.closing = true;
                }
            }
        }
    }
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut inbox = Inbox {
            rx,
            backlog: VecDeque::new(),
            closing: false,
            disconnected: false,
        };
        let mut batch: Vec<StoreOp> = Vec::new();
        let mut waiters = Waiters::default();
        let mut stop = false;
        // Until the backend says it has nothing to probe.
        let mut probing = true;
        while !stop {
            // Wait for the first message of a batch (probing the backend while idle), then
            // collect until full, due or flushed.
            let first = loop {
                match inbox.first(probing.then_some(self.cfg.idle_probe)) {
                    Ok(m) => break m,
                    Err(()) => probing = self.probe(),
                }
            };
            let Some(first) = first else {
                break;
            };
            let opened = Instant::now();
            let mut due = opened + self.cfg.max_delay;
            let mut now = take(first, &mut batch, &mut waiters, &mut stop);
            while !now && batch.len() < self.cfg.max_ops {
                if !waiters.after_commit.is_empty() {
                    // Someone holds outputs back until this batch is durable: group commit.
                    due = due.min(opened + self.cfg.durable_wait);
                }
                match inbox.next(Some(due)) {
                    Some(m) => now = take(m, &mut batch, &mut waiters, &mut stop),
                    None => break,
                }
            }
            // Every handle dropped without close: commit what we have and stop.
            stop |= inbox.disconnected && inbox.backlog.is_empty();
            inbox.closing |= stop;
            let batch_now = crate::batch::take_sized(&mut batch);
            let committed = self.commit(batch_now, &mut inbox, &mut waiters, &mut stop);
            for w in waiters.flush.drain(..) {
                let _ = w.send(());
            }
            for w in waiters.load.drain(..) {
                let _ = w.send(self.store.load());
            }
            if committed {
                for f in waiters.after_commit.drain(..) {
                    f();
                }
            } else if !waiters.after_commit.is_empty() {
                tracing::error!(
                    waiting = waiters.after_commit.len(),
                    "store batch given up: outputs held for it are never released"
                );
                waiters.after_commit.clear();
            }
        }
        let late = inbox
            .backlog
            .iter()
            .chain(inbox.rx.try_iter().collect::<Vec<_>>().iter())
            .filter(|m| matches!(m, Msg::Op(_)))
            .count() as u64;
        if late > 0 {
            tracing::warn!(ops = late, "store ops sent after close were dropped");
            self.counters.dropped.fetch_add(late, Ordering::Relaxed);
        }
        tracing::debug!("store writer stopped");
    }

    /// Probes the idle backend and sets the health it shows (a failed probe counts as a failed
    /// attempt, a good one clears the failure). Returns whether the backend can be probed.
    fn probe(&mut self) -> bool {
        match self.store.probe() {
            None => false,
            Some(Ok(())) => {
                if self.counters.failing.swap(false, Ordering::AcqRel) {
                    tracing::warn!("store reachable again: new subscriptions are accepted");
                    metrics::gauge!("pua_xmpp_store_writable").set(1.0);
                }
                true
            }
            Some(Err(e)) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("pua_xmpp_store_failures_total").increment(1);
                if let Ok(mut last) = self.counters.last_error.lock() {
                    *last = Some(e.to_string());
                }
                if !self.counters.failing.swap(true, Ordering::AcqRel) {
                    metrics::gauge!("pua_xmpp_store_writable").set(0.0);
                    tracing::error!(error = %e, "store probe failed while idle: not writable");
                }
                true
            }
        }
    }

    /// Applies one batch, retrying with backoff until it commits or, once closing, until
    /// `attempts_at_close` attempts have failed (then the batch is dropped, logged). Returns
    /// whether it committed. While it fails, what arrives joins the batch (its ops coalesced
    /// by key, its waiters with the batch's): a store that cannot write holds one op per key,
    /// so its memory stays bounded by the live state however long the outage.
    fn commit(
        &mut self,
        batch: Vec<StoreOp>,
        inbox: &mut Inbox,
        waiters: &mut Waiters,
        stop: &mut bool,
    ) -> bool {
        if batch.is_empty() {
            return true;
        }
        let mut received = batch.len() as u64;
        let mut ops = coalesce(batch);
        let mut delay = self.cfg.min_backoff;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let started = Instant::now();
            match self.store.apply(&ops) {
                Ok(()) => {
                    metrics::histogram!("pua_xmpp_store_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                    if self.counters.failing.swap(false, Ordering::AcqRel) {
                        tracing::warn!("store writes again: new subscriptions are accepted");
                        metrics::gauge!("pua_xmpp_store_writable").set(1.0);
                    }
                    self.counters.batches.fetch_add(1, Ordering::Relaxed);
                    self.counters.ops.fetch_add(received, Ordering::Relaxed);
                    self.counters
                        .coalesced
                        .fetch_add(received - ops.len() as u64, Ordering::Relaxed);
                    if attempts > 1 {
                        tracing::warn!(
                            attempts,
                            ops = ops.len(),
                            "store batch committed after retries"
                        );
                    }
                    let c = &self.counters;
                    let queued = c.sent.load(Ordering::Relaxed).saturating_sub(
                        c.ops.load(Ordering::Relaxed) + c.dropped.load(Ordering::Relaxed),
                    );
                    metrics::gauge!("pua_xmpp_store_queue_depth").set(queued as f64);
                    return true;
                }
                Err(e) => {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("pua_xmpp_store_failures_total").increment(1);
                    if let Ok(mut last) = self.counters.last_error.lock() {
                        *last = Some(e.to_string());
                    }
                    if !self.counters.failing.swap(true, Ordering::AcqRel) {
                        metrics::gauge!("pua_xmpp_store_writable").set(0.0);
                    }
                    if inbox.closing && attempts >= self.cfg.attempts_at_close {
                        tracing::error!(
                            error = %e,
                            attempts,
                            lost_ops = ops.len(),
                            "store write failed while closing; dropping the batch"
                        );
                        self.counters.dropped.fetch_add(received, Ordering::Relaxed);
                        return false;
                    }
                    tracing::error!(
                        error = %e,
                        attempts,
                        ops = ops.len(),
                        retry_in_ms = delay.as_millis() as u64,
                        "store write failed; retrying the batch"
                    );
                    inbox.wait(delay);
                    delay = (delay * 2).min(self.cfg.max_backoff);
                    let mut more = Vec::new();
                    while let Some(m) = inbox.backlog.pop_front() {
                        take(m, &mut more, waiters, stop);
                    }
                    if !more.is_empty() {
                        received += more.len() as u64;
                        ops.append(&mut more);
                        ops = coalesce(ops);
                    }
                }
            }
        }
    }
}

/// Who waits for the open batch.
#[derive(Default)]
struct Waiters {
    /// [`StoreHandle::flush`] and `close` callers: told when the batch ends, committed or not.
    flush: Vec<SyncSender<()>>,
    /// [`StoreHandle::after_commit`]: run only if it committed.
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
    /// [`StoreHandle::load`]: read back once the batch ended.
    load: Vec<SyncSender<Result<Snapshot, StoreError>>>,
}

/// Adds a message to the batch; true when the batch must be committed now.
fn take(msg: Msg, batch: &mut Vec<StoreOp>, waiters: &mut Waiters, stop: &mut bool) -> bool {
    match msg {
        Msg::Op(op) => {
            batch.push(op);
            false
        }
        Msg::AfterCommit(f) => {
            waiters.after_commit.push(f);
            false
        }
        Msg::Flush(w) => {
            waiters.flush.push(w);
            true
        }
        Msg::Load(w) => {
            waiters.load.push(w);
            true
        }
        Msg::Close(w) => {
            waiters.flush.push(w);
            *stop = true;
            true
        }
    }
}

/// `lease_left` recomputed at `now_unix` from the stored wall-clock lease end (0 once it has
/// passed): what [`pua_xmpp::subscriber::Subscription::restore`] needs after a restart.
pub fn lease_left_at(expires_at_unix: Option<i64>, now_unix: i64) -> Option<u32> {
    expires_at_unix.map(|end| u32::try_from((end - now_unix).max(0)).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pua_xmpp::subscriber::{Dialog, Pair};

    fn jid(s: &str) -> BareJid {
        match BareJid::new(s) {
            Ok(j) => j,
            Err(e) => panic!("test JID {s}: {e}"),
        }
    }

    /// A batch that fails after deleting a pair rolls back; its retry must still find the pair
    /// (the row-id map puts it back) and delete the row.
    #[test]
    fn a_failed_batch_keeps_the_row_ids_of_what_it_deleted() {
        let mut store = SqliteStore::open_in_memory().unwrap();
        store
            .apply(&[StoreOp::subscription(record(1, true), 1000)])
            .unwrap();
        let p = record(1, true).pair;
        let batch = [
            StoreOp::DeleteSubscription {
                watcher: p.watcher,
                presentity: p.presentity,
            },
            StoreOp::PutWinfo {
                presentity: jid("alice@xmpp.test"),
                wanted: true,
            },
        ];
        store
            .conn
            .execute_batch("ALTER TABLE winfo RENAME TO winfo_away")
            .unwrap();
        assert!(store.apply(&batch).is_err());
        let rows: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM subscription", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        store
            .conn
            .execute_batch("ALTER TABLE winfo_away RENAME TO winfo")
            .unwrap();
        store.apply(&batch).unwrap();
        let snap = store.load().unwrap();
        assert_eq!(snap.subscriptions, vec![]);
        assert_eq!(snap.winfo, vec![jid("alice@xmpp.test")]);
    }

    fn record(i: u32, dialog: bool) -> SubscriptionRecord {
        SubscriptionRecord {
            pair: Pair {
                watcher: jid(&format!("w{i}@example.net")),
                watcher_uri: format!("sip:w{i}*example.net@xmpp.example.com"),
                presentity: jid(&format!("p{i}*example.com@sip.example.net")),
                presentity_uri: format!("sip:p{i}@example.com"),
            },
            relation: Relation::Approved,
            dialog: dialog.then(|| Dialog {
                call_id: format!("c{i}@gw"),
                local_tag: format!("gw-{i}"),
                remote_tag: Some(format!("r{i}")),
                local_cseq: i,
                remote_cseq: Some(i + 1),
                remote_target: Some(format!("sip:p{i}@192.0.2.4")),
                route_set: vec!["<sip:p1.example.com;lr>".to_owned()],
                requested: 3600,
            }),
            lease_left: Some(60),
        }
    }

    /// One statement serves every op of its kind in a batch: each op binds all of its own
    /// values (a row without a dialog after one with a dialog gets NULLs, not the previous
    /// row's), and a put, a delete and a put again of one key in one batch end as a put.
    #[test]
    fn issue_6_statements_reused_within_a_batch_bind_each_row_afresh() {
        let mut store = match SqliteStore::open_in_memory() {
            Ok(s) => s,
            Err(e) => panic!("open: {e}"),
        };
        let x = jid("romeo@example.net");
        let ops = vec![
            StoreOp::subscription(record(1, true), 1000),
            StoreOp::subscription(record(2, false), 1000),
            StoreOp::subscription(record(3, true), 1000),
            StoreOp::DeleteSubscription {
                watcher: jid("w3@example.net"),
                presentity: jid("p3*example.com@sip.example.net"),
            },
            StoreOp::PutWinfo {
                presentity: x.clone(),
                wanted: true,
            },
            StoreOp::PutWinfo {
                presentity: x.clone(),
                wanted: false,
            },
            StoreOp::PutWinfo {
                presentity: x.clone(),
                wanted: true,
            },
        ];
        if let Err(e) = store.apply(&ops) {
            panic!("apply: {e}");
        }
        let snap = match store.load() {
            Ok(s) => s,
            Err(e) => panic!("load: {e}"),
        };
        assert_eq!(
            snap.subscriptions,
            vec![
                (record(1, true), Some(1060)),
                (record(2, false), Some(1060)),
            ]
        );
        assert_eq!(snap.winfo, vec![x]);
        // A second batch takes the statements from the connection's cache again.
        let more = vec![StoreOp::subscription(record(3, false), 2000)];
        if let Err(e) = store.apply(&more) {
            panic!("apply: {e}");
        }
        let snap = match store.load() {
            Ok(s) => s,
            Err(e) => panic!("load: {e}"),
        };
        assert_eq!(snap.subscriptions.len(), 3);
        assert_eq!(
            snap.subscriptions.get(2),
            Some(&(record(3, false), Some(2060)))
        );
    }
}
