//! Filesystem [`PayloadStore`], whose signed URLs are served by Nexus itself.
//!
//! Objects are files under a root directory, one per key (key segments become directories).
//! Writes are durable: the bytes go to a temporary file in the same directory, which is
//! `sync_all`ed, renamed over the target, and the directory is fsynced. All blocking work runs on
//! tokio's blocking pool. [`PayloadStore::put_reader`] streams the body into the temporary file
//! in chunks of [`COPY_BUF`] (reading the next while the previous is written: at most two in
//! memory) and renames it only once the body ended at the announced length; otherwise, or if
//! the put is cancelled, the temporary file is removed. [`PayloadStore::put_stream`] does the
//! same for a body of unknown length, and runs its check after the file is synced, just before
//! the rename. [`PayloadStore::open`] hands out the open file: a reader keeps the version it
//! opened even if the object is replaced meanwhile (the rename leaves the open inode intact).
//!
//! Signed URLs have the form `{base_url}/data/v1/objects/{key}?exp=<secs>&sig=<sig>`; the MAC
//! covers the HTTP method and the path `/data/v1/objects/{key}`. The HTTP routes call
//! [`FsPayloadStore::verify`] and then stream through [`PayloadStore::open`] /
//! [`PayloadStore::put_stream`].
//!
//! Files are created `0600` and directories `0700` ([`nexus_model::private_fs`]): objects are other
//! runs' payloads and results, which algorithms must not read behind the signed URLs' back.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

use super::{
    BeforeCommit, ObjectReader, PayloadError, PayloadStore, expect_end, read_chunk, read_up_to,
};
use nexus_model::error::ErrorKind;
use nexus_model::sign::{Signer, Subject, now_secs, parse_exp};

/// Path prefix of the object routes; the key follows it.
pub(crate) const ROUTE_PREFIX: &str = "/data/v1/objects/";

/// Filesystem payload store; see the module docs.
#[derive(Debug, Clone)]
pub struct FsPayloadStore {
    root: PathBuf,
    base_url: String,
    signer: Signer,
}

/// Checks a key: non-empty `/`-separated segments of `[A-Za-z0-9._-]`, none `.` or `..`.
///
/// # Errors
/// `InvalidInput` naming the key.
pub fn validate_key(key: &str) -> Result<(), PayloadError> {
    let bad = |why: &str| {
        PayloadError::new(
            ErrorKind::InvalidInput,
            format!("invalid object key {key:?}: {why}"),
        )
    };
    if key.is_empty() {
        return Err(bad("empty"));
    }
    if key.starts_with('/') {
        return Err(bad("must not start with '/'"));
    }
    for seg in key.split('/') {
        if seg.is_empty() {
            return Err(bad("empty path segment"));
        }
        if seg == "." || seg == ".." {
            return Err(bad("'.' and '..' segments are not allowed"));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(bad(
                "segments may only contain A-Z, a-z, 0-9, '.', '_' and '-'",
            ));
        }
    }
    Ok(())
}

/// Maps an I/O error to a [`PayloadError`]; the one place where that mapping happens.
fn io_error(what: &str, path: &Path, e: &io::Error) -> PayloadError {
    let kind = match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorKind::ResourceExhausted,
        io::ErrorKind::TimedOut => ErrorKind::Timeout,
        io::ErrorKind::NotADirectory
        | io::ErrorKind::IsADirectory
        | io::ErrorKind::AlreadyExists => ErrorKind::Conflict,
        _ => ErrorKind::Internal,
    };
    PayloadError::new(kind, format!("{what} {}: {e}", path.display()))
}

/// True for the errors that mean "no object under this key".
fn not_found(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory
    )
}

/// Bytes per write of [`PayloadStore::put_reader`]: one chunk is read from the body while the
/// previous one is written, so a streamed put holds at most twice this much.
pub(crate) const COPY_BUF: u64 = 256 * 1024;

/// A temporary file next to an object's path, written on tokio's blocking pool and renamed over
/// the object by [`TempFile::commit`]. Dropped before that (a write failed, a body of the wrong
/// length, a cancelled put), it removes itself: a failed write stores nothing.
struct TempFile {
    /// `None` once closed by [`TempFile::commit`].
    file: Option<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    /// Set once renamed over `path`: nothing to remove any more.
    renamed: bool,
}

impl TempFile {
    /// Creates the temporary file of `path` (and `path`'s directory if needed).
    fn create(path: &Path) -> Result<Self, PayloadError> {
        let dir = path.parent().ok_or_else(|| {
            PayloadError::new(ErrorKind::Internal, "object path has no parent directory")
        })?;
        nexus_model::private_fs::create_dir_all(dir)
            .map_err(|e| io_error("creating directory", dir, &e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // '~' never occurs in a valid key, so a temp file can never be mistaken for an object.
        let tmp = dir.join(format!("{name}~tmp~{}", uuid::Uuid::new_v4().simple()));
        // 0600 from the start: objects are run payloads, results and logs.
        let file = nexus_model::private_fs::create_new_file(&tmp)
            .map_err(|e| io_error("creating", &tmp, &e))?;
        Ok(Self {
            file: Some(file),
            tmp,
            path: path.to_owned(),
            renamed: false,
        })
    }

    /// Appends `bytes`.
    fn write(&mut self, bytes: &[u8]) -> Result<(), PayloadError> {
        use std::io::Write as _;
        let Some(f) = self.file.as_mut() else {
            return Err(PayloadError::new(
                ErrorKind::Internal,
                "write to a closed temp file",
            ));
        };
        f.write_all(bytes)
            .map_err(|e| io_error("writing", &self.tmp, &e))
    }

    /// Flushes the bytes to disk (`sync_all`) and closes the file; [`TempFile::commit`] then
    /// only renames.
    fn sync(&mut self) -> Result<(), PayloadError> {
        if let Some(f) = self.file.take() {
            f.sync_all()
                .map_err(|e| io_error("syncing", &self.tmp, &e))?;
        }
        Ok(())
    }

    /// Makes the file the object, durably: `sync_all` (unless [`TempFile::sync`] did), rename
    /// over the object, fsync of the directory.
    fn commit(mut self) -> Result<(), PayloadError> {
        if let Some(f) = self.file.take() {
            f.sync_all()
                .map_err(|e| io_error("syncing", &self.tmp, &e))?;
        }
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| io_error("renaming onto", &self.path, &e))?;
        self.renamed = true;
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let d = std::fs::File::open(dir).map_err(|e| io_error("opening directory", dir, &e))?;
        d.sync_all()
            .map_err(|e| io_error("syncing directory", dir, &e))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `path` durably (temp file, `sync_all`, rename, fsync of the directory).
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), PayloadError> {
    let mut file = TempFile::create(path)?;
    file.write(bytes)?;
    file.commit()
}

/// Runs blocking file work on tokio's blocking pool.
fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PayloadError> + Send + 'static,
) -> tokio::task::JoinHandle<Result<T, PayloadError>> {
    tokio::task::spawn_blocking(work)
}

/// The outcome of [`blocking`] work.
async fn joined<T>(
    task: tokio::task::JoinHandle<Result<T, PayloadError>>,
) -> Result<T, PayloadError> {
    task.await
        .map_err(|e| PayloadError::new(ErrorKind::Internal, format!("write task failed: {e}")))?
}

/// Expiry in Unix seconds for a URL valid for `valid_for` from now (rounded up).
fn expiry(valid_for: Duration) -> i64 {
    let secs = valid_for.as_secs() + u64::from(valid_for.subsec_nanos() > 0);
    now_secs().saturating_add(i64::try_from(secs).unwrap_or(i64::MAX))
}

impl FsPayloadStore {
    /// Opens (creating if needed) a store under `root`, minting URLs under `base_url`
    /// (e.g. `http://127.0.0.1:8090`; a trailing slash is stripped).
    ///
    /// # Errors
    /// When the root directory cannot be created.
    pub fn open(root: PathBuf, base_url: String, signer: Signer) -> Result<Self, PayloadError> {
        nexus_model::private_fs::create_dir_all(&root)
            .map_err(|e| io_error("creating payload root", &root, &e))?;
        nexus_model::private_fs::tighten(&root)
            .map_err(|e| io_error("making the payload root private", &root, &e))?;
        let base_url = base_url.trim_end_matches('/').to_owned();
        Ok(Self {
            root,
            base_url,
            signer,
        })
    }

    /// Root directory of the store.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, PayloadError> {
        validate_key(key)?;
        Ok(key.split('/').fold(self.root.clone(), |p, seg| p.join(seg)))
    }

    /// The signed route path of `key`: `/data/v1/objects/{key}`.
    fn route_path(key: &str) -> String {
        format!("{ROUTE_PREFIX}{key}")
    }

    /// Mints a signed URL for `method` on `key` with an explicit expiry (Unix seconds).
    #[must_use]
    pub fn signed_url_at(&self, method: &str, key: &str, expires_at_secs: i64) -> String {
        let path = Self::route_path(key);
        let query = self.signer.sign_url(method, &path, expires_at_secs);
        format!("{}{path}?{query}", self.base_url)
    }

    /// Streams `body` into a temporary file (`len` bytes exactly, or to its end when `None`),
    /// runs `check`, then renames the file over the object; returns the bytes stored.
    async fn stream_into(
        &self,
        key: &str,
        mut body: Box<dyn AsyncRead + Send + Unpin>,
        len: Option<u64>,
        check: Option<&dyn BeforeCommit>,
    ) -> Result<u64, PayloadError> {
        let path = self.path_of(key)?;
        // The pending blocking work (creating the file, then writing the previous chunk) runs
        // while the next chunk is read; it hands the file back when done.
        let mut file = blocking(move || TempFile::create(&path));
        let mut done = 0u64;
        let fed = loop {
            let chunk = match len {
                Some(len) if done == len => break expect_end(key, &mut *body, len).await,
                Some(len) => read_chunk(key, &mut *body, COPY_BUF.min(len - done), done, len).await,
                None => match read_up_to(key, &mut *body, COPY_BUF).await {
                    Ok(c) if c.is_empty() => break Ok(()),
                    other => other,
                },
            };
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => break Err(e),
            };
            done += chunk.len() as u64;
            // A failed write returns its error here (its temp file already removed).
            let mut f = joined(file).await?;
            file = blocking(move || {
                f.write(&chunk)?;
                Ok(f)
            });
        };
        let file = joined(file).await;
        let fed = match (fed, file) {
            (Ok(()), Ok(mut f)) => {
                // Synced before the check, so that the check is as close as possible to the
                // rename that makes the object visible.
                match joined(blocking(move || f.sync().map(|()| f))).await {
                    Ok(f) => match check {
                        Some(c) => match c.check().await {
                            Ok(()) => Ok(f),
                            Err(e) => Err((e, Some(f))),
                        },
                        None => Ok(f),
                    },
                    Err(e) => Err((e, None)),
                }
            }
            (Ok(()), Err(e)) => Err((e, None)),
            (Err(e), f) => Err((e, f.ok())),
        };
        match fed {
            Ok(f) => {
                joined(blocking(move || f.commit())).await?;
                Ok(done)
            }
            Err((e, f)) => {
                // Nothing stored: the temp file is removed (off the async thread) before the
                // error is returned. (A dropped future leaves it to the pending task's drop.)
                if let Some(f) = f {
                    let _ = blocking(move || {
                        drop(f);
                        Ok(())
                    })
                    .await;
                }
                Err(e)
            }
        }
    }

    /// Checks a request to the object route: `exp` and `sig` are the query parameters.
    ///
    /// # Errors
    /// `InvalidInput` for an invalid key; `Forbidden` (with a message for the 403 body) when the
    /// signature is missing, malformed, forged (altered URL, other method, other key) or expired.
    pub fn verify(
        &self,
        method: &str,
        key: &str,
        exp: Option<&str>,
        sig: Option<&str>,
    ) -> Result<(), PayloadError> {
        validate_key(key)?;
        let forbidden = |m: String| PayloadError::new(ErrorKind::Forbidden, m);
        let (Some(exp), Some(sig)) = (exp, sig) else {
            return Err(forbidden(
                "missing exp or sig query parameter: use a signed URL issued by Nexus".to_owned(),
            ));
        };
        let exp = parse_exp(Subject::Url, exp).map_err(|e| forbidden(e.to_string()))?;
        self.signer
            .verify_url(method, &Self::route_path(key), exp, sig, now_secs())
            .map_err(|e| forbidden(e.to_string()))
    }
}

#[async_trait]
impl PayloadStore for FsPayloadStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), PayloadError> {
        let path = self.path_of(key)?;
        joined(blocking(move || write_durably(&path, &bytes))).await
    }

    async fn put_reader(
        &self,
        key: &str,
        body: Box<dyn AsyncRead + Send + Unpin>,
        len: u64,
    ) -> Result<(), PayloadError> {
        self.stream_into(key, body, Some(len), None)
            .await
            .map(|_| ())
    }

    async fn put_stream(
        &self,
        key: &str,
        body: Box<dyn AsyncRead + Send + Unpin>,
        check: Option<&dyn BeforeCommit>,
    ) -> Result<u64, PayloadError> {
        self.stream_into(key, body, None, check).await
    }

    async fn open(&self, key: &str) -> Result<Option<ObjectReader>, PayloadError> {
        let path = self.path_of(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(io_error("opening", &path, &e)),
        };
        let meta = file
            .metadata()
            .await
            .map_err(|e| io_error("reading the metadata of", &path, &e))?;
        if !meta.is_file() {
            return Ok(None);
        }
        Ok(Some(ObjectReader {
            len: meta.len(),
            body: Box::new(file),
        }))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, PayloadError> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(io_error("reading the metadata of", &path, &e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, PayloadError> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(v) => Ok(Some(Bytes::from(v))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(io_error("reading", &path, &e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), PayloadError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(io_error("deleting", &path, &e)),
        }
    }

    async fn signed_get_url(&self, key: &str, valid_for: Duration) -> Result<String, PayloadError> {
        validate_key(key)?;
        Ok(self.signed_url_at("GET", key, expiry(valid_for)))
    }

    async fn signed_put_url(&self, key: &str, valid_for: Duration) -> Result<String, PayloadError> {
        validate_key(key)?;
        Ok(self.signed_url_at("PUT", key, expiry(valid_for)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_suite;

    fn store(dir: &Path) -> FsPayloadStore {
        FsPayloadStore::open(
            dir.join("objects"),
            "http://127.0.0.1:8090/".to_owned(),
            Signer::random(),
        )
        .unwrap()
    }

    /// Splits a minted URL into (key, exp, sig).
    fn parse(s: &FsPayloadStore, url: &str) -> (String, String, String) {
        let rest = url
            .strip_prefix(&format!("{}{ROUTE_PREFIX}", s.base_url))
            .unwrap();
        let (key, query) = rest.split_once('?').unwrap();
        let mut exp = String::new();
        let mut sig = String::new();
        for kv in query.split('&') {
            let (k, v) = kv.split_once('=').unwrap();
            match k {
                "exp" => exp = v.to_owned(),
                "sig" => sig = v.to_owned(),
                _ => panic!("unexpected {k}"),
            }
        }
        (key.to_owned(), exp, sig)
    }

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        test_suite::run_all(&store(dir.path())).await;
    }

    #[tokio::test]
    async fn verify_accepts_minted_and_rejects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let url = s
            .signed_get_url("payloads/algo/1", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:8090/data/v1/objects/payloads/algo/1?exp="),
            "{url}"
        );
        let (key, exp, sig) = parse(&s, &url);
        assert_eq!(key, "payloads/algo/1");
        s.verify("GET", &key, Some(&exp), Some(&sig)).unwrap();

        let forbidden =
            |r: Result<(), PayloadError>| matches!(r, Err(e) if e.kind == ErrorKind::Forbidden);
        assert!(forbidden(s.verify(
            "GET",
            "payloads/algo/2",
            Some(&exp),
            Some(&sig)
        )));
        assert!(forbidden(s.verify("PUT", &key, Some(&exp), Some(&sig))));
        assert!(forbidden(s.verify(
            "GET",
            &key,
            Some("99999999999"),
            Some(&sig)
        )));
        assert!(forbidden(s.verify("GET", &key, Some("abc"), Some(&sig))));
        assert!(forbidden(s.verify("GET", &key, None, Some(&sig))));
        assert!(forbidden(s.verify("GET", &key, Some(&exp), None)));
        assert!(forbidden(s.verify(
            "GET",
            &key,
            Some(&exp),
            Some("garbage")
        )));

        let past = s.signed_url_at("GET", &key, now_secs() - 10);
        let (_, exp, sig) = parse(&s, &past);
        let err = s.verify("GET", &key, Some(&exp), Some(&sig)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Forbidden);
        assert!(err.message.contains("expired at"), "{}", err.message);

        let put = s
            .signed_put_url(&key, Duration::from_secs(60))
            .await
            .unwrap();
        let (_, exp, sig) = parse(&s, &put);
        s.verify("PUT", &key, Some(&exp), Some(&sig)).unwrap();
    }

    #[tokio::test]
    async fn bad_keys_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        for key in [
            "../etc/passwd",
            "/etc/passwd",
            "a//b",
            "",
            "a/./b",
            "a/..",
            "a b",
            "a/b/",
            "a~tmp",
            "a\\b",
        ] {
            let inv = |r: Result<(), PayloadError>| matches!(r, Err(e) if e.kind == ErrorKind::InvalidInput);
            assert!(inv(s.put(key, Bytes::from_static(b"x")).await), "{key:?}");
            assert!(inv(s.get(key).await.map(|_| ())), "{key:?}");
            assert!(inv(s.delete(key).await), "{key:?}");
            assert!(
                inv(s
                    .signed_get_url(key, Duration::from_secs(1))
                    .await
                    .map(|_| ())),
                "{key:?}"
            );
            assert!(inv(s.verify("GET", key, Some("1"), Some("x"))), "{key:?}");
        }
        assert!(!dir.path().join("etc").exists());
    }

    /// Names of the entries of `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Waits until `cond` holds, for at most 10 s.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting until {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn put_reader_streams_and_leaves_no_temp_files() {
        use tokio::io::AsyncWriteExt as _;
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let a = s.root().join("a");
        // Several copy buffers' worth, in reads not aligned with them.
        let len = 3 * COPY_BUF as usize + 12_345;
        let data = test_suite::generated(len, 9);
        s.put_reader("a/b", test_suite::reader(&data, 10_000), len as u64)
            .await
            .unwrap();
        assert!(s.get("a/b").await.unwrap().unwrap() == data);
        assert_eq!(names(&a), ["b"]);

        // A body of the wrong length: the temp file is gone when the error returns.
        for sent in [len - 1, len + 1] {
            let body = test_suite::generated(sent, 10);
            let err = s
                .put_reader("a/b", test_suite::reader(&body, 10_000), len as u64)
                .await
                .unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidInput, "{err}");
            assert_eq!(names(&a), ["b"], "{sent} bytes sent");
        }
        assert!(s.get("a/b").await.unwrap().unwrap() == data);

        // A put cancelled midway (its body stalls after a few chunks): the temp file goes too.
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let feeder = tokio::spawn(async move {
            tx.write_all(&vec![1u8; 2 * COPY_BUF as usize])
                .await
                .unwrap();
            std::future::pending::<()>().await;
            drop(tx);
        });
        let put = {
            let s = s.clone();
            tokio::spawn(async move { s.put_reader("a/b", Box::new(rx), len as u64).await })
        };
        eventually("a temp file holds the streamed chunks", || {
            std::fs::read_dir(&a).unwrap().any(|e| {
                let e = e.unwrap();
                e.file_name().to_string_lossy().contains("~tmp~")
                    && e.metadata().unwrap().len() >= COPY_BUF
            })
        })
        .await;
        put.abort();
        eventually("the temp file is removed", || names(&a) == ["b"]).await;
        feeder.abort();
        assert!(s.get("a/b").await.unwrap().unwrap() == data);
    }

    #[tokio::test]
    async fn no_temp_files_left_and_reopen_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.put("a/b", Bytes::from_static(b"one")).await.unwrap();
        s.put("a/b", Bytes::from_static(b"two")).await.unwrap();
        let names: Vec<_> = std::fs::read_dir(s.root().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("b")]);
        let again = store(dir.path());
        assert_eq!(
            again.get("a/b").await.unwrap().unwrap(),
            Bytes::from_static(b"two")
        );
    }
}
