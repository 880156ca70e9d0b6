//! `PayloadStore`: input payloads, results and logs, addressed by key, with signed URLs.
//!
//! Contract (held by [`test_suite`]):
//! * [`PayloadStore::put`] is durable when it returns and replaces any object under the key.
//! * [`PayloadStore::get`] of an unknown key returns `Ok(None)`; a backend failure is an error,
//!   never "not found".
//! * [`PayloadStore::delete`] of an unknown key is not an error.
//! * [`PayloadStore::signed_get_url`] / [`PayloadStore::signed_put_url`] return URLs that work
//!   with a plain HTTP client until they expire; a tampered or expired URL is refused (403).
//!   For the filesystem store these URLs point at Nexus itself and are checked with
//!   [`crate::sign::UrlSigner`].
//!
//! Backends: [`FsPayloadStore`] (a file per object), [`SqliteObjectStore`] (rows of one SQLite
//! file with group commit; mints no URLs), [`TieredPayloadStore`] (small objects in the latter,
//! big ones in the former: what standalone uses), [`S3PayloadStore`] (AWS S3 or any
//! S3-compatible store, SigV4 presigned URLs: distributed mode), [`InMemoryPayloadStore`] (test
//! fake).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::ErrorKind;

pub mod fs;
pub mod memory;
pub mod s3;
pub mod sqlite;
#[cfg(any(test, feature = "testsuite"))]
pub mod test_suite;
pub mod tiered;

pub use fs::FsPayloadStore;
pub use memory::InMemoryPayloadStore;
pub use s3::{S3Config, S3PayloadStore};
pub use sqlite::SqliteObjectStore;
pub use tiered::TieredPayloadStore;

/// Errors of a [`PayloadStore`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("payload store {kind:?}: {message}")]
pub struct PayloadError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Details.
    pub message: String,
}

impl PayloadError {
    /// Builds an error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Object keys used by Nexus. One place, so every backend and URL route agrees.
#[derive(Debug)]
pub struct Keys;

impl Keys {
    /// Key of a run's input payload.
    #[must_use]
    pub fn payload(algorithm: &str, id: &str) -> String {
        format!("payloads/{algorithm}/{id}")
    }
    /// Key of a run's uploaded result.
    #[must_use]
    pub fn result(algorithm: &str, id: &str) -> String {
        format!("results/{algorithm}/{id}")
    }
    /// Key of a run's captured logs.
    #[must_use]
    pub fn logs(algorithm: &str, id: &str) -> String {
        format!("logs/{algorithm}/{id}")
    }
}

/// Durable object storage for payloads, results and logs.
#[async_trait]
pub trait PayloadStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores `bytes` under `key`, durably.
    ///
    /// # Errors
    /// Backend failures.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), PayloadError>;

    /// Returns the object, or `None` when the key is unknown.
    ///
    /// # Errors
    /// Backend failures (never for a missing key).
    async fn get(&self, key: &str) -> Result<Option<Bytes>, PayloadError>;

    /// Deletes the object; unknown keys are fine.
    ///
    /// # Errors
    /// Backend failures.
    async fn delete(&self, key: &str) -> Result<(), PayloadError>;

    /// Returns a URL from which a plain HTTP GET reads the object until `valid_for` has passed.
    ///
    /// # Errors
    /// Backend failures.
    async fn signed_get_url(&self, key: &str, valid_for: Duration) -> Result<String, PayloadError>;

    /// Returns a URL to which a plain HTTP PUT writes the object until `valid_for` has passed.
    ///
    /// # Errors
    /// Backend failures.
    async fn signed_put_url(&self, key: &str, valid_for: Duration) -> Result<String, PayloadError>;
}
