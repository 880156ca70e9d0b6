//! The `RunStore` contract against a real Apache Cassandra node.
//!
//! Run by `scripts/integration.sh`, which starts Cassandra 5 (`scripts/cassandra.sh`) and sets
//! `NEXUS_TEST_CASSANDRA=host:port`. Every test works in keyspaces of its own. Without the
//! variable every test fails with a message saying how to start the node.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_model::error::ErrorKind;
use nexus_model::run::{RunId, RunPatch, Stage};
use nexus_store::cassandra::{self, CassandraConfig};
use nexus_store::test_suite::{self, sample_run};
use nexus_store::{CassandraRunStore, Inserted, RunStore, StoreError};
use scylla::value::CqlValue;

const ENV: &str = "NEXUS_TEST_CASSANDRA";
const CHILD_KS: &str = "NEXUS_RACE_KEYSPACE";
const CHILD_IDS: &str = "NEXUS_RACE_IDS";
const CHILD_TARGET: &str = "NEXUS_RACE_TARGET";

fn node() -> String {
    std::env::var(ENV).unwrap_or_else(|_| {
        panic!(
            "{ENV} is not set: these tests need a real Cassandra node. Start one with \
             `scripts/cassandra.sh start` and run them with {ENV}=127.0.0.1:9042 \
             (scripts/integration.sh does both)"
        )
    })
}

/// A keyspace name of its own for each test and store.
fn keyspace(test: &str) -> String {
    format!(
        "t_{test}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn config(ks: &str) -> CassandraConfig {
    let mut c = CassandraConfig::from_url(&format!("cassandra://{}/{ks}", node())).unwrap();
    c.request_timeout = Duration::from_secs(20);
    c
}

async fn open(ks: &str) -> CassandraRunStore {
    CassandraRunStore::open(&config(ks))
        .await
        .unwrap_or_else(|e| panic!("cannot open the store in {ks}: {e}"))
}

async fn drop_keyspace(store: &CassandraRunStore, ks: &str) {
    // Best effort: the node is thrown away at the end of the integration run anyway.
    let _ = store
        .session()
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    // One fresh keyspace per aspect of the suite, created up front (the suite's factory is sync):
    // as many as `run_all` makes stores.
    let names: Vec<String> = (0..test_suite::ASPECTS).map(|_| keyspace("conf")).collect();
    let mut stores = Vec::new();
    for ks in &names {
        stores.push(open(ks).await);
    }
    stores.reverse();
    let pool = Mutex::new(stores);
    test_suite::run_all(|| pool.lock().unwrap().pop().expect("enough stores")).await;
    let cleanup = open(&names[0]).await;
    for ks in &names {
        drop_keyspace(&cleanup, ks).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_converge() {
    let ks = keyspace("mig");
    let opens = (0..4).map(|_| {
        let ks = ks.clone();
        tokio::spawn(async move { CassandraRunStore::open(&config(&ks)).await })
    });
    let mut stores = Vec::new();
    for h in opens {
        stores.push(h.await.unwrap().expect("concurrent open"));
    }
    // Every instance sees one schema and works on it.
    let store = &stores[0];
    let agreed = store.session().check_schema_agreement().await.unwrap();
    assert!(
        agreed.is_some(),
        "schema disagreement after concurrent migrations"
    );
    let versions = store
        .session()
        .query_unpaged(format!("SELECT version FROM {ks}.schema_migrations"), &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(i32,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect::<Vec<_>>();
    let mut versions = versions;
    versions.sort_unstable();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    let run = sample_run("algo");
    assert_eq!(
        stores[1].insert(run.clone()).await.unwrap(),
        Inserted::Created
    );
    assert_eq!(stores[3].get(run.id).await.unwrap(), Some(run));
    // Migrating again applies nothing.
    let again = cassandra::migrate(store.session(), &config(&ks))
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    drop_keyspace(store, &ks).await;
}

#[tokio::test]
async fn missing_schema_and_unreachable_node_are_clear() {
    let ks = keyspace("noschema");
    let mut c = config(&ks);
    c.migrate = false;
    let e = CassandraRunStore::open(&c).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("is the schema applied?"), "{e}");

    // A port nobody listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let mut c = CassandraConfig::from_url(&format!("cassandra://127.0.0.1:{port}/ks")).unwrap();
    c.connect_timeout = Duration::from_secs(2);
    let e = CassandraRunStore::open(&c).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

/// TTL (seconds) of `column` in `table` for the row selected by `cond`.
async fn ttl(
    store: &CassandraRunStore,
    ks: &str,
    table: &str,
    column: &str,
    cond: &str,
) -> Option<i32> {
    let r = store
        .session()
        .query_unpaged(
            format!("SELECT TTL({column}) FROM {ks}.{table} WHERE {cond}"),
            &[],
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    r.maybe_first_row::<(Option<i32>,)>()
        .unwrap()
        .and_then(|(t,)| t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_expire_after_retention() {
    let ks = keyspace("ttl");
    let store = open(&ks).await;
    let parent = sample_run("algo");
    store.insert(parent.clone()).await.unwrap();
    let mut run = sample_run("algo");
    run.tag = Some("blue".into());
    run.owner = Some("o1".into());
    run.parent = Some(parent.as_ref());
    run.idempotency_key = Some("k".into());
    run.stage = Stage::Running;
    store.insert(run.clone()).await.unwrap();
    let id = run.id.0;
    let idb = format!("0x{}", id.simple());
    // Live: nothing expires.
    assert_eq!(
        ttl(&store, &ks, "runs", "record", &format!("id = {id}")).await,
        None
    );
    store
        .transition(
            run.id,
            Stage::Running,
            Stage::Completed,
            RunPatch::default(),
        )
        .await
        .unwrap();
    let retention = 7 * 24 * 3600;
    for (table, column, cond) in [
        ("runs", "record", format!("id = {id}")),
        ("runs", "stage", format!("id = {id}")),
        (
            "runs_by_owner_stage",
            "version",
            format!("owner = 'o1' AND stage = 'COMPLETED' AND id = {idb}"),
        ),
        (
            "idempotency_keys",
            "record",
            "algorithm = 'algo' AND idem_key = 'k'".to_owned(),
        ),
    ] {
        let t = ttl(&store, &ks, table, column, &cond)
            .await
            .unwrap_or_else(|| panic!("{table}.{column} has no TTL"));
        assert!(t > retention - 60 && t <= retention, "{table}: ttl {t}");
    }
    // Key-only lookup rows carry their TTL on the row marker, which TTL() cannot show: check
    // they are still there (rewritten with the TTL, not deleted).
    for (table, cond) in [
        ("runs_by_tag", format!("tag = 'blue' AND id = {idb}")),
        (
            "runs_by_parent",
            format!("parent = {} AND id = {idb}", parent.id.0),
        ),
    ] {
        let n = store
            .session()
            .query_unpaged(format!("SELECT id FROM {ks}.{table} WHERE {cond}"), &[])
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .rows_num();
        assert_eq!(n, 1, "{table} lost its row");
    }
    // The old owner row (RUNNING) is gone, the new one is found.
    assert!(
        store
            .by_owner_stage("o1", Stage::Running, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .by_owner_stage("o1", Stage::Completed, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    drop_keyspace(&store, &ks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_insert_completes_a_dead_claimant() {
    let ks = keyspace("idem");
    let store = open(&ks).await;
    // A submitter claimed the key and died before writing its run.
    let mut first = sample_run("algo");
    first.idempotency_key = Some("retry-me".into());
    first.owner = Some("dead-scheduler".into());
    store
        .session()
        .query_unpaged(
            format!("INSERT INTO {ks}.idempotency_keys (algorithm, idem_key, id, record) VALUES (?, ?, ?, ?) IF NOT EXISTS"),
            ("algo", "retry-me", first.id.0, serde_json::to_vec(&first).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(store.get(first.id).await.unwrap(), None);
    // The client retries: it gets the first run, now complete and findable.
    let mut retry = sample_run("algo");
    retry.idempotency_key = Some("retry-me".into());
    match store.insert(retry.clone()).await.unwrap() {
        Inserted::Existing(r) => assert_eq!(r, first),
        Inserted::Created => panic!("a second run was created for a claimed key"),
    }
    assert_eq!(store.get(first.id).await.unwrap(), Some(first.clone()));
    assert_eq!(store.get(retry.id).await.unwrap(), None);
    let orphans = store
        .by_owner_stage("dead-scheduler", Stage::Buffered, 10)
        .await
        .unwrap();
    assert_eq!(orphans, vec![first]);
    drop_keyspace(&store, &ks).await;
}

/// Child half of [`two_processes_never_both_win`]: races its target stage on every id and prints
/// the ids it won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for two_processes_never_both_win"]
async fn race_child() {
    let (Ok(ks), Ok(ids), Ok(target)) = (
        std::env::var(CHILD_KS),
        std::env::var(CHILD_IDS),
        std::env::var(CHILD_TARGET),
    ) else {
        return;
    };
    let store = Arc::new(open(&ks).await);
    let target: Stage = target.parse().unwrap();
    let ids: Vec<RunId> = ids.split(',').map(|s| s.parse().unwrap()).collect();
    let mut handles = Vec::new();
    for id in ids {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let patch = RunPatch::failure(format!("by {target}"), "race");
            (
                id,
                store.transition(id, Stage::Running, target, patch).await,
            )
        }));
    }
    for h in handles {
        match h.await.unwrap() {
            (id, Ok(_)) => println!("WON {id}"),
            (_, Err(StoreError::Conflict { current, .. })) => assert!(current.is_terminal()),
            (id, Err(e)) => panic!("{id}: unexpected {e}"),
        }
    }
    println!("DONE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_never_both_win() {
    let ks = keyspace("race");
    let store = open(&ks).await;
    let mut ids = Vec::new();
    for _ in 0..100 {
        let mut r = sample_run("algo");
        r.stage = Stage::Running;
        store.insert(r.clone()).await.unwrap();
        ids.push(r.id);
    }
    let list = ids
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = [Stage::Completed, Stage::Failed, Stage::Cancelled]
        .into_iter()
        .map(|target| {
            let child = Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "race_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(ENV, node())
                .env(CHILD_KS, &ks)
                .env(CHILD_IDS, &list)
                .env(CHILD_TARGET, target.as_str())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            (target, child)
        })
        .collect();
    let mut winners: std::collections::HashMap<RunId, Stage> = std::collections::HashMap::new();
    for (target, mut child) in children {
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut done = false;
        for line in out.lines() {
            let line = line.unwrap();
            // libtest may print "test race_child ... " in front of the first line.
            if let Some(at) = line.find("WON ") {
                let id: RunId = line[at + 4..].trim().parse().unwrap();
                if let Some(other) = winners.insert(id, target) {
                    panic!("run {id} won by both {other} and {target}");
                }
            }
            done |= line.ends_with("DONE");
        }
        assert!(child.wait().unwrap().success(), "{target} child failed");
        assert!(done, "{target} child did not finish");
    }
    assert_eq!(winners.len(), ids.len(), "every run has exactly one winner");
    for id in ids {
        let stored = store.get(id).await.unwrap().unwrap();
        assert_eq!(
            stored.stage, winners[&id],
            "{id}: stored stage is not the winner's"
        );
        assert_eq!(
            stored.failure_cause.as_deref(),
            Some(format!("by {}", stored.stage).as_str())
        );
    }
    drop_keyspace(&store, &ks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_are_registered_and_found() {
    let ks = keyspace("owners");
    let store = open(&ks).await;
    let mut r = sample_run("algo");
    r.owner = Some("sched-a".into());
    store.insert(r.clone()).await.unwrap();
    assert_eq!(
        store.owners_in_stage(Stage::Buffered).await.unwrap(),
        vec!["sched-a"]
    );
    // Once its last run moves on, the owner is no longer listed for the stage.
    store
        .transition(r.id, Stage::Buffered, Stage::Running, RunPatch::default())
        .await
        .unwrap();
    assert!(
        store
            .owners_in_stage(Stage::Buffered)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.owners_in_stage(Stage::Running).await.unwrap(),
        vec!["sched-a"]
    );
    let rows = store
        .session()
        .query_unpaged(
            format!("SELECT owner FROM {ks}.owners_by_stage WHERE stage = 'RUNNING'"),
            &[],
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(Option<CqlValue>,)>()
        .unwrap()
        .count();
    assert_eq!(rows, 1);
    drop_keyspace(&store, &ks).await;
}

/// A lookup row left behind by a transition that crashed between its steps is removed by the
/// sweep; rows that match their run, and rows whose run is not written yet, are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_lookup_rows_are_swept() {
    let ks = keyspace("sweep");
    let store = open(&ks).await;
    let mut r = sample_run("algo");
    r.owner = Some("sched-a".into());
    store.insert(r.clone()).await.unwrap();
    let moved = store
        .transition(
            r.id,
            Stage::Buffered,
            Stage::Buffered,
            RunPatch {
                owner: Some(Some("sched-b".into())),
                ..RunPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(moved.owner.as_deref(), Some("sched-b"));
    // The crash: the old (sched-a, BUFFERED) row comes back as if its delete never happened, and
    // a hint for a run whose insert has not landed yet.
    let insert_hint = |owner: &str, id: uuid::Uuid| {
        format!(
            "INSERT INTO {ks}.runs_by_owner_stage (owner, stage, id, version) VALUES ('{owner}', 'BUFFERED', 0x{}, 1)",
            id.simple()
        )
    };
    let pending = nexus_model::run::RunId::new();
    for cql in [
        insert_hint("sched-a", r.id.0),
        insert_hint("sched-c", pending.0),
    ] {
        store.session().query_unpaged(cql, &[]).await.unwrap();
    }
    for (owner, stage) in [("sched-a", "BUFFERED"), ("sched-c", "BUFFERED")] {
        store
            .session()
            .query_unpaged(
                format!(
                    "INSERT INTO {ks}.owners_by_stage (stage, owner) VALUES ('{stage}', '{owner}')"
                ),
                &[],
            )
            .await
            .unwrap();
    }
    assert_eq!(store.sweep_lookups(1_000).await.unwrap(), 1);
    let count = |owner: &'static str| {
        let s = store.session().clone();
        let ks = ks.clone();
        async move {
            s.query_unpaged(
                format!("SELECT id FROM {ks}.runs_by_owner_stage WHERE owner = '{owner}' AND stage = 'BUFFERED'"),
                &[],
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .rows::<(Option<CqlValue>,)>()
            .unwrap()
            .count()
        }
    };
    assert_eq!(count("sched-a").await, 0, "the stale row is gone");
    assert_eq!(count("sched-b").await, 1, "the live row stays");
    assert_eq!(
        count("sched-c").await,
        1,
        "a row whose run is not written yet stays"
    );
    assert_eq!(store.sweep_lookups(1_000).await.unwrap(), 0);
    // Purge deletes only terminal runs.
    assert!(!store.purge(r.id).await.unwrap());
    store
        .transition(r.id, Stage::Buffered, Stage::Cancelled, RunPatch::default())
        .await
        .unwrap();
    assert!(store.purge(r.id).await.unwrap());
    assert_eq!(store.get(r.id).await.unwrap(), None);
    drop_keyspace(&store, &ks).await;
}

/// A batch whose submitter died after deciding it and before expanding it: none of its runs is
/// visible; `resume_batches` (recovery) makes them all visible, once; a repeat of a keyed batch
/// finishes it at once and returns its runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_left_half_way_is_finished_by_recovery() {
    use nexus_store::{BatchInserted, RunBatch, RunStore};
    let ks = keyspace("batch");
    let store = open(&ks).await;
    let runs = test_suite::sample_batch("algo", 3);
    store
        .insert_batch_without_expanding(RunBatch::new("algo", None, runs.clone()))
        .await
        .unwrap();
    for r in &runs {
        assert_eq!(
            store.get(r.id).await.unwrap(),
            None,
            "not visible before expansion"
        );
    }
    // Too young for recovery: left to its submitter.
    let young = nexus_model::run::now_millis() - 60_000;
    assert_eq!(store.resume_batches(young, 10).await.unwrap(), 0);
    let later = nexus_model::run::now_millis() + 1;
    assert_eq!(store.resume_batches(later, 10).await.unwrap(), 1);
    for r in &runs {
        assert_eq!(store.get(r.id).await.unwrap().as_ref(), Some(r));
    }
    assert_eq!(
        store.resume_batches(later, 10).await.unwrap(),
        0,
        "finished once"
    );
    // Keyed: the repeat finishes it and returns the first batch's runs.
    let keyed = RunBatch::new(
        "algo",
        Some("bk".into()),
        test_suite::sample_batch("algo", 2),
    );
    store
        .insert_batch_without_expanding(keyed.clone())
        .await
        .unwrap();
    let again = RunBatch::new(
        "algo",
        Some("bk".into()),
        test_suite::sample_batch("algo", 2),
    );
    match store.insert_batch(again).await.unwrap() {
        BatchInserted::Existing(found) => assert_eq!(found, keyed.runs),
        BatchInserted::Created => panic!("a decided batch key created new runs"),
    }
    // A keyed batch that lost its key to another is never expanded.
    let loser = RunBatch::new(
        "algo",
        Some("bk".into()),
        test_suite::sample_batch("algo", 2),
    );
    store
        .insert_batch_without_expanding(loser.clone())
        .await
        .unwrap();
    assert_eq!(store.resume_batches(later + 10_000, 10).await.unwrap(), 0);
    for r in &loser.runs {
        assert_eq!(store.get(r.id).await.unwrap(), None);
    }
    drop_keyspace(&store, &ks).await;
}
