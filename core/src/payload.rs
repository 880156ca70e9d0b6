//! `PayloadStore`: input payloads, results and logs, addressed by key, with signed URLs.
//!
//! Contract (held by [`test_suite`]):
//! * [`PayloadStore::put`] is durable when it returns and replaces any object under the key.
//! * [`PayloadStore::put_reader`] is `put` from a reader of an announced length: a body shorter
//!   or longer than announced is `InvalidInput` and stores nothing (the previous object stays).
//!   Backends that can stream hold a bounded buffer; the others read the body into memory.
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
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _};

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

    /// Stores exactly `len` bytes read from `body` under `key`, durably, holding at most a
    /// bounded buffer in memory where the backend allows (S3: `part_size` × in-flight parts;
    /// files: a copy buffer). Fewer or more than `len` bytes is an `InvalidInput` error and
    /// stores nothing.
    ///
    /// The default reads the body into memory (checking its length) and calls
    /// [`PayloadStore::put`]. Replaces any object under the key, as `put` does.
    ///
    /// # Errors
    /// `InvalidInput` for a body of the wrong length or one that fails to read (`Timeout` if the
    /// read timed out); backend failures as [`PayloadStore::put`].
    async fn put_reader(
        &self,
        key: &str,
        mut body: Box<dyn AsyncRead + Send + Unpin>,
        len: u64,
    ) -> Result<(), PayloadError> {
        let bytes = read_exactly(key, &mut *body, len).await?;
        self.put(key, bytes).await
    }

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

/// A [`PayloadStore::put_reader`] body, borrowed.
type BodyRef<'a> = &'a mut (dyn AsyncRead + Send + Unpin);

/// Largest buffer allocated ahead of a body's bytes; a bigger chunk grows as its bytes arrive,
/// so a length announced but never sent costs no more than this.
const MAX_PREALLOC: usize = 16 * 1024 * 1024;

/// The error of a `put_reader` body that failed to read: the caller's input, not the backend.
fn body_error(key: &str, e: &std::io::Error) -> PayloadError {
    let kind = if e.kind() == std::io::ErrorKind::TimedOut {
        ErrorKind::Timeout
    } else {
        ErrorKind::InvalidInput
    };
    PayloadError::new(
        kind,
        format!("reading the body of '{key}': {e}: nothing stored"),
    )
}

/// `n` as a buffer length (`InvalidInput` if it does not fit this platform's memory).
fn buffer_len(key: &str, n: u64) -> Result<usize, PayloadError> {
    usize::try_from(n).map_err(|_| {
        PayloadError::new(
            ErrorKind::InvalidInput,
            format!("the body of '{key}' is too big for memory ({n} bytes)"),
        )
    })
}

/// Reads the next `n` bytes of `body`, of which `done` bytes of `len` were read before: an
/// `InvalidInput` error if it ends sooner. Never reads past the `n` bytes.
async fn read_chunk(
    key: &str,
    body: BodyRef<'_>,
    n: u64,
    done: u64,
    len: u64,
) -> Result<Bytes, PayloadError> {
    let want = buffer_len(key, n)?;
    let mut buf = BytesMut::with_capacity(want.min(MAX_PREALLOC));
    let mut limited = body.take(n);
    while buf.len() < want {
        let got = limited
            .read_buf(&mut buf)
            .await
            .map_err(|e| body_error(key, &e))?;
        if got == 0 {
            let read = done + buf.len() as u64;
            return Err(PayloadError::new(
                ErrorKind::InvalidInput,
                format!(
                    "the body of '{key}' ended after {read} of the {len} bytes announced: \
                     nothing stored"
                ),
            ));
        }
    }
    Ok(buf.freeze())
}

/// Checks that `body` ends after the `len` bytes read from it.
async fn expect_end(key: &str, body: BodyRef<'_>, len: u64) -> Result<(), PayloadError> {
    let mut one = [0u8; 1];
    match body.read(&mut one).await {
        Ok(0) => Ok(()),
        Ok(_) => Err(PayloadError::new(
            ErrorKind::InvalidInput,
            format!("the body of '{key}' is longer than the {len} bytes announced: nothing stored"),
        )),
        Err(e) => Err(body_error(key, &e)),
    }
}

/// Reads all of `body` into memory, checking it is exactly `len` bytes long.
async fn read_exactly(key: &str, body: BodyRef<'_>, len: u64) -> Result<Bytes, PayloadError> {
    let bytes = read_chunk(key, &mut *body, len, 0, len).await?;
    expect_end(key, body, len).await?;
    Ok(bytes)
}
