//! The PostgreSQL store (issue 17) against a real PostgreSQL server that each test starts in a
//! temporary directory (`initdb` + `pg_ctl`, listening on `PUA_PG_TEST_IP`, default 127.0.0.1,
//! on a free port). Skipped, saying so, only when no `/usr/lib/postgresql/*/bin/initdb` exists.
//!
//! The SQLite backend is the oracle: the same ops give the same snapshot.

use pua_xmpp::notifier::WatcherRelation;
use pua_xmpp::publisher::PublicationRecord;
use pua_xmpp::subscriber::{Dialog, Pair, Relation, SubscriptionRecord};
use pua_xmpp_actors::config::Config;
use pua_xmpp_actors::store::postgres::{
    part_of, redact_url, LeaseAnswer, PgLease, IDLE_IN_TRANSACTION,
};
use pua_xmpp_actors::store::{
    BatchConfig, Fence, PostgresStore, SqliteStore, Store, StoreError, StoreHandle, StoreOp,
    StoredNotifierDialog,
};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use xmpp_parsers::jid::BareJid;

/// A PostgreSQL server of one test; stopped (immediately) when dropped.
struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    ip: String,
    port: u16,
    /// Run the server tools as the `postgres` user (they refuse to run as root).
    as_postgres: bool,
}

fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

fn run(mut cmd: Command, what: &str) {
    match cmd.output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "{what} failed: {}\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("{what}: {e}"),
    }
}

impl Pg {
    /// A fresh server, or `None` (with a message) when PostgreSQL is not installed.
    fn start() -> Option<Pg> {
        let Some(bin) = pg_bin() else {
            eprintln!(
                "SKIPPED: no /usr/lib/postgresql/*/bin/initdb (install the postgresql package)"
            );
            return None;
        };
        let ip = std::env::var("PUA_PG_TEST_IP").unwrap_or_else(|_| "127.0.0.1".to_owned());
        let port = TcpListener::bind((ip.as_str(), 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"));
        let dir = tempfile::tempdir().unwrap();
        // SAFETY-free check of the effective user: `id -u` prints 0 for root.
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let pg = Pg {
            dir,
            bin,
            ip,
            port,
            as_postgres,
        };
        if as_postgres {
            let mut c = Command::new("chown");
            c.args(["-R", "postgres:"]).arg(pg.dir.path());
            run(c, "chown");
        }
        let mut c = pg.tool("initdb");
        c.arg("-D").arg(pg.data()).args([
            "-U",
            "pua",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        ]);
        run(c, "initdb");
        let conf = format!(
            "\nlisten_addresses = '{}'\nport = {}\nunix_socket_directories = '{}'\n\
             max_connections = 20\nshared_buffers = 16MB\n",
            pg.ip,
            pg.port,
            pg.dir.path().display()
        );
        let path = pg.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&conf);
        std::fs::write(&path, text).unwrap();
        pg.start_again();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn url(&self) -> String {
        format!("postgres://pua@{}:{}/postgres", self.ip, self.port)
    }

    /// `pg_ctl start`, waiting until it accepts connections.
    fn start_again(&self) {
        let mut c = self.tool("pg_ctl");
        c.arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "30", "start"]);
        run(c, "pg_ctl start");
    }

    /// `pg_ctl stop -m immediate`: the server dies without a checkpoint, as in a crash.
    fn crash(&self) {
        let mut c = self.tool("pg_ctl");
        c.arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "immediate", "stop"]);
        run(c, "pg_ctl stop");
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let mut c = self.tool("pg_ctl");
        c.arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "immediate", "stop"]);
        let _ = c.output();
    }
}

fn jid(s: &str) -> BareJid {
    BareJid::new(s).unwrap_or_else(|e| panic!("test JID {s}: {e}"))
}

fn pair(watcher: &str, presentity: &str) -> Pair {
    Pair {
        watcher: jid(watcher),
        watcher_uri: format!("sip:{}@xmpp.example.com", watcher.replace('@', "*")),
        presentity: jid(&format!("{}@sip.example.net", presentity.replace('@', "*"))),
        presentity_uri: format!("sip:{presentity}"),
    }
}

fn sub_with_dialog() -> SubscriptionRecord {
    SubscriptionRecord {
        pair: pair("romeo@example.net", "juliet@example.com"),
        relation: Relation::Approved,
        dialog: Some(Dialog {
            call_id: "a84b4c76e66710@gw.example.com".to_owned(),
            local_tag: "gw-1928301774".to_owned(),
            remote_tag: Some("456248".to_owned()),
            local_cseq: 7,
            remote_cseq: Some(u32::MAX),
            remote_target: Some("sip:juliet@192.0.2.4:5060;transport=tcp".to_owned()),
            route_set: vec![
                "<sip:p1.example.com;lr>".to_owned(),
                "<sip:p2.example.com;lr;ftag=x,y>".to_owned(),
            ],
            requested: 3600,
        }),
        lease_left: Some(1800),
    }
}

fn sub_without_dialog() -> SubscriptionRecord {
    SubscriptionRecord {
        pair: pair("benvolio@example.net", "tybalt@example.com"),
        relation: Relation::Pending,
        dialog: None,
        lease_left: None,
    }
}

fn numbered_sub(i: u32) -> SubscriptionRecord {
    SubscriptionRecord {
        pair: pair(&format!("w{i}@example.net"), &format!("p{i}@example.com")),
        relation: Relation::Unknown,
        dialog: None,
        lease_left: Some(i),
    }
}

fn stored_dialog(call_id: &str) -> StoredNotifierDialog {
    StoredNotifierDialog {
        call_id: call_id.to_owned(),
        local_tag: "gw-77".to_owned(),
        remote_tag: "c4r01".to_owned(),
        remote_uri: "sip:carol@sip.test".to_owned(),
        remote_display: Some("Carol \"C\" Smith — Zoë".to_owned()),
        watcher: jid("carol*sip.test@sip-xmpp.test"),
        remote_target: "sip:carol@127.0.0.2:5071".to_owned(),
        route_set: vec!["<sip:127.0.0.2;lr;ftag=c4r01>".to_owned()],
        local_cseq: 3,
        remote_cseq: 1,
        event_id: None,
        active: true,
        expires_at_unix: 1_795_000_600,
    }
}

fn publication(body: Option<&str>) -> PublicationRecord {
    PublicationRecord {
        uri: "sip:romeo*example.net@xmpp.example.com".to_owned(),
        etag: Some("etag-5".to_owned()),
        call_id: "pub-1@gw.example.com".to_owned(),
        cseq: 4,
        body: body.map(str::to_owned),
        available: false,
        lease_left: None,
    }
}

/// Every op kind, with upserts over earlier rows, deletes, and a put/delete/put of one key.
fn every_kind() -> Vec<Vec<StoreOp>> {
    let x = jid("romeo@example.net");
    let y = jid("zed@example.net");
    let a = jid("alice@example.net");
    vec![
        vec![
            StoreOp::subscription(sub_with_dialog(), 1_795_000_000),
            StoreOp::subscription(sub_without_dialog(), 1_795_000_000),
            StoreOp::subscription(numbered_sub(1), 1_795_000_000),
            StoreOp::PutRelation {
                presentity: x.clone(),
                watcher: jid("carol*sip.test@sip-xmpp.test"),
                state: WatcherRelation::Pending,
            },
            StoreOp::PutRelation {
                presentity: x.clone(),
                watcher: jid("dave*sip.test@sip-xmpp.test"),
                state: WatcherRelation::Denied,
            },
            StoreOp::PutNotifierDialog {
                presentity: x.clone(),
                dialog: stored_dialog("call-b"),
            },
            StoreOp::PutNotifierDialog {
                presentity: y.clone(),
                dialog: stored_dialog("call-a"),
            },
            StoreOp::publication(x.clone(), publication(Some("<presence/>")), 1_795_000_000),
            StoreOp::PutWinfo {
                presentity: y.clone(),
                wanted: true,
            },
            StoreOp::PutWinfo {
                presentity: a.clone(),
                wanted: true,
            },
        ],
        vec![
            // Overwrites of the same keys.
            StoreOp::PutRelation {
                presentity: x.clone(),
                watcher: jid("carol*sip.test@sip-xmpp.test"),
                state: WatcherRelation::Approved,
            },
            StoreOp::PutNotifierDialog {
                presentity: x.clone(),
                dialog: StoredNotifierDialog {
                    local_cseq: 9,
                    active: false,
                    route_set: vec![],
                    remote_display: None,
                    ..stored_dialog("call-b")
                },
            },
            StoreOp::publication(x.clone(), publication(None), 1_795_000_100),
            StoreOp::DeleteNotifierDialog {
                call_id: "call-a".to_owned(),
            },
            StoreOp::DeleteSubscription {
                watcher: jid("w1@example.net"),
                presentity: jid("p1*example.com@sip.example.net"),
            },
            StoreOp::PutWinfo {
                presentity: a.clone(),
                wanted: false,
            },
            // Put, delete and put again in one batch: the put stays.
            StoreOp::subscription(numbered_sub(2), 1_795_000_000),
            StoreOp::DeleteSubscription {
                watcher: jid("w2@example.net"),
                presentity: jid("p2*example.com@sip.example.net"),
            },
            StoreOp::subscription(numbered_sub(2), 1_795_000_001),
            // A delete of what was never there is no error.
            StoreOp::DeleteNotifierDialog {
                call_id: "never".to_owned(),
            },
        ],
    ]
}

fn open_pg(pg: &Pg) -> PostgresStore {
    PostgresStore::open(&pg.url()).unwrap_or_else(|e| panic!("open {}: {e}", pg.url()))
}

/// Every record kind written in two batches, read back by a second connection: equal to what
/// SQLite gives for the same batches, and to the records written.
#[test]
fn issue_17_pg_round_trip_of_every_record_kind_matches_sqlite() {
    let Some(pg) = Pg::start() else { return };
    let mut store = open_pg(&pg);
    let mut sqlite = SqliteStore::open_in_memory().unwrap();
    for batch in every_kind() {
        store.apply(&batch).unwrap();
        sqlite.apply(&batch).unwrap();
    }
    drop(store);
    let mut again = open_pg(&pg);
    assert_eq!(again.schema_version().unwrap(), 1);
    let snap = again.load().unwrap();
    assert_eq!(snap, sqlite.load().unwrap());
    assert_eq!(
        snap.subscriptions,
        vec![
            (sub_without_dialog(), None),
            (sub_with_dialog(), Some(1_795_001_800)),
            (numbered_sub(2), Some(1_795_000_003)),
        ]
    );
    let x = jid("romeo@example.net");
    assert_eq!(
        snap.relations,
        vec![
            (
                x.clone(),
                jid("carol*sip.test@sip-xmpp.test"),
                WatcherRelation::Approved
            ),
            (
                x.clone(),
                jid("dave*sip.test@sip-xmpp.test"),
                WatcherRelation::Denied
            ),
        ]
    );
    assert_eq!(snap.notifier_dialogs.len(), 1);
    assert_eq!(snap.notifier_dialogs[0].1.local_cseq, 9);
    assert_eq!(snap.notifier_dialogs[0].1.route_set, Vec::<String>::new());
    assert_eq!(snap.publications, vec![(x, publication(None), None)]);
    assert_eq!(snap.winfo, vec![jid("zed@example.net")]);
}

/// Durable before acknowledged: `after_commit` runs once the ops sent before it can be read
/// by another connection (read from inside the callback), within the group-commit wait, and
/// 2,000 ops each followed by a marker commit in few transactions.
#[test]
fn issue_17_pg_after_commit_runs_once_the_ops_are_in_the_database() {
    let Some(pg) = Pg::start() else { return };
    let (h, join) = StoreHandle::start_with(Box::new(open_pg(&pg)), BatchConfig::default());
    let url = pg.url();
    let sent_at = Instant::now();
    h.send(StoreOp::subscription(sub_with_dialog(), 1_795_000_000));
    let (tx, rx) = std::sync::mpsc::channel();
    let u = url.clone();
    h.after_commit(Box::new(move || {
        let rows = PostgresStore::open(&u)
            .and_then(|mut s| s.load())
            .map(|s| s.subscriptions.len());
        let _ = tx.send((rows.ok(), sent_at.elapsed()));
    }));
    let (rows, _took) = rx.recv_timeout(Duration::from_secs(10)).expect("ran");
    assert_eq!(rows, Some(1), "committed before the marker runs");
    let before = h.batches();
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..2000 {
        h.send(StoreOp::subscription(numbered_sub(i), 1_795_000_000));
        let tx = tx.clone();
        h.after_commit(Box::new(move || {
            let _ = tx.send(i);
        }));
    }
    let mut got: Vec<u32> = (0..2000)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("every marker runs")
        })
        .collect();
    let in_order = got.windows(2).all(|w| w[0] < w[1]);
    got.sort_unstable();
    assert_eq!(got, (0..2000).collect::<Vec<_>>());
    assert!(in_order, "markers run in the order they were sent");
    let batches = h.batches() - before;
    assert!(batches <= 200, "group commit: {batches} transactions");
    h.close();
    join.join().unwrap();
    let snap = PostgresStore::open(&url).unwrap().load().unwrap();
    assert_eq!(snap.subscriptions.len(), 2001);
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The server crashes (`stop -m immediate`) under the writer: health says the store is not
/// writable, new subscriptions are refused, markers stay held and what arrives is kept
/// coalesced; once the server is back the writer reconnects by itself and everything, before
/// and during the outage, is in the database.
#[test]
fn issue_17_pg_restart_of_the_server_loses_nothing_and_health_follows() {
    let Some(pg) = Pg::start() else { return };
    let cfg = BatchConfig {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..BatchConfig::default()
    };
    let (h, join) = StoreHandle::start_with(Box::new(open_pg(&pg)), cfg);
    for i in 0..100 {
        h.send(StoreOp::subscription(numbered_sub(i), 1_795_000_000));
    }
    h.flush().unwrap();
    assert!(h.health().ok(cfg.max_queued));
    pg.crash();
    h.send(StoreOp::subscription(sub_with_dialog(), 1_795_000_000));
    let (tx, rx) = std::sync::mpsc::channel();
    h.after_commit(Box::new(move || {
        let _ = tx.send(());
    }));
    wait_for("the store to fail", Duration::from_secs(10), || {
        h.health().failing
    });
    let health = h.health();
    assert!(health.writer_alive);
    let err = health.last_error.clone().unwrap_or_default();
    assert!(err.starts_with("store backend: postgresql"), "{err}");
    assert!(!h.accepting(), "no new promises while the database is away");
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "nothing released before its commit"
    );
    // Changes during the outage: kept one per key.
    for i in 0..500 {
        h.send(StoreOp::subscription(
            numbered_sub(7),
            1_795_000_000 + i64::from(i),
        ));
    }
    h.send(StoreOp::DeleteSubscription {
        watcher: jid("w8@example.net"),
        presentity: jid("p8*example.com@sip.example.net"),
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(h.health().failing);
    pg.start_again();
    rx.recv_timeout(Duration::from_secs(15))
        .expect("released once the batch commits after the restart");
    wait_for("the queue to drain", Duration::from_secs(10), || {
        h.health().queued == 0
    });
    let health = h.health();
    assert!(health.ok(cfg.max_queued), "{health:?}");
    assert!(h.accepting());
    assert!(h.stats().coalesced >= 499, "{:?}", h.stats());
    h.close();
    join.join().unwrap();
    let snap = open_pg(&pg).load().unwrap();
    assert_eq!(snap.subscriptions.len(), 100, "100 - w8 + romeo");
    assert!(snap
        .subscriptions
        .contains(&(sub_with_dialog(), Some(1_795_001_800))));
    assert!(snap
        .subscriptions
        .contains(&(numbered_sub(7), Some(1_795_000_499 + 7))));
    assert!(!snap
        .subscriptions
        .iter()
        .any(|(r, _)| r.pair.watcher == jid("w8@example.net")));
}

/// Active/standby on the lease row: A holds it (fence 1) and writes; B is refused while A's
/// lease runs, takes it over once it expired (fence 2); A's batches are then refused as fenced
/// and write nothing, even a renewal, while B's land.
#[test]
fn issue_17_pg_a_taken_over_leader_is_fenced_out_of_the_store() {
    let Some(pg) = Pg::start() else { return };
    let url = pg.url();
    let ttl = Duration::from_millis(400);
    let mut la = PgLease::open(&url, "gw", "a").unwrap();
    let mut lb = PgLease::open(&url, "gw", "b").unwrap();
    assert_eq!(la.acquire(ttl).unwrap(), LeaseAnswer::Held(1));
    let fa = Fence::new("gw");
    fa.set(1);
    let mut a = open_pg(&pg).with_fence(fa.clone());
    a.apply(&[StoreOp::subscription(numbered_sub(1), 1_795_000_000)])
        .unwrap();
    assert_eq!(lb.acquire(ttl).unwrap(), LeaseAnswer::NotHeld);
    assert_eq!(la.renew(1, ttl).unwrap(), LeaseAnswer::Held(1));
    std::thread::sleep(ttl + Duration::from_millis(100));
    assert_eq!(lb.acquire(ttl).unwrap(), LeaseAnswer::Held(2));
    let fb = Fence::new("gw");
    fb.set(2);
    let mut b = open_pg(&pg).with_fence(fb);
    // A wakes up and writes with its old number: refused, nothing of the batch lands.
    let stale = [
        StoreOp::DeleteSubscription {
            watcher: jid("w1@example.net"),
            presentity: jid("p1*example.com@sip.example.net"),
        },
        StoreOp::subscription(numbered_sub(2), 1_795_000_000),
    ];
    match a.apply(&stale) {
        Err(StoreError::Fenced { fence: 1 }) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(la.renew(1, ttl).unwrap(), LeaseAnswer::NotHeld);
    b.apply(&[StoreOp::subscription(numbered_sub(3), 1_795_000_000)])
        .unwrap();
    let snap = b.load().unwrap();
    let watchers: Vec<&str> = snap
        .subscriptions
        .iter()
        .map(|(r, _)| r.pair.watcher.as_str())
        .collect();
    assert_eq!(watchers, vec!["w1@example.net", "w3@example.net"]);
    // A store holding no lease (fence 0) writes nothing either.
    fa.set(0);
    assert!(matches!(
        a.apply(&[StoreOp::subscription(numbered_sub(4), 1)]),
        Err(StoreError::Fenced { fence: 0 })
    ));
    // A graceful release lets the other take over at once.
    lb.release(2).unwrap();
    assert_eq!(la.acquire(ttl).unwrap(), LeaseAnswer::Held(3));
}

/// A leader cut off in the middle of a batch (its socket silent, its transaction open with
/// the lease row share-locked) does not hold up the takeover: the server ends the idle
/// transaction after `IDLE_IN_TRANSACTION`, and the taker-over's acquire, which waits for
/// that lock, gets the lease then instead of when the server's TCP gives up (minutes).
#[test]
fn issue_17_pg_a_leader_cut_off_mid_batch_releases_the_lease_row() {
    let Some(pg) = Pg::start() else { return };
    let url = pg.url();
    let ttl = Duration::from_millis(400);
    let mut la = PgLease::open(&url, "gw", "a").unwrap();
    let mut lb = PgLease::open(&url, "gw", "b").unwrap();
    assert_eq!(la.acquire(ttl).unwrap(), LeaseAnswer::Held(1));
    let mut a = open_pg(&pg);
    let (rt, conn) = a.client().unwrap();
    // What a batch of A does first (the fence check), then A goes silent: its runtime is
    // never polled again, as if the network between A and the database were cut.
    rt.block_on(conn.batch_execute(
        "BEGIN; SELECT fence FROM gateway_lease WHERE name = 'gw' AND fence = 1 FOR SHARE",
    ))
    .unwrap();
    std::thread::sleep(ttl + Duration::from_millis(100));
    let asked = std::time::Instant::now();
    assert_eq!(lb.acquire(ttl).unwrap(), LeaseAnswer::Held(2));
    let waited = asked.elapsed();
    assert!(
        waited < IDLE_IN_TRANSACTION + Duration::from_millis(1500),
        "the acquire waited {waited:?}"
    );
    // It did wait for the lock: the row was held, not free.
    assert!(
        waited > IDLE_IN_TRANSACTION / 2,
        "the acquire waited {waited:?}"
    );
    drop(conn);
}

/// The store refuses a database whose schema is newer than it knows, naming both versions.
#[test]
fn issue_17_pg_a_schema_newer_than_the_binary_is_refused() {
    let Some(pg) = Pg::start() else { return };
    let mut s = open_pg(&pg);
    s.apply(&[StoreOp::PutWinfo {
        presentity: jid("a@example.net"),
        wanted: true,
    }])
    .unwrap();
    drop(s);
    psql(&pg, "INSERT INTO pua_schema_version (version) VALUES (99)");
    match PostgresStore::open(&pg.url()) {
        Err(StoreError::SchemaTooNew {
            found: 99,
            known: 1,
        }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
}

/// An unreachable server is named in the error (password hidden), without a long wait.
#[test]
fn issue_17_pg_an_unreachable_server_fails_fast_with_the_url_redacted() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let started = Instant::now();
    let url = format!("postgres://pua:s3cret@127.0.0.1:{port}/x");
    match PostgresStore::open(&url) {
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains("s3cret"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn issue_17_store_url_passwords_are_redacted() {
    assert_eq!(
        redact_url("postgres://pua:s3:cr@t@db.example:5432/pua?sslmode=disable"),
        "postgres://pua:<redacted>@db.example:5432/pua?sslmode=disable"
    );
    assert_eq!(
        redact_url("postgresql://pua@db/pua?password=s3cret&connect_timeout=2"),
        "postgresql://pua@db/pua?password=<redacted>&connect_timeout=2"
    );
    assert_eq!(
        redact_url("host=db user=pua password=s3cret dbname=pua"),
        "host=db user=pua password=<redacted> dbname=pua"
    );
    assert_eq!(redact_url("postgres://db/pua"), "postgres://db/pua");
}

fn with_env(pairs: &[(&str, &str)]) -> Result<Config, String> {
    Config::load_with_env(
        None,
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    )
    .map_err(|e| e.to_string())
}

#[test]
fn issue_17_store_url_selects_postgresql_and_excludes_another_path() {
    let c = with_env(&[("PUA_XMPP__STORE__URL", "postgres://pua:pw@db:5432/pua")]).unwrap();
    assert_eq!(c.store.url, "postgres://pua:pw@db:5432/pua");
    let shown = c.redacted();
    assert!(
        shown.contains(
            "[store]\npath = \"pua-xmpp.db\"\nurl = \"postgres://pua:<redacted>@db:5432/pua\"\n"
        ),
        "{shown}"
    );
    assert!(!shown.contains("pw@"));
    // An empty path is fine with a url.
    let c = with_env(&[
        ("PUA_XMPP__STORE__URL", "postgres://db/pua"),
        ("PUA_XMPP__STORE__PATH", ""),
    ])
    .unwrap();
    assert_eq!(c.store.path, "");
    assert_eq!(
        with_env(&[
            ("PUA_XMPP__STORE__URL", "postgres://db/pua"),
            ("PUA_XMPP__STORE__PATH", "/var/lib/pua-xmpp/gw.db"),
        ])
        .unwrap_err(),
        "store.url: set either store.path (SQLite) or store.url (PostgreSQL), not both \
         (store.path is \"/var/lib/pua-xmpp/gw.db\")"
    );
    assert_eq!(
        with_env(&[("PUA_XMPP__STORE__PATH", "")]).unwrap_err(),
        "store.path: must not be empty (or set store.url for PostgreSQL)"
    );
    assert_eq!(
        with_env(&[("PUA_XMPP__STORE__LEASE", "true")]).unwrap_err(),
        "store.lease: needs store.url: the lease lives in the shared PostgreSQL database"
    );
    let c = with_env(&[
        ("PUA_XMPP__STORE__URL", "postgres://db/pua"),
        ("PUA_XMPP__STORE__LEASE", "true"),
        ("PUA_XMPP__STORE__INSTANCE", "gw-a"),
    ])
    .unwrap();
    assert!(c.store.lease);
    assert!(
        c.redacted()
            .contains("url = \"postgres://db/pua\"\nlease = true\ninstance = \"gw-a\"\n"),
        "{}",
        c.redacted()
    );
    let e = with_env(&[("PUA_XMPP__STORE__URL", "postgres://u:pw@db:notaport/x")]).unwrap_err();
    assert!(
        e.starts_with("store.url: not a PostgreSQL connection string"),
        "{e}"
    );
    assert!(!e.contains("pw@"), "{e}");
}

/// A subscription with a dialog, numbered (for the large batches of the pool tests).
fn numbered_dialog_sub(i: u32) -> SubscriptionRecord {
    let mut rec = sub_with_dialog();
    rec.pair = pair(&format!("w{i}@example.net"), &format!("p{i}@example.com"));
    if let Some(d) = rec.dialog.as_mut() {
        d.call_id = format!("c{i}@gw.example.com");
        d.local_cseq = i;
    }
    rec
}

/// Large batches of every kind: 2,000 pairs, relations, dialogs, publications, winfo, then
/// overwrites, deletes, and puts/deletes of one key within one batch.
fn large_batches() -> Vec<Vec<StoreOp>> {
    let mut first = Vec::new();
    for i in 0..2000u32 {
        let rec = if i % 2 == 0 {
            numbered_dialog_sub(i)
        } else {
            numbered_sub(i)
        };
        first.push(StoreOp::subscription(rec, 1_795_000_000));
    }
    for i in 0..500u32 {
        first.push(StoreOp::PutRelation {
            presentity: jid(&format!("u{}@example.net", i % 50)),
            watcher: jid(&format!("s{i}*sip.test@sip-xmpp.test")),
            state: WatcherRelation::Pending,
        });
        first.push(StoreOp::PutNotifierDialog {
            presentity: jid(&format!("u{}@example.net", i % 50)),
            dialog: stored_dialog(&format!("d{i}")),
        });
    }
    for i in 0..100u32 {
        let x = jid(&format!("u{i}@example.net"));
        first.push(StoreOp::publication(
            x.clone(),
            publication(Some(&format!("<presence id='{i}'/>"))),
            1_795_000_000,
        ));
        first.push(StoreOp::PutWinfo {
            presentity: x,
            wanted: true,
        });
    }
    let mut second = Vec::new();
    for i in 0..2000u32 {
        match i % 3 {
            0 => second.push(StoreOp::DeleteSubscription {
                watcher: jid(&format!("w{i}@example.net")),
                presentity: jid(&format!("p{i}*example.com@sip.example.net")),
            }),
            1 => second.push(StoreOp::subscription(numbered_sub(i), 1_795_000_500)),
            _ => {
                // Put, delete, put of one key in one batch: the last put stays.
                second.push(StoreOp::subscription(numbered_sub(i), 1_795_000_600));
                second.push(StoreOp::DeleteSubscription {
                    watcher: jid(&format!("w{i}@example.net")),
                    presentity: jid(&format!("p{i}*example.com@sip.example.net")),
                });
                second.push(StoreOp::subscription(numbered_dialog_sub(i), 1_795_000_700));
            }
        }
    }
    for i in (0..500u32).step_by(2) {
        second.push(StoreOp::DeleteNotifierDialog {
            call_id: format!("d{i}"),
        });
        second.push(StoreOp::PutRelation {
            presentity: jid(&format!("u{}@example.net", i % 50)),
            watcher: jid(&format!("s{i}*sip.test@sip-xmpp.test")),
            state: WatcherRelation::Approved,
        });
    }
    for i in (0..100u32).step_by(3) {
        second.push(StoreOp::PutWinfo {
            presentity: jid(&format!("u{i}@example.net")),
            wanted: false,
        });
    }
    vec![first, second]
}

/// `psql -tA -c sql` on the test server: the output, trimmed.
fn psql(pg: &Pg, sql: &str) -> String {
    let mut c = pg.tool("psql");
    c.args([
        "-h",
        &pg.ip,
        "-p",
        &pg.port.to_string(),
        "-U",
        "pua",
        "-d",
        "postgres",
        "-tA",
        "-c",
        sql,
    ]);
    match c.output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => panic!("psql {sql}: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("psql: {e}"),
    }
}

/// The pool changes nothing of what is stored: large batches split over 4 connections (and
/// the small ones of `every_kind` not split) read back, over 1 connection and over 4, equal
/// to SQLite's snapshot of the same batches; the split really used several connections.
#[test]
fn issue_17_pg_pool_sizes_1_and_4_give_the_same_snapshot() {
    let Some(pg) = Pg::start() else { return };
    let mut four = PostgresStore::open_pooled(&pg.url(), 4)
        .unwrap()
        .with_split_min_ops(100);
    assert_eq!(four.pool_size(), 4);
    let mut sqlite = SqliteStore::open_in_memory().unwrap();
    for batch in every_kind().into_iter().chain(large_batches()) {
        four.apply(&batch).unwrap();
        sqlite.apply(&batch).unwrap();
    }
    let connections = psql(
        &pg,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pua-xmpp'",
    );
    assert_eq!(
        connections, "4",
        "the large batches were split over 4 connections"
    );
    let expected = sqlite.load().unwrap();
    // benvolio and romeo of `every_kind` (its w2 is among the 2,000), less every third.
    assert_eq!(expected.subscriptions.len(), 2 + 2000 - 667);
    let by_four = four.load().unwrap();
    let mut one = PostgresStore::open_pooled(&pg.url(), 1).unwrap();
    let by_one = one.load().unwrap();
    assert!(by_one == expected, "pool 1 loads what SQLite holds");
    assert!(by_four == expected, "pool 4 loads what SQLite holds");
    // A pool of 1 writes the same (no split).
    drop(four);
    let pg2 = Pg::start().unwrap();
    let mut single = PostgresStore::open_pooled(&pg2.url(), 1)
        .unwrap()
        .with_split_min_ops(100);
    for batch in every_kind().into_iter().chain(large_batches()) {
        single.apply(&batch).unwrap();
    }
    assert!(single.load().unwrap() == expected);
}

/// Two ops whose keys go to different parts of a batch split in two.
fn ops_in_two_parts() -> (StoreOp, StoreOp) {
    let ops: Vec<StoreOp> = (100..200)
        .map(|i| StoreOp::subscription(numbered_sub(i), 1_795_000_000))
        .collect();
    let a = ops.iter().find(|op| part_of(op, 2) == 0).cloned().unwrap();
    let b = ops.iter().find(|op| part_of(op, 2) == 1).cloned().unwrap();
    (a, b)
}

/// Each part of a split batch checks the fence on its own: the first part commits, then the
/// lease is taken over (fence 2), and the second part is refused; the batch is refused as
/// Fenced (never acknowledged), and only the part written before the takeover is there.
#[test]
fn issue_17_pg_a_split_batch_fenced_between_parts_is_refused() {
    let Some(pg) = Pg::start() else { return };
    let url = pg.url();
    let ttl = Duration::from_millis(300);
    let mut la = PgLease::open(&url, "gw", "a").unwrap();
    assert_eq!(la.acquire(ttl).unwrap(), LeaseAnswer::Held(1));
    let fa = Fence::new("gw");
    fa.set(1);
    let mut lb = PgLease::open(&url, "gw", "b").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut a = PostgresStore::open_pooled(&url, 2)
        .unwrap()
        .with_fence(fa)
        .with_split_min_ops(1)
        .with_between_parts(Box::new(move |i| {
            // Between part 0 and part 1: A's lease runs out and B takes over.
            std::thread::sleep(ttl + Duration::from_millis(100));
            let _ = tx.send((i, lb.acquire(ttl)));
        }));
    let (first, second) = ops_in_two_parts();
    match a.apply(&[first.clone(), second.clone()]) {
        Err(StoreError::Fenced { fence: 1 }) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }
    let (i, took) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(i, 1);
    assert_eq!(took.unwrap(), LeaseAnswer::Held(2));
    let snap = open_pg(&pg).load().unwrap();
    let key = |op: &StoreOp| match op {
        StoreOp::PutSubscription { rec, .. } => rec.pair.watcher.clone(),
        _ => unreachable!(),
    };
    let stored: Vec<BareJid> = snap
        .subscriptions
        .iter()
        .map(|(r, _)| r.pair.watcher.clone())
        .collect();
    assert_eq!(
        stored,
        vec![key(&first)],
        "part 0 committed before the takeover"
    );
    // The retry of the batch is fenced as a whole again, writing nothing.
    match a.apply(&[first, second]) {
        Err(StoreError::Fenced { fence: 1 }) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(open_pg(&pg).load().unwrap().subscriptions.len(), 1);
}

/// An idle gateway notices the database going away without any write: the writer's probe
/// makes health fail within 2 s (about 1 s), and turns it back once the server is up again;
/// then every pooled connection reconnects (a batch split over 4 connections commits).
#[test]
fn issue_17_pg_an_idle_store_reports_an_outage_and_the_pool_reconnects() {
    let Some(pg) = Pg::start() else { return };
    let store = PostgresStore::open_pooled(&pg.url(), 4)
        .unwrap()
        .with_split_min_ops(50);
    let (h, join) = StoreHandle::start_with(Box::new(store), BatchConfig::default());
    for i in 0..400 {
        h.send(StoreOp::subscription(numbered_sub(i), 1_795_000_000));
    }
    h.flush().unwrap();
    // Idle past a few probes: still fine.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(h.health().ok(200_000), "{:?}", h.health());
    let failures = h.stats().failures;
    pg.crash();
    let stopped = Instant::now();
    wait_for("the idle store to fail", Duration::from_secs(2), || {
        h.health().failing
    });
    let noticed = stopped.elapsed();
    let health = h.health();
    let err = health.last_error.clone().unwrap_or_default();
    assert!(err.starts_with("store backend: postgresql probe"), "{err}");
    assert!(!h.accepting());
    assert_eq!(h.stats().batches, h.batches());
    assert!(h.stats().failures > failures);
    pg.start_again();
    let started = Instant::now();
    wait_for("the idle store to recover", Duration::from_secs(3), || {
        !h.health().failing
    });
    let recovered = started.elapsed();
    assert!(h.health().ok(200_000));
    assert!(h.accepting());
    eprintln!("idle outage noticed after {noticed:?}, recovery after {recovered:?}");
    // Every connection of the pool died with the server: a split batch needs 4 new ones.
    for i in 0..400 {
        h.send(StoreOp::subscription(numbered_sub(i), 1_795_001_000));
    }
    h.flush_timeout(Duration::from_secs(10)).unwrap();
    assert!(!h.health().failing);
    h.close();
    join.join().unwrap();
    let snap = open_pg(&pg).load().unwrap();
    assert_eq!(snap.subscriptions.len(), 400);
    assert!(snap
        .subscriptions
        .iter()
        .all(|(r, end)| *end == Some(1_795_001_000 + i64::from(r.lease_left.unwrap_or(0)))));
}

#[test]
fn issue_17_store_pool_size_is_configured_and_validated() {
    let c = with_env(&[("PUA_XMPP__STORE__URL", "postgres://db/pua")]).unwrap();
    assert_eq!(c.store.pool_size, 4);
    assert!(c
        .redacted()
        .contains("lease_retry_ms = 500\npool_size = 4\n"));
    let c = with_env(&[
        ("PUA_XMPP__STORE__URL", "postgres://db/pua"),
        ("PUA_XMPP__STORE__POOL_SIZE", "8"),
    ])
    .unwrap();
    assert_eq!(c.store.pool_size, 8);
    assert!(c.redacted().contains("pool_size = 8\n"));
    assert_eq!(
        with_env(&[("PUA_XMPP__STORE__POOL_SIZE", "0")]).unwrap_err(),
        "store.pool_size: expected a number from 1 to 64, got 0"
    );
    assert_eq!(
        with_env(&[("PUA_XMPP__STORE__POOL_SIZE", "65")]).unwrap_err(),
        "store.pool_size: expected a number from 1 to 64, got 65"
    );
}

/// Snapshot load time of 200,000 subscriptions (with dialogs) over 1 and over 4 connections,
/// interleaved; prints the figures (BENCHMARKS.md). `--ignored`: about a minute.
#[test]
#[ignore]
fn issue_17_pg_load_200k_with_pool_1_and_4() {
    let Some(pg) = Pg::start() else { return };
    let n: u32 = std::env::var("PUA_PG_LOAD_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let ops: Vec<StoreOp> = (0..n)
        .map(|i| StoreOp::subscription(numbered_dialog_sub(i), 1_795_000_000))
        .collect();
    // Writes in batches of 1,000 (the writer's largest): pool 1 (one multi-row statement per
    // batch) and pool 4 split in 3 parts of ≥ 256 ops (the default keeps such batches whole),
    // into an emptied table each time.
    for size in [1, 4, 1, 4] {
        let mut w = PostgresStore::open_pooled(&pg.url(), size)
            .unwrap()
            .with_split_min_ops(256);
        psql(&pg, "TRUNCATE subscription");
        let started = Instant::now();
        for chunk in ops.chunks(1000) {
            w.apply(chunk).unwrap();
        }
        let took = started.elapsed();
        eprintln!(
            "pool {size}: wrote {n} in {took:?} ({:.0}/s)",
            f64::from(n) / took.as_secs_f64()
        );
    }
    drop(ops);
    psql(&pg, "VACUUM ANALYZE");
    let mut one = PostgresStore::open_pooled(&pg.url(), 1).unwrap();
    let mut four = PostgresStore::open_pooled(&pg.url(), 4).unwrap();
    let mut t1 = Vec::new();
    let mut t4 = Vec::new();
    for _ in 0..3 {
        let s = Instant::now();
        let a = one.load().unwrap();
        t1.push(s.elapsed());
        assert_eq!(a.subscriptions.len(), n as usize);
        let s = Instant::now();
        let b = four.load().unwrap();
        t4.push(s.elapsed());
        assert!(a == b);
    }
    eprintln!("load {n}: pool 1 {t1:?}, pool 4 {t4:?}");
}
