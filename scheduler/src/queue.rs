//! The virtual queue: runs accepted by this scheduler and waiting for dispatch.
//!
//! One FIFO lane per shard plus a priority lane for recovered and delayed runs, which are
//! dispatched ahead of everything else. It holds only ids and routing data, never payload bytes.
//! Bounded: [`VirtualQueue::has_room`] lets admission refuse (429) before anything is written.
//! The queue is not durable by design: every queued run is BUFFERED in the run store, owned by
//! this scheduler, and recovered from there after a crash.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use nexus_core::run::RunId;
use tokio::sync::Notify;

/// One queued run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// The run.
    pub id: RunId,
    /// Its shard.
    pub shard: String,
    /// Dispatch attempts so far.
    pub attempt: u32,
}

#[derive(Debug, Default)]
struct Lanes {
    priority: VecDeque<Queued>,
    lanes: BTreeMap<String, VecDeque<Queued>>,
    /// Round-robin cursor over lanes, so one busy shard cannot starve the others.
    next_lane: usize,
    len: usize,
}

/// The bounded, multi-lane queue.
#[derive(Debug)]
pub struct VirtualQueue {
    inner: Mutex<Lanes>,
    notify: Notify,
    bound: usize,
}

impl VirtualQueue {
    /// Returns an empty queue holding at most `bound` runs (admission checks it).
    #[must_use]
    pub fn new(bound: usize) -> Self {
        Self {
            inner: Mutex::new(Lanes::default()),
            notify: Notify::new(),
            bound,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lanes> {
        // Lanes stay consistent under a panic in another holder: every mutation is one push/pop.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Returns true when admission may add a run.
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.lock().len < self.bound
    }

    /// Returns the number of queued runs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Returns true when nothing is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a run to its shard's lane.
    pub fn push(&self, q: Queued) {
        {
            let mut l = self.lock();
            l.lanes.entry(q.shard.clone()).or_default().push_back(q);
            l.len += 1;
            crate::metrics::queue_depth(l.len);
        }
        self.notify.notify_one();
    }

    /// Adds a run to the priority lane (recovered or retried runs).
    pub fn push_priority(&self, q: Queued) {
        {
            let mut l = self.lock();
            l.priority.push_back(q);
            l.len += 1;
            crate::metrics::queue_depth(l.len);
        }
        self.notify.notify_one();
    }

    /// Removes and returns the next run: the priority lane first, then the shard lanes in turn.
    #[must_use]
    pub fn try_pop(&self) -> Option<Queued> {
        let mut l = self.lock();
        let item = if let Some(q) = l.priority.pop_front() {
            Some(q)
        } else {
            let n = l.lanes.len();
            let start = l.next_lane;
            let keys: Vec<String> = l.lanes.keys().cloned().collect();
            let mut found = None;
            for i in 0..n {
                let idx = (start + i) % n;
                if let Some(q) = l.lanes.get_mut(&keys[idx]).and_then(VecDeque::pop_front) {
                    l.next_lane = idx + 1;
                    found = Some(q);
                    break;
                }
            }
            l.lanes.retain(|_, v| !v.is_empty());
            found
        };
        if item.is_some() {
            l.len -= 1;
            crate::metrics::queue_depth(l.len);
        }
        item
    }

    /// Waits for and returns the next run.
    pub async fn pop(&self) -> Queued {
        loop {
            let notified = self.notify.notified();
            if let Some(q) = self.try_pop() {
                return q;
            }
            notified.await;
        }
    }

    /// Removes and returns everything queued (shutdown hand-over).
    #[must_use]
    pub fn drain(&self) -> Vec<Queued> {
        let mut out = Vec::new();
        while let Some(q) = self.try_pop() {
            out.push(q);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(shard: &str) -> Queued {
        Queued {
            id: RunId::new(),
            shard: shard.into(),
            attempt: 0,
        }
    }

    #[test]
    fn priority_first_then_round_robin_fifo() {
        let vq = VirtualQueue::new(10);
        let (a1, a2, b1, p) = (q("a"), q("a"), q("b"), q("a"));
        vq.push(a1.clone());
        vq.push(a2.clone());
        vq.push(b1.clone());
        vq.push_priority(p.clone());
        let order: Vec<_> = std::iter::from_fn(|| vq.try_pop()).map(|x| x.id).collect();
        assert_eq!(order, [p.id, a1.id, b1.id, a2.id]);
        assert!(vq.is_empty());
    }

    #[test]
    fn bound_is_reported() {
        let vq = VirtualQueue::new(2);
        vq.push(q("a"));
        assert!(vq.has_room());
        vq.push(q("a"));
        assert!(!vq.has_room());
        assert_eq!(vq.drain().len(), 2);
        assert!(vq.has_room());
    }

    #[tokio::test]
    async fn pop_waits_for_push() {
        let vq = std::sync::Arc::new(VirtualQueue::new(2));
        let v2 = vq.clone();
        let h = tokio::spawn(async move { v2.pop().await });
        tokio::task::yield_now().await;
        let x = q("s");
        vq.push(x.clone());
        assert_eq!(h.await.unwrap(), x);
    }
}
