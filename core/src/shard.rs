//! `Shard`: hands a run to a shard's receiver.
//!
//! Standalone uses [`InProcessShard`]-style implementations that call the receiver directly; the
//! distributed mode (gRPC) implements the same trait. Contract: `submit` is idempotent per run id
//! (a receiver that already launched the run answers `Ok`); an `Err` with a retryable kind means
//! "try again later" and the dispatcher backs off; `cancel` of an unknown run is `Ok`.

use async_trait::async_trait;

use crate::error::ErrorKind;
use crate::run::{CancellationPolicy, Run, RunId};
use crate::spec::WorkgroupSpec;

/// One run handed to a shard.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// The run record as dispatched.
    pub run: Run,
    /// Its workgroup (placement, concurrency).
    pub workgroup: WorkgroupSpec,
    /// Signed GET URL of the payload, minted at dispatch time (never at accept time, so a run that
    /// waited in the queue never receives an expired URL).
    pub payload_url: String,
}

/// Errors of a [`Shard`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("shard {kind:?}: {message}")]
pub struct ShardError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Details.
    pub message: String,
}

impl ShardError {
    /// Builds an error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

/// A shard's receiver, as seen by a scheduler.
#[async_trait]
pub trait Shard: Send + Sync + std::fmt::Debug + 'static {
    /// Hands a run to the shard for launch.
    ///
    /// # Errors
    /// Retryable kinds mean "later"; others are final for this run.
    async fn submit(&self, dispatch: Dispatch) -> Result<(), ShardError>;

    /// Cancels a run on the shard (idempotent).
    ///
    /// # Errors
    /// Backend failures.
    async fn cancel(&self, run_id: RunId, policy: CancellationPolicy) -> Result<(), ShardError>;
}
