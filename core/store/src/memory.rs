//! `InMemoryRunStore`: a [`RunStore`] held in process memory, for tests and `--dry-run` setups.
//!
//! One `std::sync::Mutex` protects the whole state; it is never held across an `.await` (no
//! method awaits while holding it), so it cannot stall the runtime.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    BatchInserted, Inserted, Lease, ListPage, Position, RunBatch, RunFilter, RunStore, StoreError,
    batch_run_key,
};
use nexus_model::error::ErrorKind;
use nexus_model::run::{Millis, Run, RunId, RunPatch, Stage, now_millis};

#[derive(Debug, Default)]
struct State {
    /// Next acceptance sequence number.
    next_seq: u64,
    /// Runs with their acceptance sequence number.
    runs: HashMap<RunId, (u64, Run)>,
    /// (algorithm, idempotency key) → run id.
    idem: HashMap<(String, String), RunId>,
    /// Owner → lease expiry.
    leases: BTreeMap<String, Millis>,
    leaders: HashMap<String, Lease>,
}

impl State {
    /// Returns the runs matching `pred`, in acceptance order, at most `limit`.
    fn select(&self, limit: usize, pred: impl Fn(&Run) -> bool) -> Vec<Run> {
        let mut found: Vec<&(u64, Run)> = self.runs.values().filter(|(_, r)| pred(r)).collect();
        found.sort_by_key(|(seq, _)| *seq);
        found
            .into_iter()
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// A [`RunStore`] kept in memory (nothing survives the process).
#[derive(Debug, Default)]
pub struct InMemoryRunStore {
    state: Mutex<State>,
}

impl InMemoryRunStore {
    /// Returns an empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // breaks the contract (every mutation is a single map operation), so a poisoned lock is
        // still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl RunStore for InMemoryRunStore {
    async fn insert(&self, run: Run) -> Result<Inserted, StoreError> {
        let mut st = self.lock();
        let existing = run
            .idempotency_key
            .as_ref()
            .and_then(|key| st.idem.get(&(run.algorithm.clone(), key.clone())))
            .and_then(|id| st.runs.get(id));
        if let Some((_, r)) = existing {
            return Ok(Inserted::Existing(r.clone()));
        }
        if st.runs.contains_key(&run.id) {
            return Err(StoreError::backend(
                ErrorKind::Conflict,
                format!("run {} already exists", run.id),
            ));
        }
        if let Some(key) = &run.idempotency_key {
            st.idem.insert((run.algorithm.clone(), key.clone()), run.id);
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.runs.insert(run.id, (seq, run));
        Ok(Inserted::Created)
    }

    async fn insert_batch(&self, batch: RunBatch) -> Result<BatchInserted, StoreError> {
        batch.check()?;
        // One lock for the checks and the writes: all or nothing.
        let mut st = self.lock();
        if let Some(key) = &batch.key {
            let first = (batch.algorithm.clone(), batch_run_key(key, 0));
            if st.idem.contains_key(&first) {
                let mut runs = Vec::new();
                for i in 0.. {
                    let k = (batch.algorithm.clone(), batch_run_key(key, i));
                    match st.idem.get(&k).and_then(|id| st.runs.get(id)) {
                        Some((_, r)) => runs.push(r.clone()),
                        None => break,
                    }
                }
                return Ok(BatchInserted::Existing(runs));
            }
        }
        if let Some(dup) = batch.runs.iter().find(|r| st.runs.contains_key(&r.id)) {
            return Err(StoreError::backend(
                ErrorKind::Conflict,
                format!("run {} already exists", dup.id),
            ));
        }
        for run in batch.runs {
            if let Some(key) = &run.idempotency_key {
                st.idem.insert((run.algorithm.clone(), key.clone()), run.id);
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            st.runs.insert(run.id, (seq, run));
        }
        Ok(BatchInserted::Created)
    }

    async fn get(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        Ok(self.lock().runs.get(&id).map(|(_, r)| r.clone()))
    }

    async fn transition(
        &self,
        id: RunId,
        from: Stage,
        to: Stage,
        patch: RunPatch,
    ) -> Result<Run, StoreError> {
        let mut st = self.lock();
        let (_, run) = st.runs.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        super::check_transition(id, run.stage, from, to)?;
        patch.apply(run, to, now_millis());
        super::stage_changed(id, from, to, super::changed_by(&patch));
        Ok(run.clone())
    }

    async fn set_tag(&self, id: RunId, tag: Option<String>) -> Result<Run, StoreError> {
        let mut st = self.lock();
        let (_, run) = st.runs.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        run.tag = tag;
        run.last_modified = now_millis();
        Ok(run.clone())
    }

    async fn by_tag(&self, tag: &str, limit: usize) -> Result<Vec<Run>, StoreError> {
        Ok(self.lock().select(limit, |r| r.tag.as_deref() == Some(tag)))
    }

    async fn by_owner_stage(
        &self,
        owner: &str,
        stage: Stage,
        limit: usize,
    ) -> Result<Vec<Run>, StoreError> {
        Ok(self.lock().select(limit, |r| {
            r.stage == stage && r.owner.as_deref() == Some(owner)
        }))
    }

    async fn by_parent(&self, parent: RunId, limit: usize) -> Result<Vec<Run>, StoreError> {
        Ok(self.lock().select(limit, |r| {
            r.parent.as_ref().is_some_and(|p| p.request_id == parent)
        }))
    }

    async fn list(
        &self,
        filter: &RunFilter,
        after: Option<Position>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        let limit = crate::listing::page_size(limit);
        let (upper, lower) = (filter.upper(after), filter.lower());
        let st = self.lock();
        let mut found: Vec<&Run> = st
            .runs
            .values()
            .map(|(_, r)| r)
            .filter(|r| upper.is_none_or(|u| r.id < u) && lower.is_none_or(|l| r.id >= l))
            .filter(|r| filter.matches(r))
            .collect();
        found.sort_by_key(|r| std::cmp::Reverse(r.id));
        let more = found.len() > limit;
        let runs: Vec<Run> = found.into_iter().take(limit).cloned().collect();
        let next = more.then(|| runs.last().map(|r| Position(r.id))).flatten();
        Ok(ListPage { runs, next })
    }

    async fn owners_in_stage(&self, stage: Stage) -> Result<Vec<String>, StoreError> {
        let st = self.lock();
        let mut owners: Vec<String> = st
            .runs
            .values()
            .filter(|(_, r)| r.stage == stage)
            .filter_map(|(_, r)| r.owner.clone())
            .collect();
        owners.sort();
        owners.dedup();
        Ok(owners)
    }

    async fn heartbeat(&self, owner: &str, now: Millis, ttl_ms: i64) -> Result<Lease, StoreError> {
        let expires_at = now.saturating_add(ttl_ms);
        self.lock().leases.insert(owner.to_owned(), expires_at);
        Ok(Lease {
            owner: owner.to_owned(),
            expires_at,
        })
    }

    async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(self
            .lock()
            .leases
            .iter()
            .map(|(owner, expires_at)| Lease {
                owner: owner.clone(),
                expires_at: *expires_at,
            })
            .collect())
    }

    async fn release_lease(&self, owner: &str) -> Result<(), StoreError> {
        self.lock().leases.remove(owner);
        Ok(())
    }

    async fn lead(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        ttl_ms: i64,
    ) -> Result<Lease, StoreError> {
        let mut g = self.lock();
        let cur = g.leaders.get(name).cloned();
        let lease = match cur {
            Some(l) if l.owner != holder && l.expires_at > now => l,
            _ => Lease {
                owner: holder.to_owned(),
                expires_at: now.saturating_add(ttl_ms),
            },
        };
        g.leaders.insert(name.to_owned(), lease.clone());
        Ok(lease)
    }

    async fn expired(&self, finished_before: Millis, limit: usize) -> Result<Vec<Run>, StoreError> {
        let g = self.lock();
        let mut out: Vec<(Millis, Run)> = g
            .runs
            .values()
            .filter(|(_, r)| r.stage.is_terminal())
            .filter_map(|(_, r)| {
                r.finished_at
                    .filter(|f| *f < finished_before)
                    .map(|f| (f, r.clone()))
            })
            .collect();
        out.sort_by_key(|(f, _)| *f);
        Ok(out.into_iter().take(limit).map(|(_, r)| r).collect())
    }

    async fn purge(&self, id: RunId) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let Some((_, run)) = g.runs.get(&id) else {
            return Ok(false);
        };
        if !run.stage.is_terminal() {
            return Ok(false);
        }
        let key = run
            .idempotency_key
            .clone()
            .map(|k| (run.algorithm.clone(), k));
        g.runs.remove(&id);
        if let Some(k) = key
            && g.idem.get(&k) == Some(&id)
        {
            g.idem.remove(&k);
        }
        Ok(true)
    }

    async fn resign(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.leaders.get(name).is_some_and(|l| l.owner == holder) {
            g.leaders.remove(name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance() {
        let made = std::sync::atomic::AtomicUsize::new(0);
        crate::test_suite::run_all(|| {
            made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            InMemoryRunStore::new()
        })
        .await;
        assert_eq!(
            made.into_inner(),
            crate::test_suite::ASPECTS,
            "test_suite::ASPECTS is how many stores run_all makes"
        );
        crate::test_suite::expired_offers_finished_runs(InMemoryRunStore::new()).await;
    }
}
