//! Group commit of lookup rows: writers of rows in the same partition share one unlogged
//! single-partition batch.
//!
//! An accept writes a run's lookup rows (its owner+stage row and its listing rows) before the
//! run's own row. Those rows land in few partitions (one per owner and stage, a handful per
//! listing dimension and hour), so under load many concurrent accepts write into the same ones.
//! A [`Coalescer`] queues each row under its partition key; the first writer of an idle
//! partition starts a flush, and every row queued while a flush is in flight goes out with the
//! next one, as one unlogged batch whose statements all share the partition key: Cassandra
//! applies it as a single mutation (one commit-log entry, one request), with none of the
//! coordinator fan-out or batch-log cost of multi-partition or logged batches. At low load a
//! flush holds one row and costs what a plain write does; nothing waits on a timer.
//!
//! Each writer still waits for *its* row to be acknowledged, so the store's ordering (lookup rows
//! durable before the run row) is unchanged. A batch that fails fails every writer in it, with
//! the driver's error; writers retry as they would a plain write. Batches are bounded by
//! [`MAX_ROWS`], well under Cassandra's default `batch_size_warn_threshold` (5 KiB) for these
//! small rows.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::oneshot;

use super::exec_err;
use crate::StoreError;
use nexus_model::error::ErrorKind;

/// Most rows in one batch (lookup rows are ~50–120 bytes: a batch stays under 5 KiB).
pub(crate) const MAX_ROWS: usize = 32;

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// The rows queued for one partition while a flush of it is in flight.
struct Queue<V> {
    rows: Vec<(V, Waiter)>,
}

/// Rows of one table (one prepared statement) grouped by partition `K`. See the module docs.
pub(crate) struct Coalescer<K, V> {
    session: Arc<Session>,
    statement: PreparedStatement,
    what: &'static str,
    /// A key is present while a flush of its partition is in flight.
    busy: Mutex<HashMap<K, Queue<V>>>,
}

impl<K, V> std::fmt::Debug for Coalescer<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: SerializeRow + Send + Sync + 'static,
{
    /// Rows written with `statement`, whose partition key `K` the caller derives from each row.
    pub(crate) fn new(
        session: Arc<Session>,
        statement: PreparedStatement,
        what: &'static str,
    ) -> Arc<Self> {
        Arc::new(Self {
            session,
            statement,
            what,
            busy: Mutex::new(HashMap::new()),
        })
    }

    /// Writes `row` (in partition `key`) and waits until it is acknowledged.
    ///
    /// # Errors
    /// The driver's error for the batch that carried the row.
    pub(crate) async fn write(self: &Arc<Self>, key: K, row: V) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
            match busy.entry(key.clone()) {
                Entry::Occupied(mut q) => {
                    q.get_mut().rows.push((row, tx));
                    None
                }
                Entry::Vacant(v) => {
                    v.insert(Queue { rows: Vec::new() });
                    Some((row, tx))
                }
            }
        };
        if let Some(first) = start {
            // The flush runs in its own task: it serves the rows queued behind this one even if
            // this writer's future is dropped.
            tokio::spawn(Arc::clone(self).flush(key, vec![first]));
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::backend(
                ErrorKind::Unavailable,
                format!("cassandra {}: the batch writer stopped", self.what),
            ))
        })
    }

    /// Sends `rows`, then whatever queued for `key` meanwhile, until the queue is empty.
    async fn flush(self: Arc<Self>, key: K, mut rows: Vec<(V, Waiter)>) {
        loop {
            let sends = rows
                .chunks(MAX_ROWS)
                .map(|chunk| self.send(chunk))
                .collect::<Vec<_>>();
            let results = futures::future::join_all(sends).await;
            for (i, (_, waiter)) in rows.into_iter().enumerate() {
                // A waiter that went away (its caller dropped) needs no answer.
                let _ = waiter.send(results[i / MAX_ROWS].clone());
            }
            rows = {
                let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(q) = busy.get_mut(&key) else { return };
                if q.rows.is_empty() {
                    busy.remove(&key);
                    return;
                }
                std::mem::take(&mut q.rows)
            };
        }
    }

    /// One unlogged batch of `rows` (all in one partition).
    async fn send(&self, rows: &[(V, Waiter)]) -> Result<(), StoreError> {
        let values: Vec<&V> = rows.iter().map(|(v, _)| v).collect();
        if let [one] = values.as_slice() {
            return self
                .session
                .execute_unpaged(&self.statement, *one)
                .await
                .map(drop)
                .map_err(|e| exec_err(self.what, &e));
        }
        let mut batch = Batch::new_with_statements(
            BatchType::Unlogged,
            vec![BatchStatement::PreparedStatement(self.statement.clone()); values.len()],
        );
        batch.set_is_idempotent(true);
        self.session
            .batch(&batch, values)
            .await
            .map(drop)
            .map_err(|e| exec_err(self.what, &e))
    }
}
