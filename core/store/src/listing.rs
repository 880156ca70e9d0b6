//! Listing runs: the filter, the page and the position a page continues from.
//!
//! Order: newest first by request id. Ids are UUIDv7 (48 bits of submission time in
//! milliseconds first), so id order is submission order to the millisecond, in every backend,
//! without a separate time column; the time range filters that same submission time (the time
//! in the id, [`submitted_at`]), so a range maps to an id range every backend can seek to.
//!
//! A page ends at a [`Position`] (the id of the last run the backend examined); the next page
//! holds only runs with smaller ids. Backends may return a page shorter than asked (even empty)
//! with a position when they stop early to bound their work; `next: None` means the end.

use nexus_model::run::{Millis, Run, RunId, Stage};
use uuid::Uuid;

/// Most runs one page may hold.
pub const MAX_PAGE: usize = 1000;

/// The page size a backend uses for a requested `limit`: at least 1, at most [`MAX_PAGE`]
/// (callers validate what users ask for; this only keeps backends safe).
#[must_use]
pub fn page_size(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE)
}

/// Which runs to list. Every set field must match (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Template name.
    pub algorithm: Option<String>,
    /// Current stage.
    pub stage: Option<Stage>,
    /// Client tag.
    pub tag: Option<String>,
    /// Submitted at or after (milliseconds since the epoch).
    pub from: Option<Millis>,
    /// Submitted before (exclusive).
    pub to: Option<Millis>,
    /// Direct children of this run.
    pub parent: Option<RunId>,
    /// Runs of this execution tree (the root itself included).
    pub root: Option<RunId>,
    /// Shard the run is sent to.
    pub shard: Option<String>,
}

impl RunFilter {
    /// Whether `run` matches every set field.
    #[must_use]
    pub fn matches(&self, run: &Run) -> bool {
        let t = submitted_at(run.id);
        self.algorithm.as_ref().is_none_or(|a| *a == run.algorithm)
            && self.stage.is_none_or(|s| s == run.stage)
            && self
                .tag
                .as_ref()
                .is_none_or(|x| run.tag.as_ref() == Some(x))
            && self.from.is_none_or(|f| t >= f)
            && self.to.is_none_or(|x| t < x)
            && self
                .parent
                .is_none_or(|p| run.parent.as_ref().is_some_and(|r| r.request_id == p))
            && self.root.is_none_or(|r| run.root == r)
            && self.shard.as_ref().is_none_or(|s| *s == run.shard)
    }

    /// The exclusive upper id bound of the listing: below `after` and below `to`.
    #[must_use]
    pub fn upper(&self, after: Option<Position>) -> Option<RunId> {
        let to = self.to.map(id_floor);
        match (after.map(|p| p.0), to) {
            (Some(a), Some(t)) => Some(a.min(t)),
            (a, t) => a.or(t),
        }
    }

    /// The inclusive lower id bound of the listing (from `from`).
    #[must_use]
    pub fn lower(&self) -> Option<RunId> {
        self.from.map(id_floor)
    }
}

/// Where a listing continues: runs with smaller ids than this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position(pub RunId);

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListPage {
    /// Matching runs, newest first.
    pub runs: Vec<Run>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<Position>,
}

/// The submission time of a run, from its UUIDv7 id (milliseconds); 0 for ids of other versions.
#[must_use]
pub fn submitted_at(id: RunId) -> Millis {
    if id.0.get_version_num() != 7 {
        return 0;
    }
    let b = id.0.as_bytes();
    let mut ms: i64 = 0;
    for byte in &b[..6] {
        ms = (ms << 8) | i64::from(*byte);
    }
    ms
}

/// The smallest UUIDv7 id of millisecond `ms` (clamped to the 48 bits an id holds): every id
/// of a run submitted at or after `ms` is at least this one. It carries version 7, so
/// [`submitted_at`] reads `ms` back from it.
#[must_use]
pub fn id_floor(ms: Millis) -> RunId {
    let ms = u64::try_from(ms.clamp(0, (1 << 48) - 1)).unwrap_or(0);
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70;
    RunId(Uuid::from_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_submission_time() {
        let before = nexus_model::run::now_millis();
        let id = RunId::new();
        let after = nexus_model::run::now_millis();
        let t = submitted_at(id);
        assert!(before <= t && t <= after, "{before} <= {t} <= {after}");
        assert!(id_floor(t) <= id);
        assert!(id_floor(t + 1) > id);
        assert_eq!(submitted_at(id_floor(t)), t);
        assert_eq!(submitted_at(RunId(Uuid::new_v4())), 0);
        // Out-of-range times clamp instead of wrapping.
        assert_eq!(id_floor(-5), id_floor(0));
        assert!(id_floor(i64::MAX) > id);
    }

    #[test]
    fn upper_bound_is_the_tighter_of_cursor_and_to() {
        let a = RunId::new();
        let f = RunFilter {
            to: Some(submitted_at(a) + 10),
            ..RunFilter::default()
        };
        assert_eq!(f.upper(Some(Position(a))), Some(a));
        let early = RunFilter {
            to: Some(1),
            ..RunFilter::default()
        };
        assert_eq!(early.upper(Some(Position(a))), Some(id_floor(1)));
        assert_eq!(RunFilter::default().upper(None), None);
    }
}
