//! Batch submit on Cassandra ([`RunStore::insert_batch`](crate::RunStore::insert_batch)): every
//! run of a batch or none, across crashes, without a logged batch.
//!
//! # Why not a logged batch
//! A logged batch of a thousand runs (each run row plus its lookup rows) spans thousands of
//! partitions and megabytes: far past `batch_size_fail_threshold` (50 KiB by default), so it
//! would be refused; split into smaller batches it is no longer all-or-none.
//!
//! # Write the batch, decide it, then expand it
//! 1. **Rows.** The batch's records go to `run_batches`, one partition per batch (its id a fresh
//!    UUIDv7), with a static header (algorithm, key, size). Nothing is visible yet: no run row,
//!    no lookup row. A crash here leaves only rows that expire ([`BATCH_TTL`]).
//! 2. **Decide.** The batch is registered in `pending_batches` (one partition, a row per
//!    undecided-or-unexpanded batch). A batch with a key is decided by claiming
//!    `(algorithm, "<key> #batch")` in `idempotency_keys` with `IF NOT EXISTS`; one without a
//!    key is decided by its pending row. Exactly one batch wins a key; the loser removes its
//!    pending row and returns the winner's runs.
//! 3. **Expand.** Each run is created with `IF version = null` (its lookup rows first, as every
//!    creation), so expanding twice, or by two processes at once, writes each run exactly once
//!    and never overwrites a run that has moved on. Then the pending row is removed and the
//!    caller is answered.
//!
//! A crash (or a store error) during step 3 leaves a decided batch partly expanded: its pending
//! row remains, and [`resume`](CassandraRunStore::resume) (the supervisor's recovery pass calls
//! it for batches older than a grace period) finishes the expansion; a repeated submit with the
//! same key finishes it too, at once. The runs keep the accepting scheduler as owner, so the
//! usual paths queue them: that scheduler's stranded-run pass if it lives, orphan recovery if
//! it died. So a batch is, for good, either never visible (crash before step 2) or visible
//! whole once expansion is finished.

use futures::StreamExt;
use futures::future::join_all;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::{CassandraRunStore, applied, decode, encode, internal};
use crate::listing::submitted_at;
use crate::{BatchInserted, RunBatch, StoreError};
use nexus_model::error::ErrorKind;
use nexus_model::run::{Millis, Run, RunId, now_millis};

/// How long the records of a batch are kept in `run_batches` (seconds): long past any expansion.
pub(crate) const BATCH_TTL: i32 = 7 * 24 * 3600;
/// A keyed batch with no claim is abandoned (its submitter died before deciding) after this long.
const ABANDONED_MS: Millis = 10 * 60 * 1000;
/// Records written, and runs created, at once.
const CONCURRENCY: usize = 64;
/// Records read per page.
const PAGE: i32 = 256;
/// The one partition of `pending_batches`.
const PENDING: &str = "pending";

/// The claim of a batch key in `idempotency_keys`.
fn claim_key(key: &str) -> String {
    format!("{key} #batch")
}

/// The batch statements.
#[derive(Debug)]
pub(crate) struct Statements {
    head: PreparedStatement,
    row: PreparedStatement,
    read_head: PreparedStatement,
    read_rows: PreparedStatement,
    pending_add: PreparedStatement,
    pending_del: PreparedStatement,
    pending_list: PreparedStatement,
}

impl Statements {
    pub(crate) async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let p = |cql: String| async move {
            let mut st = session.prepare(cql.as_str()).await.map_err(|e| {
                StoreError::backend(
                    ErrorKind::Unavailable,
                    format!("cassandra: cannot prepare `{cql}`: {e} (is the schema applied? run with migrate=true or `nexus store schema`)"),
                )
            })?;
            st.set_is_idempotent(true);
            Ok::<_, StoreError>(st)
        };
        Ok(Self {
            head: p(format!("INSERT INTO {ks}.run_batches (batch_id, algorithm, idem_key, size) VALUES (?, ?, ?, ?) USING TTL ?")).await?,
            row: p(format!("INSERT INTO {ks}.run_batches (batch_id, idx, record) VALUES (?, ?, ?) USING TTL ?")).await?,
            read_head: p(format!("SELECT algorithm, idem_key, size FROM {ks}.run_batches WHERE batch_id = ? LIMIT 1")).await?,
            read_rows: p(format!("SELECT idx, record FROM {ks}.run_batches WHERE batch_id = ? AND idx >= ? LIMIT ?")).await?,
            pending_add: p(format!("INSERT INTO {ks}.pending_batches (scope, batch_id) VALUES ('{PENDING}', ?) USING TTL ?")).await?,
            pending_del: p(format!("DELETE FROM {ks}.pending_batches WHERE scope = '{PENDING}' AND batch_id = ?")).await?,
            pending_list: p(format!("SELECT batch_id FROM {ks}.pending_batches WHERE scope = '{PENDING}' LIMIT ?")).await?,
        })
    }
}

/// A batch's header.
struct Head {
    algorithm: String,
    key: Option<String>,
    size: usize,
}

impl CassandraRunStore {
    /// See the module docs.
    pub(crate) async fn insert_batch_cql(
        &self,
        batch: RunBatch,
    ) -> Result<BatchInserted, StoreError> {
        self.write_batch(batch, true).await
    }

    /// Writes and decides `batch` like [`RunStore::insert_batch`](crate::RunStore::insert_batch)
    /// but stops before expanding it, as a submitter that dies at that point would: for tests
    /// of [`RunStore::resume_batches`](crate::RunStore::resume_batches).
    ///
    /// # Errors
    /// As `insert_batch`.
    #[doc(hidden)]
    pub async fn insert_batch_without_expanding(
        &self,
        batch: RunBatch,
    ) -> Result<BatchInserted, StoreError> {
        self.write_batch(batch, false).await
    }

    async fn write_batch(
        &self,
        batch: RunBatch,
        expand: bool,
    ) -> Result<BatchInserted, StoreError> {
        batch.check()?;
        if let Some(key) = &batch.key
            && let Some(existing) = self.claimed(&batch.algorithm, key).await?
        {
            return Ok(BatchInserted::Existing(self.expand(existing).await?));
        }
        // An id already present is refused before anything is written (ids are UUIDv7 minted
        // by the scheduler, so this only catches bugs, as for a single insert).
        let mut present = futures::stream::iter(0..batch.runs.len())
            .map(|i| {
                let id = batch.runs[i].id;
                async move { self.exists(id).await.map(|e| (id, e)) }
            })
            .buffer_unordered(CONCURRENCY);
        while let Some(r) = present.next().await {
            if let (id, true) = r? {
                return Err(Self::duplicate(id));
            }
        }
        drop(present);
        let bid = Uuid::now_v7();
        let size = i32::try_from(batch.runs.len()).unwrap_or(i32::MAX);
        // 1. Rows (the header last is not needed: nothing reads a batch before step 2).
        self.exec(
            &self.bst.head,
            (
                bid,
                batch.algorithm.as_str(),
                batch.key.as_deref(),
                size,
                BATCH_TTL,
            ),
            "writing a batch header",
        )
        .await?;
        let records = batch
            .runs
            .iter()
            .map(encode)
            .collect::<Result<Vec<_>, _>>()?;
        let mut writes = futures::stream::iter(records.into_iter().enumerate())
            .map(|(i, record)| async move {
                let idx = i32::try_from(i).unwrap_or(i32::MAX);
                self.exec(
                    &self.bst.row,
                    (bid, idx, record, BATCH_TTL),
                    "writing a batch record",
                )
                .await
            })
            .buffer_unordered(CONCURRENCY);
        while let Some(r) = writes.next().await {
            r?;
        }
        // 2. Decide.
        self.exec(
            &self.bst.pending_add,
            (bid, BATCH_TTL),
            "registering a pending batch",
        )
        .await?;
        if let Some(key) = &batch.key {
            let claim = self
                .exec(
                    &self.st.claim_key,
                    (
                        batch.algorithm.as_str(),
                        claim_key(key).as_str(),
                        bid,
                        Vec::<u8>::new(),
                    ),
                    "claiming a batch key",
                )
                .await?;
            if !applied(claim, "claiming a batch key")? {
                // Another batch won the key: ours is never decided.
                self.unpend(bid).await;
                let Some(winner) = self.claimed(&batch.algorithm, key).await? else {
                    return Err(StoreError::backend(
                        ErrorKind::Unavailable,
                        format!("batch key '{key}' is claimed but not yet readable; retry"),
                    ));
                };
                return Ok(BatchInserted::Existing(self.expand(winner).await?));
            }
        }
        if !expand {
            return Ok(BatchInserted::Created);
        }
        // 3. Expand.
        self.create_all(&batch.runs).await?;
        self.unpend(bid).await;
        Ok(BatchInserted::Created)
    }

    /// The batch that claimed `key` for `algorithm`, if any.
    async fn claimed(&self, algorithm: &str, key: &str) -> Result<Option<Uuid>, StoreError> {
        let r = self
            .exec(
                &self.st.get_key,
                (algorithm, claim_key(key).as_str()),
                "reading a batch key",
            )
            .await?;
        let rows = r
            .into_rows_result()
            .map_err(|e| internal(format!("cassandra reading a batch key: {e}")))?;
        Ok(rows
            .maybe_first_row::<(Option<Uuid>, Option<Vec<u8>>)>()
            .map_err(|e| internal(format!("cassandra reading a batch key: {e}")))?
            .and_then(|(id, _)| id))
    }

    /// Creates every run that does not exist yet (`IF version = null`: never twice, never over
    /// a run that moved on).
    async fn create_all(&self, runs: &[Run]) -> Result<(), StoreError> {
        // By index: a closure over `&Run` would need a higher-ranked lifetime the Send bound
        // of the trait's futures cannot express.
        let mut creates = futures::stream::iter(0..runs.len())
            .map(|i| self.create(&runs[i], true, true))
            .buffer_unordered(CONCURRENCY);
        while let Some(r) = creates.next().await {
            r?;
        }
        Ok(())
    }

    /// Reads a batch's header, `None` when its rows are gone (expired or never written).
    async fn head(&self, bid: Uuid) -> Result<Option<Head>, StoreError> {
        let r = self
            .exec(&self.bst.read_head, (bid,), "reading a batch header")
            .await?;
        let rows = r
            .into_rows_result()
            .map_err(|e| internal(format!("cassandra reading a batch header: {e}")))?;
        let head = rows
            .maybe_first_row::<(Option<String>, Option<String>, Option<i32>)>()
            .map_err(|e| internal(format!("cassandra reading a batch header: {e}")))?;
        Ok(match head {
            Some((Some(algorithm), key, Some(size))) => Some(Head {
                algorithm,
                key,
                size: usize::try_from(size).unwrap_or(0),
            }),
            _ => None,
        })
    }

    /// Reads a batch's records, in order.
    async fn records(&self, bid: Uuid, head: &Head) -> Result<Vec<Run>, StoreError> {
        let mut out = Vec::with_capacity(head.size);
        let mut next = 0i32;
        loop {
            let r = self
                .exec(&self.bst.read_rows, (bid, next, PAGE), "reading a batch")
                .await?;
            let rows = r
                .into_rows_result()
                .map_err(|e| internal(format!("cassandra reading a batch: {e}")))?;
            let page = rows
                .rows::<(i32, Option<Vec<u8>>)>()
                .map_err(|e| internal(format!("cassandra reading a batch: {e}")))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| internal(format!("cassandra reading a batch: {e}")))?;
            let n = page.len();
            for (idx, record) in page {
                let Some(record) = record else { continue };
                out.push(decode(&record)?);
                next = idx + 1;
            }
            if n < usize::try_from(PAGE).unwrap_or(usize::MAX) {
                break;
            }
        }
        if out.len() != head.size {
            return Err(internal(format!(
                "batch {bid}: {} of its {} records are readable",
                out.len(),
                head.size
            )));
        }
        Ok(out)
    }

    /// Finishes the expansion of a decided batch and returns its runs as stored, in order.
    async fn expand(&self, bid: Uuid) -> Result<Vec<Run>, StoreError> {
        let head = self.head(bid).await?.ok_or_else(|| {
            StoreError::backend(
                ErrorKind::Unavailable,
                format!("batch {bid} is decided but its records are not readable yet; retry"),
            )
        })?;
        let runs = self.records(bid, &head).await?;
        self.create_all(&runs).await?;
        self.unpend(bid).await;
        let loads = join_all(runs.iter().map(|r| self.load(r.id, false))).await;
        let mut out = Vec::with_capacity(runs.len());
        for (run, loaded) in runs.iter().zip(loads) {
            match loaded? {
                Some((_, stored)) => out.push(stored),
                None => return Err(internal(format!("run {} of batch {bid} vanished", run.id))),
            }
        }
        Ok(out)
    }

    /// Removes a batch's pending row (best effort: a row left behind is found by
    /// [`CassandraRunStore::resume`], whose expansion changes nothing, then removed).
    async fn unpend(&self, bid: Uuid) {
        if let Err(e) = self
            .exec(&self.bst.pending_del, (bid,), "removing a pending batch")
            .await
        {
            tracing::debug!(batch = %bid, error = %e, "pending batch row left for the next recovery pass");
        }
    }

    /// Finishes the batches decided before `older_than` whose expansion did not finish; drops
    /// the pending rows of batches never decided. Returns how many batches were finished.
    pub(crate) async fn resume(
        &self,
        older_than: Millis,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let n = i32::try_from(limit).unwrap_or(i32::MAX).max(1);
        let r = self
            .exec(&self.bst.pending_list, (n,), "listing pending batches")
            .await?;
        let rows = r
            .into_rows_result()
            .map_err(|e| internal(format!("cassandra listing pending batches: {e}")))?;
        let pending = rows
            .rows::<(Uuid,)>()
            .map_err(|e| internal(format!("cassandra listing pending batches: {e}")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| internal(format!("cassandra listing pending batches: {e}")))?;
        let now = now_millis();
        let mut finished = 0;
        for (bid,) in pending {
            let born = submitted_at(RunId(bid));
            if born >= older_than {
                continue;
            }
            let Some(head) = self.head(bid).await? else {
                self.unpend(bid).await;
                continue;
            };
            if let Some(key) = &head.key {
                match self.claimed(&head.algorithm, key).await? {
                    Some(winner) if winner == bid => {}
                    // Another batch holds the key: this one was never decided.
                    Some(_) => {
                        self.unpend(bid).await;
                        continue;
                    }
                    // Not decided yet; abandoned once old enough.
                    None => {
                        if now - born > ABANDONED_MS {
                            self.unpend(bid).await;
                        }
                        continue;
                    }
                }
            }
            self.expand(bid).await?;
            tracing::info!(batch = %bid, runs = head.size, "finished the expansion of a batch left half-way");
            finished += 1;
        }
        Ok(finished)
    }
}
