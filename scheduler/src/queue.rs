//! The virtual queue: runs accepted by this scheduler and waiting for dispatch.
//!
//! One [`Lane`] per shard, each with three parts, served in this order:
//! 1. **delayed** runs whose back-off has elapsed (retries),
//! 2. the **priority** part (runs recovered from a dead or departed scheduler),
//! 3. the **FIFO** part (runs accepted here, in order).
//!
//! Each lane has its own dispatcher worker and budget, so a shard that is slow or down delays its
//! own lane and no other. An entry is a run id and an attempt count (24 bytes in a `VecDeque`):
//! the queue never holds payload bytes. Bounded: [`VirtualQueue::has_room`] lets admission refuse
//! (429) before anything is written. The queue is not durable by design: every queued run is
//! BUFFERED in the run store, owned by this scheduler, and recovered from there after a crash.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use nexus_model::run::RunId;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One queued run, as admission and recovery hand it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// The run.
    pub id: RunId,
    /// Its shard.
    pub shard: String,
    /// Dispatch attempts so far.
    pub attempt: u32,
}

/// Which part of a lane a run waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Recovered or relaunched runs, served first.
    Priority,
    /// New runs, in acceptance order.
    Fifo,
    /// Runs waiting for a retry after a failed dispatch.
    Retry,
}

/// Where a run waits in its lane ([`Lane::place`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The part.
    pub part: Part,
    /// Runs served before it (in its part and the parts served first; for a retry, the retries
    /// due earlier).
    pub ahead: usize,
    /// Dispatch attempts so far.
    pub attempt: u32,
    /// When a retry becomes due.
    pub due: Option<Instant>,
    /// Runs in the lane.
    pub lane_len: usize,
}

/// A queued run inside a lane (the lane is its shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// The run.
    pub id: RunId,
    /// Dispatch attempts so far.
    pub attempt: u32,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Delayed {
    due: Instant,
    seq: u64,
    entry: Entry,
}

#[derive(Debug, Default)]
struct Parts {
    priority: VecDeque<Entry>,
    fifo: VecDeque<Entry>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    seq: u64,
    /// Runs this lane holds: queued in a part, or popped and not yet [`Lane::release`]d (being
    /// dispatched). A count, since a dispatch may queue its run again before it releases it.
    held: HashMap<RunId, u32>,
}

impl Parts {
    fn hold(&mut self, id: RunId) {
        *self.held.entry(id).or_insert(0) += 1;
    }
}

impl Parts {
    fn len(&self) -> usize {
        self.priority.len() + self.fifo.len() + self.delayed.len()
    }
}

/// The queue of one shard. It has a single consumer (the shard's dispatcher worker).
#[derive(Debug)]
pub struct Lane {
    name: Arc<str>,
    parts: Mutex<Parts>,
    notify: Notify,
    depth: crate::metrics::QueueDepth,
    total: Arc<AtomicUsize>,
    down: Mutex<Down>,
    handed_over: std::sync::atomic::AtomicU64,
}

/// A shard found unreachable: its lane pauses until `until`; `streak` grows the pause.
#[derive(Debug, Default, Clone, Copy)]
struct Down {
    until: Option<Instant>,
    streak: u32,
}

impl Lane {
    fn parts(&self) -> std::sync::MutexGuard<'_, Parts> {
        // Every mutation is one push or pop, so the parts stay consistent after a panic elsewhere.
        self.parts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shard this lane feeds.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts a run handed to the shard.
    pub fn count_handed_over(&self) {
        self.handed_over.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs handed to the shard since this lane was made.
    #[must_use]
    pub fn handed_over_total(&self) -> u64 {
        self.handed_over.load(Ordering::Relaxed)
    }

    /// Runs in this lane (all parts).
    #[must_use]
    pub fn len(&self) -> usize {
        self.parts().len()
    }

    /// True when the lane holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn added(&self, parts: &Parts) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.depth.set(parts.len());
    }

    fn push_back(&self, e: Entry, priority: bool) {
        {
            let mut p = self.parts();
            p.hold(e.id);
            if priority {
                p.priority.push_back(e);
            } else {
                p.fifo.push_back(e);
            }
            self.added(&p);
        }
        self.notify.notify_one();
    }

    /// Queues `e` to become ready at `due` (retries after back-off).
    pub fn push_delayed(&self, e: Entry, due: Instant) {
        {
            let mut p = self.parts();
            p.hold(e.id);
            p.seq += 1;
            let seq = p.seq;
            p.delayed.push(Reverse(Delayed { due, seq, entry: e }));
            self.added(&p);
        }
        self.notify.notify_one();
    }

    /// True when [`Lane::pop_ready`] would return a run at `now`.
    #[must_use]
    pub fn has_ready(&self, now: Instant) -> bool {
        let p = self.parts();
        !p.priority.is_empty()
            || !p.fifo.is_empty()
            || p.delayed.peek().is_some_and(|d| d.0.due <= now)
    }

    /// When the earliest delayed run becomes ready.
    #[must_use]
    pub fn next_due(&self) -> Option<Instant> {
        self.parts().delayed.peek().map(|d| d.0.due)
    }

    /// Ends the hold on a run taken with [`Lane::pop_ready`] (its dispatch is over; if the
    /// dispatch queued it again, that entry keeps it held).
    pub fn release(&self, id: RunId) {
        let mut p = self.parts();
        if let Some(n) = p.held.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                p.held.remove(&id);
            }
        }
    }

    /// True while the run is queued in this lane or being dispatched from it.
    #[must_use]
    pub fn holds(&self, id: RunId) -> bool {
        self.parts().held.contains_key(&id)
    }

    /// Removes the next ready run: due delayed runs, then priority, then FIFO. The run stays held
    /// ([`Lane::holds`]) until the caller [`Lane::release`]s it.
    #[must_use]
    pub fn pop_ready(&self, now: Instant) -> Option<Entry> {
        let mut p = self.parts();
        let e = if p.delayed.peek().is_some_and(|d| d.0.due <= now) {
            p.delayed.pop().map(|d| d.0.entry)
        } else if let Some(e) = p.priority.pop_front() {
            Some(e)
        } else {
            p.fifo.pop_front()
        };
        if e.is_some() {
            self.total.fetch_sub(1, Ordering::Relaxed);
            self.depth.set(p.len());
        }
        e
    }

    /// Where `id` waits in this lane, if it is queued (not while it is being dispatched).
    #[must_use]
    pub fn place(&self, id: RunId) -> Option<Place> {
        let p = self.parts();
        let len = p.len();
        if let Some(i) = p.priority.iter().position(|e| e.id == id) {
            return Some(Place {
                part: Part::Priority,
                ahead: i,
                attempt: p.priority[i].attempt,
                due: None,
                lane_len: len,
            });
        }
        if let Some(i) = p.fifo.iter().position(|e| e.id == id) {
            return Some(Place {
                part: Part::Fifo,
                ahead: p.priority.len() + i,
                attempt: p.fifo[i].attempt,
                due: None,
                lane_len: len,
            });
        }
        let d = p.delayed.iter().find(|d| d.0.entry.id == id)?;
        let due = d.0.due;
        let earlier = p.delayed.iter().filter(|o| o.0.due < due).count();
        Some(Place {
            part: Part::Retry,
            ahead: earlier,
            attempt: d.0.entry.attempt,
            due: Some(due),
            lane_len: len,
        })
    }

    /// Marks the shard unreachable: the lane pauses for `pause(streak)` (the streak counts the
    /// pauses that ended in another "down" answer, so the pause grows) and returns when it ends.
    pub fn mark_down(&self, now: Instant, pause: impl FnOnce(u32) -> Duration) -> Instant {
        let mut d = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(u) = d.until.filter(|u| *u > now) {
            // Already paused: the other dispatches that were in flight when the shard went down
            // do not lengthen the pause; only a failed dispatch after it does.
            return u;
        }
        d.streak = d.streak.saturating_add(1);
        let until = now + pause(d.streak);
        d.until = Some(until);
        until
    }

    /// Marks the shard reachable again (a dispatch went through).
    pub fn mark_up(&self) {
        *self.down.lock().unwrap_or_else(PoisonError::into_inner) = Down::default();
    }

    /// When the shard was found unreachable: the end of the lane's pause, if it is still paused.
    #[must_use]
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        let d = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        d.until.filter(|u| *u > now)
    }

    /// Waits until something is pushed (a stored wake-up returns at once: single consumer).
    pub async fn pushed(&self) {
        self.notify.notified().await;
    }

    fn drain(&self) -> Vec<Entry> {
        let mut p = self.parts();
        let mut out: Vec<Entry> = p.delayed.drain().map(|d| d.0.entry).collect();
        out.extend(p.priority.drain(..));
        out.extend(p.fifo.drain(..));
        p.held.clear();
        self.total.fetch_sub(out.len(), Ordering::Relaxed);
        self.depth.set(0);
        out
    }
}

/// The bounded set of lanes.
#[derive(Debug)]
pub struct VirtualQueue {
    lanes: RwLock<HashMap<Arc<str>, Arc<Lane>>>,
    lane_added: Notify,
    total: Arc<AtomicUsize>,
    bound: usize,
}

impl VirtualQueue {
    /// An empty queue holding at most `bound` runs (admission checks it).
    #[must_use]
    pub fn new(bound: usize) -> Self {
        Self {
            lanes: RwLock::new(HashMap::new()),
            lane_added: Notify::new(),
            total: Arc::new(AtomicUsize::new(0)),
            bound,
        }
    }

    /// True when admission may add a run.
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.len() < self.bound
    }

    /// Returns true when `n` more runs fit under the bound (a batch is queued whole or refused).
    #[must_use]
    pub fn has_room_for(&self, n: usize) -> bool {
        self.len().saturating_add(n) <= self.bound
    }

    /// Runs queued over all lanes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// True when nothing is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lane of `shard`, created on first use.
    pub fn lane(&self, shard: &str) -> Arc<Lane> {
        if let Some(l) = self
            .lanes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(shard)
        {
            return l.clone();
        }
        let mut lanes = self.lanes.write().unwrap_or_else(PoisonError::into_inner);
        let lane = lanes
            .entry(Arc::from(shard))
            .or_insert_with(|| {
                Arc::new(Lane {
                    name: Arc::from(shard),
                    parts: Mutex::new(Parts::default()),
                    notify: Notify::new(),
                    depth: crate::metrics::QueueDepth::new(shard),
                    total: self.total.clone(),
                    down: Mutex::new(Down::default()),
                    handed_over: std::sync::atomic::AtomicU64::new(0),
                })
            })
            .clone();
        drop(lanes);
        self.lane_added.notify_waiters();
        lane
    }

    /// Every lane so far.
    #[must_use]
    pub fn lanes(&self) -> Vec<Arc<Lane>> {
        self.lanes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// A future that completes when a lane is created (the dispatcher starts a worker for it);
    /// `enable` it before listing the lanes so no creation is missed.
    pub fn lane_added(&self) -> tokio::sync::futures::Notified<'_> {
        self.lane_added.notified()
    }

    /// True while run `id` of `shard` is queued or being dispatched.
    #[must_use]
    pub fn holds(&self, shard: &str, id: RunId) -> bool {
        self.lanes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(shard)
            .is_some_and(|l| l.holds(id))
    }

    /// Appends a run to its shard's FIFO.
    pub fn push(&self, q: Queued) {
        self.lane(&q.shard).push_back(
            Entry {
                id: q.id,
                attempt: q.attempt,
            },
            false,
        );
    }

    /// Adds a run to its shard's priority part (recovered runs).
    pub fn push_priority(&self, q: Queued) {
        self.lane(&q.shard).push_back(
            Entry {
                id: q.id,
                attempt: q.attempt,
            },
            true,
        );
    }

    /// Removes and returns everything queued (shutdown hand-over; tests).
    #[must_use]
    pub fn drain(&self) -> Vec<Queued> {
        let mut out = Vec::new();
        for lane in self.lanes() {
            out.extend(lane.drain().into_iter().map(|e| Queued {
                id: e.id,
                shard: lane.name().to_owned(),
                attempt: e.attempt,
            }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn q(shard: &str) -> Queued {
        Queued {
            id: RunId::new(),
            shard: shard.into(),
            attempt: 0,
        }
    }

    #[test]
    fn delayed_then_priority_then_fifo_within_a_lane() {
        let vq = VirtualQueue::new(10);
        let now = Instant::now();
        let (a1, a2, p) = (q("a"), q("a"), q("a"));
        vq.push(a1.clone());
        vq.push(a2.clone());
        vq.push_priority(p.clone());
        let lane = vq.lane("a");
        let late = Entry {
            id: RunId::new(),
            attempt: 2,
        };
        let due = Entry {
            id: RunId::new(),
            attempt: 1,
        };
        lane.push_delayed(late, now + Duration::from_secs(60));
        lane.push_delayed(due, now);
        assert_eq!(vq.len(), 5);
        let order: Vec<_> = std::iter::from_fn(|| lane.pop_ready(now))
            .map(|e| e.id)
            .collect();
        assert_eq!(order, [due.id, p.id, a1.id, a2.id]);
        assert!(!lane.has_ready(now));
        assert_eq!(lane.next_due(), Some(now + Duration::from_secs(60)));
        assert_eq!(lane.pop_ready(now + Duration::from_secs(60)), Some(late));
        assert!(vq.is_empty());
    }

    #[test]
    fn lanes_are_separate() {
        let vq = VirtualQueue::new(10);
        vq.push(q("a"));
        vq.push(q("b"));
        vq.push(q("b"));
        assert_eq!(vq.lane("a").len(), 1);
        assert_eq!(vq.lane("b").len(), 2);
        assert_eq!(vq.lanes().len(), 2);
        assert_eq!(vq.len(), 3);
    }

    #[test]
    fn bound_is_reported() {
        let vq = VirtualQueue::new(2);
        vq.push(q("a"));
        assert!(vq.has_room());
        vq.push(q("b"));
        assert!(!vq.has_room());
        assert_eq!(vq.drain().len(), 2);
        assert!(vq.has_room());
        assert!(vq.is_empty());
    }

    #[tokio::test]
    async fn pushed_wakes_the_consumer() {
        let vq = Arc::new(VirtualQueue::new(2));
        let lane = vq.lane("s");
        let l2 = lane.clone();
        let h = tokio::spawn(async move {
            l2.pushed().await;
            l2.pop_ready(Instant::now())
        });
        tokio::task::yield_now().await;
        let x = q("s");
        vq.push(x.clone());
        assert_eq!(h.await.unwrap().map(|e| e.id), Some(x.id));
    }
}
