//! Finished-run notifications inside one process: what lets `GET …/results/…?wait=` answer the
//! moment a run ends instead of making its client poll.
//!
//! Every store backend calls [`finished`] after it stored a transition into a terminal stage;
//! a waiter [`watch`]es a run id *before* it reads the run (so an end between the read and the
//! wait is not missed) and then awaits [`Watch::changed`]. Runs that end in another process
//! (a receiver in another cluster) are not announced here: waiters also re-read the store now and
//! then (the caller's fallback), so a notification only makes the answer come sooner.
//!
//! The registry holds an entry only while someone waits for that run; [`MAX_WATCHED`] bounds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use nexus_model::run::RunId;
use tokio::sync::Notify;

/// Most runs watched at once in a process; past it [`watch`] returns `None` (the caller answers
/// at once instead of waiting).
pub const MAX_WATCHED: usize = 100_000;

type Registry = Mutex<HashMap<RunId, Arc<Notify>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<RunId, Arc<Notify>>> {
    // Each critical section is one map operation: the map stays consistent after a panic.
    registry().lock().unwrap_or_else(PoisonError::into_inner)
}

/// Announces that run `id` reached a terminal stage (wakes its waiters, if any).
pub fn finished(id: RunId) {
    let notify = lock().get(&id).cloned();
    if let Some(n) = notify {
        n.notify_waiters();
    }
}

/// Interest in one run's end; see the module docs.
#[derive(Debug)]
pub struct Watch {
    id: RunId,
    notify: Arc<Notify>,
}

/// Starts watching run `id`; `None` when [`MAX_WATCHED`] runs are watched already.
#[must_use]
pub fn watch(id: RunId) -> Option<Watch> {
    let mut map = lock();
    if let Some(n) = map.get(&id) {
        return Some(Watch {
            id,
            notify: Arc::clone(n),
        });
    }
    if map.len() >= MAX_WATCHED {
        return None;
    }
    let notify = Arc::new(Notify::new());
    map.insert(id, Arc::clone(&notify));
    Some(Watch { id, notify })
}

impl Watch {
    /// A future that completes at the next [`finished`] of this run after this call (not
    /// before it): create it, then read the run, then await it.
    pub fn changed(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut n = Box::pin(self.notify.notified());
        // Registered now, so a `notify_waiters` before the first poll still wakes it.
        n.as_mut().enable();
        n
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut map = lock();
        // The map's reference and this one: the last watcher removes the entry.
        if map
            .get(&self.id)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify) && Arc::strong_count(n) <= 2)
        {
            map.remove(&self.id);
        }
    }
}

/// How many runs are watched now (for tests and metrics).
#[must_use]
pub fn watched() -> usize {
    lock().len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_finish_after_watching_wakes_the_waiter() {
        let id = RunId::new();
        let w = watch(id).expect("room");
        let changed = w.changed();
        finished(id);
        tokio::time::timeout(Duration::from_secs(5), changed)
            .await
            .expect("woken");
        drop(w);
        assert!(
            !lock().contains_key(&id),
            "entry removed with its last watcher"
        );
    }

    #[tokio::test]
    async fn other_runs_do_not_wake_and_entries_are_shared() {
        let id = RunId::new();
        let a = watch(id).expect("room");
        let b = watch(id).expect("room");
        let changed = a.changed();
        finished(RunId::new());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), changed)
                .await
                .is_err()
        );
        drop(a);
        assert!(lock().contains_key(&id), "b still watches");
        drop(b);
        assert!(!lock().contains_key(&id));
    }
}
