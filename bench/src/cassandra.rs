//! `cassandra`: the run store on a real Cassandra / ScyllaDB node, against the physical limit of
//! the same driver on the same node, in one run.
//!
//! Phases, each for `--duration` at `--concurrency` requests in flight, in a scratch keyspace
//! (`<keyspace>_<random>`, dropped at the end):
//! 1. **raw insert**: one prepared `INSERT INTO raw_insert (id, record)` per op, with a record of
//!    the size an accepted run's record has: the limit of this driver on this node.
//! 2. **accept**: `POST /algorithm/v1/run/knapsack` (1 KiB payload) to standalone Nexus using
//!    this store, closed loop (right after the raw phase: their ratio is the target); then the
//!    same against an in-memory store that writes nothing (the no-write baseline).
//! 3. **LWT insert**: the same with `IF NOT EXISTS` (what a Paxos round costs, for reference).
//! 4. **unlogged batches**: the raw insert in batches of 16 rows (what coalescing would buy).
//! 5. **store insert**: `CassandraRunStore::insert_minted` of a BUFFERED run with an owner, as
//!    the scheduler does on accept (lookup rows grouped per partition, then the run row).
//!
//! Every phase reports CPU per operation (`/proc`): this process apart from the load
//! generator's threads, the load generator, and the local Cassandra node.
//! 6. **store transition**: BUFFERED → RUNNING compare-and-sets (LWT) on the runs just inserted.
//! 7. **e2e** (with `--e2e`): submit → COMPLETED → result, instant in-process algorithm.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nexus_model::run::{PayloadLocation, RunId, RunPatch, Stage};
use nexus_store::cassandra::CassandraConfig;
use nexus_store::test_suite::sample_run;
use nexus_store::{CassandraRunStore, RunStore};

use crate::{PHASE_LIMIT, f0, ms, pct, print_table};

/// A keyspace of its own for one benchmark run.
#[derive(Debug)]
pub struct Scratch {
    /// Store URL naming the scratch keyspace.
    pub url: String,
    /// Its store (schema applied).
    pub store: Arc<CassandraRunStore>,
    keyspace: String,
}

impl Scratch {
    /// Creates `<keyspace>_<random>` on the node of `url` with the run store's schema.
    pub async fn new(url: &str) -> anyhow::Result<Self> {
        let base = CassandraConfig::from_url(url).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
        let keyspace = format!("{}_{}", base.keyspace, &uuid_hex()[..8]);
        let (head, tail) = url
            .split_once('?')
            .map_or((url, String::new()), |(h, t)| (h, format!("?{t}")));
        let head = head
            .rsplit_once('/')
            .map_or(head.to_owned(), |(h, _)| h.to_owned());
        let url = format!("{head}/{keyspace}{tail}");
        let config = CassandraConfig::from_url(&url).map_err(|e| anyhow::anyhow!("{e}"))?;
        eprintln!(
            "cassandra: scratch keyspace {keyspace} on {}",
            config.contact_points.join(",")
        );
        let store = CassandraRunStore::open(&config)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self {
            url,
            store: Arc::new(store),
            keyspace,
        })
    }

    /// Drops the keyspace.
    pub async fn drop(self) {
        let _ = self
            .store
            .session()
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.keyspace), &[])
            .await;
    }
}

/// Hex of a fresh UUIDv7, reversed so that its random bits come first.
fn uuid_hex() -> String {
    RunId::new().0.simple().to_string().chars().rev().collect()
}

/// One measured phase.
#[derive(Debug)]
pub struct Phase {
    pub name: String,
    pub concurrency: usize,
    pub ok: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    /// CPU the phase used.
    pub cpu: crate::cpu::Used,
}

impl Phase {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `op(i)` from `concurrency` tasks for `duration` (or until `op` has run `max` times).
async fn closed_loop<F, Fut>(
    name: &str,
    concurrency: usize,
    duration: Duration,
    max: usize,
    op: F,
) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let meter = crate::cpu::Meter::start(true);
    let start = Instant::now();
    let deadline = start + duration.min(PHASE_LIMIT);
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max || Instant::now() >= deadline {
                    break;
                }
                let t0 = Instant::now();
                if op(i).await {
                    lat.push(t0.elapsed());
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.expect("phase task panicked");
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    let cpu = meter.stop();
    latencies.sort_unstable();
    Phase {
        name: name.to_owned(),
        concurrency,
        ok: latencies.len(),
        errors,
        elapsed,
        latencies,
        cpu,
    }
}

/// A run like the scheduler writes on accept: BUFFERED, owned, 1 KiB payload inline.
fn accepted_run() -> nexus_model::run::Run {
    let mut run = sample_run("knapsack");
    run.payload = PayloadLocation::Inline {
        bytes: crate::accept_body().into_bytes(),
    };
    run.payload_size = 1024;
    run.owner = Some("bench-scheduler".into());
    run
}

/// Phases 1–4 on `scratch`.
/// `after_raw` (the accept phase) runs right after the raw insert phase, so that the two figures
/// whose ratio is the target are measured back to back, before the node compacts what the
/// other phases wrote.
pub async fn store_phases(
    scratch: &Scratch,
    concurrency: usize,
    duration: Duration,
    after_raw: impl std::future::Future<Output = anyhow::Result<Vec<Phase>>>,
) -> anyhow::Result<Vec<Phase>> {
    let mut after_raw = Some(after_raw);
    let session = scratch.store.session().clone();
    let ks = &scratch.keyspace;
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.raw_insert (id uuid PRIMARY KEY, record blob)"
            ),
            &[],
        )
        .await?;
    let record = Arc::new(serde_json::to_vec(&accepted_run())?);
    eprintln!(
        "cassandra: records of {} bytes, concurrency {concurrency}, {duration:?} per phase",
        record.len()
    );
    let mut out = Vec::new();
    for (name, cql) in [
        (
            "raw insert (driver, 1 row)",
            format!("INSERT INTO {ks}.raw_insert (id, record) VALUES (?, ?)"),
        ),
        (
            "LWT insert (IF NOT EXISTS)",
            format!("INSERT INTO {ks}.raw_insert (id, record) VALUES (?, ?) IF NOT EXISTS"),
        ),
    ] {
        let mut st = session.prepare(cql).await?;
        st.set_is_idempotent(true);
        let st = Arc::new(st);
        eprintln!("cassandra: {name} …");
        let (session, record) = (session.clone(), record.clone());
        out.push(
            closed_loop(name, concurrency, duration, usize::MAX, move |_| {
                let (session, st, record) = (session.clone(), st.clone(), record.clone());
                async move {
                    session
                        .execute_unpaged(&st, (RunId::new().0, record.as_slice()))
                        .await
                        .is_ok()
                }
            })
            .await,
        );
        if let Some(f) = after_raw.take() {
            out.extend(f.await?);
        }
    }
    // What coalescing writes would buy: unlogged batches of 16 rows (one request each).
    {
        use scylla::statement::batch::{Batch, BatchStatement, BatchType};
        const ROWS: usize = 16;
        let mut st = session
            .prepare(format!(
                "INSERT INTO {ks}.raw_insert (id, record) VALUES (?, ?)"
            ))
            .await?;
        st.set_is_idempotent(true);
        let batch = Arc::new(Batch::new_with_statements(
            BatchType::Unlogged,
            vec![BatchStatement::PreparedStatement(st); ROWS],
        ));
        eprintln!("cassandra: raw unlogged batches of {ROWS} rows …");
        let (session, record) = (session.clone(), record.clone());
        let mut p = closed_loop(
            "raw insert, unlogged batches of 16 (rows)",
            concurrency / 4,
            duration,
            usize::MAX,
            move |_| {
                let (session, batch, record) = (session.clone(), batch.clone(), record.clone());
                async move {
                    let values: Vec<_> = (0..ROWS)
                        .map(|_| (RunId::new().0, record.as_slice()))
                        .collect();
                    session.batch(&batch, values).await.is_ok()
                }
            },
        )
        .await;
        p.ok *= ROWS;
        out.push(p);
    }
    eprintln!("cassandra: store insert …");
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (store, ids2) = (scratch.store.clone(), ids.clone());
    let template = Arc::new(accepted_run());
    out.push(
        closed_loop(
            "store insert (RunStore)",
            concurrency,
            duration,
            usize::MAX,
            move |_| {
                let (store, ids, template) = (store.clone(), ids2.clone(), template.clone());
                async move {
                    let mut run = (*template).clone();
                    run.id = RunId::new();
                    run.root = run.id;
                    let id = run.id;
                    let ok = store.insert_minted(run).await.is_ok();
                    if ok {
                        ids.lock().expect("ids").push(id);
                    }
                    ok
                }
            },
        )
        .await,
    );
    let ids: Arc<Vec<RunId>> = Arc::new(std::mem::take(&mut *ids.lock().expect("ids")));
    eprintln!(
        "cassandra: store transition BUFFERED→RUNNING on {} runs …",
        ids.len()
    );
    let (store, n) = (scratch.store.clone(), ids.len());
    out.push(
        closed_loop(
            "store transition (LWT CAS)",
            concurrency,
            duration,
            n,
            move |i| {
                let (store, ids) = (store.clone(), ids.clone());
                async move {
                    store
                        .transition(ids[i], Stage::Buffered, Stage::Running, RunPatch::default())
                        .await
                        .is_ok()
                }
            },
        )
        .await,
    );
    Ok(out)
}

/// Prints the phases with their ratio to the first (raw insert) one.
pub fn print(phases: &[Phase]) {
    let raw = phases.first().map_or(1.0, Phase::rate).max(1e-9);
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|p| {
            let (nexus, load, cassandra) = p.cpu.per_op_us(p.ok + p.errors);
            vec![
                p.name.clone(),
                p.concurrency.to_string(),
                format!("{:.1}", p.elapsed.as_secs_f64()),
                p.ok.to_string(),
                f0(p.rate()),
                format!("{:.2}", p.rate() / raw),
                ms(pct(&p.latencies, 0.5)),
                ms(pct(&p.latencies, 0.99)),
                p.errors.to_string(),
                f0(nexus),
                f0(load),
                cassandra.map_or_else(|| "-".to_owned(), f0),
            ]
        })
        .collect();
    print_table(
        "run store on Cassandra (same node, same driver, same run)",
        &[
            "phase",
            "conc",
            "seconds",
            "ok",
            "ops/s",
            "× raw",
            "p50 ms",
            "p99 ms",
            "errors",
            "Nexus/driver CPU µs/op",
            "load gen µs/op",
            "Cassandra CPU µs/op",
        ],
        &rows,
    );
}

/// Converts an HTTP load into a phase row.
pub fn from_load(l: &crate::Load) -> Phase {
    Phase {
        name: l.name.clone(),
        concurrency: l.concurrency,
        ok: l.ok,
        errors: l.non_202 + l.errors,
        elapsed: l.elapsed,
        latencies: l.latencies.clone(),
        cpu: l.cpu,
    }
}
