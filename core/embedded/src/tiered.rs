//! `TieredPayloadStore`: small objects in SQLite with group commit, big ones as files.
//!
//! Why: every object the file store writes costs a new inode, a rename and two fsyncs; for the
//! small results and logs most runs produce, that was ≈ 40 % of standalone's CPU in the `e2e`
//! benchmark (`bench/RESULTS.md`, issue #3). Rows of a [`SqliteObjectStore`] share one fsync per
//! batch instead, with the same guarantee (an acknowledged `put` survives power loss).
//!
//! Rules (the [`PayloadStore`] contract holds over both tiers):
//! * `put` sends objects of up to `small_max` bytes (default [`DEFAULT_SMALL_MAX`]) to the
//!   SQLite store and bigger ones to the [`FsPayloadStore`]. A put to the file store then deletes
//!   the key from the SQLite store, which `get` reads first; a put to the SQLite store leaves an
//!   older file under the key in place: it is shadowed (never served) and removed by `delete`.
//!   (Removing it at every small put would cost a blocking-pool round trip per object for a case
//!   that only arises when an object is rewritten with a different size class.)
//! * `put_reader` chooses the tier by the announced length, with the same rules: up to
//!   `small_max` bytes it reads the body into memory and puts it in SQLite; above, it streams it
//!   into the file store ([`FsPayloadStore`]'s `put_reader`) and then deletes the key from
//!   SQLite. A body of the wrong length stores nothing in either tier.
//! * `put_stream` (length unknown) reads up to `small_max + 1` bytes: a body that ended by then
//!   goes to SQLite as a small `put`; otherwise those bytes and the rest of the body stream into
//!   the file store, and the key is then deleted from SQLite. The check runs right before the
//!   object is written (SQLite) or renamed into place (files).
//! * `get` and `open` look in the SQLite store, then the file store, so files written by older
//!   versions are still served; `open` streams files and serves rows from memory (they are
//!   small).
//! * `delete` deletes from both.
//! * Signed URLs and their check ([`TieredPayloadStore::verify`]) are the file store's: the same
//!   `{base}/data/v1/objects/{key}?exp&sig` URLs, served by the object routes, which call
//!   `verify` and then this store's `get` / `put`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

use tokio::io::AsyncReadExt as _;

use crate::SqliteObjectStore;
use nexus_payload::{
    BeforeCommit, FsPayloadStore, ObjectReader, PayloadError, PayloadStore, read_exactly,
    read_up_to,
};

/// Largest object kept in SQLite by default: 256 KiB.
pub(crate) const DEFAULT_SMALL_MAX: usize = 256 * 1024;

/// Small objects in SQLite, big ones as files; see the module docs.
#[derive(Debug, Clone)]
pub struct TieredPayloadStore {
    small: SqliteObjectStore,
    large: Arc<FsPayloadStore>,
    small_max: usize,
}

impl TieredPayloadStore {
    /// Builds a store keeping objects of up to [`DEFAULT_SMALL_MAX`] bytes in `small` and the
    /// others in `large`, whose signed URLs it hands out.
    #[must_use]
    pub fn new(small: SqliteObjectStore, large: Arc<FsPayloadStore>) -> Self {
        Self {
            small,
            large,
            small_max: DEFAULT_SMALL_MAX,
        }
    }

    /// Returns the store with objects of up to `small_max` bytes kept in SQLite.
    #[must_use]
    pub fn with_small_max(mut self, small_max: usize) -> Self {
        self.small_max = small_max;
        self
    }

    /// The file store (big objects, signed URLs).
    #[must_use]
    pub fn files(&self) -> &Arc<FsPayloadStore> {
        &self.large
    }

    /// Checks a request to the object route; see [`FsPayloadStore::verify`].
    ///
    /// # Errors
    /// As [`FsPayloadStore::verify`]: `InvalidInput` for an invalid key, `Forbidden` for a
    /// missing, forged or expired signature.
    pub fn verify(
        &self,
        method: &str,
        key: &str,
        exp: Option<&str>,
        sig: Option<&str>,
    ) -> Result<(), PayloadError> {
        self.large.verify(method, key, exp, sig)
    }
}

#[async_trait]
impl PayloadStore for TieredPayloadStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), PayloadError> {
        if bytes.len() <= self.small_max {
            self.small.put(key, bytes).await
        } else {
            self.large.put(key, bytes).await?;
            // After the file is durable: until this delete commits, `get` still serves the old
            // small object, which is fine for a put that has not returned yet.
            self.small.delete(key).await
        }
    }

    async fn put_reader(
        &self,
        key: &str,
        mut body: Box<dyn AsyncRead + Send + Unpin>,
        len: u64,
    ) -> Result<(), PayloadError> {
        if len <= self.small_max as u64 {
            // At most `small_max` bytes in memory; then exactly as `put` of a small object.
            let bytes = read_exactly(key, &mut *body, len).await?;
            self.small.put(key, bytes).await
        } else {
            // Streamed into a file; nothing stored (the small row stays) if the body is wrong.
            self.large.put_reader(key, body, len).await?;
            // As in `put`: the row is deleted after the file is durable.
            self.small.delete(key).await
        }
    }

    async fn put_stream(
        &self,
        key: &str,
        mut body: Box<dyn AsyncRead + Send + Unpin>,
        check: Option<&dyn BeforeCommit>,
    ) -> Result<u64, PayloadError> {
        let head = read_up_to(key, &mut *body, self.small_max as u64 + 1).await?;
        if head.len() <= self.small_max {
            if let Some(c) = check {
                c.check().await?;
            }
            let n = head.len() as u64;
            self.small.put(key, head).await?;
            return Ok(n);
        }
        // Big: what was read goes first, then the rest of the body, into a file.
        let rest = Box::new(std::io::Cursor::new(head).chain(body));
        let n = self.large.put_stream(key, rest, check).await?;
        // As in `put`: the row is deleted after the file is durable.
        self.small.delete(key).await?;
        Ok(n)
    }

    async fn open(&self, key: &str) -> Result<Option<ObjectReader>, PayloadError> {
        match self.small.get(key).await? {
            Some(b) => Ok(Some(ObjectReader::from_bytes(b))),
            None => self.large.open(key).await,
        }
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, PayloadError> {
        match self.small.size(key).await? {
            Some(n) => Ok(Some(n)),
            None => self.large.size(key).await,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, PayloadError> {
        match self.small.get(key).await? {
            Some(b) => Ok(Some(b)),
            None => self.large.get(key).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), PayloadError> {
        self.small.delete(key).await?;
        self.large.delete(key).await
    }

    async fn signed_get_url(&self, key: &str, valid_for: Duration) -> Result<String, PayloadError> {
        self.large.signed_get_url(key, valid_for).await
    }

    async fn signed_put_url(&self, key: &str, valid_for: Duration) -> Result<String, PayloadError> {
        self.large.signed_put_url(key, valid_for).await
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use nexus_model::error::ErrorKind;
    use nexus_model::sign::Signer;
    use nexus_payload::test_suite;

    fn open(dir: &Path, signer: &Signer) -> TieredPayloadStore {
        let small = SqliteObjectStore::open(&dir.join("objects.db")).unwrap();
        let large = FsPayloadStore::open(
            dir.join("objects"),
            "http://127.0.0.1:8090".to_owned(),
            signer.clone(),
        )
        .unwrap();
        TieredPayloadStore::new(small, Arc::new(large))
    }

    fn file_of(dir: &Path, key: &str) -> std::path::PathBuf {
        dir.join("objects").join(key)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        test_suite::run_all(&open(dir.path(), &Signer::random())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_in_sqlite_large_in_files_and_reopen_keeps_both() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::random();
        let s = open(dir.path(), &signer);
        let small = Bytes::from(vec![7u8; 1024]);
        let large = Bytes::from(vec![9u8; 300 * 1024]);
        s.put("results/a/small", small.clone()).await.unwrap();
        s.put("results/a/large", large.clone()).await.unwrap();
        assert!(!file_of(dir.path(), "results/a/small").exists());
        assert!(file_of(dir.path(), "results/a/large").exists());
        assert_eq!(
            s.small.get("results/a/small").await.unwrap(),
            Some(small.clone())
        );
        assert_eq!(s.small.get("results/a/large").await.unwrap(), None);
        assert_eq!(s.get("results/a/small").await.unwrap(), Some(small.clone()));
        assert_eq!(s.get("results/a/large").await.unwrap(), Some(large.clone()));
        drop(s);
        let s = open(dir.path(), &signer);
        assert_eq!(s.get("results/a/small").await.unwrap(), Some(small));
        assert_eq!(s.get("results/a/large").await.unwrap(), Some(large));
        s.delete("results/a/never-written").await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rewrites_across_tiers_and_files_of_older_versions() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), &Signer::random()).with_small_max(16);
        // Small, then large: the small row must not shadow the new file.
        s.put("k/1", Bytes::from_static(b"small")).await.unwrap();
        s.put("k/1", Bytes::from(vec![1u8; 64])).await.unwrap();
        assert_eq!(
            s.get("k/1").await.unwrap(),
            Some(Bytes::from(vec![1u8; 64]))
        );
        // Large, then small: the row shadows the file; delete removes both.
        s.put("k/1", Bytes::from_static(b"tiny")).await.unwrap();
        assert_eq!(
            s.get("k/1").await.unwrap(),
            Some(Bytes::from_static(b"tiny"))
        );
        s.delete("k/1").await.unwrap();
        assert_eq!(s.get("k/1").await.unwrap(), None);
        assert!(!file_of(dir.path(), "k/1").exists());
        // A file written by an older version (file store only) is still served.
        s.files()
            .put("k/old", Bytes::from_static(b"old"))
            .await
            .unwrap();
        assert_eq!(
            s.get("k/old").await.unwrap(),
            Some(Bytes::from_static(b"old"))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn put_reader_picks_the_tier_by_the_announced_length() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), &Signer::random()).with_small_max(16);
        let small = Bytes::from_static(b"sixteen bytes!!!");
        let big = test_suite::generated(100_000, 1);
        s.put_reader("k/1", test_suite::reader(&small, 3), 16)
            .await
            .unwrap();
        assert!(!file_of(dir.path(), "k/1").exists());
        assert_eq!(s.small.get("k/1").await.unwrap(), Some(small.clone()));
        // Big over small: streamed into a file, the row deleted.
        s.put_reader("k/1", test_suite::reader(&big, 4096), 100_000)
            .await
            .unwrap();
        assert!(file_of(dir.path(), "k/1").exists());
        assert_eq!(s.small.get("k/1").await.unwrap(), None);
        assert_eq!(s.get("k/1").await.unwrap(), Some(big.clone()));
        // A wrong big body changes neither tier.
        s.put("k/2", small.clone()).await.unwrap();
        let err = s
            .put_reader("k/2", test_suite::reader(&big, 4096), 100_001)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{err}");
        assert_eq!(s.small.get("k/2").await.unwrap(), Some(small));
        assert!(!file_of(dir.path(), "k/2").exists());
    }

    #[tokio::test]
    async fn urls_are_the_file_stores() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), &Signer::random());
        let url = s
            .signed_get_url("results/a/1", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:8090/data/v1/objects/results/a/1?exp="),
            "{url}"
        );
        let query = url.split_once('?').unwrap().1;
        let (exp, sig) = query.split_once('&').unwrap();
        let exp = exp.strip_prefix("exp=").unwrap();
        let sig = sig.strip_prefix("sig=").unwrap();
        s.verify("GET", "results/a/1", Some(exp), Some(sig))
            .unwrap();
        let err = s
            .verify("PUT", "results/a/1", Some(exp), Some(sig))
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Forbidden);
    }
}
