//! In-memory [`PayloadStore`]: a fake for unit tests.
//!
//! Objects live in a `Mutex<HashMap>`, so nothing survives the process. Its signed URLs have the
//! form `memory://<key>?exp=<secs>&sig=<sig>`: they are signed with an internal [`Signer`] so tests
//! can check them with [`InMemoryPayloadStore::verify_url`], but they are **not fetchable** by any
//! HTTP client.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{PayloadError, PayloadStore};
use nexus_model::sign::{SignError, Signer, Subject, now_secs, parse_exp};

/// URL scheme of the fake's signed URLs.
const SCHEME: &str = "memory://";

/// In-memory payload store for tests; see the module docs.
#[derive(Debug)]
pub struct InMemoryPayloadStore {
    objects: Mutex<HashMap<String, Bytes>>,
    signer: Signer,
}

impl Default for InMemoryPayloadStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryPayloadStore {
    /// Builds an empty store with a random signing key.
    #[must_use]
    pub fn new() -> Self {
        Self {
            objects: Mutex::new(HashMap::new()),
            signer: Signer::random(),
        }
    }

    /// Number of stored objects (for tests).
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no object is stored (for tests).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Bytes>> {
        // A panic while holding the lock cannot leave the map half-updated (single operations).
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Mints a signed URL with an explicit expiry (Unix seconds).
    #[must_use]
    pub fn signed_url_at(&self, method: &str, key: &str, expires_at_secs: i64) -> String {
        format!(
            "{SCHEME}{key}?{}",
            self.signer.sign_url(method, key, expires_at_secs)
        )
    }

    /// Checks a URL minted by this store for `method`; returns its key.
    ///
    /// # Errors
    /// [`SignError`] when the URL is malformed, forged (altered, other method, other store) or
    /// expired.
    pub fn verify_url(&self, method: &str, url: &str) -> Result<String, SignError> {
        let subject = Subject::Url;
        let malformed = |reason: &str| SignError::Malformed {
            subject,
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix(SCHEME)
            .ok_or_else(|| malformed("not a memory:// URL"))?;
        let (key, query) = rest
            .split_once('?')
            .ok_or_else(|| malformed("missing query string"))?;
        let (exp, sig) =
            parse_query(query).ok_or_else(|| malformed("missing exp or sig parameter"))?;
        let exp = parse_exp(subject, exp)?;
        self.signer.verify_url(method, key, exp, sig, now_secs())?;
        Ok(key.to_owned())
    }
}

/// Extracts `exp` and `sig` from a query string.
fn parse_query(query: &str) -> Option<(&str, &str)> {
    let mut exp = None;
    let mut sig = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("exp", v)) => exp = Some(v),
            Some(("sig", v)) => sig = Some(v),
            _ => {}
        }
    }
    Some((exp?, sig?))
}

/// Expiry in Unix seconds for a URL valid for `valid_for` from now (rounded up).
fn expiry(valid_for: Duration) -> i64 {
    let secs = valid_for.as_secs() + u64::from(valid_for.subsec_nanos() > 0);
    now_secs().saturating_add(i64::try_from(secs).unwrap_or(i64::MAX))
}

#[async_trait]
impl PayloadStore for InMemoryPayloadStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), PayloadError> {
        self.lock().insert(key.to_owned(), bytes);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, PayloadError> {
        Ok(self.lock().get(key).cloned())
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, PayloadError> {
        Ok(self.lock().get(key).map(|b| b.len() as u64))
    }

    async fn delete(&self, key: &str) -> Result<(), PayloadError> {
        self.lock().remove(key);
        Ok(())
    }

    async fn signed_get_url(&self, key: &str, valid_for: Duration) -> Result<String, PayloadError> {
        Ok(self.signed_url_at("GET", key, expiry(valid_for)))
    }

    async fn signed_put_url(&self, key: &str, valid_for: Duration) -> Result<String, PayloadError> {
        Ok(self.signed_url_at("PUT", key, expiry(valid_for)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_suite;

    #[tokio::test]
    async fn conformance() {
        let store = InMemoryPayloadStore::new();
        test_suite::run_all(&store).await;
    }

    #[tokio::test]
    async fn urls_verify() {
        let store = InMemoryPayloadStore::new();
        let get = store
            .signed_get_url("a/b", Duration::from_secs(60))
            .await
            .unwrap();
        let put = store
            .signed_put_url("a/b", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(store.verify_url("GET", &get).unwrap(), "a/b");
        assert_eq!(store.verify_url("PUT", &put).unwrap(), "a/b");
        assert!(matches!(
            store.verify_url("PUT", &get),
            Err(SignError::Forged { .. })
        ));
        let tampered = get.replace("a/b", "a/c");
        assert!(matches!(
            store.verify_url("GET", &tampered),
            Err(SignError::Forged { .. })
        ));
        let other = InMemoryPayloadStore::new();
        assert!(matches!(
            other.verify_url("GET", &get),
            Err(SignError::Forged { .. })
        ));
        let past = store.signed_url_at("GET", "a/b", now_secs() - 1);
        assert!(matches!(
            store.verify_url("GET", &past),
            Err(SignError::Expired { .. })
        ));
        for bad in [
            "",
            "http://x/a?exp=1&sig=2",
            "memory://a",
            "memory://a?exp=x&sig=y",
            "memory://a?sig=y",
        ] {
            assert!(
                matches!(
                    store.verify_url("GET", bad),
                    Err(SignError::Malformed { .. })
                ),
                "{bad}"
            );
        }
    }
}
