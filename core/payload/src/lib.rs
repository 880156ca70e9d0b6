//! `PayloadStore`: input payloads, results and logs, addressed by key, with signed URLs.
//!
//! Contract (held by [`test_suite`]):
//! * [`PayloadStore::put`] is durable when it returns and replaces any object under the key.
//! * [`PayloadStore::put_reader`] is `put` from a reader of an announced length: a body shorter
//!   or longer than announced is `InvalidInput` and stores nothing (the previous object stays).
//!   Backends that can stream hold a bounded buffer; the others read the body into memory.
//! * [`PayloadStore::put_stream`] is `put` from a reader of unknown length, read to its end; a
//!   body that fails to read stores nothing. Its [`BeforeCommit`] check runs after the body was
//!   received in full and just before the object is replaced: an error there stores nothing.
//!   The callers bound the body (the object routes count bytes against `max_result_bytes`).
//! * [`PayloadStore::get`] of an unknown key returns `Ok(None)`; a backend failure is an error,
//!   never "not found". [`PayloadStore::open`] is `get` as a stream of known length (what the
//!   HTTP routes serve: memory stays bounded whatever the object's size), and
//!   [`PayloadStore::size`] says whether an object exists, and how big it is, without reading it.
//! * [`PayloadStore::delete`] of an unknown key is not an error.
//! * [`PayloadStore::signed_get_url`] / [`PayloadStore::signed_put_url`] return URLs that work
//!   with a plain HTTP client until they expire; a tampered or expired URL is refused (403).
//!   For the filesystem store these URLs point at Nexus itself and are checked with
//!   [`nexus_model::sign::UrlSigner`].
//!
//! Backends: [`FsPayloadStore`] (a file per object), `S3PayloadStore` (feature `s3`: AWS S3 or any
//! S3-compatible store, SigV4 presigned URLs: distributed mode), [`InMemoryPayloadStore`] (test
//! fake); `nexus-embedded` adds the SQLite object store and the tiered store standalone uses.

use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use nexus_model::error::ErrorKind;

pub mod fs;
pub mod memory;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(any(test, feature = "testsuite"))]
pub mod test_suite;

pub use fs::FsPayloadStore;
pub use memory::InMemoryPayloadStore;
#[cfg(feature = "s3")]
pub use s3::{S3Config, S3PayloadStore};

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

/// A stored object opened for reading by [`PayloadStore::open`].
pub struct ObjectReader {
    /// Its size in bytes.
    pub len: u64,
    /// Its bytes, read as they are needed.
    pub body: Box<dyn AsyncRead + Send + Unpin>,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl ObjectReader {
    /// Returns a reader of bytes already in memory.
    #[must_use]
    pub fn from_bytes(bytes: Bytes) -> Self {
        Self {
            len: bytes.len() as u64,
            body: Box::new(std::io::Cursor::new(bytes)),
        }
    }
}

/// A last check before a streamed put replaces an object (see [`PayloadStore::put_stream`]):
/// e.g. "the run is still RUNNING" before its result is written.
#[async_trait]
pub trait BeforeCommit: Send + Sync {
    /// Returns `Ok` when the object may be stored now.
    ///
    /// # Errors
    /// Why it may not: the put fails with this error and stores nothing.
    async fn check(&self) -> Result<(), PayloadError>;
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

    /// Stores the bytes read from `body` until its end (a length not known in advance) under
    /// `key`, durably; returns how many. `check`, when given, runs once the body has been
    /// received in full, right before the object is replaced; its error stores nothing.
    /// Replaces any object under the key.
    ///
    /// The default reads the body into memory (for the fake and small-object backends); the
    /// file, tiered and S3 stores stream it with a bounded buffer. The body must be bounded by
    /// the caller (e.g. a reader that fails past a size limit).
    ///
    /// # Errors
    /// `InvalidInput` for a body that fails to read (`Timeout` if the read timed out); the
    /// check's error; backend failures as [`PayloadStore::put`].
    async fn put_stream(
        &self,
        key: &str,
        mut body: Box<dyn AsyncRead + Send + Unpin>,
        check: Option<&dyn BeforeCommit>,
    ) -> Result<u64, PayloadError> {
        let mut buf = Vec::new();
        body.read_to_end(&mut buf)
            .await
            .map_err(|e| body_error(key, &e))?;
        if let Some(c) = check {
            c.check().await?;
        }
        let n = buf.len() as u64;
        self.put(key, Bytes::from(buf)).await?;
        Ok(n)
    }

    /// Returns the object, or `None` when the key is unknown.
    ///
    /// # Errors
    /// Backend failures (never for a missing key).
    async fn get(&self, key: &str) -> Result<Option<Bytes>, PayloadError>;

    /// Opens the object for reading: its size and a reader of its bytes, or `None` when the key
    /// is unknown. The reader sees the object as it was when opened, even if it is replaced
    /// meanwhile. The default reads the whole object with [`PayloadStore::get`] (the fake,
    /// small objects); the file, tiered and S3 stores stream it.
    ///
    /// # Errors
    /// Backend failures (never for a missing key); a reader's failure midway is an I/O error of
    /// the reader.
    async fn open(&self, key: &str) -> Result<Option<ObjectReader>, PayloadError> {
        Ok(self.get(key).await?.map(ObjectReader::from_bytes))
    }

    /// Returns the object's size in bytes, or `None` when the key is unknown, without reading
    /// the object where the backend allows. The default opens it ([`PayloadStore::open`]).
    ///
    /// # Errors
    /// Backend failures (never for a missing key).
    async fn size(&self, key: &str) -> Result<Option<u64>, PayloadError> {
        Ok(self.open(key).await?.map(|o| o.len))
    }

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
    let buf = read_up_to(key, body, n).await?;
    if (buf.len() as u64) < n {
        let read = done + buf.len() as u64;
        return Err(PayloadError::new(
            ErrorKind::InvalidInput,
            format!(
                "the body of '{key}' ended after {read} of the {len} bytes announced: \
                 nothing stored"
            ),
        ));
    }
    Ok(buf)
}

/// Reads up to `n` bytes of `body`: fewer only when the body ended (for backends that keep small
/// objects in memory-sized rows).
///
/// # Errors
/// The body failed, or `n` is beyond what may be buffered.
pub async fn read_up_to(key: &str, body: BodyRef<'_>, n: u64) -> Result<Bytes, PayloadError> {
    let want = buffer_len(key, n)?;
    let mut buf = BytesMut::with_capacity(want.min(MAX_PREALLOC));
    let mut limited = body.take(n);
    while buf.len() < want {
        let got = limited
            .read_buf(&mut buf)
            .await
            .map_err(|e| body_error(key, &e))?;
        if got == 0 {
            break;
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
///
/// # Errors
/// The body failed, or was shorter or longer than `len`.
pub async fn read_exactly(key: &str, body: BodyRef<'_>, len: u64) -> Result<Bytes, PayloadError> {
    let bytes = read_chunk(key, &mut *body, len, 0, len).await?;
    expect_end(key, body, len).await?;
    Ok(bytes)
}
