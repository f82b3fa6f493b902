//! The persistence layer (issue 6): every op kind round-trips through a SQLite file, batching
//! keeps transactions few, a crash keeps what was flushed, and errors never stop the writer.

use pua_xmpp::notifier::{self, NotifierConfig, Presentity, WatcherRelation};
use pua_xmpp::publisher::PublicationRecord;
use pua_xmpp::sip::parse::parse_message;
use pua_xmpp::sip::SipMessage;
use pua_xmpp::subscriber::{Dialog, Pair, Relation, SubscriptionRecord};
use pua_xmpp_actors::store::{
    coalesce, lease_left_at, load_snapshot, BatchConfig, Snapshot, SqliteStore, Store, StoreError,
    StoreHandle, StoreOp, StoreStats, StoredNotifierDialog,
};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xmpp_parsers::jid::BareJid;

fn jid(s: &str) -> BareJid {
    match BareJid::new(s) {
        Ok(j) => j,
        Err(e) => panic!("test JID {s}: {e}"),
    }
}

fn pair(watcher: &str, presentity: &str) -> Pair {
    Pair {
        watcher: jid(watcher),
        watcher_uri: format!("sip:{}@xmpp.example.com", watcher.replace('@', "*")),
        presentity: jid(&format!("{}@sip.example.net", presentity.replace('@', "*"))),
        presentity_uri: format!("sip:{presentity}"),
    }
}

/// A subscription with a full dialog (two routes) and one without any.
fn sub_with_dialog() -> SubscriptionRecord {
    SubscriptionRecord {
        pair: pair("romeo@example.net", "juliet@example.com"),
        relation: Relation::Approved,
        dialog: Some(Dialog {
            call_id: "a84b4c76e66710@gw.example.com".to_owned(),
            local_tag: "gw-1928301774".to_owned(),
            remote_tag: Some("456248".to_owned()),
            local_cseq: 7,
            remote_cseq: Some(12),
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

fn stored_dialog(call_id: &str) -> StoredNotifierDialog {
    StoredNotifierDialog {
        call_id: call_id.to_owned(),
        local_tag: "gw-77".to_owned(),
        remote_tag: "c4r01".to_owned(),
        remote_uri: "sip:carol@sip.test".to_owned(),
        remote_display: Some("Carol \"C\" Smith".to_owned()),
        watcher: jid("carol*sip.test@sip-xmpp.test"),
        remote_target: "sip:carol@127.0.0.2:5071".to_owned(),
        route_set: vec!["<sip:127.0.0.2;lr;ftag=c4r01>".to_owned()],
        local_cseq: 3,
        remote_cseq: 1,
        event_id: Some("ev1".to_owned()),
        active: true,
        expires_at_unix: 1_795_000_600,
    }
}

fn publication() -> PublicationRecord {
    PublicationRecord {
        uri: "sip:romeo*example.net@xmpp.example.com".to_owned(),
        etag: Some("etag-5".to_owned()),
        call_id: "pub-1@gw.example.com".to_owned(),
        cseq: 4,
        body: Some(PIDF_OPEN.to_owned()),
        available: true,
        lease_left: Some(3600),
    }
}

/// A published document (the last presence of romeo sent by PUBLISH).
const PIDF_OPEN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence \
    xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"pres:romeo*example.net@xmpp.example.com\">\n  \
    <tuple id=\"ID-orchard\"><status><basic>open</basic></status><note>Déjeuner</note></tuple>\n\
    </presence>";

fn open(path: &Path) -> SqliteStore {
    match SqliteStore::open(path) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn load(path: &Path) -> Snapshot {
    match load_snapshot(path) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn apply(store: &mut SqliteStore, ops: &[StoreOp]) {
    if let Err(e) = store.apply(ops) {
        panic!("{e}");
    }
}

/// Every op kind written, the file reopened: load gives back exactly what was written.
#[test]
fn issue_6_round_trip_of_every_op_kind_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    let alice = jid("alice@xmpp.test");
    let bob = jid("bob@xmpp.test");
    {
        let mut s = open(&path);
        apply(
            &mut s,
            &[
                StoreOp::PutSubscription {
                    rec: sub_with_dialog(),
                    expires_at_unix: Some(1_795_001_800),
                },
                StoreOp::PutSubscription {
                    rec: sub_without_dialog(),
                    expires_at_unix: None,
                },
                StoreOp::PutRelation {
                    presentity: alice.clone(),
                    watcher: jid("carol*sip.test@sip-xmpp.test"),
                    state: WatcherRelation::Approved,
                },
                StoreOp::PutRelation {
                    presentity: alice.clone(),
                    watcher: jid("dave*sip.test@sip-xmpp.test"),
                    state: WatcherRelation::Denied,
                },
                StoreOp::PutRelation {
                    presentity: bob.clone(),
                    watcher: jid("erin*sip.test@sip-xmpp.test"),
                    state: WatcherRelation::Pending,
                },
                StoreOp::PutNotifierDialog {
                    presentity: alice.clone(),
                    dialog: stored_dialog("carol-sub-1@127.0.0.2"),
                },
                StoreOp::PutNotifierDialog {
                    presentity: bob.clone(),
                    dialog: StoredNotifierDialog {
                        remote_display: None,
                        route_set: Vec::new(),
                        event_id: None,
                        active: false,
                        ..stored_dialog("erin-sub-9@192.0.2.9")
                    },
                },
                StoreOp::PutPublication {
                    presentity: jid("romeo@example.net"),
                    rec: publication(),
                    expires_at_unix: Some(1_795_003_600),
                },
                StoreOp::PutPublication {
                    presentity: bob.clone(),
                    rec: PublicationRecord {
                        uri: "sip:bob*xmpp.test@sip-xmpp.test".to_owned(),
                        etag: None,
                        call_id: "pub-2@gw".to_owned(),
                        cseq: 1,
                        body: None,
                        available: true,
                        lease_left: None,
                    },
                    expires_at_unix: None,
                },
                StoreOp::PutWinfo {
                    presentity: alice.clone(),
                    wanted: true,
                },
                StoreOp::PutWinfo {
                    presentity: bob.clone(),
                    wanted: true,
                },
            ],
        );
    }
    let snap = load(&path);
    assert_eq!(
        snap.subscriptions,
        vec![
            (sub_without_dialog(), None),
            (sub_with_dialog(), Some(1_795_001_800)),
        ]
    );
    assert_eq!(
        snap.relations,
        vec![
            (
                alice.clone(),
                jid("carol*sip.test@sip-xmpp.test"),
                WatcherRelation::Approved
            ),
            (
                alice.clone(),
                jid("dave*sip.test@sip-xmpp.test"),
                WatcherRelation::Denied
            ),
            (
                bob.clone(),
                jid("erin*sip.test@sip-xmpp.test"),
                WatcherRelation::Pending
            ),
        ]
    );
    assert_eq!(
        snap.notifier_dialogs,
        vec![
            (alice.clone(), stored_dialog("carol-sub-1@127.0.0.2")),
            (
                bob.clone(),
                StoredNotifierDialog {
                    remote_display: None,
                    route_set: Vec::new(),
                    event_id: None,
                    active: false,
                    ..stored_dialog("erin-sub-9@192.0.2.9")
                }
            ),
        ]
    );
    assert_eq!(
        snap.publications,
        vec![
            (
                bob.clone(),
                PublicationRecord {
                    uri: "sip:bob*xmpp.test@sip-xmpp.test".to_owned(),
                    etag: None,
                    call_id: "pub-2@gw".to_owned(),
                    cseq: 1,
                    body: None,
                    available: true,
                    lease_left: None,
                },
                None
            ),
            (jid("romeo@example.net"), publication(), Some(1_795_003_600)),
        ]
    );
    assert_eq!(snap.winfo, vec![alice, bob]);
}

#[test]
fn issue_6_deletes_remove_exactly_their_row() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let alice = jid("alice@xmpp.test");
    apply(
        &mut s,
        &[
            StoreOp::PutSubscription {
                rec: sub_with_dialog(),
                expires_at_unix: Some(10),
            },
            StoreOp::PutSubscription {
                rec: sub_without_dialog(),
                expires_at_unix: None,
            },
            StoreOp::PutNotifierDialog {
                presentity: alice.clone(),
                dialog: stored_dialog("d1"),
            },
            StoreOp::PutNotifierDialog {
                presentity: alice.clone(),
                dialog: stored_dialog("d2"),
            },
            StoreOp::PutWinfo {
                presentity: alice.clone(),
                wanted: true,
            },
        ],
    );
    apply(
        &mut s,
        &[
            StoreOp::DeleteSubscription {
                watcher: jid("romeo@example.net"),
                presentity: jid("juliet*example.com@sip.example.net"),
            },
            StoreOp::DeleteNotifierDialog {
                call_id: "d1".to_owned(),
            },
            StoreOp::PutWinfo {
                presentity: alice.clone(),
                wanted: false,
            },
            // Deleting what is not there is not an error.
            StoreOp::DeleteNotifierDialog {
                call_id: "never-stored".to_owned(),
            },
        ],
    );
    let snap = s.load().unwrap();
    assert_eq!(snap.subscriptions, vec![(sub_without_dialog(), None)]);
    assert_eq!(snap.notifier_dialogs, vec![(alice, stored_dialog("d2"))]);
    assert_eq!(snap.winfo, Vec::<BareJid>::new());
}

#[test]
fn issue_6_upsert_overwrites_the_row_of_the_same_key() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let alice = jid("alice@xmpp.test");
    let carol = jid("carol*sip.test@sip-xmpp.test");
    apply(
        &mut s,
        &[
            StoreOp::PutSubscription {
                rec: sub_with_dialog(),
                expires_at_unix: Some(100),
            },
            StoreOp::PutRelation {
                presentity: alice.clone(),
                watcher: carol.clone(),
                state: WatcherRelation::Pending,
            },
            StoreOp::PutNotifierDialog {
                presentity: alice.clone(),
                dialog: stored_dialog("d1"),
            },
            StoreOp::PutPublication {
                presentity: alice.clone(),
                rec: publication(),
                expires_at_unix: Some(1_795_003_600),
            },
            StoreOp::PutWinfo {
                presentity: alice.clone(),
                wanted: true,
            },
        ],
    );
    // Same keys again: the dialog is gone from the subscription (lease ended), the relation
    // is decided, the notifier dialog was refreshed, the publication got a new ETag.
    let mut ended = sub_with_dialog();
    ended.dialog = None;
    ended.lease_left = None;
    ended.relation = Relation::Pending;
    ended.pair.presentity_uri = "sip:Juliet@Example.com".to_owned();
    let refreshed = StoredNotifierDialog {
        remote_cseq: 2,
        local_cseq: 9,
        active: false,
        expires_at_unix: 1_795_004_200,
        route_set: Vec::new(),
        ..stored_dialog("d1")
    };
    let republished = PublicationRecord {
        etag: Some("etag-6".to_owned()),
        cseq: 5,
        body: Some(PIDF_OPEN.replace("open", "closed")),
        available: false,
        lease_left: Some(1800),
        ..publication()
    };
    apply(
        &mut s,
        &[
            StoreOp::PutSubscription {
                rec: ended.clone(),
                expires_at_unix: None,
            },
            StoreOp::PutRelation {
                presentity: alice.clone(),
                watcher: carol.clone(),
                state: WatcherRelation::Approved,
            },
            StoreOp::PutNotifierDialog {
                presentity: alice.clone(),
                dialog: refreshed.clone(),
            },
            StoreOp::publication(alice.clone(), republished.clone(), 1_795_000_000),
            StoreOp::PutWinfo {
                presentity: alice.clone(),
                wanted: true,
            },
        ],
    );
    let snap = s.load().unwrap();
    assert_eq!(snap.subscriptions, vec![(ended, None)]);
    assert_eq!(
        snap.relations,
        vec![(alice.clone(), carol, WatcherRelation::Approved)]
    );
    assert_eq!(snap.notifier_dialogs, vec![(alice.clone(), refreshed)]);
    assert_eq!(
        snap.publications,
        vec![(alice.clone(), republished, Some(1_795_001_800))]
    );
    assert_eq!(snap.winfo, vec![alice]);
}

fn numbered_sub(i: u32) -> SubscriptionRecord {
    let mut rec = sub_with_dialog();
    rec.pair = pair(&format!("user{i}@example.net"), "juliet@example.com");
    if let Some(d) = rec.dialog.as_mut() {
        d.call_id = format!("call-{i}@gw.example.com");
        d.local_cseq = i;
    }
    rec
}

fn start(store: SqliteStore, cfg: BatchConfig) -> (StoreHandle, std::thread::JoinHandle<()>) {
    StoreHandle::start_with(Box::new(store), cfg)
}

/// 10,000 puts, batches of at most 1000 and no deadline: exactly 10 transactions.
#[test]
fn issue_6_ten_thousand_puts_commit_in_ten_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    let cfg = BatchConfig {
        max_ops: 1000,
        max_delay: Duration::from_secs(600),
        ..BatchConfig::default()
    };
    let (h, join) = start(open(&path), cfg);
    for i in 0..10_000 {
        h.send(StoreOp::subscription(numbered_sub(i), 1_795_000_000));
    }
    h.flush().unwrap();
    assert_eq!(
        h.stats(),
        StoreStats {
            sent: 10_000,
            batches: 10,
            ops: 10_000,
            coalesced: 0,
            failures: 0,
            dropped: 0,
        }
    );
    assert_eq!(h.batches(), 10);
    h.close();
    join.join().unwrap();
    // Loaded in key order: by watcher text (user1000@ sorts before user1@).
    let mut expected: Vec<_> = (0..10_000)
        .map(|i| (numbered_sub(i), Some(1_795_001_800)))
        .collect();
    expected.sort_by(|a, b| a.0.pair.watcher.as_str().cmp(b.0.pair.watcher.as_str()));
    assert_eq!(load(&path).subscriptions, expected);
}

/// Throughput with the default batching (1000 ops / 20 ms). Prints the figure; asserts only
/// that everything landed in far fewer transactions than ops.
#[test]
fn issue_6_throughput_of_put_subscription_through_the_handle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    let (h, join) = StoreHandle::start(Box::new(open(&path)));
    let n: u32 = 20_000;
    let ops: Vec<StoreOp> = (0..n)
        .map(|i| StoreOp::subscription(numbered_sub(i), 1_795_000_000))
        .collect();
    let t0 = Instant::now();
    for op in ops {
        h.send(op);
    }
    let sent = t0.elapsed();
    h.flush().unwrap();
    let total = t0.elapsed();
    let stats = h.stats();
    println!(
        "PutSubscription: {n} ops, send {:.1} ms, committed after {:.1} ms = {:.0} ops/s in {} transactions",
        sent.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        f64::from(n) / total.as_secs_f64(),
        stats.batches
    );
    assert_eq!(stats.ops, u64::from(n));
    assert!(stats.batches <= u64::from(n) / 100, "{stats:?}");
    h.close();
    join.join().unwrap();
    assert_eq!(load(&path).subscriptions.len(), n as usize);
    // Row size, for the 1,000,000-subscription target.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let bytes = std::fs::metadata(&path).unwrap().len();
    println!(
        "file {bytes} bytes = {} bytes per subscription with a dialog and two routes",
        bytes / u64::from(n)
    );
}

/// A NOTIFY burst on one pair inside one batch is one row write; the last value wins.
#[test]
fn issue_6_a_burst_on_one_key_is_coalesced_to_the_last_op() {
    let cfg = BatchConfig {
        max_delay: Duration::from_secs(600),
        ..BatchConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    let (h, join) = start(open(&path), cfg);
    for cseq in 1..=100 {
        let mut rec = sub_with_dialog();
        if let Some(d) = rec.dialog.as_mut() {
            d.remote_cseq = Some(cseq);
        }
        h.send(StoreOp::subscription(rec, 1_795_000_000));
    }
    h.send(StoreOp::PutWinfo {
        presentity: jid("alice@xmpp.test"),
        wanted: true,
    });
    h.send(StoreOp::PutWinfo {
        presentity: jid("alice@xmpp.test"),
        wanted: false,
    });
    h.flush().unwrap();
    assert_eq!(
        h.stats(),
        StoreStats {
            sent: 102,
            batches: 1,
            ops: 102,
            coalesced: 100,
            failures: 0,
            dropped: 0,
        }
    );
    h.close();
    join.join().unwrap();
    let snap = load(&path);
    let mut expected = sub_with_dialog();
    if let Some(d) = expected.dialog.as_mut() {
        d.remote_cseq = Some(100);
    }
    assert_eq!(snap.subscriptions, vec![(expected, Some(1_795_001_800))]);
    assert_eq!(snap.winfo, Vec::<BareJid>::new());
}

#[test]
fn issue_6_coalesce_keeps_the_last_op_per_key_in_order() {
    let a = jid("a@x");
    let b = jid("b@x");
    let ops = vec![
        StoreOp::PutWinfo {
            presentity: a.clone(),
            wanted: true,
        },
        StoreOp::DeleteNotifierDialog {
            call_id: "c1".to_owned(),
        },
        StoreOp::PutWinfo {
            presentity: b.clone(),
            wanted: true,
        },
        StoreOp::PutNotifierDialog {
            presentity: a.clone(),
            dialog: stored_dialog("c1"),
        },
        StoreOp::PutWinfo {
            presentity: a.clone(),
            wanted: false,
        },
    ];
    assert_eq!(
        coalesce(ops),
        vec![
            StoreOp::PutWinfo {
                presentity: b,
                wanted: true,
            },
            StoreOp::PutNotifierDialog {
                presentity: a.clone(),
                dialog: stored_dialog("c1"),
            },
            StoreOp::PutWinfo {
                presentity: a,
                wanted: false,
            },
        ]
    );
}

#[test]
fn issue_6_schema_version_table_lists_every_migration_and_reopen_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    assert_eq!(open(&path).schema_version().unwrap(), 4);
    assert_eq!(open(&path).schema_version().unwrap(), 4);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let versions: Vec<u32> = conn
        .prepare("SELECT version FROM schema_version ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn issue_6_a_schema_newer_than_the_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    drop(open(&path));
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (7, 0)",
        [],
    )
    .unwrap();
    drop(conn);
    match SqliteStore::open(&path) {
        Err(e) => assert_eq!(
            e.to_string(),
            "store schema version 7 is newer than this binary knows (4)"
        ),
        Ok(_) => panic!("opened a newer schema"),
    }
}

fn copy_db(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    let wal = |p: &Path| {
        let mut s = p.as_os_str().to_owned();
        s.push("-wal");
        std::path::PathBuf::from(s)
    };
    if wal(from).exists() {
        std::fs::copy(wal(from), wal(to)).unwrap();
    }
}

/// Flush after the first half, then the process "dies" with the second half still queued:
/// the files as they are at that moment (database + WAL, what a crash leaves) hold exactly
/// the first half. Dropping the handles without close still commits the rest.
#[test]
fn issue_6_a_crash_after_a_flush_keeps_exactly_the_flushed_half() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    let crashed = dir.path().join("crashed.sqlite");
    let cfg = BatchConfig {
        max_ops: 1_000_000,
        max_delay: Duration::from_secs(600),
        ..BatchConfig::default()
    };
    let (h, join) = start(open(&path), cfg);
    for i in 0..500 {
        h.send(StoreOp::subscription(numbered_sub(i), 1_795_000_000));
    }
    h.flush().unwrap();
    for i in 500..1000 {
        h.send(StoreOp::subscription(numbered_sub(i), 1_795_000_000));
    }
    // The writer holds the second half in memory (no deadline, batch not full).
    std::thread::sleep(Duration::from_millis(50));
    copy_db(&path, &crashed);
    let snap = load(&crashed);
    let mut expected: Vec<_> = (0..500)
        .map(|i| (numbered_sub(i), Some(1_795_001_800)))
        .collect();
    expected.sort_by(|a, b| a.0.pair.watcher.as_str().cmp(b.0.pair.watcher.as_str()));
    assert_eq!(snap.subscriptions, expected);

    let h2 = h.clone();
    drop(h);
    drop(h2);
    join.join().unwrap();
    assert_eq!(load(&path).subscriptions.len(), 1000);
}

#[test]
fn issue_6_an_unopenable_path_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let path = file.join("gw.sqlite");
    match SqliteStore::open(&path) {
        Err(e) => {
            assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
            assert_eq!(
                e.to_string(),
                format!(
                    "cannot open store {}: unable to open database file: {}",
                    path.display(),
                    path.display()
                )
            );
        }
        Ok(_) => panic!("opened {}", path.display()),
    }
}

/// Fails the first `fail` calls of `apply`, then delegates.
struct Flaky {
    inner: SqliteStore,
    calls: Arc<AtomicU32>,
    fail: u32,
}

impl Store for Flaky {
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail {
            return Err(StoreError::Backend("disk I/O error (injected)".to_owned()));
        }
        self.inner.apply(ops)
    }
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }
}

#[test]
fn issue_6_the_writer_survives_a_failed_batch_and_retries_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    let calls = Arc::new(AtomicU32::new(0));
    let flaky = Flaky {
        inner: open(&path),
        calls: Arc::clone(&calls),
        fail: 2,
    };
    let cfg = BatchConfig {
        min_backoff: Duration::from_millis(1),
        ..BatchConfig::default()
    };
    let (h, join) = StoreHandle::start_with(Box::new(flaky), cfg);
    h.send(StoreOp::subscription(sub_with_dialog(), 1_795_000_000));
    h.flush().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        h.stats(),
        StoreStats {
            sent: 1,
            batches: 1,
            ops: 1,
            coalesced: 0,
            failures: 2,
            dropped: 0,
        }
    );
    // Still writing afterwards.
    h.send(StoreOp::subscription(sub_without_dialog(), 1_795_000_000));
    h.close();
    join.join().unwrap();
    assert_eq!(
        load(&path).subscriptions,
        vec![
            (sub_without_dialog(), None),
            (sub_with_dialog(), Some(1_795_001_800))
        ]
    );
}

#[test]
fn issue_6_a_batch_failing_at_close_is_dropped_after_the_configured_attempts() {
    let calls = Arc::new(AtomicU32::new(0));
    let flaky = Flaky {
        inner: SqliteStore::open_in_memory().unwrap(),
        calls: Arc::clone(&calls),
        fail: u32::MAX,
    };
    let cfg = BatchConfig {
        min_backoff: Duration::from_millis(1),
        attempts_at_close: 3,
        max_delay: Duration::from_secs(600),
        ..BatchConfig::default()
    };
    let (h, join) = StoreHandle::start_with(Box::new(flaky), cfg);
    h.send(StoreOp::subscription(sub_with_dialog(), 1_795_000_000));
    assert!(matches!(
        h.flush_timeout(Duration::from_millis(30)),
        Err(StoreError::FlushTimeout)
    ));
    let h2 = h.clone();
    h.close();
    join.join().unwrap();
    assert!(calls.load(Ordering::SeqCst) >= 3);
    assert!(matches!(h2.flush(), Err(StoreError::WriterGone)));
    // After close, a send is dropped (and counted), never a panic.
    h2.send(StoreOp::PutWinfo {
        presentity: jid("alice@xmpp.test"),
        wanted: true,
    });
    let stats = h2.stats();
    assert_eq!((stats.sent, stats.ops, stats.dropped), (2, 0, 2));
}

/// A row that no longer parses (hand-edited, older code) is skipped, the rest loads.
#[test]
fn issue_6_a_row_with_a_bad_jid_is_skipped_and_the_rest_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    {
        let mut s = open(&path);
        apply(
            &mut s,
            &[StoreOp::PutSubscription {
                rec: sub_without_dialog(),
                expires_at_unix: None,
            }],
        );
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "INSERT INTO subscription (watcher, presentity, watcher_uri, presentity_uri, relation)
           VALUES ('@bad@', 'x@y', 'sip:a@b', 'sip:c@d', 0);
         INSERT INTO watcher_relation (presentity, watcher, state) VALUES ('alice@xmpp.test', 'c@x', 9);
         INSERT INTO winfo VALUES ('');",
    )
    .unwrap();
    drop(conn);
    let snap = load(&path);
    assert_eq!(snap.subscriptions, vec![(sub_without_dialog(), None)]);
    assert_eq!(snap.relations, vec![]);
    assert_eq!(snap.winfo, Vec::<BareJid>::new());
}

#[test]
fn issue_6_load_snapshot_of_a_new_file_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(load(&dir.path().join("new.sqlite")), Snapshot::default());
}

#[test]
fn issue_6_lease_left_is_recomputed_from_the_wall_clock_end() {
    assert_eq!(
        lease_left_at(Some(1_795_001_800), 1_795_000_000),
        Some(1800)
    );
    assert_eq!(lease_left_at(Some(1_795_000_000), 1_795_000_100), Some(0));
    assert_eq!(lease_left_at(None, 1_795_000_000), None);
}

/// The notifier's dialog converts with its Instant expiry turned into unix seconds.
#[test]
fn issue_6_notifier_dialog_converts_to_its_stored_form() {
    let msg = "SUBSCRIBE sip:alice*xmpp.test@sip-xmpp.test SIP/2.0\r\n\
Record-Route: <sip:127.0.0.2;lr;ftag=c4r01>\r\n\
Record-Route: <sip:127.0.0.3;lr>\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5071;rport=5071;branch=z9hG4bK-carol-1\r\n\
From: \"Carol\" <sip:carol@sip.test>;tag=c4r01\r\n\
To: <sip:alice*xmpp.test@sip-xmpp.test>\r\n\
Call-ID: carol-sub-1@127.0.0.2\r\n\
CSeq: 5 SUBSCRIBE\r\n\
Contact: <sip:carol@127.0.0.2:5071>\r\n\
Max-Forwards: 69\r\n\
Event: presence;id=ev1\r\n\
Expires: 600\r\n\
Content-Length: 0\r\n\r\n";
    let req = match parse_message(msg.as_bytes()) {
        Ok(SipMessage::Request(r)) => r,
        other => panic!("{other:?}"),
    };
    let alice = jid("alice@xmpp.test");
    let carol = jid("carol*sip.test@sip-xmpp.test");
    let mut p = Presentity::new(
        NotifierConfig::default(),
        alice.clone(),
        "sip:alice*xmpp.test@sip-xmpp.test".to_owned(),
        1,
    );
    p.restore_relation(carol.clone(), WatcherRelation::Approved);
    let now = Instant::now();
    p.handle_input(
        notifier::Input::Subscribe {
            req: &req,
            watcher: &carol,
        },
        now,
    );
    let d = match p.dialogs().first() {
        Some(d) => d.clone(),
        None => panic!("no dialog"),
    };
    let stored = StoredNotifierDialog::from_dialog(&d, now, 1_795_000_000);
    assert_eq!(
        stored,
        StoredNotifierDialog {
            call_id: "carol-sub-1@127.0.0.2".to_owned(),
            local_tag: d.local_tag.clone(),
            remote_tag: "c4r01".to_owned(),
            remote_uri: "sip:carol@sip.test".to_owned(),
            remote_display: Some("Carol".to_owned()),
            watcher: carol.clone(),
            remote_target: "sip:carol@127.0.0.2:5071".to_owned(),
            route_set: vec![
                "<sip:127.0.0.2;lr;ftag=c4r01>".to_owned(),
                "<sip:127.0.0.3;lr>".to_owned()
            ],
            local_cseq: d.local_cseq,
            remote_cseq: 5,
            event_id: Some("ev1".to_owned()),
            active: true,
            expires_at_unix: 1_795_000_600,
        }
    );
    // Written 100 s later, the same dialog ends at the same wall-clock second.
    let later =
        StoredNotifierDialog::from_dialog(&d, now + Duration::from_secs(100), 1_795_000_100);
    assert_eq!(later.expires_at_unix, 1_795_000_600);
    // And PersistOp::Dialog maps to the same op.
    assert_eq!(
        StoreOp::from_persist(
            &alice,
            &notifier::PersistOp::Dialog(Box::new(d)),
            now,
            1_795_000_000
        ),
        StoreOp::PutNotifierDialog {
            presentity: alice,
            dialog: stored
        }
    );
}

/// Rows of `table` in the store file.
fn rows_in(path: &Path, table: &str) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// 0..n in a spread order, as keys arrive in production (i * 7919 mod n visits every i once
/// when n shares no factor with the prime 7919).
fn spread(n: u32) -> Vec<u32> {
    (0..n).map(|i| (i * 7919) % n).collect()
}

/// A database as an older binary left it: the migrations up to `version`, recorded.
fn db_at_schema(path: &Path, version: u32) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY,
            applied_at INTEGER NOT NULL);",
    )
    .unwrap();
    for (v, sql) in pua_xmpp_actors::store::MIGRATIONS
        .iter()
        .filter(|m| m.0 <= version)
    {
        conn.execute_batch(sql).unwrap();
        conn.execute("INSERT INTO schema_version VALUES (?1, 0)", [v])
            .unwrap();
    }
    conn
}

/// Issue 6, PUA mode: a database of schema 1 (publication without body or lease) is migrated
/// to 2 at open; its rows load with no body and no lease, so nothing is refreshed for them.
#[test]
fn issue_6_migration_2_keeps_schema_1_publications_without_body() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    {
        let conn = db_at_schema(&path, 1);
        conn.execute_batch(
            "INSERT INTO publication VALUES ('romeo@example.net',
                'sip:romeo*example.net@xmpp.example.com', 'etag-5', 'pub-1@gw.example.com', 4);",
        )
        .unwrap();
    }
    let mut store = open(&path);
    assert_eq!(store.schema_version().unwrap(), 4);
    assert_eq!(
        store.load().unwrap().publications,
        vec![(
            jid("romeo@example.net"),
            PublicationRecord {
                body: None,
                lease_left: None,
                ..publication()
            },
            None
        )]
    );
}

/// Issue 6, PUA mode: the publication record (ETag, Call-ID, CSeq, the document last sent,
/// availability, lease) goes through the batched handle, survives a "kill -9" (the files as
/// they are after the flush) and loads back exactly, with its wall-clock end.
#[test]
fn issue_6_pua_publication_with_its_last_document_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    let copy = dir.path().join("crashed.sqlite");
    let (h, join) = start(open(&path), BatchConfig::default());
    let romeo = jid("romeo@example.net");
    let first = publication();
    h.send(StoreOp::publication(romeo.clone(), first, 1_795_000_000));
    let closed = PublicationRecord {
        etag: Some("etag-6".to_owned()),
        cseq: 5,
        body: Some(PIDF_OPEN.replace("open", "closed")),
        available: false,
        lease_left: Some(1800),
        ..publication()
    };
    h.send(StoreOp::publication(
        romeo.clone(),
        closed.clone(),
        1_795_000_100,
    ));
    h.flush().unwrap();
    copy_db(&path, &copy);
    h.close();
    join.join().unwrap();
    let snap = load(&copy);
    assert_eq!(
        snap.publications,
        vec![(romeo, closed, Some(1_795_001_900))]
    );
    assert_eq!(lease_left_at(Some(1_795_001_900), 1_795_001_000), Some(900));
}

/// Issue 7, schema 3: a store written by schema 2 (subscriptions keyed by the two JIDs) opens
/// migrated; its rows load as before, and a later write of the same pair replaces its row
/// (no second row), a delete removes it.
#[test]
fn issue_7_migration_3_keeps_schema_2_subscriptions_and_writes_them_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    {
        let conn = db_at_schema(&path, 2);
        conn.execute_batch(
            "INSERT INTO subscription (watcher, presentity, watcher_uri, presentity_uri, relation,
                lease_left, expires_at)
               VALUES ('benvolio@example.net', 'tybalt*example.com@sip.example.net',
                 'sip:benvolio*example.net@xmpp.example.com', 'sip:tybalt@example.com', 0, NULL,
                 NULL);",
        )
        .unwrap();
    }
    let mut store = open(&path);
    assert_eq!(store.schema_version().unwrap(), 4);
    assert_eq!(
        store.load().unwrap().subscriptions,
        vec![(sub_without_dialog(), None)]
    );
    let mut changed = sub_without_dialog();
    changed.relation = Relation::Approved;
    apply(
        &mut store,
        &[StoreOp::subscription(changed.clone(), 1_795_000_000)],
    );
    drop(store);
    assert_eq!(rows_in(&path, "subscription"), 1);
    assert_eq!(load(&path).subscriptions, vec![(changed, None)]);
    let mut store = open(&path);
    let p = sub_without_dialog().pair;
    apply(
        &mut store,
        &[StoreOp::DeleteSubscription {
            watcher: p.watcher,
            presentity: p.presentity,
        }],
    );
    assert_eq!(load(&path).subscriptions, vec![]);
}

/// Issue 7: pairs written in no particular order, across reopenings of the store (the writer
/// rebuilds pair -> row id at open), updated and deleted: the table holds exactly one row per
/// live pair with its last record, and new rows take increasing ids.
#[test]
fn issue_7_row_ids_survive_reopening_and_keep_one_row_per_pair() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    let n = 2000u32;
    let order = spread(n);
    {
        let mut s = open(&path);
        let ops: Vec<StoreOp> = order
            .iter()
            .map(|&i| StoreOp::subscription(numbered_sub(i), 1_795_000_000))
            .collect();
        apply(&mut s, &ops);
    }
    let mut expected: std::collections::BTreeMap<u32, SubscriptionRecord> =
        (0..n).map(|i| (i, numbered_sub(i))).collect();
    {
        let mut s = open(&path);
        let mut ops = Vec::new();
        for &i in order.iter().filter(|&&i| i % 2 == 0) {
            let mut r = numbered_sub(i);
            r.relation = Relation::Approved;
            expected.insert(i, r.clone());
            ops.push(StoreOp::subscription(r, 1_795_000_000));
        }
        for &i in order.iter().filter(|&&i| i % 4 == 1) {
            let p = numbered_sub(i).pair;
            expected.remove(&i);
            ops.push(StoreOp::DeleteSubscription {
                watcher: p.watcher,
                presentity: p.presentity,
            });
        }
        apply(&mut s, &ops);
    }
    let max_before: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT MAX(id) FROM subscription", [], |r| r.get(0))
        .unwrap();
    {
        // Deleted pairs come back as new rows, appended after the last.
        let mut s = open(&path);
        apply(
            &mut s,
            &[StoreOp::subscription(numbered_sub(1), 1_795_000_000)],
        );
        expected.insert(1, numbered_sub(1));
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (rows, max_id): (i64, i64) = conn
        .query_row("SELECT COUNT(*), MAX(id) FROM subscription", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(rows, expected.len() as i64);
    assert_eq!(max_id, max_before + 1, "the re-added pair took the next id");
    let mut got: Vec<SubscriptionRecord> = load(&path)
        .subscriptions
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    let mut want: Vec<SubscriptionRecord> = expected.into_values().collect();
    let key = |r: &SubscriptionRecord| (r.pair.watcher.to_string(), r.pair.presentity.to_string());
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got, want);
}

/// Issue 7, schema 4: a store of schema 3 (watcher relations keyed by the two JIDs, notifier
/// dialogs by Call-ID) opens migrated; its rows load as before, and later writes of the same
/// keys replace their rows, a dialog delete removes its row.
#[test]
fn issue_7_migration_4_keeps_schema_3_relations_and_dialogs_and_writes_them_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    {
        let conn = db_at_schema(&path, 3);
        conn.execute_batch(
            "INSERT INTO watcher_relation VALUES ('alice@xmpp.test', 'carol*sip.test@sip-xmpp.test', 0);
             INSERT INTO notifier_dialog VALUES ('d1@sip.test', 'alice@xmpp.test', 'gw-77', 'c4r01',
               'sip:carol@sip.test', 'Carol \"C\" Smith', 'carol*sip.test@sip-xmpp.test',
               'sip:carol@127.0.0.2:5071', '[\"<sip:127.0.0.2;lr;ftag=c4r01>\"]', 3, 1, 'ev1', 1,
               1795000600);",
        )
        .unwrap();
    }
    let alice = jid("alice@xmpp.test");
    let carol = jid("carol*sip.test@sip-xmpp.test");
    let mut store = open(&path);
    assert_eq!(store.schema_version().unwrap(), 4);
    let snap = store.load().unwrap();
    assert_eq!(
        snap.relations,
        vec![(alice.clone(), carol.clone(), WatcherRelation::Pending)]
    );
    assert_eq!(
        snap.notifier_dialogs,
        vec![(alice.clone(), stored_dialog("d1@sip.test"))]
    );
    let mut refreshed = stored_dialog("d1@sip.test");
    refreshed.local_cseq = 4;
    apply(
        &mut store,
        &[
            StoreOp::PutRelation {
                presentity: alice.clone(),
                watcher: carol.clone(),
                state: WatcherRelation::Approved,
            },
            StoreOp::PutNotifierDialog {
                presentity: alice.clone(),
                dialog: refreshed.clone(),
            },
        ],
    );
    drop(store);
    assert_eq!(
        (
            rows_in(&path, "watcher_relation"),
            rows_in(&path, "notifier_dialog")
        ),
        (1, 1)
    );
    let snap = load(&path);
    assert_eq!(
        snap.relations,
        vec![(alice.clone(), carol, WatcherRelation::Approved)]
    );
    assert_eq!(snap.notifier_dialogs, vec![(alice, refreshed)]);
    let mut store = open(&path);
    apply(
        &mut store,
        &[StoreOp::DeleteNotifierDialog {
            call_id: "d1@sip.test".to_owned(),
        }],
    );
    assert_eq!(load(&path).notifier_dialogs, vec![]);
}

/// Issue 7: notifier dialogs and relations written in no particular order, across reopenings
/// (the writer rebuilds key -> row id at open), rewritten and deleted: one row per live key.
#[test]
fn issue_7_notifier_rows_survive_reopening_and_keep_one_row_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    let n = 1000u32;
    let order = spread(n);
    let alice = jid("alice@xmpp.test");
    let watcher = |i: u32| jid(&format!("w{i}*sip.test@sip-xmpp.test"));
    let dialog = |i: u32, cseq: u32| StoredNotifierDialog {
        local_cseq: cseq,
        watcher: watcher(i),
        ..stored_dialog(&format!("call-{i}@sip.test"))
    };
    let put = |i: u32, cseq: u32, state| {
        [
            StoreOp::PutRelation {
                presentity: alice.clone(),
                watcher: watcher(i),
                state,
            },
            StoreOp::PutNotifierDialog {
                presentity: alice.clone(),
                dialog: dialog(i, cseq),
            },
        ]
    };
    {
        let mut s = open(&path);
        let ops: Vec<StoreOp> = order
            .iter()
            .flat_map(|&i| put(i, 1, WatcherRelation::Pending))
            .collect();
        apply(&mut s, &ops);
    }
    {
        let mut s = open(&path);
        let mut ops: Vec<StoreOp> = order
            .iter()
            .filter(|&&i| i % 2 == 0)
            .flat_map(|&i| put(i, 2, WatcherRelation::Approved))
            .collect();
        ops.extend(
            order
                .iter()
                .filter(|&&i| i % 4 == 1)
                .map(|&i| StoreOp::DeleteNotifierDialog {
                    call_id: format!("call-{i}@sip.test"),
                }),
        );
        apply(&mut s, &ops);
    }
    let snap = load(&path);
    assert_eq!(snap.relations.len(), n as usize);
    for (p, w, state) in &snap.relations {
        assert_eq!(p, &alice);
        let i: u32 = w.as_str()[1..w.as_str().find('*').unwrap()]
            .parse()
            .unwrap();
        let want = if i.is_multiple_of(2) {
            WatcherRelation::Approved
        } else {
            WatcherRelation::Pending
        };
        assert_eq!(*state, want, "{w}");
    }
    let mut want: Vec<(BareJid, StoredNotifierDialog)> = (0..n)
        .filter(|i| i % 4 != 1)
        .map(|i| {
            (
                alice.clone(),
                dialog(i, if i.is_multiple_of(2) { 2 } else { 1 }),
            )
        })
        .collect();
    want.sort_by(|a, b| a.1.call_id.cmp(&b.1.call_id));
    assert_eq!(snap.notifier_dialogs, want);
}

/// Fails every `apply` while `broken` is set (a disk that is full, then has room again).
struct Switch {
    inner: SqliteStore,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl Store for Switch {
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Backend(
                "database or disk is full (injected)".to_owned(),
            ));
        }
        self.inner.apply(ops)
    }
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }
}

/// Issue 14, durable before acknowledged: `after_commit` runs once the ops sent before it are
/// in the file (another connection reads them from inside the callback), within the group
/// commit wait rather than the 20 ms batch delay.
#[test]
fn issue_14_after_commit_runs_once_the_earlier_ops_are_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    let (h, join) = start(open(&path), BatchConfig::default());
    let sent_at = Instant::now();
    h.send(StoreOp::subscription(sub_with_dialog(), 1_795_000_000));
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    h.after_commit(Box::new(move || {
        let _ = tx.send((load(&p).subscriptions.len(), sent_at.elapsed()));
    }));
    let (rows, took) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("callback ran");
    assert_eq!(
        rows, 1,
        "the op sent before the marker is committed when it runs"
    );
    assert!(
        took < Duration::from_millis(15),
        "group commit waited {took:?}"
    );
    h.close();
    join.join().unwrap();
}

/// Issue 14: while the store cannot write, it says so (`health`, `accepting`), nothing waiting
/// for a commit is released, and everything goes on once it writes again.
#[test]
fn issue_14_a_store_that_cannot_write_says_so_holds_its_waiters_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sqlite");
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let store = Switch {
        inner: open(&path),
        broken: Arc::clone(&broken),
    };
    let cfg = BatchConfig {
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ..BatchConfig::default()
    };
    let (h, join) = StoreHandle::start_with(Box::new(store), cfg);
    assert!(h.accepting());
    h.send(StoreOp::subscription(sub_with_dialog(), 1_795_000_000));
    let (tx, rx) = std::sync::mpsc::channel();
    h.after_commit(Box::new(move || {
        let _ = tx.send(());
    }));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !h.health().failing && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let health = h.health();
    assert!(health.failing, "{health:?}");
    assert!(health.writer_alive);
    assert_eq!(
        health.last_error.as_deref(),
        Some("store backend: database or disk is full (injected)")
    );
    assert_eq!(health.queued, 1);
    assert!(!h.accepting(), "no new promises while the store fails");
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "nothing is released before its commit"
    );
    // What arrives meanwhile joins the failing batch, one op per key: 1,000 changes of one
    // pair cost one row, not a growing queue.
    for i in 0..1000 {
        h.send(StoreOp::subscription(sub_with_dialog(), 1_795_000_000 + i));
    }
    std::thread::sleep(Duration::from_millis(100));
    broken.store(false, Ordering::SeqCst);
    rx.recv_timeout(Duration::from_secs(5))
        .expect("released once the batch commits");
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.health().queued > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let health = h.health();
    assert!(!health.failing && health.last_error.is_none(), "{health:?}");
    assert_eq!(health.queued, 0);
    let stats = h.stats();
    assert_eq!(stats.ops, 1001, "{stats:?}");
    assert!(stats.coalesced >= 999, "{stats:?}");
    assert!(stats.batches <= 2, "{stats:?}");
    assert!(h.accepting());
    let probe = h.clone();
    h.close();
    join.join().unwrap();
    assert!(
        !probe.health().writer_alive,
        "the writer is gone after close"
    );
    assert!(!probe.accepting());
    // The last of the changes is the row.
    assert_eq!(
        load(&path).subscriptions,
        vec![(sub_with_dialog(), Some(1_795_000_999 + 1800))]
    );
}
