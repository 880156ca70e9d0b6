//! Conformance suite for [`PayloadStore`] backends.
//!
//! Call [`run_all`] from a backend's tests (with a fresh, empty store), or the per-aspect
//! functions one by one. Every function panics on a contract violation.

use std::time::Duration;

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
