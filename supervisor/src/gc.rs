//! Garbage collection: finished runs past their retention, with their payload, result and logs,
//! and lookup rows left stale by a crashed transition.
//!
//! Safety rules: only runs in a terminal stage are ever deleted (the store's `purge` refuses any
//! other); a run's objects are deleted first and the record only when all of them are gone (a
//! failure leaves the record, so the next pass retries and nothing is orphaned); every store or
//! object-store error ends the pass without deciding anything from it — an unreachable store is
//! never taken as "not found". Finished Kubernetes Jobs are collected by the receivers' Kubernetes
//! executors (`ttlSecondsAfterFinished`, with a backstop sweep).
//!
//! Where records expire by themselves (Cassandra: a TTL of the remaining retention) and objects
//! too (S3: the bucket's lifecycle rule, `nexus payloads lifecycle`), the pass only sweeps the
//! lookup rows.

use std::sync::Arc;
use std::time::Duration;

use nexus_model::run::{PayloadLocation, Run, now_millis};
use nexus_payload::{Keys, PayloadStore};
use nexus_store::{RunStore, StoreError};
use tokio_util::sync::CancellationToken;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    /// Finished runs deleted with their objects.
    pub purged: usize,
    /// Runs kept because one of their objects could not be deleted (retried next pass).
    pub kept: usize,
    /// Stale lookup rows removed.
    pub stale_lookups: usize,
}

/// The garbage collector.
#[derive(Debug)]
pub struct Collector {
    /// Run store.
    pub store: Arc<dyn RunStore>,
    /// Payload store whose objects die with their runs (`None` where a bucket lifecycle rule
    /// expires them).
    pub payloads: Option<Arc<dyn PayloadStore>>,
    /// How long a finished run is kept.
    pub retention: Duration,
    /// Runs (and lookup rows) examined per pass at most.
    pub batch: usize,
}

impl Collector {
    /// One pass.
    ///
    /// # Errors
    /// Store failures (the pass stops; nothing is decided on a store error).
    pub async fn pass(&self) -> Result<GcReport, StoreError> {
        let retention = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let before = now_millis().saturating_sub(retention);
        let mut report = GcReport::default();
        for run in self.store.expired(before, self.batch).await? {
            if !self.delete_objects(&run).await {
                report.kept += 1;
                continue;
            }
            if self.store.purge(run.id).await? {
                report.purged += 1;
            }
        }
        report.stale_lookups = self.store.sweep_lookups(self.batch).await?;
        if report != GcReport::default() {
            crate::metrics::gc_purged(report.purged, report.stale_lookups);
            tracing::info!(?report, "garbage collected");
        }
        Ok(report)
    }

    /// Deletes the payload, result and logs of `run`; false when one could not be deleted.
    async fn delete_objects(&self, run: &Run) -> bool {
        let Some(p) = &self.payloads else {
            return true;
        };
        let id = run.id.to_string();
        let mut keys = vec![
            Keys::result(&run.algorithm, &id),
            Keys::logs(&run.algorithm, &id),
        ];
        if let PayloadLocation::Stored { key } = &run.payload {
            keys.push(key.clone());
        }
        for key in keys {
            if let Err(e) = p.delete(&key).await {
                tracing::warn!(run_id = %run.id, %key, error = %e, "object not deleted, the run is kept for the next pass");
                return false;
            }
        }
        true
    }

    /// A pass every `interval` until `shutdown`.
    pub async fn run(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        crate::every(interval, shutdown, "garbage collection pass", || {
            self.pass()
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_model::run::{RunPatch, Stage};
    use nexus_payload::InMemoryPayloadStore;
    use nexus_store::InMemoryRunStore;
    use nexus_store::test_suite::sample_run;

    async fn finished(store: &InMemoryRunStore, payloads: &InMemoryPayloadStore) -> Run {
        let mut r = sample_run("alg");
        let id = r.id.to_string();
        r.payload = PayloadLocation::Stored {
            key: Keys::payload("alg", &id),
        };
        store.insert(r.clone()).await.unwrap();
        for key in [
            Keys::payload("alg", &id),
            Keys::result("alg", &id),
            Keys::logs("alg", &id),
        ] {
            payloads.put(&key, "x".into()).await.unwrap();
        }
        store
            .transition(r.id, Stage::Buffered, Stage::Cancelled, RunPatch::default())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn finished_runs_past_retention_go_with_their_objects_and_nothing_else() {
        let store = Arc::new(InMemoryRunStore::default());
        let payloads = Arc::new(InMemoryPayloadStore::default());
        let old = finished(&store, &payloads).await;
        let live = sample_run("alg");
        store.insert(live.clone()).await.unwrap();
        let keep_all = Collector {
            store: store.clone(),
            payloads: Some(payloads.clone()),
            retention: Duration::from_secs(3600),
            batch: 100,
        };
        assert_eq!(keep_all.pass().await.unwrap(), GcReport::default());
        assert!(store.get(old.id).await.unwrap().is_some());

        let c = Collector {
            retention: Duration::ZERO,
            ..keep_all
        };
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(c.pass().await.unwrap().purged, 1);
        assert!(store.get(old.id).await.unwrap().is_none());
        assert!(
            store.get(live.id).await.unwrap().is_some(),
            "a live run is never collected"
        );
        let id = old.id.to_string();
        for key in [
            Keys::payload("alg", &id),
            Keys::result("alg", &id),
            Keys::logs("alg", &id),
        ] {
            assert_eq!(payloads.get(&key).await.unwrap(), None, "{key} left behind");
        }
    }
}
