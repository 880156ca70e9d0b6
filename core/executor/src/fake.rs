//! [`RecordingExecutor`]: a fake [`Executor`] for unit tests.
//!
//! It runs nothing. It records every [`Executor::launch`] call (duplicates included) and every
//! [`Executor::cancel`] call, and lets the test decide how runs end with
//! [`RecordingExecutor::finish`]. It keeps the contract's bookkeeping honest: a launch of an active
//! id is a no-op, cancel of an active run emits `Finished(Cancelled)`, cancel of an unknown one is
//! `Ok`, and every accepted launch gets exactly one `Finished`.
//! [`RecordingExecutor::instant`] builds one that finishes every launch at once with `Succeeded`.

use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use tokio::sync::mpsc::UnboundedSender;

use super::{Executor, ExecutorError, ExecutorEvent, LaunchSpec, Outcome};
use nexus_model::error::ErrorKind;
use nexus_model::run::{CancellationPolicy, RunId};

/// Fake executor recording launches and cancels; see the module docs.
#[derive(Debug)]
pub struct RecordingExecutor {
    events: UnboundedSender<ExecutorEvent>,
    auto_succeed: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    launches: Vec<LaunchSpec>,
    cancels: Vec<RunId>,
    /// Active runs: whether `Started` was emitted, in launch order.
    active: Vec<(RunId, bool)>,
    /// Executor refs handed out so far.
    next_ref: u64,
}

impl RecordingExecutor {
    /// Builds a fake whose runs stay active until [`RecordingExecutor::finish`] or a cancel.
    #[must_use]
    pub fn new(events: UnboundedSender<ExecutorEvent>) -> Self {
        Self {
            events,
            auto_succeed: false,
            state: Mutex::new(State::default()),
        }
    }

    /// Builds a fake that emits `Started` then `Finished(Succeeded)` at every accepted launch.
    #[must_use]
    pub fn instant(events: UnboundedSender<ExecutorEvent>) -> Self {
        Self {
            events,
            auto_succeed: true,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few vector operations: a panic cannot corrupt the state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, event: ExecutorEvent) {
        // A dropped receiver means the test no longer listens: nothing to do.
        let _ = self.events.send(event);
    }

    fn started_event(state: &mut State, run_id: RunId) -> ExecutorEvent {
        state.next_ref += 1;
        ExecutorEvent::Started {
            run_id,
            attempt: 1,
            executor_ref: format!("fake-{}", state.next_ref),
        }
    }

    /// Every `launch` call so far, in order (duplicates of active ids included).
    #[must_use]
    pub fn launches(&self) -> Vec<LaunchSpec> {
        self.lock().launches.clone()
    }

    /// Every `cancel` call so far, in order (unknown ids included).
    #[must_use]
    pub fn cancels(&self) -> Vec<RunId> {
        self.lock().cancels.clone()
    }

    /// Emits `Started` for an active run that has not started yet; returns whether it did.
    pub fn start(&self, run_id: RunId) -> bool {
        let event = {
            let mut state = self.lock();
            let Some(pos) = state
                .active
                .iter()
                .position(|(id, started)| *id == run_id && !started)
            else {
                return false;
            };
            state.active[pos].1 = true;
            Self::started_event(&mut state, run_id)
        };
        self.emit(event);
        true
    }

    /// Finishes an active run with `outcome`: emits `Started` (if not yet) and `Finished`.
    /// Returns false (and emits nothing) when the run is not active.
    pub fn finish(&self, run_id: RunId, outcome: Outcome) -> bool {
        let started = {
            let mut state = self.lock();
            let Some(pos) = state.active.iter().position(|(id, _)| *id == run_id) else {
                return false;
            };
            let (_, was_started) = state.active.remove(pos);
            (!was_started).then(|| Self::started_event(&mut state, run_id))
        };
        if let Some(ev) = started {
            self.emit(ev);
        }
        self.emit(ExecutorEvent::Finished {
            run_id,
            outcome,
            logs_stored: false,
        });
        true
    }
}

#[async_trait]
impl Executor for RecordingExecutor {
    async fn launch(&self, spec: LaunchSpec) -> Result<(), ExecutorError> {
        let run_id = spec.run_id;
        let empty = spec.command.trim().is_empty();
        {
            let mut state = self.lock();
            state.launches.push(spec);
            if empty {
                return Err(ExecutorError::new(ErrorKind::InvalidInput, "empty command"));
            }
            if state.active.iter().any(|(id, _)| *id == run_id) {
                return Ok(());
            }
            state.active.push((run_id, false));
        }
        if self.auto_succeed {
            self.finish(run_id, Outcome::Succeeded);
        }
        Ok(())
    }

    async fn cancel(
        &self,
        run_id: RunId,
        _policy: CancellationPolicy,
    ) -> Result<(), ExecutorError> {
        let was_active = {
            let mut state = self.lock();
            state.cancels.push(run_id);
            let pos = state.active.iter().position(|(id, _)| *id == run_id);
            pos.map(|p| state.active.remove(p)).is_some()
        };
        if was_active {
            self.emit(ExecutorEvent::Finished {
                run_id,
                outcome: Outcome::Cancelled,
                logs_stored: false,
            });
        }
        Ok(())
    }

    async fn active(&self) -> Vec<RunId> {
        self.lock().active.iter().map(|(id, _)| *id).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use super::*;
    use crate::test_suite::{self, Capabilities};
    use nexus_payload::PayloadStore;

    fn make(
        events: UnboundedSender<ExecutorEvent>,
        _payloads: Arc<dyn PayloadStore>,
        _work_dir: &Path,
    ) -> Arc<dyn Executor> {
        Arc::new(RecordingExecutor::new(events))
    }

    #[tokio::test]
    async fn conformance() {
        test_suite::run_all(
            &make,
            Capabilities {
                real_processes: false,
            },
        )
        .await;
    }

    #[tokio::test]
    async fn records_and_finishes() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let exec = RecordingExecutor::new(tx);
        let s = test_suite::sh("exit 0");
        exec.launch(s.clone()).await.unwrap();
        exec.launch(s.clone()).await.unwrap();
        assert_eq!(exec.launches().len(), 2);
        assert!(exec.start(s.run_id));
        assert!(!exec.start(s.run_id));
        assert!(exec.finish(s.run_id, Outcome::Succeeded));
        assert!(!exec.finish(s.run_id, Outcome::Succeeded));
        let ev = test_suite::collect_until_finished(&mut rx, s.run_id, 1).await;
        assert_eq!(ev.len(), 2);
        assert!(matches!(&ev[0], ExecutorEvent::Started { attempt: 1, .. }));
        assert!(exec.active().await.is_empty());
        exec.cancel(s.run_id, CancellationPolicy::Background)
            .await
            .unwrap();
        assert_eq!(exec.cancels(), vec![s.run_id]);
        assert!(rx.try_recv().is_err());
        // Finishing emits Started first when the test did not.
        let s2 = test_suite::sh("exit 0");
        exec.launch(s2.clone()).await.unwrap();
        exec.finish(s2.run_id, Outcome::Cancelled);
        let ev = test_suite::collect_until_finished(&mut rx, s2.run_id, 1).await;
        assert_eq!(ev.len(), 2);
    }

    #[tokio::test]
    async fn instant_succeeds() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let exec = RecordingExecutor::instant(tx);
        let s = test_suite::sh("exit 0");
        exec.launch(s.clone()).await.unwrap();
        let ev = test_suite::collect_until_finished(&mut rx, s.run_id, 1).await;
        assert_eq!(ev.len(), 2);
        assert_eq!(
            ev[1],
            ExecutorEvent::Finished {
                run_id: s.run_id,
                outcome: Outcome::Succeeded,
                logs_stored: false
            }
        );
        assert!(exec.active().await.is_empty());
        // A finished id may be launched again.
        exec.launch(s.clone()).await.unwrap();
        let ev = test_suite::collect_until_finished(&mut rx, s.run_id, 1).await;
        assert_eq!(ev.len(), 2);
    }
}
