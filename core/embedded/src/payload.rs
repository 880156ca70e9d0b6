//! `SqliteObjectStore`: a [`PayloadStore`] keeping objects as rows of one SQLite file, with
//! group commit.
//!
//! Objects live in `objects(key TEXT PRIMARY KEY, bytes BLOB NOT NULL)`. Writes go through the
//! shared group-commit writer ([`crate::db::Db`]): every `put` or `delete` queued while a
//! batch commits goes into the next transaction, committed with ONE fsync of the WAL
//! (`synchronous=FULL`), so an acknowledged `put` survives power loss, as with
//! [`nexus_payload::FsPayloadStore`], but costs a share of one fsync instead of a new inode and two
//! fsyncs. Each command is a single statement (the writer's invariant). Reads use the pooled
//! read-only connections.
//!
//! Meant for small objects (results, logs, payloads up to a few hundred KiB: the whole object is
//! copied through memory, and a large blob is many overflow pages in the WAL); see
//! [`crate::TieredPayloadStore`], which sends bigger objects to the filesystem.
//!
//! It does **not** mint signed URLs: `signed_get_url` / `signed_put_url` return `Internal`. Wrap
//! it in a [`crate::TieredPayloadStore`], whose URLs are the file store's and served by Nexus.
//! Keys are checked as the file store checks them, so both accept the same keys.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{OptionalExtension, params};

use crate::db::{Db, DbError, Options};
use nexus_model::error::ErrorKind;
use nexus_payload::fs::validate_key;
use nexus_payload::{PayloadError, PayloadStore};

/// Version of the schema below, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;
/// Most write commands committed in one transaction.
const MAX_BATCH: usize = 512;
/// Pages kept in the writer connection's cache, in KiB: 16 MiB (objects are written once and
/// read back by key, so the writer needs little more than the B-tree's inner pages).
const WRITER_CACHE_KIB: i64 = 16 * 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    bytes BLOB NOT NULL
);
";

impl From<DbError> for PayloadError {
    fn from(e: DbError) -> Self {
        PayloadError::new(e.kind, e.message)
    }
}

/// Maps a SQLite error to a payload error (the mapping itself lives in [`DbError`]).
fn sql_err(e: rusqlite::Error) -> PayloadError {
    DbError::from(e).into()
}

/// Objects in one SQLite file with group commit; see the module docs.
#[derive(Debug, Clone)]
pub struct SqliteObjectStore {
    db: Db,
}

impl SqliteObjectStore {
    /// Opens (creating if needed) the store at `path` (e.g. `<data>/objects.db`): parent
    /// directory, file, schema, WAL, `synchronous=FULL`, and an exclusive lock on `<path>.lock`
    /// held until the store is dropped. Blocking: call it from `spawn_blocking` in async code.
    ///
    /// # Errors
    /// `Unavailable` when another process holds the store or the file cannot be opened;
    /// `Internal` when the file was written by a newer version.
    pub fn open(path: &Path) -> Result<Self, PayloadError> {
        let db = Db::open(
            path,
            &Options {
                what: "object store",
                writer_thread: "nexus-obj-writer",
                checkpoint_thread: "nexus-obj-ckpt",
                schema: SCHEMA,
                schema_version: SCHEMA_VERSION,
                upgrades: &[],
                max_batch: MAX_BATCH,
                writer_cache_kib: WRITER_CACHE_KIB,
            },
        )?;
        Ok(Self { db })
    }

    /// Returns the database file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    fn no_urls() -> PayloadError {
        PayloadError::new(
            ErrorKind::Internal,
            "the sqlite object store does not mint signed URLs: use it through TieredPayloadStore",
        )
    }
}

#[async_trait]
impl PayloadStore for SqliteObjectStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), PayloadError> {
        validate_key(key)?;
        let key = key.to_owned();
        self.db
            .write(move |conn| {
                // One modifying statement (the writer's invariant).
                conn.prepare_cached(
                    "INSERT INTO objects (key, bytes) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET bytes = excluded.bytes",
                )
                .map_err(sql_err)?
                .execute(params![key, bytes.as_ref()])
                .map_err(sql_err)?;
                Ok(())
            })
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, PayloadError> {
        validate_key(key)?;
        self.db.read_point(|conn| {
            conn.prepare_cached("SELECT bytes FROM objects WHERE key = ?1")
                .map_err(sql_err)?
                .query_row([key], |r| r.get::<_, Vec<u8>>(0))
                .optional()
                .map_err(sql_err)
                .map(|b| b.map(Bytes::from))
        })
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, PayloadError> {
        validate_key(key)?;
        self.db.read_point(|conn| {
            conn.prepare_cached("SELECT length(bytes) FROM objects WHERE key = ?1")
                .map_err(sql_err)?
                .query_row([key], |r| r.get::<_, i64>(0))
                .optional()
                .map_err(sql_err)
                .map(|n| n.map(|n| u64::try_from(n).unwrap_or(0)))
        })
    }

    async fn delete(&self, key: &str) -> Result<(), PayloadError> {
        validate_key(key)?;
        let key = key.to_owned();
        self.db
            .write(move |conn| {
                conn.prepare_cached("DELETE FROM objects WHERE key = ?1")
                    .map_err(sql_err)?
                    .execute([key])
                    .map_err(sql_err)?;
                Ok(())
            })
            .await
    }

    async fn signed_get_url(
        &self,
        _key: &str,
        _valid_for: Duration,
    ) -> Result<String, PayloadError> {
        Err(Self::no_urls())
    }

    async fn signed_put_url(
        &self,
        _key: &str,
        _valid_for: Duration,
    ) -> Result<String, PayloadError> {
        Err(Self::no_urls())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_payload::test_suite;

    /// The whole suite but `signed_urls`: this store does not mint URLs (see the module docs);
    /// the tiered store, which does, runs the whole suite over it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteObjectStore::open(&dir.path().join("objects.db")).unwrap();
        test_suite::put_get_round_trip(&s).await;
        test_suite::overwrite_replaces(&s).await;
        test_suite::get_unknown_is_none(&s).await;
        test_suite::delete_is_idempotent(&s).await;
        test_suite::binary_data(&s).await;
        test_suite::large_object(&s).await;
        test_suite::nexus_keys(&s).await;
        test_suite::open_and_size(&s).await;
        test_suite::put_stream_round_trip(&s).await;
        test_suite::put_stream_check_and_failures(&s).await;
        let err = s
            .signed_get_url("a/b", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Internal);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_drop_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/objects.db");
        let s = SqliteObjectStore::open(&path).unwrap();
        s.put("results/a/1", Bytes::from_static(b"one"))
            .await
            .unwrap();
        s.put("results/a/2", Bytes::from_static(b"two"))
            .await
            .unwrap();
        s.delete("results/a/2").await.unwrap();
        drop(s);
        let s = SqliteObjectStore::open(&path).unwrap();
        assert_eq!(
            s.get("results/a/1").await.unwrap(),
            Some(Bytes::from_static(b"one"))
        );
        assert_eq!(s.get("results/a/2").await.unwrap(), None);
        s.delete("results/a/never").await.unwrap();
    }

    #[tokio::test]
    async fn second_open_is_refused_and_bad_keys_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("objects.db");
        let s = SqliteObjectStore::open(&path).unwrap();
        let err = SqliteObjectStore::open(&path).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable);
        assert!(
            err.message.contains("object store")
                && err.message.contains("is locked by another nexus process"),
            "{}",
            err.message
        );
        for key in ["", "../x", "/a", "a//b", "a~tmp"] {
            let e = s.put(key, Bytes::new()).await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{key:?}");
        }
    }

    /// Many concurrent puts share commits and all read back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_puts() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteObjectStore::open(&dir.path().join("objects.db")).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.put(&format!("k/{i}"), Bytes::from(format!("v{i}")))
                        .await
                        .unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        for i in 0..200 {
            assert_eq!(
                s.get(&format!("k/{i}")).await.unwrap(),
                Some(Bytes::from(format!("v{i}")))
            );
        }
    }
}
