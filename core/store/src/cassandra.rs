//! `CassandraRunStore`: the [`RunStore`] of distributed deployments, on Apache Cassandra,
//! ScyllaDB or any service speaking CQL, through the `scylla` driver.
//!
//! # Records and compare-and-set
//! A run is one row of `runs`: its JSON record plus the columns the store needs (`stage`,
//! `owner`, `tag`) and a `version` counter. Every change after creation is a lightweight
//! transaction `UPDATE … IF version = <read version>` (the stage is part of the versioned
//! record, so this is `IF stage = …` and more: a concurrent tag or owner change is never
//! overwritten by a stale record). A transaction that loses re-reads the row: when the stage is
//! still the expected one it tries again, otherwise it reports [`StoreError::Conflict`]. An LWT
//! timing out has an unknown outcome; the store then reads the row at SERIAL consistency (which
//! completes any in-flight Paxos round) and reports success if its own write is the one stored.
//!
//! Creation is one plain write (no Paxos: an accept costs what an ordinary insert costs). An
//! accept ([`RunStore::insert_minted`]: the scheduler minted the UUIDv7 id) reads nothing first;
//! [`RunStore::insert`] of an id from elsewhere first reads the row to refuse a duplicate. The
//! lookup rows written before the run's row are grouped with other writers' rows of the same
//! partition into unlogged single-partition batches (see the `coalesce` module), so under load
//! an accept's only write of its own is its row. Runs with an idempotency key first claim
//! `(algorithm, key)` by
//! `INSERT … IF NOT EXISTS`, storing the record with the claim; a claimant that died before
//! writing the run is completed by the next submitter with the same key (roll-forward), and both
//! write the run with `IF version = null`, so exactly one record is ever stored.
//!
//! Batches (all runs or none) are written, decided, then expanded: see the `batch` module.
//!
//! # Lookup tables: hints written first, verified on read
//! Lookups by owner+stage, tag and parent read tables keyed for them (no `ALLOW FILTERING`, no
//! secondary index). They are kept consistent with `runs` without logged batches:
//! 1. the lookup rows for the *new* state are written (idempotent upserts) **before** the row in
//!    `runs` changes, so every stored run can always be found through its lookups;
//! 2. after the change succeeds, the row for the *old* state is deleted with a client timestamp
//!    taken before the change, so a later move back to that state (whose upsert carries a later
//!    timestamp) is never undone;
//! 3. readers check every lookup row against the run itself and drop the ones that no longer
//!    match (a transition that lost, a crash between steps 1 and 2).
//!
//! Why not a logged batch: a batch cannot carry the lightweight transaction (it spans several
//! partitions), so it could not make the check-and-write atomic anyway; it costs a batchlog
//! write and delete on two extra replicas per change; and it would still let a reader see the
//! lookup row before the run. Hints plus verification give the one property that matters (no run
//! is ever missing from its lookups) at the cost of a read per returned row on lookups, which
//! are off the hot path (acceptance and dispatch never use them).
//!
//! # Consistency
//! Reads and writes use `LOCAL_QUORUM` by default: a write acknowledged by a quorum is seen by
//! every later quorum read, so a run accepted by one scheduler is visible at once to every other
//! scheduler, receiver and supervisor in the datacenter. Transactions use `LOCAL_SERIAL`.
//! Multi-datacenter deployments that route one run's traffic to several datacenters should set
//! `consistency=quorum&serial=serial`.
//!
//! # Retention
//! When a run reaches a terminal stage, its row, its lookup rows and its idempotency key are
//! rewritten with a TTL of the remaining retention (`retention` after `finished_at`), so finished
//! runs disappear by themselves. Leases and owner registrations expire too.
//!
//! # Errors
//! Driver errors are mapped to [`ErrorKind`]s in one place, [`classify`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::future::{join_all, try_join_all};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{
    ConnectionError, ConnectionPoolError, ConnectionSetupRequestErrorKind, DbError, ExecutionError,
    MetadataError, NewSessionError, RequestAttemptError,
};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use uuid::Uuid;

use coalesce::Coalescer;

use super::{
    BatchInserted, Inserted, Lease, ListPage, Position, RunBatch, RunFilter, RunStore, StoreError,
};
use nexus_model::error::ErrorKind;
use nexus_model::run::{Millis, Run, RunId, RunPatch, Stage, now_millis};

mod batch;
mod coalesce;
pub mod config;
mod listing;
pub mod schema;
mod tls;

pub use config::{CassandraConfig, Consistency, Replication, SerialConsistency};

/// Attempts of one compare-and-set before giving up under contention.
const MAX_CAS_ATTEMPTS: usize = 32;
/// Lookup rows read per page.
const PAGE: i32 = 256;
/// Runs fetched at once while verifying a page of lookup rows.
const VERIFY_CONCURRENCY: usize = 64;
/// How often a live process re-registers an owner in `owners_by_stage`.
const REGISTER_EVERY: Duration = Duration::from_secs(3600);
/// Shortest lifetime of an owner registration or a lease row.
const MIN_REGISTRATION_TTL: i32 = 24 * 3600;
/// Shortest TTL of a finished run's rows, in seconds (capped by the retention).
const MIN_TTL_SECS: u64 = 3600;
/// The one partition of the `leases` table.
const LEASE_SCOPE: &str = "leases";

/// Maps a driver error to the seam's error kinds: the one place where that happens.
#[must_use]
pub fn classify(e: &ExecutionError) -> ErrorKind {
    match e {
        ExecutionError::RequestTimeout(_) => ErrorKind::Timeout,
        ExecutionError::EmptyPlan
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::SchemaAgreementError(_) => ErrorKind::Unavailable,
        ExecutionError::LastAttemptError(a) => match a {
            RequestAttemptError::DbError(db, _) => classify_db(db),
            RequestAttemptError::BrokenConnectionError(_)
            | RequestAttemptError::UnableToAllocStreamId => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        },
        _ => ErrorKind::Internal,
    }
}

fn classify_db(db: &DbError) -> ErrorKind {
    match db {
        DbError::Unavailable { .. }
        | DbError::IsBootstrapping
        | DbError::ReadFailure { .. }
        | DbError::WriteFailure { .. } => ErrorKind::Unavailable,
        DbError::Overloaded | DbError::RateLimitReached { .. } => ErrorKind::ResourceExhausted,
        DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => ErrorKind::Timeout,
        DbError::AuthenticationError => ErrorKind::Unauthorized,
        DbError::Unauthorized => ErrorKind::Forbidden,
        DbError::AlreadyExists { .. } => ErrorKind::Conflict,
        _ => ErrorKind::Internal,
    }
}

/// Maps a failure to open a session: `Unauthorized` when the node refused the login (wrong or
/// missing credentials), `Unavailable` otherwise.
fn connect_err(config: &CassandraConfig, e: &NewSessionError) -> StoreError {
    use ConnectionSetupRequestErrorKind as K;
    let at = config.contact_points.join(",");
    // The control connection's set-up failure, which is where a node refuses a client.
    let setup = match e {
        NewSessionError::MetadataError(MetadataError::ConnectionPoolError(
            ConnectionPoolError::Broken {
                last_connection_error: ConnectionError::ConnectionSetupRequestError(s),
            },
        )) => Some(&s.error),
        _ => None,
    };
    let no_client_cert = config.tls.as_ref().is_none_or(|t| t.cert.is_none());
    match setup {
        Some(K::MissingAuthentication) => StoreError::backend(
            ErrorKind::Unauthorized,
            format!(
                "Cassandra at {at} requires authentication: put the user name in the store URL \
                 (cassandra://<user>@host/...) and the password in NEXUS_CASSANDRA_PASSWORD"
            ),
        ),
        Some(
            K::DbError(DbError::AuthenticationError, _)
            | K::StartAuthSessionError(_)
            | K::AuthChallengeEvaluationError(_)
            | K::AuthFinishError(_),
        ) => StoreError::backend(
            ErrorKind::Unauthorized,
            format!(
                "Cassandra at {at} refused the login of user '{}': {e}",
                config.username.as_deref().unwrap_or_default()
            ),
        ),
        // A TLS-only port resets a plain connection as soon as the driver speaks; a node
        // requiring client certificates ends the handshake (with TLS 1.3 after the client
        // already sent its first request, so the driver may only see a broken connection).
        Some(K::BrokenConnection(_)) if no_client_cert => {
            let hint = if config.tls.is_none() {
                "if the nodes require TLS, add tls=true&ca=<CA bundle> to the store URL"
            } else {
                "if the nodes require client certificates, add cert=<PEM>&key=<PEM> to the \
                 store URL"
            };
            StoreError::backend(
                ErrorKind::Unavailable,
                format!("cannot connect to Cassandra at {at}: {e} ({hint})"),
            )
        }
        _ => StoreError::backend(
            ErrorKind::Unavailable,
            format!("cannot connect to Cassandra at {at}: {e}"),
        ),
    }
}

fn exec_err(what: &str, e: &ExecutionError) -> StoreError {
    StoreError::backend(classify(e), format!("cassandra {what}: {e}"))
}

fn internal(msg: impl Into<String>) -> StoreError {
    StoreError::backend(ErrorKind::Internal, msg)
}

fn decode(bytes: &[u8]) -> Result<Run, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| internal(format!("corrupt run record: {e}")))
}

fn encode(run: &Run) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(run).map_err(|e| internal(format!("encoding run: {e}")))
}

/// Opens a driver session for `config` (token-aware, datacenter-aware, TLS and credentials as
/// configured).
///
/// # Errors
/// `Unavailable` when no node can be reached (TLS failures included); `Unauthorized` when the
/// node refuses the credentials or requires some; `InvalidInput` for unreadable TLS files.
pub async fn connect(config: &CassandraConfig) -> Result<Session, StoreError> {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &config.local_datacenter {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .consistency(config.consistency.driver())
        .serial_consistency(Some(config.serial_consistency.driver()))
        .request_timeout(Some(config.request_timeout))
        .load_balancing_policy(policy.build())
        .build();
    let mut b = SessionBuilder::new()
        .known_nodes(&config.contact_points)
        .connection_timeout(config.connect_timeout)
        .default_execution_profile_handle(profile.into_handle());
    if let Some(user) = &config.username {
        b = b.user(
            user,
            config
                .password
                .as_ref()
                .map(|p| p.expose().clone())
                .unwrap_or_default(),
        );
    }
    if let Some(t) = &config.tls {
        b = b.tls_context(Some(tls::client_config(t)?));
    }
    b.build().await.map_err(|e| connect_err(config, &e))
}

/// Applies the schema migrations not yet recorded in `schema_migrations`. Safe to run from many
/// instances at once (see [`schema`]). Returns the versions applied now.
///
/// # Errors
/// The driver's error for the failing statement.
pub async fn migrate(session: &Session, config: &CassandraConfig) -> Result<Vec<i32>, StoreError> {
    let ks = &config.keyspace;
    let ddl = |stmt: String| async move {
        session
            .query_unpaged(stmt.as_str(), &[])
            .await
            .map_err(|e| exec_err(&format!("schema statement `{}`", first_line(&stmt)), &e))
    };
    ddl(schema::create_keyspace(ks, &config.replication)).await?;
    ddl(schema::migrations_table(ks)).await?;
    let applied = session
        .query_unpaged(format!("SELECT version FROM {ks}.schema_migrations"), &[])
        .await
        .map_err(|e| exec_err("reading schema_migrations", &e))?;
    let mut done = Vec::new();
    for row in rows(applied, "schema_migrations")? {
        if let Some(Some(CqlValue::Int(v))) = row.columns.first() {
            done.push(*v);
        }
    }
    let mut now_applied = Vec::new();
    for m in schema::MIGRATIONS {
        if done.contains(&m.version) {
            continue;
        }
        for st in m.statements {
            ddl(schema::render(st, ks)).await?;
        }
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {ks}.schema_migrations (version, description, applied_at) VALUES (?, ?, toTimestamp(now()))"
                ),
                (m.version, m.description),
            )
            .await
            .map_err(|e| exec_err("recording a migration", &e))?;
        tracing::info!(keyspace = %ks, version = m.version, description = m.description, "schema migration applied");
        now_applied.push(m.version);
    }
    Ok(now_applied)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn rows(result: QueryResult, what: &str) -> Result<Vec<Row>, StoreError> {
    let rows = result
        .into_rows_result()
        .map_err(|e| internal(format!("cassandra {what}: not a rows result: {e}")))?;
    rows.rows::<Row>()
        .map_err(|e| internal(format!("cassandra {what}: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| internal(format!("cassandra {what}: {e}")))
}

/// Whether an LWT applied, from the `[applied]` column.
fn applied(result: QueryResult, what: &str) -> Result<bool, StoreError> {
    let rows = rows(result, what)?;
    match rows.first().and_then(|r| r.columns.first()) {
        Some(Some(CqlValue::Boolean(b))) => Ok(*b),
        other => Err(internal(format!(
            "cassandra {what}: unexpected LWT answer {other:?}"
        ))),
    }
}

/// `stage, owner, tag, version, record`, in the order of the `SET` clauses.
type RowValues = (String, Option<String>, Option<String>, i64, Vec<u8>);

/// Every prepared statement of the store.
#[derive(Debug)]
struct Statements {
    get: PreparedStatement,
    get_serial: PreparedStatement,
    exists: PreparedStatement,
    create: PreparedStatement,
    create_if_absent: PreparedStatement,
    cas: PreparedStatement,
    /// Lookup rows, grouped per partition (see the `coalesce` module).
    hint_owner: Arc<Coalescer<(String, String), OwnerRow>>,
    unhint_owner: PreparedStatement,
    hint_tag: Arc<Coalescer<String, TagRow>>,
    unhint_tag: PreparedStatement,
    hint_parent: Arc<Coalescer<Uuid, ParentRow>>,
    register_owner: PreparedStatement,
    owners: PreparedStatement,
    page_owner: PreparedStatement,
    page_tag: PreparedStatement,
    page_parent: PreparedStatement,
    claim_key: PreparedStatement,
    get_key: PreparedStatement,
    expire_key: PreparedStatement,
    heartbeat: PreparedStatement,
    leases: PreparedStatement,
    release: PreparedStatement,
    lead_insert: PreparedStatement,
    lead_get: PreparedStatement,
    lead_cas: PreparedStatement,
    resign: PreparedStatement,
    purge: PreparedStatement,
    owner_candidates: PreparedStatement,
}

impl Statements {
    async fn prepare(
        session: &Arc<Session>,
        ks: &str,
        serial: SerialConsistency,
    ) -> Result<Self, StoreError> {
        let p = |cql: String, idempotent: bool| async move {
            let mut st = session
                .prepare(cql.as_str())
                .await
                .map_err(|e| {
                    StoreError::backend(
                        ErrorKind::Unavailable,
                        format!("cassandra: cannot prepare `{cql}`: {e} (is the schema applied? run with migrate=true or `nexus store schema`)"),
                    )
                })?;
            st.set_is_idempotent(idempotent);
            Ok::<_, StoreError>(st)
        };
        // A lookup row's upsert: `INSERT INTO <table (columns) VALUES (…)> USING TTL, TIMESTAMP`.
        let hint = |into: String| {
            p(
                format!("INSERT INTO {into} USING TTL ? AND TIMESTAMP ?"),
                true,
            )
        };
        let set = "stage = ?, owner = ?, tag = ?, version = ?, record = ?";
        let mut get_serial = p(
            format!("SELECT version, record FROM {ks}.runs WHERE id = ?"),
            true,
        )
        .await?;
        get_serial.set_consistency(serial.as_read());
        Ok(Self {
            get: p(format!("SELECT version, record FROM {ks}.runs WHERE id = ?"), true).await?,
            get_serial,
            exists: p(format!("SELECT version FROM {ks}.runs WHERE id = ?"), true).await?,
            create: p(format!("UPDATE {ks}.runs USING TTL ? SET {set} WHERE id = ?"), true).await?,
            create_if_absent: p(
                format!("UPDATE {ks}.runs USING TTL ? SET {set} WHERE id = ? IF version = null"),
                false,
            )
            .await?,
            cas: p(
                format!("UPDATE {ks}.runs USING TTL ? SET {set} WHERE id = ? IF version = ?"),
                false,
            )
            .await?,
            hint_owner: Coalescer::new(
                Arc::clone(session),
                hint(format!("{ks}.runs_by_owner_stage (owner, stage, id, version) VALUES (?, ?, ?, ?)")).await?,
                "writing an owner lookup row",
            ),
            unhint_owner: p(
                format!("DELETE FROM {ks}.runs_by_owner_stage USING TIMESTAMP ? WHERE owner = ? AND stage = ? AND id = ?"),
                true,
            )
            .await?,
            hint_tag: Coalescer::new(
                Arc::clone(session),
                hint(format!("{ks}.runs_by_tag (tag, id) VALUES (?, ?)")).await?,
                "writing a tag lookup row",
            ),
            unhint_tag: p(
                format!("DELETE FROM {ks}.runs_by_tag USING TIMESTAMP ? WHERE tag = ? AND id = ?"),
                true,
            )
            .await?,
            hint_parent: Coalescer::new(
                Arc::clone(session),
                hint(format!("{ks}.runs_by_parent (parent, id) VALUES (?, ?)")).await?,
                "writing a parent lookup row",
            ),
            register_owner: p(
                format!("INSERT INTO {ks}.owners_by_stage (stage, owner) VALUES (?, ?) USING TTL ?"),
                true,
            )
            .await?,
            owners: p(format!("SELECT owner FROM {ks}.owners_by_stage WHERE stage = ?"), true).await?,
            page_owner: p(
                format!("SELECT id FROM {ks}.runs_by_owner_stage WHERE owner = ? AND stage = ? AND id > ? LIMIT ?"),
                true,
            )
            .await?,
            page_tag: p(
                format!("SELECT id FROM {ks}.runs_by_tag WHERE tag = ? AND id > ? LIMIT ?"),
                true,
            )
            .await?,
            page_parent: p(
                format!("SELECT id FROM {ks}.runs_by_parent WHERE parent = ? AND id > ? LIMIT ?"),
                true,
            )
            .await?,
            claim_key: p(
                format!("INSERT INTO {ks}.idempotency_keys (algorithm, idem_key, id, record) VALUES (?, ?, ?, ?) IF NOT EXISTS"),
                false,
            )
            .await?,
            get_key: p(
                format!("SELECT id, record FROM {ks}.idempotency_keys WHERE algorithm = ? AND idem_key = ?"),
                true,
            )
            .await?,
            expire_key: p(
                format!("UPDATE {ks}.idempotency_keys USING TTL ? SET id = ?, record = ? WHERE algorithm = ? AND idem_key = ?"),
                true,
            )
            .await?,
            heartbeat: p(
                format!("INSERT INTO {ks}.leases (scope, owner, expires_at) VALUES ('{LEASE_SCOPE}', ?, ?) USING TTL ?"),
                true,
            )
            .await?,
            leases: p(
                format!("SELECT owner, expires_at FROM {ks}.leases WHERE scope = '{LEASE_SCOPE}'"),
                true,
            )
            .await?,
            release: p(
                format!("DELETE FROM {ks}.leases WHERE scope = '{LEASE_SCOPE}' AND owner = ?"),
                true,
            )
            .await?,
            lead_insert: p(
                format!("INSERT INTO {ks}.leaders (name, holder, expires_at) VALUES (?, ?, ?) IF NOT EXISTS"),
                false,
            )
            .await?,
            lead_get: {
                let mut st = p(
                    format!("SELECT holder, expires_at FROM {ks}.leaders WHERE name = ?"),
                    true,
                )
                .await?;
                st.set_consistency(serial.as_read());
                st
            },
            lead_cas: p(
                format!("UPDATE {ks}.leaders SET holder = ?, expires_at = ? WHERE name = ? IF holder = ? AND expires_at = ?"),
                false,
            )
            .await?,
            resign: p(
                format!("DELETE FROM {ks}.leaders WHERE name = ? IF holder = ?"),
                false,
            )
            .await?,
            purge: p(
                format!("DELETE FROM {ks}.runs WHERE id = ? IF stage IN ('COMPLETED', 'FAILED', 'SCHEDULING_FAILED', 'DEADLINE_EXCEEDED', 'CANCELLED')"),
                false,
            )
            .await?,
            owner_candidates: p(
                format!("SELECT owner FROM {ks}.owners_by_stage WHERE stage = ?"),
                true,
            )
            .await?,
        })
    }
}

/// A `runs_by_owner_stage` row: owner, stage, id, version, TTL, write timestamp.
type OwnerRow = (String, String, Vec<u8>, i64, i32, i64);
/// A `runs_by_tag` row: tag, id, TTL, write timestamp.
type TagRow = (String, Vec<u8>, i32, i64);
/// A `runs_by_parent` row: parent, id, TTL, write timestamp.
type ParentRow = (Uuid, Vec<u8>, i32, i64);

/// Which lookup table, and the key in it.
#[derive(Debug, Clone)]
enum Lookup {
    OwnerStage(String, Stage),
    Tag(String),
    Parent(RunId),
}

impl Lookup {
    /// Whether the stored run still belongs under this key (stale rows are skipped).
    fn matches(&self, run: &Run) -> bool {
        match self {
            Lookup::OwnerStage(o, s) => run.owner.as_deref() == Some(o.as_str()) && run.stage == *s,
            Lookup::Tag(t) => run.tag.as_deref() == Some(t.as_str()),
            Lookup::Parent(p) => run.parent.as_ref().is_some_and(|r| r.request_id == *p),
        }
    }
}

/// The durable [`RunStore`] on Cassandra / ScyllaDB. See the module docs.
pub struct CassandraRunStore {
    session: Arc<Session>,
    keyspace: String,
    st: Statements,
    retention: Duration,
    /// (owner, stage) registered in `owners_by_stage` by this process, and when.
    registered: Mutex<HashMap<(String, Stage), Instant>>,
    /// The listing's statements.
    ls: listing::Statements,
    /// The batch statements.
    bst: batch::Statements,
    /// (dimension, hour) registered in `run_buckets` by this process, and when.
    buckets_seen: listing::Registered,
    /// Last client timestamp handed out (microseconds), kept strictly increasing.
    clock: AtomicI64,
}

impl std::fmt::Debug for CassandraRunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraRunStore")
            .field("keyspace", &self.keyspace)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl CassandraRunStore {
    /// Connects, applies the schema when `config.migrate`, and prepares every statement.
    ///
    /// # Errors
    /// As [`connect`], [`migrate`]; `Unavailable` when the schema is missing.
    pub async fn open(config: &CassandraConfig) -> Result<Self, StoreError> {
        config
            .validate()
            .map_err(|e| StoreError::backend(ErrorKind::InvalidInput, e))?;
        let session = connect(config).await?;
        if config.migrate {
            migrate(&session, config).await?;
        }
        Self::with_session(Arc::new(session), config).await
    }

    /// Builds the store on an existing session (the schema must be in place).
    ///
    /// # Errors
    /// `Unavailable` when a statement cannot be prepared (no schema).
    pub async fn with_session(
        session: Arc<Session>,
        config: &CassandraConfig,
    ) -> Result<Self, StoreError> {
        let st = Statements::prepare(&session, &config.keyspace, config.serial_consistency).await?;
        let ls = listing::Statements::prepare(&session, &config.keyspace).await?;
        let bst = batch::Statements::prepare(&session, &config.keyspace).await?;
        Ok(Self {
            ls,
            bst,
            buckets_seen: listing::Registered::default(),
            session,
            keyspace: config.keyspace.clone(),
            st,
            retention: config.retention,
            registered: Mutex::new(HashMap::new()),
            clock: AtomicI64::new(0),
        })
    }

    /// The driver session (shared with benchmarks and tests).
    #[must_use]
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// A strictly increasing client timestamp in microseconds since the epoch.
    fn now_micros(&self) -> i64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let mut last = self.clock.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last + 1);
            match self
                .clock
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// TTL in seconds for `run`'s rows: 0 (none) while it is live; the retention left after it
    /// finished once it is terminal (at least an hour, or the retention if shorter).
    fn ttl_for(&self, run: &Run) -> i32 {
        if !run.stage.is_terminal() {
            return 0;
        }
        let finished = run.finished_at.unwrap_or_else(now_millis);
        let left_ms = i64::try_from(self.retention.as_millis())
            .unwrap_or(i64::MAX)
            .saturating_sub(now_millis().saturating_sub(finished));
        // A run imported with an old `finished_at` still lives a while (never a TTL of ~0).
        let floor = self.retention.as_secs().min(MIN_TTL_SECS);
        let left = u64::try_from(left_ms / 1000).unwrap_or(0).max(floor);
        i32::try_from(left).unwrap_or(i32::MAX)
    }

    fn registration_ttl(&self) -> i32 {
        i32::try_from(self.retention.as_secs())
            .unwrap_or(i32::MAX)
            .max(MIN_REGISTRATION_TTL)
    }

    async fn exec(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> Result<QueryResult, StoreError> {
        self.session
            .execute_unpaged(st, values)
            .await
            .map_err(|e| exec_err(what, &e))
    }

    /// Reads `(version, run)`; `serial` completes any in-flight transaction first.
    async fn load(&self, id: RunId, serial: bool) -> Result<Option<(i64, Run)>, StoreError> {
        let st = if serial {
            &self.st.get_serial
        } else {
            &self.st.get
        };
        let res = self.exec(st, (id.0,), "reading a run").await?;
        let rows = res
            .into_rows_result()
            .map_err(|e| internal(format!("cassandra reading a run: {e}")))?;
        let row = rows
            .maybe_first_row::<(Option<i64>, Option<Vec<u8>>)>()
            .map_err(|e| internal(format!("cassandra reading a run: {e}")))?;
        match row {
            Some((Some(version), Some(record))) => Ok(Some((version, decode(&record)?))),
            _ => Ok(None),
        }
    }

    /// Registers `owner` as possibly holding runs in `stage` (once an hour per process).
    async fn register(&self, owner: &str, stage: Stage) -> Result<(), StoreError> {
        let key = (owner.to_owned(), stage);
        let fresh = {
            let map = self
                .registered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.get(&key).is_some_and(|t| t.elapsed() < REGISTER_EVERY)
        };
        if fresh {
            return Ok(());
        }
        self.exec(
            &self.st.register_owner,
            (stage.as_str(), owner, self.registration_ttl()),
            "registering an owner",
        )
        .await?;
        self.registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, Instant::now());
        Ok(())
    }

    /// Writes the lookup rows `new` needs. `old` is the stored state it replaces (`None` on
    /// creation): unchanged rows of a live run are not rewritten; a terminal run's rows are
    /// rewritten with its TTL.
    async fn write_hints(
        &self,
        old: Option<&Run>,
        new: &Run,
        version: i64,
    ) -> Result<(), StoreError> {
        let ttl = self.ttl_for(new);
        let ts = self.now_micros();
        let id = new.id.0.as_bytes().to_vec();
        let expiring = ttl > 0;
        let mut writes = Vec::new();
        if let Some(owner) = &new.owner {
            let same = old.is_some_and(|o| o.owner == new.owner && o.stage == new.stage);
            if !same || expiring {
                let owner = owner.clone();
                let id = id.clone();
                writes.push(Box::pin(async move {
                    self.register(&owner, new.stage).await?;
                    let stage = new.stage.as_str().to_owned();
                    self.st
                        .hint_owner
                        .write(
                            (owner.clone(), stage.clone()),
                            (owner, stage, id, version, ttl, ts),
                        )
                        .await
                })
                    as futures::future::BoxFuture<'_, Result<(), StoreError>>);
            }
        }
        if let Some(tag) = &new.tag {
            let same = old.is_some_and(|o| o.tag == new.tag);
            if !same || expiring {
                let id = id.clone();
                writes.push(Box::pin(async move {
                    self.st
                        .hint_tag
                        .write(tag.clone(), (tag.clone(), id, ttl, ts))
                        .await
                }));
            }
        }
        if let Some(parent) = &new.parent
            && (old.is_none() || expiring)
        {
            let id = id.clone();
            writes.push(Box::pin(async move {
                let p = parent.request_id.0;
                self.st.hint_parent.write(p, (p, id, ttl, ts)).await
            }));
        }
        writes.extend(self.listing_writes(old, new, ttl, ts));
        if expiring && let Some(key) = &new.idempotency_key {
            // The key lives as long as its run: it expires with it.
            let record = encode(new)?;
            writes.push(Box::pin(async move {
                self.exec(
                    &self.st.expire_key,
                    (ttl, new.id.0, record, new.algorithm.as_str(), key.as_str()),
                    "expiring an idempotency key",
                )
                .await
                .map(drop)
            }));
        }
        try_join_all(writes).await.map(drop)
    }

    /// Deletes the lookup rows `old` had and `new` no longer has (best effort: a row left behind
    /// is skipped by readers). `before` is a client timestamp taken before the change.
    async fn drop_hints(&self, old: &Run, new: &Run, before: i64) {
        self.drop_listing_row(old, new, before).await;
        let id = old.id.0.as_bytes().to_vec();
        if let Some(owner) = &old.owner
            && (old.owner != new.owner || old.stage != new.stage)
            && let Err(e) = self
                .exec(
                    &self.st.unhint_owner,
                    (before, owner.as_str(), old.stage.as_str(), id.clone()),
                    "deleting an owner lookup row",
                )
                .await
        {
            tracing::debug!(run = %old.id, error = %e, "stale owner lookup row left for readers to skip");
        }
        if let Some(tag) = &old.tag
            && old.tag != new.tag
            && let Err(e) = self
                .exec(
                    &self.st.unhint_tag,
                    (before, tag.as_str(), id),
                    "deleting a tag lookup row",
                )
                .await
        {
            tracing::debug!(run = %old.id, error = %e, "stale tag lookup row left for readers to skip");
        }
    }

    /// Values of the `SET stage, owner, tag, version, record` part of the run updates.
    fn row_values(run: &Run, version: i64) -> Result<RowValues, StoreError> {
        Ok((
            run.stage.as_str().to_owned(),
            run.owner.clone(),
            run.tag.clone(),
            version,
            encode(run)?,
        ))
    }

    /// Compare-and-set of the whole row from `version` to `version + 1`. `Ok(false)`: lost.
    async fn cas(&self, new: &Run, version: i64) -> Result<bool, StoreError> {
        let (stage, owner, tag, v, record) = Self::row_values(new, version + 1)?;
        let res = self
            .session
            .execute_unpaged(
                &self.st.cas,
                (
                    self.ttl_for(new),
                    stage,
                    owner,
                    tag,
                    v,
                    record,
                    new.id.0,
                    version,
                ),
            )
            .await;
        match res {
            Ok(r) => applied(r, "compare-and-set"),
            Err(e) => {
                let err = exec_err("compare-and-set", &e);
                if err.kind() != ErrorKind::Timeout {
                    return Err(err);
                }
                // Unknown outcome: a SERIAL read finishes the round and tells whose write won.
                match self.load(new.id, true).await? {
                    Some((v, stored)) if v == version + 1 && stored == *new => Ok(true),
                    Some((v, _)) if v != version => Ok(false),
                    _ => Err(err),
                }
            }
        }
    }

    /// Read-modify-CAS loop shared by `transition` and `set_tag`: `change` checks the stored run
    /// and returns the new one.
    async fn update(
        &self,
        id: RunId,
        change: impl Fn(&Run) -> Result<Run, StoreError>,
    ) -> Result<Run, StoreError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((version, old)) = self.load(id, false).await? else {
                return Err(StoreError::NotFound(id));
            };
            let new = change(&old)?;
            self.write_hints(Some(&old), &new, version + 1).await?;
            let before = self.now_micros();
            if self.cas(&new, version).await? {
                self.drop_hints(&old, &new, before).await;
                return Ok(new);
            }
        }
        Err(StoreError::backend(
            ErrorKind::Unavailable,
            format!(
                "run {id}: gave up after {MAX_CAS_ATTEMPTS} contended compare-and-set attempts"
            ),
        ))
    }

    /// Writes a new run's lookup rows (unless `hints` is false: the caller wrote them), then its
    /// row; `if_absent` makes the row write a transaction (idempotency-keyed runs, which two
    /// submitters may write).
    async fn create(&self, run: &Run, if_absent: bool, hints: bool) -> Result<bool, StoreError> {
        if hints {
            self.write_hints(None, run, 1).await?;
        }
        let (stage, owner, tag, v, record) = Self::row_values(run, 1)?;
        let values = (self.ttl_for(run), stage, owner, tag, v, record, run.id.0);
        if if_absent {
            let r = self
                .exec(&self.st.create_if_absent, values, "creating a run")
                .await?;
            applied(r, "creating a run")
        } else {
            self.exec(&self.st.create, values, "creating a run").await?;
            Ok(true)
        }
    }

    async fn exists(&self, id: RunId) -> Result<bool, StoreError> {
        let r = self
            .exec(&self.st.exists, (id.0,), "checking a run id")
            .await?;
        Ok(!rows(r, "checking a run id")?.is_empty())
    }

    fn duplicate(id: RunId) -> StoreError {
        StoreError::backend(ErrorKind::Conflict, format!("run {id} already exists"))
    }

    /// Insert of a run carrying an idempotency key (see the module docs).
    /// `check_id`: refuse an id already stored (off for minted ids).
    async fn insert_keyed(
        &self,
        run: Run,
        key: &str,
        check_id: bool,
    ) -> Result<Inserted, StoreError> {
        let record = encode(&run)?;
        let claim = self
            .exec(
                &self.st.claim_key,
                (run.algorithm.as_str(), key, run.id.0, record),
                "claiming an idempotency key",
            )
            .await?;
        if applied(claim, "claiming an idempotency key")? {
            if check_id && self.exists(run.id).await? {
                return Err(Self::duplicate(run.id));
            }
            self.create(&run, true, true).await?;
            return Ok(Inserted::Created);
        }
        // Taken: return its run, completing its insert if the first submitter died half-way.
        let r = self
            .exec(
                &self.st.get_key,
                (run.algorithm.as_str(), key),
                "reading an idempotency key",
            )
            .await?;
        let rows = r
            .into_rows_result()
            .map_err(|e| internal(format!("cassandra reading an idempotency key: {e}")))?;
        let Some((Some(id), Some(record))) = rows
            .maybe_first_row::<(Option<Uuid>, Option<Vec<u8>>)>()
            .map_err(|e| internal(format!("cassandra reading an idempotency key: {e}")))?
        else {
            return Err(StoreError::backend(
                ErrorKind::Unavailable,
                format!("idempotency key '{key}' is claimed but not yet readable; retry"),
            ));
        };
        let id = RunId(id);
        if let Some((_, existing)) = self.load(id, false).await? {
            return Ok(Inserted::Existing(existing));
        }
        let first = decode(&record)?;
        self.create(&first, true, true).await?;
        match self.load(id, true).await? {
            Some((_, existing)) => Ok(Inserted::Existing(existing)),
            None => Err(internal(format!(
                "run {id} of idempotency key '{key}' vanished"
            ))),
        }
    }

    /// One page of ids from a lookup table, after `after` (exclusive).
    async fn page(
        &self,
        lookup: &Lookup,
        after: &[u8],
        n: i32,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let r = match lookup {
            Lookup::OwnerStage(o, s) => {
                self.exec(
                    &self.st.page_owner,
                    (o.as_str(), s.as_str(), after, n),
                    "owner lookup",
                )
                .await?
            }
            Lookup::Tag(t) => {
                self.exec(&self.st.page_tag, (t.as_str(), after, n), "tag lookup")
                    .await?
            }
            Lookup::Parent(p) => {
                self.exec(&self.st.page_parent, (p.0, after, n), "parent lookup")
                    .await?
            }
        };
        let rows = r
            .into_rows_result()
            .map_err(|e| internal(format!("cassandra lookup: {e}")))?;
        let out = rows
            .rows::<(Vec<u8>,)>()
            .map_err(|e| internal(format!("cassandra lookup: {e}")))?
            .map(|r| r.map(|(id,)| id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| internal(format!("cassandra lookup: {e}")))?;
        Ok(out)
    }

    /// Runs under `lookup`, oldest first, at most `limit`, each verified against its row.
    async fn scan(&self, lookup: Lookup, limit: usize) -> Result<Vec<Run>, StoreError> {
        self.scan_after(lookup, Vec::new(), limit).await
    }

    /// As [`Self::scan`], from the lookup rows whose id sorts after `after` (raw id bytes).
    async fn scan_after(
        &self,
        lookup: Lookup,
        after: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<Run>, StoreError> {
        let mut out = Vec::new();
        let mut after = after;
        while out.len() < limit {
            let want = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
            let n = want.clamp(16, PAGE);
            let ids = self.page(&lookup, &after, n).await?;
            let Some(last) = ids.last() else { break };
            after.clone_from(last);
            let full = ids.len() == usize::try_from(n).unwrap_or(usize::MAX);
            for chunk in ids.chunks(VERIFY_CONCURRENCY) {
                let loads = chunk.iter().map(|raw| async move {
                    let id = Uuid::from_slice(raw)
                        .map_err(|e| internal(format!("corrupt lookup row id: {e}")))?;
                    self.load(RunId(id), false).await
                });
                for loaded in join_all(loads).await {
                    if let Some((_, run)) = loaded?
                        && lookup.matches(&run)
                        && out.len() < limit
                    {
                        out.push(run);
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl RunStore for CassandraRunStore {
    async fn insert(&self, run: Run) -> Result<Inserted, StoreError> {
        if let Some(key) = run.idempotency_key.clone() {
            return self.insert_keyed(run, &key, true).await;
        }
        // The id check and the lookup rows are independent: one round trip for both.
        let (exists, hints) =
            futures::future::join(self.exists(run.id), self.write_hints(None, &run, 1)).await;
        if exists? {
            return Err(Self::duplicate(run.id));
        }
        hints?;
        self.create(&run, false, false).await?;
        Ok(Inserted::Created)
    }

    async fn insert_minted(&self, run: Run) -> Result<Inserted, StoreError> {
        // No existence read: the id is fresh. The lookup rows (grouped with other writers' in
        // single-partition batches), then the run's row: one write of its own per accept.
        if let Some(key) = run.idempotency_key.clone() {
            return self.insert_keyed(run, &key, false).await;
        }
        self.create(&run, false, true).await?;
        Ok(Inserted::Created)
    }

    async fn insert_batch(&self, batch: RunBatch) -> Result<BatchInserted, StoreError> {
        self.insert_batch_cql(batch).await
    }

    async fn resume_batches(&self, older_than: Millis, limit: usize) -> Result<usize, StoreError> {
        self.resume(older_than, limit).await
    }

    async fn get(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        Ok(self.load(id, false).await?.map(|(_, r)| r))
    }

    async fn transition(
        &self,
        id: RunId,
        from: Stage,
        to: Stage,
        patch: RunPatch,
    ) -> Result<Run, StoreError> {
        let by = super::changed_by(&patch);
        let run = self
            .update(id, |stored| {
                super::check_transition(id, stored.stage, from, to)?;
                let mut run = stored.clone();
                patch.apply(&mut run, to, now_millis());
                Ok(run)
            })
            .await?;
        super::stage_changed(id, from, to, by);
        Ok(run)
    }

    async fn set_tag(&self, id: RunId, tag: Option<String>) -> Result<Run, StoreError> {
        self.update(id, |stored| {
            let mut run = stored.clone();
            run.tag.clone_from(&tag);
            run.last_modified = now_millis();
            Ok(run)
        })
        .await
    }

    async fn by_tag(&self, tag: &str, limit: usize) -> Result<Vec<Run>, StoreError> {
        self.scan(Lookup::Tag(tag.to_owned()), limit).await
    }

    async fn by_owner_stage(
        &self,
        owner: &str,
        stage: Stage,
        limit: usize,
    ) -> Result<Vec<Run>, StoreError> {
        self.scan(Lookup::OwnerStage(owner.to_owned(), stage), limit)
            .await
    }

    async fn by_owner_stage_after(
        &self,
        owner: &str,
        stage: Stage,
        after: Option<RunId>,
        limit: usize,
    ) -> Result<Vec<Run>, StoreError> {
        let from = after.map(|a| a.0.as_bytes().to_vec()).unwrap_or_default();
        self.scan_after(Lookup::OwnerStage(owner.to_owned(), stage), from, limit)
            .await
    }

    async fn by_parent(&self, parent: RunId, limit: usize) -> Result<Vec<Run>, StoreError> {
        self.scan(Lookup::Parent(parent), limit).await
    }

    async fn list(
        &self,
        filter: &RunFilter,
        after: Option<Position>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        self.list_page(filter, after, limit).await
    }

    async fn owners_in_stage(&self, stage: Stage) -> Result<Vec<String>, StoreError> {
        let r = self
            .exec(&self.st.owners, (stage.as_str(),), "listing owners")
            .await?;
        let candidates: Vec<String> = rows(r, "listing owners")?
            .into_iter()
            .filter_map(|row| match row.columns.into_iter().next() {
                Some(Some(CqlValue::Text(o))) => Some(o),
                _ => None,
            })
            .collect();
        let checks = candidates.into_iter().map(|owner| async move {
            let live = self
                .scan(Lookup::OwnerStage(owner.clone(), stage), 1)
                .await?;
            Ok::<_, StoreError>((!live.is_empty()).then_some(owner))
        });
        let mut owners: Vec<String> = try_join_all(checks).await?.into_iter().flatten().collect();
        owners.sort();
        Ok(owners)
    }

    async fn heartbeat(&self, owner: &str, now: Millis, ttl_ms: i64) -> Result<Lease, StoreError> {
        let expires_at = now.saturating_add(ttl_ms);
        self.exec(
            &self.st.heartbeat,
            (owner, expires_at, self.registration_ttl()),
            "heartbeat",
        )
        .await?;
        Ok(Lease {
            owner: owner.to_owned(),
            expires_at,
        })
    }

    async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let r = self.exec(&self.st.leases, (), "listing leases").await?;
        let rows = r
            .into_rows_result()
            .map_err(|e| internal(format!("cassandra listing leases: {e}")))?;
        rows.rows::<(String, i64)>()
            .map_err(|e| internal(format!("cassandra listing leases: {e}")))?
            .map(|r| {
                r.map(|(owner, expires_at)| Lease { owner, expires_at })
                    .map_err(|e| internal(format!("cassandra listing leases: {e}")))
            })
            .collect()
    }

    async fn release_lease(&self, owner: &str) -> Result<(), StoreError> {
        self.exec(&self.st.release, (owner,), "releasing a lease")
            .await
            .map(drop)
    }

    async fn lead(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        ttl_ms: i64,
    ) -> Result<Lease, StoreError> {
        let expires_at = now.saturating_add(ttl_ms);
        let mine = || Lease {
            owner: holder.to_owned(),
            expires_at,
        };
        // Free: take it. Otherwise read it (serially) and replace it by compare-and-set on the
        // values read when it is ours or lapsed; a lost race reads again.
        for _ in 0..4 {
            let r = self
                .exec(
                    &self.st.lead_insert,
                    (name, holder, expires_at),
                    "taking a leadership",
                )
                .await?;
            if applied(r, "taking a leadership")? {
                return Ok(mine());
            }
            let r = self
                .exec(&self.st.lead_get, (name,), "reading a leadership")
                .await?;
            let cur = r
                .into_rows_result()
                .map_err(|e| internal(format!("cassandra reading a leadership: {e}")))?
                .maybe_first_row::<(Option<String>, Option<i64>)>()
                .map_err(|e| internal(format!("cassandra reading a leadership: {e}")))?;
            let Some((Some(cur_holder), Some(cur_expiry))) = cur else {
                continue; // resigned meanwhile: take it
            };
            if cur_holder != holder && cur_expiry > now {
                return Ok(Lease {
                    owner: cur_holder,
                    expires_at: cur_expiry,
                });
            }
            let r = self
                .exec(
                    &self.st.lead_cas,
                    (holder, expires_at, name, cur_holder.as_str(), cur_expiry),
                    "renewing a leadership",
                )
                .await?;
            if applied(r, "renewing a leadership")? {
                return Ok(mine());
            }
        }
        Err(StoreError::backend(
            ErrorKind::Unavailable,
            format!("leadership '{name}' kept changing under contention; try again"),
        ))
    }

    async fn resign(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.exec(&self.st.resign, (name, holder), "resigning a leadership")
            .await
            .map(drop)
    }

    async fn expired(&self, _before: Millis, _limit: usize) -> Result<Vec<Run>, StoreError> {
        // Finished rows carry a TTL of the remaining retention: they expire by themselves.
        Ok(Vec::new())
    }

    async fn purge(&self, id: RunId) -> Result<bool, StoreError> {
        let r = self.exec(&self.st.purge, (id.0,), "purging a run").await?;
        applied(r, "purging a run")
    }

    async fn sweep_lookups(&self, limit: usize) -> Result<usize, StoreError> {
        // Owner+stage rows of the non-terminal stages (what recovery scans): a row whose run
        // exists under another owner or stage is stale. It is deleted with a client timestamp
        // taken before the run was read, so a later move back (a newer upsert) survives. A row
        // whose run cannot be read, or does not exist yet (hints are written before the run),
        // is left alone.
        let mut examined = 0;
        let mut removed = 0;
        for stage in [Stage::Buffered, Stage::Running] {
            let r = self
                .exec(
                    &self.st.owner_candidates,
                    (stage.as_str(),),
                    "listing owners",
                )
                .await?;
            let owners: Vec<String> = rows(r, "listing owners")?
                .into_iter()
                .filter_map(|row| match row.columns.into_iter().next() {
                    Some(Some(CqlValue::Text(o))) => Some(o),
                    _ => None,
                })
                .collect();
            for owner in owners {
                let lookup = Lookup::OwnerStage(owner.clone(), stage);
                let mut after: Vec<u8> = Vec::new();
                loop {
                    if examined >= limit {
                        return Ok(removed);
                    }
                    let ids = self.page(&lookup, &after, PAGE).await?;
                    let Some(last) = ids.last() else { break };
                    after.clone_from(last);
                    let full = ids.len() == usize::try_from(PAGE).unwrap_or(usize::MAX);
                    for raw in ids {
                        examined += 1;
                        let before = self.now_micros();
                        let id = Uuid::from_slice(&raw)
                            .map_err(|e| internal(format!("corrupt lookup row id: {e}")))?;
                        let Some((_, run)) = self.load(RunId(id), false).await? else {
                            continue;
                        };
                        if lookup.matches(&run) {
                            continue;
                        }
                        self.exec(
                            &self.st.unhint_owner,
                            (before, owner.as_str(), stage.as_str(), raw),
                            "deleting a stale owner lookup row",
                        )
                        .await?;
                        removed += 1;
                    }
                    if !full {
                        break;
                    }
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use scylla::errors::{BrokenConnectionErrorKind, WriteType};

    use super::*;

    fn db(e: DbError) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(e, "msg".into()))
    }

    #[test]
    fn driver_errors_map_to_kinds() {
        use scylla::statement::Consistency;
        let cases = [
            (
                ExecutionError::RequestTimeout(Duration::from_secs(1)),
                ErrorKind::Timeout,
            ),
            (ExecutionError::EmptyPlan, ErrorKind::Unavailable),
            (
                db(DbError::Unavailable {
                    consistency: Consistency::LocalQuorum,
                    required: 2,
                    alive: 1,
                }),
                ErrorKind::Unavailable,
            ),
            (db(DbError::Overloaded), ErrorKind::ResourceExhausted),
            (db(DbError::IsBootstrapping), ErrorKind::Unavailable),
            (
                db(DbError::WriteTimeout {
                    consistency: Consistency::LocalQuorum,
                    received: 1,
                    required: 2,
                    write_type: WriteType::Cas,
                }),
                ErrorKind::Timeout,
            ),
            (
                db(DbError::ReadTimeout {
                    consistency: Consistency::LocalQuorum,
                    received: 1,
                    required: 2,
                    data_present: false,
                }),
                ErrorKind::Timeout,
            ),
            (db(DbError::AuthenticationError), ErrorKind::Unauthorized),
            (db(DbError::Unauthorized), ErrorKind::Forbidden),
            (db(DbError::SyntaxError), ErrorKind::Internal),
            (db(DbError::Invalid), ErrorKind::Internal),
            (
                ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(
                    BrokenConnectionErrorKind::ChannelError.into(),
                )),
                ErrorKind::Unavailable,
            ),
        ];
        for (e, kind) in cases {
            assert_eq!(classify(&e), kind, "{e}");
            let mapped = exec_err("doing x", &e);
            assert_eq!(mapped.kind(), kind);
            assert!(mapped.to_string().contains("cassandra doing x"), "{mapped}");
        }
    }
}
