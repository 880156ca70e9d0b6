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

use super::{Keys, PayloadStore};

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
