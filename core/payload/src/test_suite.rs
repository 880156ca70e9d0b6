//! Conformance suite for [`PayloadStore`] backends.
//!
//! Call [`run_all`] from a backend's tests (with a fresh, empty store), or the per-aspect
//! functions one by one. Every function panics on a contract violation.
//!
//! [`signed_urls_over_http`] is not part of [`run_all`]: it needs the URLs to be served (by the
//! object store itself, or by a Nexus HTTP server for the filesystem store) and a [`PlainHttp`]
//! client to fetch them with.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

use super::{Keys, PayloadStore};
use nexus_model::error::ErrorKind;

/// A key unique to this call, so aspects never see each other's objects.
fn fresh(prefix: &str) -> String {
    format!("suite/{prefix}/{}", uuid::Uuid::new_v4().simple())
}

/// Runs every aspect of the contract against `store`.
pub async fn run_all(store: &dyn PayloadStore) {
    put_get_round_trip(store).await;
    overwrite_replaces(store).await;
    get_unknown_is_none(store).await;
    delete_is_idempotent(store).await;
    binary_data(store).await;
    large_object(store).await;
    nexus_keys(store).await;
    signed_urls(store).await;
    put_reader_round_trip(store).await;
    put_reader_overwrites(store).await;
    put_reader_length_mismatch(store).await;
    open_and_size(store).await;
    put_stream_round_trip(store).await;
    put_stream_check_and_failures(store).await;
}

/// Reads all of an opened object.
async fn read_all(o: super::ObjectReader) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut body = o.body;
    let mut out = Vec::new();
    body.read_to_end(&mut out)
        .await
        .expect("read the opened object");
    out
}

/// `open` streams what `put` stored, with its size; `size` reports it without reading; both
/// say `None` for an unknown key. A reader opened before a replacement reads whole objects: the
/// old one or the new one, never a mix.
pub async fn open_and_size(store: &dyn PayloadStore) {
    assert!(
        store
            .open(&fresh("unknown"))
            .await
            .expect("open unknown")
            .is_none(),
        "open of an unknown key"
    );
    assert_eq!(
        store.size(&fresh("unknown")).await.expect("size unknown"),
        None
    );
    for (what, len) in [
        ("empty", 0),
        ("small", 1000),
        ("2 MiB", 2 * 1024 * 1024 + 3),
    ] {
        let key = fresh("open");
        let data = generated(len, 7);
        store.put(&key, data.clone()).await.expect("put");
        assert_eq!(
            store.size(&key).await.expect("size"),
            Some(len as u64),
            "{what}"
        );
        let o = store.open(&key).await.expect("open").expect("present");
        assert_eq!(o.len, len as u64, "{what}: announced length");
        let got = read_all(o).await;
        assert!(got == data.as_ref(), "{what}: streamed content differs");
        store.delete(&key).await.expect("delete");
        assert_eq!(store.size(&key).await.expect("size after delete"), None);
    }
    let key = fresh("open-replaced");
    let old = generated(1024 * 1024, 8);
    let new = generated(1024 * 1024 + 10, 9);
    store.put(&key, old.clone()).await.expect("put old");
    let o = store.open(&key).await.expect("open").expect("present");
    store.put(&key, new.clone()).await.expect("put new");
    let got = read_all(o).await;
    assert!(
        got == old.as_ref() || got == new.as_ref(),
        "a reader opened before a replacement read a mix of both objects"
    );
    store.delete(&key).await.expect("delete");
}

/// A body with no announced length, in odd pieces.
fn unsized_body(data: &Bytes, piece: usize) -> Box<dyn AsyncRead + Send + Unpin> {
    reader(data, piece)
}

/// `put_stream` stores bodies of unknown length (empty, small, above the tiered store's small
/// threshold, and above S3's default single-put threshold of 16 MiB: several multipart parts
/// with a short last one) and returns their size; it replaces objects as `put` does.
pub async fn put_stream_round_trip(store: &dyn PayloadStore) {
    for (what, len, piece) in [
        ("empty", 0, 1),
        ("small", 100, 7),
        ("1 MiB", 1024 * 1024 + 1, 65_521),
        ("17 MiB", 17 * 1024 * 1024 + 12_345, 1024 * 1024 - 1),
    ] {
        // A fresh key each (the in-process S3 server, s3s-fs, keeps the checksum of a single
        // PUT when a multipart upload replaces it; replacing is checked below).
        let key = fresh("stream");
        let data = generated(len, 11);
        let n = store
            .put_stream(&key, unsized_body(&data, piece), None)
            .await
            .unwrap_or_else(|e| panic!("put_stream of the {what} object: {e}"));
        assert_eq!(n, len as u64, "{what}: bytes stored");
        let got = store.get(&key).await.expect("get").expect("present");
        assert_eq!(got.len(), len, "{what}");
        assert!(got == data, "{what}: content differs");
        store.delete(&key).await.expect("delete");
    }
    let key = fresh("stream-replace");
    store
        .put(&key, Bytes::from_static(b"before"))
        .await
        .expect("put");
    let data = generated(300, 12);
    store
        .put_stream(&key, unsized_body(&data, 64), None)
        .await
        .expect("put_stream over put");
    assert_eq!(store.get(&key).await.expect("get"), Some(data));
    store.delete(&key).await.expect("delete");
}

/// A check that refuses, and counts its calls.
#[derive(Debug, Default)]
struct Refuse(std::sync::atomic::AtomicUsize);

#[async_trait]
impl super::BeforeCommit for Refuse {
    async fn check(&self) -> Result<(), super::PayloadError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(super::PayloadError::new(
            ErrorKind::Conflict,
            "the run is no longer RUNNING",
        ))
    }
}

/// A check that lets the put through, and counts its calls.
#[derive(Debug, Default)]
struct Allow(std::sync::atomic::AtomicUsize);

#[async_trait]
impl super::BeforeCommit for Allow {
    async fn check(&self) -> Result<(), super::PayloadError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// `put_stream`'s check runs once the body is in, and its error stores nothing (the previous
/// object stays, an unknown key stays unknown), small or big; a body that fails to read is
/// `InvalidInput` and stores nothing, without running the check.
pub async fn put_stream_check_and_failures(store: &dyn PayloadStore) {
    use std::sync::atomic::Ordering;
    for len in [100usize, 1024 * 1024] {
        let before = generated(len, 12);
        let data = generated(len + 1, 13);
        let key = fresh("stream-check");
        store.put(&key, before.clone()).await.expect("put");
        let refuse = Refuse::default();
        let err = store
            .put_stream(&key, unsized_body(&data, 4096), Some(&refuse))
            .await
            .expect_err("a refused put_stream");
        assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
        assert_eq!(refuse.0.load(Ordering::SeqCst), 1, "the check runs once");
        assert!(
            store.get(&key).await.expect("get").as_ref() == Some(&before),
            "a refused put_stream of {len} bytes changed the object"
        );
        let unknown = fresh("stream-check");
        store
            .put_stream(&unknown, unsized_body(&data, 4096), Some(&refuse))
            .await
            .expect_err("a refused put_stream");
        assert_eq!(
            store.get(&unknown).await.expect("get"),
            None,
            "a refused put_stream stored an object"
        );

        let allow = Allow::default();
        let broken: Box<dyn AsyncRead + Send + Unpin> =
            Box::new(tokio_util::io::StreamReader::new(futures::stream::iter([
                Ok(data.slice(..len / 2)),
                Err(std::io::Error::other("connection reset by the test")),
            ])));
        let err = store
            .put_stream(&key, broken, Some(&allow))
            .await
            .expect_err("a broken body");
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{err}");
        assert_eq!(
            allow.0.load(Ordering::SeqCst),
            0,
            "no check for a broken body"
        );
        assert!(
            store.get(&key).await.expect("get").as_ref() == Some(&before),
            "a broken put_stream of {len} bytes changed the object"
        );

        let n = store
            .put_stream(&key, unsized_body(&data, 4096), Some(&allow))
            .await
            .expect("an allowed put_stream");
        assert_eq!(n, data.len() as u64);
        assert_eq!(allow.0.load(Ordering::SeqCst), 1, "the check runs once");
        assert!(store.get(&key).await.expect("get").as_ref() == Some(&data));
        store.delete(&key).await.expect("delete");
    }
}

/// `put` then `get` returns the same bytes.
pub async fn put_get_round_trip(store: &dyn PayloadStore) {
    let key = fresh("round-trip");
    store
        .put(&key, Bytes::from_static(b"hello"))
        .await
        .expect("put");
    assert_eq!(
        store.get(&key).await.expect("get"),
        Some(Bytes::from_static(b"hello"))
    );
    // Empty objects are objects too.
    let empty = fresh("empty");
    store.put(&empty, Bytes::new()).await.expect("put empty");
    assert_eq!(
        store.get(&empty).await.expect("get empty"),
        Some(Bytes::new())
    );
}

/// A second `put` replaces the object.
pub async fn overwrite_replaces(store: &dyn PayloadStore) {
    let key = fresh("overwrite");
    store
        .put(&key, Bytes::from_static(b"first, longer value"))
        .await
        .expect("put 1");
    store
        .put(&key, Bytes::from_static(b"second"))
        .await
        .expect("put 2");
    assert_eq!(
        store.get(&key).await.expect("get"),
        Some(Bytes::from_static(b"second"))
    );
}

/// `get` of an unknown key is `Ok(None)`.
pub async fn get_unknown_is_none(store: &dyn PayloadStore) {
    assert_eq!(
        store.get(&fresh("unknown")).await.expect("get unknown"),
        None
    );
}

/// `delete` removes the object, and deleting again (or an unknown key) is fine.
pub async fn delete_is_idempotent(store: &dyn PayloadStore) {
    let key = fresh("delete");
    store
        .put(&key, Bytes::from_static(b"x"))
        .await
        .expect("put");
    store.delete(&key).await.expect("delete");
    assert_eq!(store.get(&key).await.expect("get after delete"), None);
    store.delete(&key).await.expect("delete again");
    store
        .delete(&fresh("never-written"))
        .await
        .expect("delete unknown");
}

/// Every byte value survives a round trip.
pub async fn binary_data(store: &dyn PayloadStore) {
    let key = fresh("binary");
    let data: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    store
        .put(&key, Bytes::from(data.clone()))
        .await
        .expect("put");
    assert_eq!(
        store.get(&key).await.expect("get").as_deref(),
        Some(data.as_slice())
    );
}

/// A 5 MiB object survives a round trip.
pub async fn large_object(store: &dyn PayloadStore) {
    let key = fresh("large");
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    store
        .put(&key, Bytes::from(data.clone()))
        .await
        .expect("put");
    let got = store.get(&key).await.expect("get").expect("present");
    assert_eq!(got.len(), data.len());
    assert!(
        got.as_ref() == data.as_slice(),
        "5 MiB object content differs"
    );
    store.delete(&key).await.expect("delete");
}

/// `len` generated bytes (every byte value, no short period), varied by `seed`.
#[must_use]
pub fn generated(len: usize, seed: u32) -> Bytes {
    (0..len)
        .map(|i| {
            let i = u32::try_from(i % (1 << 31)).unwrap_or(0);
            (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// A `put_reader` body delivering `data` in reads of at most `piece` bytes, as a network
/// stream does.
#[must_use]
pub fn reader(data: &Bytes, piece: usize) -> Box<dyn AsyncRead + Send + Unpin> {
    let pieces: Vec<std::io::Result<Bytes>> = (0..data.len())
        .step_by(piece.max(1))
        .map(|start| Ok(data.slice(start..data.len().min(start + piece.max(1)))))
        .collect();
    Box::new(tokio_util::io::StreamReader::new(futures::stream::iter(
        pieces,
    )))
}

/// `put_reader` then `get` returns the same bytes: an empty, a small and a 3 MiB object, read
/// in pieces of odd sizes.
pub async fn put_reader_round_trip(store: &dyn PayloadStore) {
    for (what, len, piece) in [
        ("empty", 0, 1),
        ("small", 100, 7),
        ("3 MiB", 3 * 1024 * 1024 + 5, 65_521),
    ] {
        let key = fresh("reader");
        let data = generated(len, 1);
        store
            .put_reader(&key, reader(&data, piece), len as u64)
            .await
            .unwrap_or_else(|e| panic!("put_reader of the {what} object: {e}"));
        let got = store.get(&key).await.expect("get").expect("present");
        assert_eq!(got.len(), data.len(), "{what} object");
        assert!(got == data, "{what} object content differs");
        store.delete(&key).await.expect("delete");
    }
}

/// `put_reader` replaces an object as `put` does, whichever of the two wrote it and whatever
/// their sizes (1 MiB is above the small-object tier of `nexus_embedded::TieredPayloadStore`).
pub async fn put_reader_overwrites(store: &dyn PayloadStore) {
    let key = fresh("reader-overwrite");
    let small = generated(10, 2);
    let big = generated(1024 * 1024, 3);
    let other_big = generated(1024 * 1024 + 1, 4);
    store
        .put(&key, Bytes::from_static(b"written by put"))
        .await
        .expect("put");
    for (step, data) in [
        ("small over put", &small),
        ("big over small", &big),
        ("big over big", &other_big),
        ("small over big", &small),
    ] {
        store
            .put_reader(&key, reader(data, 4096), data.len() as u64)
            .await
            .unwrap_or_else(|e| panic!("put_reader {step}: {e}"));
        assert!(
            store.get(&key).await.expect("get").as_ref() == Some(data),
            "after put_reader {step}"
        );
    }
    store
        .put(&key, Bytes::from_static(b"put again"))
        .await
        .expect("put over put_reader");
    assert_eq!(
        store.get(&key).await.expect("get"),
        Some(Bytes::from_static(b"put again"))
    );
    store.delete(&key).await.expect("delete");
}

/// A body shorter or longer than announced, or one that fails to read, is `InvalidInput` and
/// stores nothing: the previous object stays, an unknown key stays unknown.
pub async fn put_reader_length_mismatch(store: &dyn PayloadStore) {
    let invalid = |what: &str, r: Result<(), super::PayloadError>| match r {
        Err(e) if e.kind == ErrorKind::InvalidInput => {}
        other => panic!("{what}: expected InvalidInput, got {other:?}"),
    };
    for len in [100usize, 1024 * 1024] {
        let before = generated(len, 5);
        let data = generated(len + 1, 6);
        let key = fresh("reader-mismatch");
        store.put(&key, before.clone()).await.expect("put");
        let announced = len as u64;
        let short = data.slice(..len - 1);
        invalid(
            &format!("{len} bytes announced, {} sent", len - 1),
            store
                .put_reader(&key, reader(&short, 4096), announced)
                .await,
        );
        invalid(
            &format!("{len} bytes announced, {} sent", len + 1),
            store.put_reader(&key, reader(&data, 4096), announced).await,
        );
        let broken: Box<dyn AsyncRead + Send + Unpin> =
            Box::new(tokio_util::io::StreamReader::new(futures::stream::iter([
                Ok(data.slice(..len / 2)),
                Err(std::io::Error::other("connection reset by the test")),
            ])));
        invalid(
            "a body that fails to read",
            store.put_reader(&key, broken, announced).await,
        );
        assert!(
            store.get(&key).await.expect("get").as_ref() == Some(&before),
            "a failed put_reader of {len} bytes changed the object"
        );
        store.delete(&key).await.expect("delete");

        let unknown = fresh("reader-mismatch");
        invalid(
            "short body for a new key",
            store
                .put_reader(&unknown, reader(&short, 4096), announced)
                .await,
        );
        invalid(
            "long body for a new key",
            store
                .put_reader(&unknown, reader(&data, 4096), announced)
                .await,
        );
        assert_eq!(
            store.get(&unknown).await.expect("get"),
            None,
            "a failed put_reader of {len} bytes stored an object"
        );
    }
}

/// The keys Nexus uses are accepted and independent.
pub async fn nexus_keys(store: &dyn PayloadStore) {
    let id = uuid::Uuid::new_v4().to_string();
    let keys = [
        Keys::payload("algo-1", &id),
        Keys::result("algo-1", &id),
        Keys::logs("algo-1", &id),
    ];
    for (i, key) in keys.iter().enumerate() {
        store
            .put(key, Bytes::from(vec![u8::try_from(i).unwrap_or(0); 3]))
            .await
            .expect("put nexus key");
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            store.get(key).await.expect("get nexus key"),
            Some(Bytes::from(vec![u8::try_from(i).unwrap_or(0); 3])),
            "{key}"
        );
        store.delete(key).await.expect("delete nexus key");
    }
}

/// Signed URLs are non-empty, and GET and PUT URLs differ.
pub async fn signed_urls(store: &dyn PayloadStore) {
    let key = Keys::result("algo-1", &uuid::Uuid::new_v4().to_string());
    let get = store
        .signed_get_url(&key, Duration::from_secs(300))
        .await
        .expect("signed get url");
    let put = store
        .signed_put_url(&key, Duration::from_secs(300))
        .await
        .expect("signed put url");
    assert!(!get.is_empty(), "empty GET URL");
    assert!(!put.is_empty(), "empty PUT URL");
    assert_ne!(get, put, "GET and PUT URLs must differ");
}

/// A plain HTTP client (no credentials, no retries), for [`signed_urls_over_http`].
#[async_trait]
pub trait PlainHttp: Send + Sync {
    /// GETs `url`; returns the status and the body.
    async fn get(&self, url: &str) -> (u16, Bytes);
    /// PUTs `body` to `url`; returns the status.
    async fn put(&self, url: &str, body: Bytes) -> u16;
}

/// Alters one character of a URL's signature, which both SigV4 presigned URLs and Nexus's own
/// signed URLs end with (8 characters from the end lies inside a 64-hex or 43-base64 signature,
/// where every character carries full bits).
#[must_use]
pub fn tamper_signature(url: &str) -> String {
    let mut chars: Vec<char> = url.chars().collect();
    let i = chars.len().saturating_sub(8);
    chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
    chars.into_iter().collect()
}

/// Signed URLs work with a plain HTTP client: a GET URL reads the object; a PUT URL writes it;
/// an altered signature, another key, the other method or an expired URL is refused with 403.
///
/// Takes a few seconds: it waits for a one-second URL to expire.
pub async fn signed_urls_over_http(store: &dyn PayloadStore, http: &dyn PlainHttp) {
    let key = Keys::result("algo-1", &uuid::Uuid::new_v4().to_string());
    let data = Bytes::from_static(b"{\"answer\": 42}");
    store.put(&key, data.clone()).await.expect("put");

    let get = store
        .signed_get_url(&key, Duration::from_secs(300))
        .await
        .expect("signed get url");
    assert_eq!(http.get(&get).await, (200, data.clone()), "GET {get}");

    let forged = tamper_signature(&get);
    assert_ne!(forged, get);
    assert_eq!(
        http.get(&forged).await.0,
        403,
        "altered signature: {forged}"
    );

    let other = Keys::result("algo-1", &uuid::Uuid::new_v4().to_string());
    store
        .put(&other, Bytes::from_static(b"other"))
        .await
        .expect("put other");
    let moved = get.replacen(&key, &other, 1);
    assert_ne!(moved, get, "the key must appear in the URL");
    assert_eq!(
        http.get(&moved).await.0,
        403,
        "URL moved to another key: {moved}"
    );

    let put = store
        .signed_put_url(&key, Duration::from_secs(300))
        .await
        .expect("signed put url");
    assert_eq!(http.get(&put).await.0, 403, "a PUT URL used to GET: {put}");
    let uploaded = Bytes::from(vec![0xA5u8; 100 * 1024]);
    let status = http.put(&put, uploaded.clone()).await;
    assert!((200..300).contains(&status), "PUT {put}: {status}");
    assert_eq!(
        store.get(&key).await.expect("get after PUT"),
        Some(uploaded)
    );
    assert_eq!(
        http.put(&tamper_signature(&put), Bytes::from_static(b"x"))
            .await,
        403,
        "PUT with an altered signature"
    );

    let short = store
        .signed_get_url(&key, Duration::from_secs(1))
        .await
        .expect("short signed get url");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(http.get(&short).await.0, 403, "expired URL: {short}");

    store.delete(&key).await.expect("delete");
    store.delete(&other).await.expect("delete other");
}
