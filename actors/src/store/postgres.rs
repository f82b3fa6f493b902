//! The PostgreSQL backend (`store.url`, issue 17): the same records and the same writer thread
//! as SQLite, for two gateway instances sharing one database (active/standby, see `lease`).
//!
//! The writer thread owns one connection (a pool of one: there is one writer, and a pool would
//! only add connections the database must keep), driven by a current-thread tokio runtime that
//! lives on that thread. A batch is one transaction whose statements, prepared once per
//! connection, are sent pipelined: one round trip for the batch, not one per op. A failed
//! batch (the server restarted, the network broke, the statement timed out) drops the
//! connection; the writer's retry with back-off reconnects on the next attempt, so while the
//! database is away `/health` says the store is not writable, the batch is kept coalesced by
//! key, and new subscriptions are refused, exactly as with a SQLite file that cannot be written.
//!
//! With a [`Fence`], every batch first checks, in its own transaction, that the lease row still
//! carries this instance's fencing number (`SELECT … FOR SHARE`): a taker-over bumps the number
//! with an `UPDATE` of that row, which waits for a batch holding the share lock to end, and a
//! batch that starts after the bump finds no row and rolls back ([`StoreError::Fenced`]). So a
//! paused old leader can never write over the new one.

use super::{
    encode_routes, relation_code, rows, watcher_code, Snapshot, Store, StoreError, StoreOp,
};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

/// How long one batch (or one load) may take before the connection is presumed dead: a
/// network split leaves a socket that neither answers nor fails.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection attempt may take (the writer retries with back-off).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
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

const PUT_SUBSCRIPTION: &str = "INSERT INTO subscription (watcher, presentity, watcher_uri,
    presentity_uri, relation, lease_left, expires_at, call_id, local_tag, remote_tag,
    local_cseq, remote_cseq, remote_target, route_set, requested)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
  ON CONFLICT (watcher, presentity) DO UPDATE SET watcher_uri = EXCLUDED.watcher_uri,
    presentity_uri = EXCLUDED.presentity_uri, relation = EXCLUDED.relation,
    lease_left = EXCLUDED.lease_left, expires_at = EXCLUDED.expires_at,
    call_id = EXCLUDED.call_id, local_tag = EXCLUDED.local_tag,
    remote_tag = EXCLUDED.remote_tag, local_cseq = EXCLUDED.local_cseq,
    remote_cseq = EXCLUDED.remote_cseq, remote_target = EXCLUDED.remote_target,
    route_set = EXCLUDED.route_set, requested = EXCLUDED.requested";
const DELETE_SUBSCRIPTION: &str = "DELETE FROM subscription WHERE watcher = $1 AND presentity = $2";
const PUT_RELATION: &str = "INSERT INTO watcher_relation (presentity, watcher, state)
  VALUES ($1, $2, $3) ON CONFLICT (presentity, watcher) DO UPDATE SET state = EXCLUDED.state";
const PUT_DIALOG: &str = "INSERT INTO notifier_dialog (call_id, presentity, local_tag,
    remote_tag, remote_uri, remote_display, watcher, remote_target, route_set, local_cseq,
    remote_cseq, event_id, active, expires_at)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
  ON CONFLICT (call_id) DO UPDATE SET presentity = EXCLUDED.presentity,
    local_tag = EXCLUDED.local_tag, remote_tag = EXCLUDED.remote_tag,
    remote_uri = EXCLUDED.remote_uri, remote_display = EXCLUDED.remote_display,
    watcher = EXCLUDED.watcher, remote_target = EXCLUDED.remote_target,
    route_set = EXCLUDED.route_set, local_cseq = EXCLUDED.local_cseq,
    remote_cseq = EXCLUDED.remote_cseq, event_id = EXCLUDED.event_id,
    active = EXCLUDED.active, expires_at = EXCLUDED.expires_at";
const DELETE_DIALOG: &str = "DELETE FROM notifier_dialog WHERE call_id = $1";
const PUT_PUBLICATION: &str = "INSERT INTO publication (presentity, uri, etag, call_id, cseq,
    body, available, lease_left, expires_at)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (presentity) DO UPDATE SET
    uri = EXCLUDED.uri, etag = EXCLUDED.etag, call_id = EXCLUDED.call_id, cseq = EXCLUDED.cseq,
    body = EXCLUDED.body, available = EXCLUDED.available, lease_left = EXCLUDED.lease_left,
    expires_at = EXCLUDED.expires_at";
const PUT_WINFO: &str = "INSERT INTO winfo (presentity) VALUES ($1) ON CONFLICT DO NOTHING";
const DELETE_WINFO: &str = "DELETE FROM winfo WHERE presentity = $1";
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

/// One live connection with its prepared statements.
struct Live {
    client: Client,
    stmts: Vec<Statement>,
}

const WRITES: [&str; 9] = [
    PUT_SUBSCRIPTION,
    DELETE_SUBSCRIPTION,
    PUT_RELATION,
    PUT_DIALOG,
    DELETE_DIALOG,
    PUT_PUBLICATION,
    PUT_WINFO,
    DELETE_WINFO,
    FENCE_CHECK,
];
const S_FENCE: usize = 8;

/// The PostgreSQL backend. Blocking: used on the writer thread (or a thread of its own at
/// startup), never on an actix thread.
pub struct PostgresStore {
    config: tokio_postgres::Config,
    /// `store.url` with its password hidden, for error messages.
    shown: String,
    rt: tokio::runtime::Runtime,
    live: Option<Live>,
    fence: Option<Fence>,
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

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/db` or `key=value` pairs) and
    /// brings the schema up to date. Fails if the database cannot be reached now; once open,
    /// losing the connection only makes batches fail until it is back.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| backend("runtime", e))?;
        let mut store = PostgresStore {
            config,
            shown,
            rt,
            live: None,
            fence: None,
        };
        store.connect()?;
        Ok(store)
    }

    /// Every batch from now on checks `fence` (see the module doc).
    pub fn with_fence(mut self, fence: Fence) -> PostgresStore {
        self.fence = Some(fence);
        self
    }

    /// Whether a connection is open now (false after a failure, until the next attempt).
    pub fn connected(&self) -> bool {
        self.live.as_ref().is_some_and(|l| !l.client.is_closed())
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&mut self) -> Result<i32, StoreError> {
        let (rt, client) = self.client()?;
        let r = rt.block_on(async {
            client
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM pua_schema_version",
                    &[],
                )
                .await
        });
        match r {
            Ok(row) => row.try_get(0).map_err(|e| backend("schema version", e)),
            Err(e) => Err(self.lost("schema version", e)),
        }
    }

    /// The runtime and live connection (connecting first if needed), for the lease driver.
    pub fn client(&mut self) -> Result<(&tokio::runtime::Runtime, &Client), StoreError> {
        self.live()?;
        match &self.live {
            Some(l) => Ok((&self.rt, &l.client)),
            None => Err(backend("connection", "not connected")),
        }
    }

    /// The live connection, connecting first if there is none.
    fn live(&mut self) -> Result<&Live, StoreError> {
        if !self.connected() {
            self.live = None;
            self.connect()?;
        }
        match &self.live {
            Some(l) => Ok(l),
            None => Err(backend("connection", "not connected")),
        }
    }

    fn connect(&mut self) -> Result<(), StoreError> {
        let config = &self.config;
        let shown = &self.shown;
        let live = self.rt.block_on(async {
            let (mut client, connection) = config
                .connect(NoTls)
                .await
                .map_err(|e| backend(&format!("connect to {shown}"), e))?;
            // Driven whenever the writer thread runs the runtime (every call is a block_on).
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "postgresql connection ended");
                }
            });
            migrate(&mut client).await?;
            let stmts = futures::future::try_join_all(WRITES.iter().map(|sql| client.prepare(sql)))
                .await
                .map_err(|e| backend("prepare", e))?;
            Ok::<_, StoreError>(Live { client, stmts })
        })?;
        tracing::info!(url = %self.shown, "postgresql store connected");
        self.live = Some(live);
        Ok(())
    }

    /// The connection failed under `what`: drop it (the next attempt reconnects).
    fn lost(&mut self, what: &str, e: impl std::fmt::Display) -> StoreError {
        self.live = None;
        backend(what, e)
    }
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

type Param = Box<dyn ToSql + Sync + Send>;

fn i64_of(v: u32) -> i64 {
    i64::from(v)
}

/// The statement and owned parameters of one op.
fn bind(op: &StoreOp) -> Result<(usize, Vec<Param>), StoreError> {
    Ok(match op {
        StoreOp::PutSubscription {
            rec,
            expires_at_unix,
        } => {
            let d = rec.dialog.as_ref();
            let routes = match d {
                Some(d) => encode_routes(&d.route_set)?,
                None => None,
            };
            (
                0,
                vec![
                    Box::new(rec.pair.watcher.as_str().to_owned()),
                    Box::new(rec.pair.presentity.as_str().to_owned()),
                    Box::new(rec.pair.watcher_uri.clone()),
                    Box::new(rec.pair.presentity_uri.clone()),
                    Box::new(i16::from(relation_code(rec.relation))),
                    Box::new(rec.lease_left.map(i64_of)),
                    Box::new(*expires_at_unix),
                    Box::new(d.map(|d| d.call_id.clone())),
                    Box::new(d.map(|d| d.local_tag.clone())),
                    Box::new(d.and_then(|d| d.remote_tag.clone())),
                    Box::new(d.map(|d| i64_of(d.local_cseq))),
                    Box::new(d.and_then(|d| d.remote_cseq).map(i64_of)),
                    Box::new(d.and_then(|d| d.remote_target.clone())),
                    Box::new(routes),
                    Box::new(d.map(|d| i64_of(d.requested))),
                ],
            )
        }
        StoreOp::DeleteSubscription {
            watcher,
            presentity,
        } => (
            1,
            vec![
                Box::new(watcher.as_str().to_owned()),
                Box::new(presentity.as_str().to_owned()),
            ],
        ),
        StoreOp::PutRelation {
            presentity,
            watcher,
            state,
        } => (
            2,
            vec![
                Box::new(presentity.as_str().to_owned()),
                Box::new(watcher.as_str().to_owned()),
                Box::new(i16::from(watcher_code(*state))),
            ],
        ),
        StoreOp::PutNotifierDialog { presentity, dialog } => {
            let d = dialog;
            (
                3,
                vec![
                    Box::new(d.call_id.clone()),
                    Box::new(presentity.as_str().to_owned()),
                    Box::new(d.local_tag.clone()),
                    Box::new(d.remote_tag.clone()),
                    Box::new(d.remote_uri.clone()),
                    Box::new(d.remote_display.clone()),
                    Box::new(d.watcher.as_str().to_owned()),
                    Box::new(d.remote_target.clone()),
                    Box::new(encode_routes(&d.route_set)?),
                    Box::new(i64_of(d.local_cseq)),
                    Box::new(i64_of(d.remote_cseq)),
                    Box::new(d.event_id.clone()),
                    Box::new(d.active),
                    Box::new(d.expires_at_unix),
                ],
            )
        }
        StoreOp::DeleteNotifierDialog { call_id } => (4, vec![Box::new(call_id.clone())]),
        StoreOp::PutPublication {
            presentity,
            rec,
            expires_at_unix,
        } => (
            5,
            vec![
                Box::new(presentity.as_str().to_owned()),
                Box::new(rec.uri.clone()),
                Box::new(rec.etag.clone()),
                Box::new(rec.call_id.clone()),
                Box::new(i64_of(rec.cseq)),
                Box::new(rec.body.clone()),
                Box::new(rec.available),
                Box::new(rec.lease_left.map(i64_of)),
                Box::new(*expires_at_unix),
            ],
        ),
        StoreOp::PutWinfo { presentity, wanted } => (
            if *wanted { 6 } else { 7 },
            vec![Box::new(presentity.as_str().to_owned())],
        ),
    })
}

/// How a batch failed: the database said no (the connection is fine) or the connection is
/// in doubt (reconnect).
enum BatchError {
    Fenced(i64),
    Sql(tokio_postgres::Error),
    Timeout,
}

async fn apply_batch(
    live: &mut Live,
    fence: Option<(&str, i64)>,
    bound: &[(usize, Vec<Param>)],
) -> Result<(), BatchError> {
    let stmts = &live.stmts;
    let tx = live.client.transaction().await.map_err(BatchError::Sql)?;
    if let Some((name, value)) = fence {
        let (Some(check), true) = (stmts.get(S_FENCE), value > 0) else {
            return Err(BatchError::Fenced(value));
        };
        let rows = tx
            .query(check, &[&name, &value])
            .await
            .map_err(BatchError::Sql)?;
        if rows.is_empty() {
            return Err(BatchError::Fenced(value));
        }
    }
    let params: Vec<Vec<&(dyn ToSql + Sync)>> = bound
        .iter()
        .map(|(_, ps)| ps.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect())
        .collect();
    // Polled together: tokio-postgres sends them back to back (pipelined), in this order.
    let mut execs = Vec::with_capacity(bound.len());
    for ((which, _), ps) in bound.iter().zip(&params) {
        let Some(stmt) = stmts.get(*which) else {
            continue;
        };
        execs.push(tx.execute(stmt, ps));
    }
    futures::future::try_join_all(execs)
        .await
        .map_err(BatchError::Sql)?;
    tx.commit().await.map_err(BatchError::Sql)
}

impl Store for PostgresStore {
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let bound = ops.iter().map(bind).collect::<Result<Vec<_>, _>>()?;
        let fence = self.fence.as_ref().map(|f| (f.name.clone(), f.get()));
        self.live()?;
        let Some(live) = self.live.as_mut() else {
            return Err(backend("connection", "not connected"));
        };
        let r = self.rt.block_on(async {
            let batch = apply_batch(live, fence.as_ref().map(|(n, v)| (n.as_str(), *v)), &bound);
            match tokio::time::timeout(BATCH_TIMEOUT, batch).await {
                Ok(r) => r,
                Err(_) => Err(BatchError::Timeout),
            }
        });
        match r {
            Ok(()) => Ok(()),
            Err(BatchError::Fenced(fence)) => Err(StoreError::Fenced { fence }),
            // Whatever failed (the server restarted, a statement was refused, I/O), the next
            // attempt starts on a new connection: a restart first shows as a server error
            // (57P01) on a socket not yet seen closed.
            Err(BatchError::Sql(e)) => Err(self.lost("batch", e)),
            Err(BatchError::Timeout) => Err(self.lost(
                "batch",
                format!("no answer within {} s", BATCH_TIMEOUT.as_secs()),
            )),
        }
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.live()?;
        let Some(live) = self.live.as_ref() else {
            return Err(backend("connection", "not connected"));
        };
        let client = &live.client;
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(BATCH_TIMEOUT, load_all(client)).await });
        match r {
            Ok(Ok(snap)) => Ok(snap),
            Ok(Err(e)) => Err(self.lost("load", e)),
            Err(_) => Err(self.lost("load", "timed out")),
        }
    }
}

/// Every table, in the key order SQLite gives (byte order: `COLLATE "C"`).
async fn load_all(client: &Client) -> Result<Snapshot, tokio_postgres::Error> {
    let (subs, rels, dialogs, pubs, winfo) = futures::future::try_join5(
        client.query(
            "SELECT watcher, presentity, watcher_uri, presentity_uri, relation, lease_left,
                   expires_at, call_id, local_tag, remote_tag, local_cseq, remote_cseq,
                   remote_target, route_set, requested
                 FROM subscription ORDER BY watcher COLLATE \"C\", presentity COLLATE \"C\"",
            &[],
        ),
        client.query(
            "SELECT presentity, watcher, state FROM watcher_relation
                 ORDER BY presentity COLLATE \"C\", watcher COLLATE \"C\"",
            &[],
        ),
        client.query(
            "SELECT call_id, presentity, local_tag, remote_tag, remote_uri, remote_display,
                   watcher, remote_target, route_set, local_cseq, remote_cseq, event_id, active,
                   expires_at
                 FROM notifier_dialog ORDER BY call_id COLLATE \"C\"",
            &[],
        ),
        client.query(
            "SELECT presentity, uri, etag, call_id, cseq, body, available, lease_left,
                   expires_at
                 FROM publication ORDER BY presentity COLLATE \"C\"",
            &[],
        ),
        client.query(
            "SELECT presentity FROM winfo ORDER BY presentity COLLATE \"C\"",
            &[],
        ),
    )
    .await?;
    Ok(Snapshot {
        subscriptions: convert("subscription", &subs, rows::subscription),
        relations: convert("watcher_relation", &rels, rows::relation),
        notifier_dialogs: convert("notifier_dialog", &dialogs, rows::dialog),
        publications: convert("publication", &pubs, rows::publication),
        winfo: convert("winfo", &winfo, rows::winfo),
    })
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
            store: PostgresStore::open(url)?,
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
