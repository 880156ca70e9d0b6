//! Conformance suite for [`RunStore`] backends: every backend runs [`run_all`].
//!
//! Each aspect is one `pub async fn` taking a fresh store, so a backend can also run a subset.
//! The suite panics (it is test code) on the first violation.

use std::sync::Arc;
use std::time::Duration;

use super::{BatchInserted, Inserted, Position, RunBatch, RunFilter, RunStore, StoreError};
use nexus_model::run::{Millis, PayloadLocation, Run, RunId, RunPatch, Stage, now_millis};
use nexus_model::spec::AlgorithmSpec;

/// Returns a valid run of `algorithm` in BUFFERED, a root with no owner, tag or key.
#[must_use]
pub fn sample_run(algorithm: &str) -> Run {
    let id = RunId::new();
    let now = now_millis();
    Run {
        id,
        algorithm: algorithm.to_owned(),
        stage: Stage::Buffered,
        workgroup: "default".into(),
        shard: "local".into(),
        tag: None,
        api_version: Some("1.2".into()),
        parent: None,
        root: id,
        depth: 0,
        idempotency_key: None,
        owner: None,
        attempts: 0,
        applied_configuration: AlgorithmSpec {
            command: "true".into(),
            ..Default::default()
        },
        configuration_overrides: None,
        payload: PayloadLocation::Inline {
            bytes: b"{}".to_vec(),
        },
        content_hash: "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a".into(),
        payload_size: 2,
        payload_valid_for: Duration::from_secs(3600),
        result_uri: None,
        result_stored: false,
        logs_stored: false,
        failure_cause: None,
        failure_details: None,
        executor_ref: None,
        received_at: now,
        started_at: None,
        finished_at: None,
        last_modified: now,
        timeline: Vec::new(),
        external: false,
        progress: None,
    }
}

/// How many stores [`run_all`] makes (one per aspect), for backends that prepare them up front.
pub const ASPECTS: usize = 24;

/// Runs every aspect of the contract, each against a fresh store from `make`.
pub async fn run_all<S: RunStore>(make: impl Fn() -> S) {
    insert_get_round_trip(make()).await;
    idempotency_key(make()).await;
    duplicate_id_conflicts(make()).await;
    minted_inserts(Arc::new(make())).await;
    batch_insert(make()).await;
    batch_is_all_or_nothing(make()).await;
    batch_key(make()).await;
    cas_success(make()).await;
    progress_in_place(make()).await;
    cas_conflict(make()).await;
    illegal_transition(make()).await;
    terminal_never_left(make()).await;
    transition_unknown(make()).await;
    set_tag(make()).await;
    lookups(make()).await;
    owner_stage_cursor(make()).await;
    listing(make()).await;
    listing_across_hours(make()).await;
    owners_in_stage(make()).await;
    leases(make()).await;
    leadership(make()).await;
    leadership_race(Arc::new(make())).await;
    garbage_collection(make()).await;
    race(Arc::new(make())).await;
}

async fn insert<S: RunStore>(store: &S, run: &Run) {
    assert_eq!(
        store.insert(run.clone()).await.expect("insert"),
        Inserted::Created
    );
}

/// Insert then get returns the same record; an unknown id is `Ok(None)`.
pub async fn insert_get_round_trip<S: RunStore>(store: S) {
    let run = sample_run("algo");
    insert(&store, &run).await;
    assert_eq!(store.get(run.id).await.expect("get"), Some(run));
    assert_eq!(store.get(RunId::new()).await.expect("get unknown"), None);
}

/// A second insert with the same (algorithm, key) stores nothing and returns the first run.
pub async fn idempotency_key<S: RunStore>(store: S) {
    let mut first = sample_run("algo");
    first.idempotency_key = Some("k1".into());
    insert(&store, &first).await;
    let mut second = sample_run("algo");
    second.idempotency_key = Some("k1".into());
    match store.insert(second.clone()).await.expect("insert dup key") {
        Inserted::Existing(r) => assert_eq!(r, first),
        Inserted::Created => panic!("duplicate idempotency key created a run"),
    }
    assert_eq!(store.get(second.id).await.expect("get"), None);
    // Same key, other algorithm: a different run.
    let mut other = sample_run("other-algo");
    other.idempotency_key = Some("k1".into());
    insert(&store, &other).await;
}

/// Runs of `algorithm`, `n` of them, each with its own payload and an owner and tag (so their
/// lookup rows are written too).
#[must_use]
pub fn sample_batch(algorithm: &str, n: usize) -> Vec<Run> {
    (0..n)
        .map(|i| {
            let mut r = sample_run(algorithm);
            r.payload = PayloadLocation::Inline {
                bytes: format!("{{\"i\":{i}}}").into_bytes(),
            };
            r.owner = Some("sched-batch".into());
            r.tag = Some("batch-tag".into());
            r
        })
        .collect()
}

/// A batch stores every run, each readable by id and through its lookups, in order.
pub async fn batch_insert<S: RunStore>(store: S) {
    let runs = sample_batch("algo", 5);
    let got = store
        .insert_batch(RunBatch::new("algo", None, runs.clone()))
        .await
        .expect("insert batch");
    assert_eq!(got, BatchInserted::Created);
    for r in &runs {
        assert_eq!(store.get(r.id).await.expect("get").as_ref(), Some(r));
    }
    assert_eq!(
        ids(&store.by_tag("batch-tag", 100).await.expect("by tag")),
        ids(&runs)
    );
    assert_eq!(
        ids(&store
            .by_owner_stage("sched-batch", Stage::Buffered, 100)
            .await
            .expect("by owner")),
        ids(&runs)
    );
    // Shape errors are refused before anything is written.
    let empty = store
        .insert_batch(RunBatch::new("algo", None, Vec::new()))
        .await
        .expect_err("an empty batch");
    assert_eq!(empty.kind(), nexus_model::error::ErrorKind::InvalidInput);
    let mixed = vec![sample_run("algo"), sample_run("other")];
    let ids_mixed = ids(&mixed);
    store
        .insert_batch(RunBatch::new("algo", None, mixed))
        .await
        .expect_err("a batch of two algorithms");
    for id in ids_mixed {
        assert_eq!(store.get(id).await.expect("get"), None);
    }
}

/// A batch holding one id that exists already stores none of its runs.
pub async fn batch_is_all_or_nothing<S: RunStore>(store: S) {
    let taken = sample_run("algo");
    insert(&store, &taken).await;
    let mut runs = sample_batch("algo", 4);
    runs[2] = taken.clone();
    let err = store
        .insert_batch(RunBatch::new("algo", None, runs.clone()))
        .await
        .expect_err("a batch with a duplicate id");
    assert_eq!(err.kind(), nexus_model::error::ErrorKind::Conflict, "{err}");
    for r in runs.iter().filter(|r| r.id != taken.id) {
        assert_eq!(
            store.get(r.id).await.expect("get"),
            None,
            "run {} leaked",
            r.id
        );
    }
    assert_eq!(store.get(taken.id).await.expect("get"), Some(taken));
}

/// A batch key: the repeat stores nothing and returns the first batch's runs in order; the key
/// is per algorithm and apart from single-submission keys.
pub async fn batch_key<S: RunStore>(store: S) {
    let first = RunBatch::new("algo", Some("bk".into()), sample_batch("algo", 3));
    assert_eq!(
        store.insert_batch(first.clone()).await.expect("first"),
        BatchInserted::Created
    );
    let again = RunBatch::new("algo", Some("bk".into()), sample_batch("algo", 3));
    match store.insert_batch(again.clone()).await.expect("repeat") {
        BatchInserted::Existing(runs) => assert_eq!(runs, first.runs),
        BatchInserted::Created => panic!("a repeated batch key created runs"),
    }
    for r in &again.runs {
        assert_eq!(store.get(r.id).await.expect("get"), None);
    }
    // The same key under another algorithm, and as a single-submission key: new runs.
    let other = RunBatch::new("other", Some("bk".into()), sample_batch("other", 2));
    assert_eq!(
        store.insert_batch(other).await.expect("other algorithm"),
        BatchInserted::Created
    );
    let mut single = sample_run("algo");
    single.idempotency_key = Some("bk".into());
    insert(&store, &single).await;
}

/// Inserting an existing id is a conflict.
pub async fn duplicate_id_conflicts<S: RunStore>(store: S) {
    let run = sample_run("algo");
    insert(&store, &run).await;
    let err = store.insert(run.clone()).await.expect_err("duplicate id");
    assert_eq!(err.kind(), nexus_model::error::ErrorKind::Conflict, "{err}");
}

/// Many concurrent [`RunStore::insert_minted`] (the accept path): every run is stored and found
/// through every lookup (owner+stage, tag, parent, listing), however the store groups their
/// writes; a minted run with a used idempotency key returns the first run.
pub async fn minted_inserts<S: RunStore>(store: Arc<S>) {
    const N: usize = 150;
    let parent = sample_run("minted");
    insert(&*store, &parent).await;
    let runs: Vec<Run> = (0..N)
        .map(|i| {
            let mut r = sample_run("minted");
            r.owner = Some("scheduler-1".into());
            r.tag = Some(format!("t{}", i % 3));
            if i % 2 == 0 {
                r.parent = Some(parent.as_ref());
                r.root = parent.id;
                r.depth = 1;
            }
            r
        })
        .collect();
    let tasks: Vec<_> = runs
        .iter()
        .cloned()
        .map(|r| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.insert_minted(r).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.expect("task").expect("insert_minted"),
            Inserted::Created
        );
    }
    for r in &runs {
        assert_eq!(store.get(r.id).await.expect("get").as_ref(), Some(r));
    }
    let mut all: Vec<RunId> = runs.iter().map(|r| r.id).collect();
    all.sort();
    let mut owned = ids(&store
        .by_owner_stage("scheduler-1", Stage::Buffered, 1000)
        .await
        .expect("owner"));
    owned.sort();
    assert_eq!(owned, all, "owner+stage lookup");
    let mut tagged = ids(&store.by_tag("t1", 1000).await.expect("by_tag"));
    tagged.sort();
    let mut want: Vec<RunId> = runs
        .iter()
        .filter(|r| r.tag.as_deref() == Some("t1"))
        .map(|r| r.id)
        .collect();
    want.sort();
    assert_eq!(tagged, want, "tag lookup");
    let kids = store.by_parent(parent.id, 1000).await.expect("by_parent");
    assert_eq!(kids.len(), N / 2, "parent lookup");
    let filter = RunFilter {
        algorithm: Some("minted".into()),
        stage: Some(Stage::Buffered),
        ..RunFilter::default()
    };
    let mut listed = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let page = store.list(&filter, after, 100).await.expect("list");
        listed.extend(page.runs.iter().map(|r| r.id));
        match page.next {
            Some(p) => after = Some(p),
            None => break,
        }
    }
    listed.retain(|id| *id != parent.id);
    listed.sort();
    assert_eq!(listed, all, "listing");
    let mut first = sample_run("minted");
    first.idempotency_key = Some("mk".into());
    assert_eq!(
        store.insert_minted(first.clone()).await.expect("keyed"),
        Inserted::Created
    );
    let mut second = sample_run("minted");
    second.idempotency_key = Some("mk".into());
    match store.insert_minted(second).await.expect("keyed again") {
        Inserted::Existing(r) => assert_eq!(r.id, first.id),
        Inserted::Created => panic!("a used idempotency key created a run"),
    }
}

/// A legal CAS applies the patch and stamps timestamps.
pub async fn cas_success<S: RunStore>(store: S) {
    let run = sample_run("algo");
    insert(&store, &run).await;
    let patch = RunPatch {
        owner: Some(Some("owner-1".into())),
        attempts: Some(1),
        executor_ref: Some("pid-1".into()),
        started_at: Some(42),
        ..RunPatch::default()
    };
    let updated = store
        .transition(run.id, Stage::Buffered, Stage::Running, patch)
        .await
        .expect("cas");
    assert_eq!(updated.stage, Stage::Running);
    assert_eq!(updated.owner.as_deref(), Some("owner-1"));
    assert_eq!(updated.attempts, 1);
    assert_eq!(updated.started_at, Some(42));
    assert_eq!(updated.finished_at, None);
    assert!(updated.last_modified >= run.last_modified);
    assert_eq!(store.get(run.id).await.expect("get"), Some(updated.clone()));
    let done = store
        .transition(
            run.id,
            Stage::Running,
            Stage::Completed,
            RunPatch {
                result_uri: Some("r".into()),
                ..RunPatch::default()
            },
        )
        .await
        .expect("complete");
    assert!(done.finished_at.is_some());
    assert_eq!(done.result_uri.as_deref(), Some("r"));
    assert_eq!(store.get(run.id).await.expect("get"), Some(done));
}

/// A same-stage CAS carrying a progress report keeps the stage and adds no timeline entry; the
/// report survives the round trip and later changes.
pub async fn progress_in_place<S: RunStore>(store: S) {
    use nexus_model::run::Progress;
    let run = sample_run("algo");
    insert(&store, &run).await;
    let running = store
        .transition(run.id, Stage::Buffered, Stage::Running, RunPatch::default())
        .await
        .expect("start");
    let report = Progress {
        fraction: Some(0.375),
        message: Some("epoch 3 of 8 — ünïcode".into()),
        at: 1_700_000_000_123,
    };
    let updated = store
        .transition(
            run.id,
            Stage::Running,
            Stage::Running,
            RunPatch {
                progress: Some(report.clone()),
                ..RunPatch::default()
            },
        )
        .await
        .expect("progress");
    assert_eq!(updated.stage, Stage::Running);
    assert_eq!(updated.progress.as_ref(), Some(&report));
    assert_eq!(updated.timeline, running.timeline, "no timeline entry");
    assert_eq!(store.get(run.id).await.expect("get"), Some(updated));
    // Later changes keep it.
    let done = store
        .transition(
            run.id,
            Stage::Running,
            Stage::Completed,
            RunPatch::default(),
        )
        .await
        .expect("complete");
    assert_eq!(done.progress, Some(report));
}

/// `by_owner_stage_after` walks an owner's runs in a stage by ascending id, page by page, while
/// the runs stay in that stage; other owners and stages never show.
pub async fn owner_stage_cursor<S: RunStore>(store: S) {
    let mut mine = Vec::new();
    for i in 0..7 {
        let mut run = sample_run("algo");
        run.owner = Some("cursor-owner".into());
        if i == 3 {
            // Another stage of the same owner.
            run.stage = Stage::Running;
            insert(&store, &run).await;
            continue;
        }
        insert(&store, &run).await;
        mine.push(run.id);
    }
    let mut other = sample_run("algo");
    other.owner = Some("cursor-other".into());
    insert(&store, &other).await;
    mine.sort_by_key(|id| id.0);
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .by_owner_stage_after("cursor-owner", Stage::Buffered, after, 4)
            .await
            .expect("page");
        assert!(page.len() <= 4);
        assert!(
            page.iter()
                .all(|r| r.stage == Stage::Buffered && r.owner.as_deref() == Some("cursor-owner"))
        );
        seen.extend(page.iter().map(|r| r.id));
        after = page.last().map(|r| r.id);
        if page.len() < 4 {
            break;
        }
    }
    assert_eq!(seen, mine, "every run once, by ascending id");
    let past = store
        .by_owner_stage_after("cursor-owner", Stage::Buffered, mine.last().copied(), 4)
        .await
        .expect("past the end");
    assert!(past.is_empty());
}

/// A CAS whose `from` differs reports the stored stage and changes nothing.
pub async fn cas_conflict<S: RunStore>(store: S) {
    let run = sample_run("algo");
    insert(&store, &run).await;
    let err = store
        .transition(
            run.id,
            Stage::Running,
            Stage::Completed,
            RunPatch {
                result_uri: Some("x".into()),
                ..RunPatch::default()
            },
        )
        .await
        .expect_err("conflict");
    match err {
        StoreError::Conflict {
            id,
            current,
            expected,
        } => {
            assert_eq!(
                (id, current, expected),
                (run.id, Stage::Buffered, Stage::Running)
            );
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get(run.id).await.expect("get"), Some(run));
}

/// An illegal transition is refused and changes nothing.
pub async fn illegal_transition<S: RunStore>(store: S) {
    let run = sample_run("algo");
    insert(&store, &run).await;
    let err = store
        .transition(
            run.id,
            Stage::Buffered,
            Stage::Completed,
            RunPatch::default(),
        )
        .await
        .expect_err("illegal");
    assert!(
        matches!(
            err,
            StoreError::IllegalTransition {
                from: Stage::Buffered,
                to: Stage::Completed
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.get(run.id).await.expect("get"), Some(run));
}

/// A run in a terminal stage never leaves it, whatever the target.
pub async fn terminal_never_left<S: RunStore>(store: S) {
    for terminal in Stage::ALL.into_iter().filter(|s| s.is_terminal()) {
        let mut run = sample_run("algo");
        run.stage = terminal;
        run.finished_at = Some(1);
        insert(&store, &run).await;
        for to in Stage::ALL {
            let err = store
                .transition(run.id, terminal, to, RunPatch::default())
                .await
                .expect_err("terminal left");
            assert_eq!(
                err.kind(),
                nexus_model::error::ErrorKind::Conflict,
                "{terminal} -> {to}: {err}"
            );
        }
        assert_eq!(store.get(run.id).await.expect("get"), Some(run));
    }
}

/// Transitions of an unknown id are `NotFound`, as is tagging it.
pub async fn transition_unknown<S: RunStore>(store: S) {
    let id = RunId::new();
    let err = store
        .transition(id, Stage::Buffered, Stage::Running, RunPatch::default())
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound(x) if x == id), "{err:?}");
    let err = store
        .set_tag(id, Some("t".into()))
        .await
        .expect_err("unknown tag");
    assert!(matches!(err, StoreError::NotFound(x) if x == id), "{err:?}");
}

/// `set_tag` works on any stage, including terminal ones, and can clear the tag.
pub async fn set_tag<S: RunStore>(store: S) {
    let run = sample_run("algo");
    insert(&store, &run).await;
    store
        .transition(
            run.id,
            Stage::Buffered,
            Stage::Cancelled,
            RunPatch::default(),
        )
        .await
        .expect("cancel");
    let tagged = store
        .set_tag(run.id, Some("late".into()))
        .await
        .expect("tag terminal");
    assert_eq!(tagged.tag.as_deref(), Some("late"));
    assert_eq!(tagged.stage, Stage::Cancelled);
    assert_eq!(store.by_tag("late", 10).await.expect("by_tag").len(), 1);
    let cleared = store.set_tag(run.id, None).await.expect("clear");
    assert_eq!(cleared.tag, None);
    assert!(store.by_tag("late", 10).await.expect("by_tag").is_empty());
}

fn ids(runs: &[Run]) -> Vec<RunId> {
    runs.iter().map(|r| r.id).collect()
}

/// Lookups by tag, owner+stage and parent filter correctly, in acceptance order, with a limit.
pub async fn lookups<S: RunStore>(store: S) {
    let parent = sample_run("algo");
    insert(&store, &parent).await;
    let mut tagged = Vec::new();
    let mut children = Vec::new();
    let mut owned = Vec::new();
    for i in 0..6 {
        let mut r = sample_run("algo");
        if i % 2 == 0 {
            r.tag = Some("blue".into());
            tagged.push(r.id);
        } else {
            r.tag = Some("red".into());
        }
        if i < 4 {
            r.parent = Some(parent.as_ref());
            r.root = parent.id;
            r.depth = 1;
            children.push(r.id);
        }
        r.owner = Some(if i % 3 == 0 { "o1" } else { "o2" }.into());
        if i % 3 == 0 {
            owned.push(r.id);
        }
        insert(&store, &r).await;
    }
    assert_eq!(
        ids(&store.by_tag("blue", 100).await.expect("by_tag")),
        tagged
    );
    assert_eq!(
        ids(&store.by_tag("blue", 2).await.expect("by_tag")),
        tagged[..2].to_vec()
    );
    assert!(store.by_tag("green", 100).await.expect("by_tag").is_empty());
    assert_eq!(
        ids(&store.by_parent(parent.id, 100).await.expect("by_parent")),
        children
    );
    assert_eq!(
        ids(&store.by_parent(parent.id, 3).await.expect("by_parent")),
        children[..3].to_vec()
    );
    assert!(
        store
            .by_parent(RunId::new(), 10)
            .await
            .expect("by_parent")
            .is_empty()
    );
    assert_eq!(
        ids(&store
            .by_owner_stage("o1", Stage::Buffered, 100)
            .await
            .expect("owner")),
        owned
    );
    assert_eq!(
        ids(&store
            .by_owner_stage("o1", Stage::Buffered, 1)
            .await
            .expect("owner")),
        owned[..1].to_vec()
    );
    assert!(
        store
            .by_owner_stage("o1", Stage::Running, 100)
            .await
            .expect("owner")
            .is_empty()
    );
    // Moving one run out of the stage removes it from the owner+stage lookup.
    store
        .transition(
            owned[0],
            Stage::Buffered,
            Stage::Running,
            RunPatch::default(),
        )
        .await
        .expect("cas");
    assert_eq!(
        ids(&store
            .by_owner_stage("o1", Stage::Buffered, 100)
            .await
            .expect("owner")),
        owned[1..].to_vec()
    );
    assert_eq!(
        ids(&store
            .by_owner_stage("o1", Stage::Running, 100)
            .await
            .expect("owner")),
        owned[..1].to_vec()
    );
    // Owner changes through a patch are reflected too.
    store
        .transition(
            owned[0],
            Stage::Running,
            Stage::Running,
            RunPatch {
                owner: Some(Some("o3".into())),
                ..RunPatch::default()
            },
        )
        .await
        .expect("re-own");
    assert_eq!(
        ids(&store
            .by_owner_stage("o3", Stage::Running, 100)
            .await
            .expect("owner")),
        owned[..1].to_vec()
    );
    assert!(
        store
            .by_owner_stage("o1", Stage::Running, 100)
            .await
            .expect("owner")
            .is_empty()
    );
}

/// `owners_in_stage` lists distinct owners of runs in the stage.
pub async fn owners_in_stage<S: RunStore>(store: S) {
    for (owner, stage) in [
        ("a", Stage::Running),
        ("a", Stage::Running),
        ("b", Stage::Running),
        ("c", Stage::Buffered),
    ] {
        let mut r = sample_run("algo");
        r.owner = Some(owner.into());
        r.stage = stage;
        insert(&store, &r).await;
    }
    let mut unowned = sample_run("algo");
    unowned.stage = Stage::Running;
    insert(&store, &unowned).await;
    let mut running = store.owners_in_stage(Stage::Running).await.expect("owners");
    running.sort();
    assert_eq!(running, vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(
        store
            .owners_in_stage(Stage::Buffered)
            .await
            .expect("owners"),
        vec!["c".to_owned()]
    );
    assert!(
        store
            .owners_in_stage(Stage::Failed)
            .await
            .expect("owners")
            .is_empty()
    );
}

/// Heartbeat creates and extends leases; `leases` lists them; release removes one.
pub async fn leases<S: RunStore>(store: S) {
    assert!(store.leases().await.expect("leases").is_empty());
    let l = store.heartbeat("a", 1_000, 500).await.expect("hb");
    assert_eq!((l.owner.as_str(), l.expires_at), ("a", 1_500));
    store.heartbeat("b", 1_000, 100).await.expect("hb");
    let l = store.heartbeat("a", 2_000, 500).await.expect("extend");
    assert_eq!(l.expires_at, 2_500);
    let mut all = store.leases().await.expect("leases");
    all.sort_by(|x, y| x.owner.cmp(&y.owner));
    assert_eq!(
        all.iter()
            .map(|l| (l.owner.as_str(), l.expires_at))
            .collect::<Vec<_>>(),
        vec![("a", 2_500), ("b", 1_100)]
    );
    store.release_lease("a").await.expect("release");
    store
        .release_lease("nobody")
        .await
        .expect("release unknown");
    let all = store.leases().await.expect("leases");
    assert_eq!(
        all.iter().map(|l| l.owner.as_str()).collect::<Vec<_>>(),
        vec!["b"]
    );
}

/// 50 running runs, three concurrent terminal transitions each: exactly one wins per run and the
/// stored record is the winner's (a completed run keeps its result URI).
pub async fn race<S: RunStore>(store: Arc<S>) {
    let mut runs = Vec::new();
    for _ in 0..50 {
        let mut r = sample_run("algo");
        r.stage = Stage::Running;
        insert(&*store, &r).await;
        runs.push(r.id);
    }
    let mut handles = Vec::new();
    for id in &runs {
        for (to, patch) in [
            (
                Stage::Completed,
                RunPatch {
                    result_uri: Some("a".into()),
                    ..RunPatch::default()
                },
            ),
            (Stage::Cancelled, RunPatch::default()),
            (Stage::Failed, RunPatch::failure("boom", "details")),
        ] {
            let store = Arc::clone(&store);
            let id = *id;
            handles.push(tokio::spawn(async move {
                (
                    id,
                    to,
                    store.transition(id, Stage::Running, to, patch).await,
                )
            }));
        }
    }
    let mut winners = std::collections::HashMap::new();
    for h in handles {
        let (id, to, res) = h.await.expect("join");
        match res {
            Ok(run) => {
                assert_eq!(run.stage, to);
                assert!(winners.insert(id, run).is_none(), "two winners for {id}");
            }
            Err(StoreError::Conflict { current, .. }) => assert!(current.is_terminal()),
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        runs.len(),
        "every run has exactly one winner"
    );
    for id in runs {
        let stored = store.get(id).await.expect("get").expect("present");
        let winner = &winners[&id];
        assert_eq!(&stored, winner);
        match stored.stage {
            Stage::Completed => assert_eq!(stored.result_uri.as_deref(), Some("a")),
            Stage::Failed => assert_eq!(stored.failure_cause.as_deref(), Some("boom")),
            Stage::Cancelled => assert_eq!(stored.result_uri, None),
            other => panic!("unexpected stage {other}"),
        }
        assert!(stored.finished_at.is_some());
    }
}

/// Leadership: free → taken; renewed by its holder; refused to others until it lapses; taken
/// over once lapsed; resign frees it (only by its holder).
pub async fn leadership<S: RunStore>(store: S) {
    let name = format!("supervisor-{}", RunId::new());
    let t0: Millis = 1_000_000;
    let a = store.lead(&name, "sup-a", t0, 10_000).await.expect("lead");
    assert_eq!((a.owner.as_str(), a.expires_at), ("sup-a", t0 + 10_000));
    let b = store
        .lead(&name, "sup-b", t0 + 1, 10_000)
        .await
        .expect("lead");
    assert_eq!(
        (b.owner.as_str(), b.expires_at),
        ("sup-a", t0 + 10_000),
        "b must not take a live leadership"
    );
    let a = store
        .lead(&name, "sup-a", t0 + 5_000, 10_000)
        .await
        .expect("renew");
    assert_eq!((a.owner.as_str(), a.expires_at), ("sup-a", t0 + 15_000));
    let b = store
        .lead(&name, "sup-b", t0 + 14_999, 10_000)
        .await
        .expect("lead");
    assert_eq!(b.owner, "sup-a");
    let b = store
        .lead(&name, "sup-b", t0 + 15_000, 10_000)
        .await
        .expect("take over");
    assert_eq!(
        (b.owner.as_str(), b.expires_at),
        ("sup-b", t0 + 25_000),
        "a lapsed leadership is taken over"
    );
    let a = store
        .lead(&name, "sup-a", t0 + 15_001, 10_000)
        .await
        .expect("lead");
    assert_eq!(
        a.owner, "sup-b",
        "the old holder does not get it back while the new one is live"
    );
    store
        .resign(&name, "sup-a")
        .await
        .expect("resign by a non-holder");
    assert_eq!(
        store
            .lead(&name, "sup-a", t0 + 15_002, 10_000)
            .await
            .unwrap()
            .owner,
        "sup-b"
    );
    store.resign(&name, "sup-b").await.expect("resign");
    let a = store
        .lead(&name, "sup-a", t0 + 15_003, 10_000)
        .await
        .expect("lead after resign");
    assert_eq!(a.owner, "sup-a", "a resigned leadership is free at once");
    // Leaderships are independent of each other and of owner leases.
    let other = format!("other-{}", RunId::new());
    assert_eq!(
        store
            .lead(&other, "sup-b", t0 + 15_004, 10_000)
            .await
            .unwrap()
            .owner,
        "sup-b"
    );
}

/// Many contenders for a lapsed leadership at once: exactly one wins, and all agree on it.
pub async fn leadership_race<S: RunStore>(store: Arc<S>) {
    let name = format!("race-{}", RunId::new());
    let now = now_millis();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = store.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let me = format!("sup-{i}");
                // Contention may exhaust a backend's retries: that is an error, never a false win.
                let got = match s.lead(&name, &me, now, 30_000).await {
                    Ok(l) => l.owner,
                    Err(_) => s.lead(&name, &me, now, 30_000).await.expect("lead").owner,
                };
                (me, got)
            })
        })
        .collect();
    let mut winners = std::collections::HashSet::new();
    let mut seen = std::collections::HashSet::new();
    for t in tasks {
        let (me, got) = t.await.expect("task");
        if me == got {
            winners.insert(me);
        }
        seen.insert(got);
    }
    assert_eq!(winners.len(), 1, "exactly one leader: {winners:?}");
    assert_eq!(
        seen.len(),
        1,
        "every contender sees the same leader: {seen:?}"
    );
}

/// Garbage collection: `expired` offers only terminal runs finished before the cutoff (a backend
/// whose rows expire by themselves may offer none); `purge` deletes terminal runs only.
pub async fn garbage_collection<S: RunStore>(store: S) {
    let done = sample_run("algo");
    let live = sample_run("algo");
    insert(&store, &done).await;
    insert(&store, &live).await;
    store
        .transition(
            done.id,
            Stage::Buffered,
            Stage::Cancelled,
            RunPatch::default(),
        )
        .await
        .expect("cancel");
    let offered = store
        .expired(now_millis() + 60_000, 100)
        .await
        .expect("expired");
    assert!(offered.iter().all(|r| r.stage.is_terminal()), "{offered:?}");
    assert!(
        offered.iter().all(|r| r.id != live.id),
        "a live run offered for deletion"
    );
    assert!(
        store.expired(0, 100).await.expect("expired").is_empty(),
        "nothing finished before the epoch"
    );
    assert!(
        !store.purge(live.id).await.expect("purge live"),
        "a live run was purged"
    );
    assert!(store.get(live.id).await.expect("get").is_some());
    assert!(store.purge(done.id).await.expect("purge"));
    assert_eq!(store.get(done.id).await.expect("get"), None);
    assert!(!store.purge(done.id).await.expect("purge again"));
    assert!(!store.purge(RunId::new()).await.expect("purge unknown"));
    assert_eq!(
        store.sweep_lookups(100).await.expect("sweep"),
        0,
        "no crashed transition, no stale lookup rows"
    );
}

/// For backends that keep finished runs until collected (embedded, in memory): `expired` offers
/// exactly the terminal runs finished before the cutoff, oldest first, at most `limit`.
pub async fn expired_offers_finished_runs<S: RunStore>(store: S) {
    let mut done = Vec::new();
    for _ in 0..3 {
        let r = sample_run("algo");
        insert(&store, &r).await;
        store
            .transition(r.id, Stage::Buffered, Stage::Failed, RunPatch::default())
            .await
            .expect("fail");
        done.push(r.id);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let live = sample_run("algo");
    insert(&store, &live).await;
    let cutoff = now_millis() + 1;
    let ids = |runs: Vec<Run>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.expired(cutoff, 100).await.expect("expired")),
        done
    );
    assert_eq!(
        ids(store.expired(cutoff, 2).await.expect("expired")),
        done[..2]
    );
}

/// Pages through `filter` `size` runs at a time; returns the ids in the order served.
async fn list_all<S: RunStore>(store: &S, filter: &RunFilter, size: usize) -> Vec<RunId> {
    let mut out = Vec::new();
    let mut after = None;
    for _ in 0..1000 {
        let page = store.list(filter, after, size).await.expect("list");
        assert!(page.runs.len() <= size, "page over its limit");
        out.extend(page.runs.iter().map(|r| r.id));
        match page.next {
            Some(p) => after = Some(p),
            None => return out,
        }
    }
    panic!("listing never ended");
}

/// `list`: newest first, every matching run exactly once across pages, each filter (alone and
/// combined) honoured after stage and tag changes.
pub async fn listing<S: RunStore>(store: S) {
    // Runs: a tree (root, two children, a grandchild) of "tree" on shard "s1", and loose runs
    // of "alpha"/"beta" on shards "s1"/"s2".
    let mut all = Vec::new();
    let mut root = sample_run("tree");
    root.shard = "s1".into();
    insert(&store, &root).await;
    all.push(root.clone());
    let child = |parent: &Run, n: &str| {
        let mut c = sample_run("tree");
        c.shard = "s1".into();
        c.parent = Some(parent.as_ref());
        c.root = parent.root;
        c.depth = parent.depth + 1;
        c.tag = Some(n.into());
        c
    };
    let c1 = child(&root, "kid");
    insert(&store, &c1).await;
    let c2 = child(&root, "kid");
    insert(&store, &c2).await;
    let g1 = child(&c1, "grandkid");
    insert(&store, &g1).await;
    all.extend([c1.clone(), c2.clone(), g1.clone()]);
    for i in 0..6 {
        let mut r = sample_run(if i % 2 == 0 { "alpha" } else { "beta" });
        r.shard = if i < 3 { "s1" } else { "s2" }.into();
        insert(&store, &r).await;
        all.push(r);
    }
    // Ids are time-ordered: newest first is the reverse of insertion.
    let mut newest: Vec<RunId> = all.iter().map(|r| r.id).collect();
    newest.sort_by_key(|id| std::cmp::Reverse(*id));
    let everything = RunFilter::default();
    for size in [1, 3, 4, 100] {
        assert_eq!(
            list_all(&store, &everything, size).await,
            newest,
            "page size {size}"
        );
    }
    let ids_where = |pred: &dyn Fn(&Run) -> bool| -> Vec<RunId> {
        let mut v: Vec<RunId> = all.iter().filter(|r| pred(r)).map(|r| r.id).collect();
        v.sort_by_key(|id| std::cmp::Reverse(*id));
        v
    };
    let alpha = RunFilter {
        algorithm: Some("alpha".into()),
        ..RunFilter::default()
    };
    assert_eq!(
        list_all(&store, &alpha, 2).await,
        ids_where(&|r| r.algorithm == "alpha")
    );
    let s2 = RunFilter {
        shard: Some("s2".into()),
        ..RunFilter::default()
    };
    assert_eq!(
        list_all(&store, &s2, 2).await,
        ids_where(&|r| r.shard == "s2")
    );
    let tree = RunFilter {
        root: Some(root.id),
        ..RunFilter::default()
    };
    assert_eq!(
        list_all(&store, &tree, 3).await,
        vec![g1.id, c2.id, c1.id, root.id]
    );
    let kids = RunFilter {
        parent: Some(root.id),
        ..RunFilter::default()
    };
    assert_eq!(list_all(&store, &kids, 1).await, vec![c2.id, c1.id]);
    let tagged = RunFilter {
        tag: Some("kid".into()),
        ..RunFilter::default()
    };
    assert_eq!(list_all(&store, &tagged, 5).await, vec![c2.id, c1.id]);
    // Time range: [c1, g1] by submission time.
    let range = RunFilter {
        from: Some(crate::listing::submitted_at(c1.id)),
        to: Some(crate::listing::submitted_at(g1.id) + 1),
        ..RunFilter::default()
    };
    let got = list_all(&store, &range, 2).await;
    assert_eq!(got, ids_where(&|r| range.matches(r)));
    for id in [g1.id, c2.id, c1.id] {
        assert!(
            got.contains(&id),
            "{id} missing from the time range: {got:?}"
        );
    }
    let past = RunFilter {
        to: Some(crate::listing::submitted_at(root.id)),
        ..RunFilter::default()
    };
    assert_eq!(list_all(&store, &past, 5).await, Vec::<RunId>::new());
    // Stage: everything BUFFERED until runs move; a moved run leaves its old stage's listing.
    let buffered = RunFilter {
        stage: Some(Stage::Buffered),
        ..RunFilter::default()
    };
    assert_eq!(list_all(&store, &buffered, 4).await, newest);
    store
        .transition(c1.id, Stage::Buffered, Stage::Running, RunPatch::default())
        .await
        .expect("start c1");
    store
        .transition(c2.id, Stage::Buffered, Stage::Running, RunPatch::default())
        .await
        .expect("start c2");
    store
        .transition(c2.id, Stage::Running, Stage::Completed, RunPatch::default())
        .await
        .expect("complete c2");
    let running = RunFilter {
        stage: Some(Stage::Running),
        ..RunFilter::default()
    };
    assert_eq!(list_all(&store, &running, 2).await, vec![c1.id]);
    let completed = RunFilter {
        stage: Some(Stage::Completed),
        ..RunFilter::default()
    };
    assert_eq!(list_all(&store, &completed, 2).await, vec![c2.id]);
    let still_buffered = list_all(&store, &buffered, 3).await;
    assert!(!still_buffered.contains(&c1.id) && !still_buffered.contains(&c2.id));
    assert_eq!(still_buffered.len(), all.len() - 2);
    // A finished run is still listed (until it is purged), with its new stage.
    let page = store.list(&kids, None, 10).await.expect("list kids");
    assert_eq!(page.runs[0].stage, Stage::Completed);
    assert_eq!(page.next, None);
    // Tags move.
    store
        .set_tag(c1.id, Some("moved".into()))
        .await
        .expect("retag");
    assert_eq!(list_all(&store, &tagged, 5).await, vec![c2.id]);
    // Combined filters: stage + tree + shard.
    let combo = RunFilter {
        stage: Some(Stage::Running),
        root: Some(root.id),
        shard: Some("s1".into()),
        algorithm: Some("tree".into()),
        ..RunFilter::default()
    };
    assert_eq!(list_all(&store, &combo, 1).await, vec![c1.id]);
    let none = RunFilter {
        algorithm: Some("alpha".into()),
        shard: Some("nowhere".into()),
        ..RunFilter::default()
    };
    assert_eq!(list_all(&store, &none, 10).await, Vec::<RunId>::new());
    // Continuing from a position returns only older runs.
    let page = store
        .list(&everything, Some(Position(c2.id)), 100)
        .await
        .expect("list after");
    let ids: Vec<RunId> = page.runs.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![c1.id, root.id]);
}

/// `list` over runs submitted hours and days apart (ids minted for those times): newest first
/// across time buckets, empty stretches skipped, a time range picks the right ones.
pub async fn listing_across_hours<S: RunStore>(store: S) {
    let now = now_millis();
    let hour = 3_600_000;
    let mut ids = Vec::new();
    for ago in [200 * hour, 49 * hour, 2 * hour + 5, 2 * hour, 0] {
        let ms = u64::try_from(now - ago).expect("positive time");
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            ms / 1000,
            u32::try_from(ms % 1000).expect("ms") * 1_000_000,
        );
        let mut run = sample_run("hours");
        run.id = RunId(uuid::Uuid::new_v7(ts));
        run.root = run.id;
        insert(&store, &run).await;
        ids.push(run.id);
    }
    ids.reverse();
    let all = RunFilter::default();
    assert_eq!(list_all(&store, &all, 1).await, ids);
    assert_eq!(list_all(&store, &all, 2).await, ids);
    let by_alg = RunFilter {
        algorithm: Some("hours".into()),
        ..RunFilter::default()
    };
    assert_eq!(list_all(&store, &by_alg, 3).await, ids);
    let day = RunFilter {
        from: Some(now - 50 * hour),
        to: Some(now - hour),
        algorithm: Some("hours".into()),
        ..RunFilter::default()
    };
    assert_eq!(
        list_all(&store, &day, 10).await,
        vec![ids[1], ids[2], ids[3]]
    );
}
