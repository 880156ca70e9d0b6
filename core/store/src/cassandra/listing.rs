//! Listing runs on Cassandra ([`RunStore::list`](crate::RunStore::list)) without
//! `ALLOW FILTERING` or secondary indexes.
//!
//! # Tables
//! * `runs_by_time ((dim, bucket, spread), id)`, clustered by id descending: one row per run and
//!   *dimension* — `all`, `algorithm/<name>`, `shard/<name>`, `stage/<STAGE>`, `root/<id>` —
//!   in the hour (`bucket`) of the run's submission time (from its UUIDv7 id). Wide dimensions
//!   (all, algorithm, shard, stage) are spread over [`SPREAD`] partitions per hour by the id's
//!   random bits, so no single partition takes every write of the hour; a tree (`root/<id>`)
//!   lives in one partition (`bucket` 0, `spread` 0), and its root run is not written there
//!   (most runs are roots: that saves a write per accept; the listing adds the root itself).
//! * `run_buckets ((dim), bucket)`: the hours in which a wide dimension has rows, newest first,
//!   so a listing skips empty hours instead of probing each one.
//!
//! Rows are hints written with the run's other lookup rows (before the run changes, deleted
//! after; a stage move rewrites only the stage rows) and verified against the run on read, as
//! the other lookups are (see the store's docs). Tag and parent filters read the existing
//! `runs_by_tag` / `runs_by_parent` partitions in reverse.
//!
//! # A page
//! The most selective filter picks the partitions (parent, tag, tree, a live stage, algorithm,
//! a finished stage, shard, all); the others are checked on the loaded runs. The partitions of
//! one hour are read below the page's upper id bound and merged; hours are visited newest first.
//! A page stops when full, at the end, or after examining [`SCAN_BUDGET`] rows or
//! [`BUCKET_BUDGET`] hours, returning where it stopped so the next page goes on from there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::{join_all, try_join_all};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::coalesce::Coalescer;
use super::{CassandraRunStore, internal};
use crate::StoreError;
use crate::listing::{ListPage, Position, RunFilter, id_floor, page_size, submitted_at};
use nexus_model::error::ErrorKind;
use nexus_model::run::{Run, RunId, Stage};

/// Width of a time bucket: an hour.
pub(crate) const BUCKET_MS: i64 = 3_600_000;
/// Partitions per hour of a wide dimension.
pub(crate) const SPREAD: i8 = 8;
/// Most index rows one page examines before it returns where it stopped.
pub(crate) const SCAN_BUDGET: usize = 4096;
/// Most hours one page visits.
pub(crate) const BUCKET_BUDGET: usize = 96;
/// Hours read from `run_buckets` at once.
const BUCKETS_PER_READ: i32 = 32;
/// Registrations remembered per process before old ones are forgotten.
const MAX_REMEMBERED: usize = 100_000;
/// Larger than every 16-byte id: the upper bound of an unbounded listing.
const TOP: [u8; 16] = [0xff; 16];

/// The listing's prepared statements.
#[derive(Debug)]
pub(crate) struct Statements {
    /// `runs_by_time` rows, grouped per partition (see the `coalesce` module).
    pub(crate) rows: Arc<Coalescer<ListingKey, ListingRow>>,
    unhint: PreparedStatement,
    register: PreparedStatement,
    buckets: PreparedStatement,
    page_time: PreparedStatement,
    page_tag: PreparedStatement,
    page_parent: PreparedStatement,
}

impl Statements {
    pub(crate) async fn prepare(session: &Arc<Session>, ks: &str) -> Result<Self, StoreError> {
        let p = |cql: String, idempotent: bool| async move {
            let mut st = session.prepare(cql.as_str()).await.map_err(|e| {
                StoreError::backend(
                    ErrorKind::Unavailable,
                    format!("cassandra: cannot prepare `{cql}`: {e} (is the schema applied? run with migrate=true or `nexus store schema`)"),
                )
            })?;
            st.set_is_idempotent(idempotent);
            Ok::<_, StoreError>(st)
        };
        Ok(Self {
            rows: Coalescer::new(
                Arc::clone(session),
                p(format!("INSERT INTO {ks}.runs_by_time (dim, bucket, spread, id) VALUES (?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"), true).await?,
                "writing a listing row",
            ),
            unhint: p(format!("DELETE FROM {ks}.runs_by_time USING TIMESTAMP ? WHERE dim = ? AND bucket = ? AND spread = ? AND id = ?"), true).await?,
            register: p(format!("INSERT INTO {ks}.run_buckets (dim, bucket) VALUES (?, ?) USING TTL ?"), true).await?,
            buckets: p(format!("SELECT bucket FROM {ks}.run_buckets WHERE dim = ? AND bucket <= ? AND bucket >= ? LIMIT ?"), true).await?,
            page_time: p(format!("SELECT id FROM {ks}.runs_by_time WHERE dim = ? AND bucket = ? AND spread = ? AND id < ? AND id >= ? LIMIT ?"), true).await?,
            page_tag: p(format!("SELECT id FROM {ks}.runs_by_tag WHERE tag = ? AND id < ? AND id >= ? ORDER BY id DESC LIMIT ?"), true).await?,
            page_parent: p(format!("SELECT id FROM {ks}.runs_by_parent WHERE parent = ? AND id < ? AND id >= ? ORDER BY id DESC LIMIT ?"), true).await?,
        })
    }
}

/// The partition of a `runs_by_time` row: dimension, bucket, spread.
pub(crate) type ListingKey = (String, i64, i8);
/// A `runs_by_time` row: dimension, bucket, spread, id, TTL, write timestamp.
pub(crate) type ListingRow = (String, i64, i8, Vec<u8>, i32, i64);

/// Which `(dim, bucket)` this process registered in `run_buckets`, and when.
#[derive(Debug, Default)]
pub(crate) struct Registered(Mutex<HashMap<(String, i64), Instant>>);

/// A row of `runs_by_time`: dimension, bucket, spread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    dim: String,
    bucket: i64,
    spread: i8,
}

impl Slot {
    fn wide(dim: String, id: RunId) -> Self {
        Self {
            dim,
            bucket: submitted_at(id).div_euclid(BUCKET_MS),
            spread: spread_of(id),
        }
    }
}

fn spread_of(id: RunId) -> i8 {
    // The last byte of a UUIDv7 is random.
    i8::try_from(id.0.as_bytes()[15] % SPREAD.unsigned_abs()).unwrap_or(0)
}

fn stage_dim(s: Stage) -> String {
    format!("stage/{s}")
}

fn root_dim(r: RunId) -> String {
    format!("root/{r}")
}

/// The rows of `run` that do not depend on its stage (written once, at creation, and again
/// with a TTL when it finishes).
pub(crate) fn fixed_slots(run: &Run) -> Vec<Slot> {
    let mut out = vec![
        Slot::wide("all".to_owned(), run.id),
        Slot::wide(format!("algorithm/{}", run.algorithm), run.id),
        Slot::wide(format!("shard/{}", run.shard), run.id),
    ];
    if run.root != run.id {
        out.push(Slot {
            dim: root_dim(run.root),
            bucket: 0,
            spread: 0,
        });
    }
    out
}

/// The row of `run`'s current stage.
pub(crate) fn stage_slot(run: &Run) -> Slot {
    Slot::wide(stage_dim(run.stage), run.id)
}

/// Where a page reads.
#[derive(Debug, Clone)]
enum Source {
    /// Hours of a wide dimension, through `run_buckets`.
    Wide(String),
    /// A tree: its partition plus the root run itself.
    Tree(RunId),
    /// A tag's partition.
    Tag(String),
    /// A parent's partition.
    Parent(RunId),
}

/// The most selective source for `f`.
fn source(f: &RunFilter) -> Source {
    if let Some(p) = f.parent {
        return Source::Parent(p);
    }
    if let Some(t) = &f.tag {
        return Source::Tag(t.clone());
    }
    if let Some(r) = f.root {
        return Source::Tree(r);
    }
    match (f.stage, &f.algorithm, &f.shard) {
        (Some(s), _, _) if !s.is_terminal() => Source::Wide(stage_dim(s)),
        (_, Some(a), _) => Source::Wide(format!("algorithm/{a}")),
        (Some(s), None, _) => Source::Wide(stage_dim(s)),
        (None, None, Some(sh)) => Source::Wide(format!("shard/{sh}")),
        (None, None, None) => Source::Wide("all".to_owned()),
    }
}

/// How a page ended.
struct Scan {
    runs: Vec<Run>,
    /// Smallest id examined (or the position reached through empty hours).
    reached: Option<RunId>,
    examined: usize,
    /// True when no more rows exist below `reached`.
    ended: bool,
}

impl CassandraRunStore {
    /// Writes the listing rows `new` needs (`old`: the stored state it replaces, `None` on
    /// creation): everything on creation, the new stage's row on a stage move, everything again
    /// with the TTL when the run finishes.
    pub(crate) fn listing_writes<'a>(
        &'a self,
        old: Option<&Run>,
        new: &'a Run,
        ttl: i32,
        ts: i64,
    ) -> Vec<futures::future::BoxFuture<'a, Result<(), StoreError>>> {
        let mut slots = Vec::new();
        if old.is_none() || ttl > 0 {
            slots.extend(fixed_slots(new));
        }
        if old.is_none_or(|o| o.stage != new.stage) || ttl > 0 {
            slots.push(stage_slot(new));
        }
        let id = new.id.0.as_bytes().to_vec();
        slots
            .into_iter()
            .map(|slot| {
                let id = id.clone();
                Box::pin(async move {
                    if !slot.dim.starts_with("root/") {
                        self.register_bucket(&slot.dim, slot.bucket).await?;
                    }
                    let key = (slot.dim.clone(), slot.bucket, slot.spread);
                    self.ls
                        .rows
                        .write(key, (slot.dim, slot.bucket, slot.spread, id, ttl, ts))
                        .await
                }) as futures::future::BoxFuture<'a, Result<(), StoreError>>
            })
            .collect()
    }

    /// Deletes the stage row `old` had when `new` is in another stage (best effort: readers
    /// skip a row left behind). `before` is a client timestamp taken before the change.
    pub(crate) async fn drop_listing_row(&self, old: &Run, new: &Run, before: i64) {
        if old.stage == new.stage {
            return;
        }
        let slot = stage_slot(old);
        if let Err(e) = self
            .exec(
                &self.ls.unhint,
                (
                    before,
                    slot.dim.as_str(),
                    slot.bucket,
                    slot.spread,
                    old.id.0.as_bytes().to_vec(),
                ),
                "deleting a listing row",
            )
            .await
        {
            tracing::debug!(run = %old.id, error = %e, "stale listing row left for readers to skip");
        }
    }

    /// Records that `dim` has rows in `bucket` (once an hour per process and pair).
    async fn register_bucket(&self, dim: &str, bucket: i64) -> Result<(), StoreError> {
        let key = (dim.to_owned(), bucket);
        let fresh = {
            let map = self
                .buckets_seen
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.get(&key)
                .is_some_and(|t| t.elapsed() < super::REGISTER_EVERY)
        };
        if fresh {
            return Ok(());
        }
        self.exec(
            &self.ls.register,
            (dim, bucket, self.registration_ttl()),
            "registering a listing hour",
        )
        .await?;
        let mut map = self
            .buckets_seen
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_REMEMBERED {
            map.retain(|_, t| t.elapsed() < super::REGISTER_EVERY);
        }
        map.insert(key, Instant::now());
        Ok(())
    }

    /// One page of a listing; see the module docs.
    pub(crate) async fn list_page(
        &self,
        filter: &RunFilter,
        after: Option<Position>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        let limit = page_size(limit);
        let upper = filter.upper(after);
        let lower = filter.lower();
        if let (Some(u), Some(l)) = (upper, lower)
            && u <= l
        {
            return Ok(ListPage::default());
        }
        let scan = match source(filter) {
            Source::Wide(dim) => self.scan_wide(&dim, filter, upper, lower, limit).await?,
            other => {
                self.scan_single(&other, filter, upper, lower, limit)
                    .await?
            }
        };
        let next = if scan.ended {
            None
        } else {
            scan.reached.map(Position)
        };
        Ok(ListPage {
            runs: scan.runs,
            next,
        })
    }

    /// Pages through the hours of a wide dimension, newest first.
    async fn scan_wide(
        &self,
        dim: &str,
        filter: &RunFilter,
        upper: Option<RunId>,
        lower: Option<RunId>,
        limit: usize,
    ) -> Result<Scan, StoreError> {
        let mut scan = Scan {
            runs: Vec::new(),
            reached: upper,
            examined: 0,
            ended: false,
        };
        let mut top_bucket = upper.map_or(i64::MAX, |u| submitted_at(u).div_euclid(BUCKET_MS));
        let low_bucket = lower.map_or(i64::MIN, |l| submitted_at(l).div_euclid(BUCKET_MS));
        let mut visited = 0;
        loop {
            let r = self
                .exec(
                    &self.ls.buckets,
                    (dim, top_bucket, low_bucket, BUCKETS_PER_READ),
                    "listing hours",
                )
                .await?;
            let buckets: Vec<i64> = r
                .into_rows_result()
                .map_err(|e| internal(format!("cassandra listing hours: {e}")))?
                .rows::<(i64,)>()
                .map_err(|e| internal(format!("cassandra listing hours: {e}")))?
                .map(|r| r.map(|(b,)| b))
                .collect::<Result<_, _>>()
                .map_err(|e| internal(format!("cassandra listing hours: {e}")))?;
            let full_read = buckets.len() == usize::try_from(BUCKETS_PER_READ).unwrap_or(0);
            for bucket in &buckets {
                let slots: Vec<Slot> = (0..SPREAD)
                    .map(|spread| Slot {
                        dim: dim.to_owned(),
                        bucket: *bucket,
                        spread,
                    })
                    .collect();
                let bucket_top = scan.reached;
                let done = self
                    .scan_slots(&slots, None, filter, bucket_top, lower, limit, &mut scan)
                    .await?;
                visited += 1;
                if !done {
                    return Ok(scan);
                }
                // Everything of this hour is examined: the next page starts below it.
                let floor = id_floor(bucket.saturating_mul(BUCKET_MS));
                scan.reached = Some(scan.reached.map_or(floor, |r| r.min(floor)));
                if visited >= BUCKET_BUDGET {
                    return Ok(scan);
                }
            }
            if !full_read {
                scan.ended = true;
                return Ok(scan);
            }
            match buckets.last() {
                Some(b) if *b > i64::MIN => top_bucket = b - 1,
                _ => {
                    scan.ended = true;
                    return Ok(scan);
                }
            }
        }
    }

    /// Pages through a tree, tag or parent partition.
    async fn scan_single(
        &self,
        source: &Source,
        filter: &RunFilter,
        upper: Option<RunId>,
        lower: Option<RunId>,
        limit: usize,
    ) -> Result<Scan, StoreError> {
        let mut scan = Scan {
            runs: Vec::new(),
            reached: upper,
            examined: 0,
            ended: false,
        };
        let (slots, extra) = match source {
            Source::Tree(root) => (
                vec![Slot {
                    dim: root_dim(*root),
                    bucket: 0,
                    spread: 0,
                }],
                Some(*root),
            ),
            _ => (Vec::new(), None),
        };
        let done = match source {
            Source::Tree(_) => {
                self.scan_slots(&slots, extra, filter, upper, lower, limit, &mut scan)
                    .await?
            }
            other => {
                self.scan_partition(other, filter, upper, lower, limit, &mut scan)
                    .await?
            }
        };
        scan.ended = done;
        Ok(scan)
    }

    /// Reads the `slots` (partitions of one hour, or a tree) below `top`, merged newest first,
    /// plus `extra` (a tree's root run), verifying each run, until the page is full (returns
    /// false), the budget is spent (false) or the partitions are exhausted (true).
    #[allow(clippy::too_many_arguments)]
    async fn scan_slots(
        &self,
        slots: &[Slot],
        extra: Option<RunId>,
        filter: &RunFilter,
        top: Option<RunId>,
        lower: Option<RunId>,
        limit: usize,
        scan: &mut Scan,
    ) -> Result<bool, StoreError> {
        let lower_bytes = lower.map_or_else(Vec::new, |l| l.0.as_bytes().to_vec());
        let mut cursor = top;
        loop {
            let want = limit - scan.runs.len();
            let n = i32::try_from(want.clamp(16, 256)).unwrap_or(256);
            let upper_bytes = cursor.map_or_else(|| TOP.to_vec(), |c| c.0.as_bytes().to_vec());
            let reads = slots.iter().map(|slot| {
                let (u, l) = (upper_bytes.clone(), lower_bytes.clone());
                async move {
                    let r = self
                        .exec(
                            &self.ls.page_time,
                            (slot.dim.as_str(), slot.bucket, slot.spread, u, l, n),
                            "listing runs",
                        )
                        .await?;
                    ids(r)
                }
            });
            let parts: Vec<Vec<RunId>> = try_join_all(reads).await?;
            let exhausted = parts
                .iter()
                .all(|p| p.len() < usize::try_from(n).unwrap_or(usize::MAX));
            let mut merged: Vec<RunId> = parts.into_iter().flatten().collect();
            if let Some(x) = extra
                && cursor.is_none_or(|c| x < c)
                && lower.is_none_or(|l| x >= l)
            {
                merged.push(x);
            }
            merged.sort_by_key(|id| std::cmp::Reverse(*id));
            merged.dedup();
            merged.truncate(usize::try_from(n).unwrap_or(usize::MAX));
            if merged.is_empty() {
                return Ok(true);
            }
            let last = *merged.last().unwrap_or(&RunId(Uuid::nil()));
            if !self.verify(&merged, filter, limit, scan).await? {
                return Ok(false);
            }
            cursor = Some(last);
            if exhausted && merged.len() < usize::try_from(n).unwrap_or(usize::MAX) {
                return Ok(true);
            }
            if scan.examined >= SCAN_BUDGET {
                return Ok(false);
            }
        }
    }

    /// Reads a tag's or a parent's partition in reverse, below `top`.
    async fn scan_partition(
        &self,
        source: &Source,
        filter: &RunFilter,
        top: Option<RunId>,
        lower: Option<RunId>,
        limit: usize,
        scan: &mut Scan,
    ) -> Result<bool, StoreError> {
        let lower_bytes = lower.map_or_else(Vec::new, |l| l.0.as_bytes().to_vec());
        let mut cursor = top;
        loop {
            let want = limit - scan.runs.len();
            let n = i32::try_from(want.clamp(16, 256)).unwrap_or(256);
            let upper = cursor.map_or_else(|| TOP.to_vec(), |c| c.0.as_bytes().to_vec());
            let r = match source {
                Source::Tag(t) => {
                    self.exec(
                        &self.ls.page_tag,
                        (t.as_str(), upper, lower_bytes.clone(), n),
                        "listing runs by tag",
                    )
                    .await?
                }
                Source::Parent(p) => {
                    self.exec(
                        &self.ls.page_parent,
                        (p.0, upper, lower_bytes.clone(), n),
                        "listing children",
                    )
                    .await?
                }
                _ => return Err(internal("listing: not a single-partition source")),
            };
            let found = ids(r)?;
            let Some(last) = found.last().copied() else {
                return Ok(true);
            };
            if !self.verify(&found, filter, limit, scan).await? {
                return Ok(false);
            }
            cursor = Some(last);
            if found.len() < usize::try_from(n).unwrap_or(usize::MAX) {
                return Ok(true);
            }
            if scan.examined >= SCAN_BUDGET {
                return Ok(false);
            }
        }
    }

    /// Loads the runs of `ids` (newest first) and keeps those matching `filter`, until the page
    /// holds `limit`; returns false when it filled up (`scan.reached` is then the last run
    /// kept), true when every id was examined (`scan.reached` is the last id).
    async fn verify(
        &self,
        ids: &[RunId],
        filter: &RunFilter,
        limit: usize,
        scan: &mut Scan,
    ) -> Result<bool, StoreError> {
        for chunk in ids.chunks(super::VERIFY_CONCURRENCY) {
            let loads = chunk.iter().map(|id| self.load(*id, false));
            let loaded = join_all(loads).await;
            for (id, run) in chunk.iter().zip(loaded) {
                scan.examined += 1;
                scan.reached = Some(*id);
                if let Some((_, run)) = run?
                    && filter.matches(&run)
                {
                    scan.runs.push(run);
                    if scan.runs.len() >= limit {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }
}

/// The ids of a result of `SELECT id …`.
fn ids(r: scylla::response::query_result::QueryResult) -> Result<Vec<RunId>, StoreError> {
    let rows = r
        .into_rows_result()
        .map_err(|e| internal(format!("cassandra listing: {e}")))?;
    rows.rows::<(Vec<u8>,)>()
        .map_err(|e| internal(format!("cassandra listing: {e}")))?
        .map(|r| {
            let (raw,) = r.map_err(|e| internal(format!("cassandra listing: {e}")))?;
            Uuid::from_slice(&raw)
                .map(RunId)
                .map_err(|e| internal(format!("corrupt listing row id: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_suite::sample_run;

    #[test]
    fn the_most_selective_filter_picks_the_partitions() {
        let id = RunId::new();
        let f = |f: RunFilter| source(&f);
        assert!(matches!(
            f(RunFilter {
                parent: Some(id),
                tag: Some("t".into()),
                ..Default::default()
            }),
            Source::Parent(_)
        ));
        assert!(matches!(
            f(RunFilter {
                tag: Some("t".into()),
                root: Some(id),
                ..Default::default()
            }),
            Source::Tag(_)
        ));
        assert!(matches!(
            f(RunFilter {
                root: Some(id),
                stage: Some(Stage::Running),
                ..Default::default()
            }),
            Source::Tree(_)
        ));
        let live = f(RunFilter {
            stage: Some(Stage::Running),
            algorithm: Some("a".into()),
            ..Default::default()
        });
        assert!(matches!(live, Source::Wide(d) if d == "stage/RUNNING"));
        let done = f(RunFilter {
            stage: Some(Stage::Completed),
            algorithm: Some("a".into()),
            ..Default::default()
        });
        assert!(matches!(done, Source::Wide(d) if d == "algorithm/a"));
        let shard = f(RunFilter {
            shard: Some("s".into()),
            ..Default::default()
        });
        assert!(matches!(shard, Source::Wide(d) if d == "shard/s"));
        assert!(matches!(f(RunFilter::default()), Source::Wide(d) if d == "all"));
    }

    #[test]
    fn a_root_run_is_not_written_to_its_own_tree() {
        let root = sample_run("a");
        let dims: Vec<String> = fixed_slots(&root).into_iter().map(|s| s.dim).collect();
        assert_eq!(dims, vec!["all", "algorithm/a", "shard/local"]);
        let mut child = sample_run("a");
        child.root = root.id;
        let slots = fixed_slots(&child);
        assert_eq!(slots.last().map(|s| s.dim.clone()), Some(root_dim(root.id)));
        // Wide rows land in the hour of the id and one of the spreads.
        let wide = &slots[0];
        assert_eq!(wide.bucket, submitted_at(child.id) / BUCKET_MS);
        assert!((0..SPREAD).contains(&wide.spread));
        assert_eq!(stage_slot(&child).dim, "stage/BUFFERED");
    }
}
