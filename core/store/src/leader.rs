//! Leader election for processes of which only one may act at a time (the supervisor's recovery
//! passes): through the run store ([`StoreLeadership`], every mode), or through a Kubernetes
//! `coordination.k8s.io/v1` Lease (`nexus_kube::leader::KubeLease`, where the supervisor runs in a
//! cluster, the way client-go's `leaderelection` does it).
//!
//! Both are compare-and-set: at most one holder at a time; a holder renews every tick; a holder
//! that stops renewing is replaced once its lease has lapsed; a holder that resigns is replaced at
//! the next tick of a standby.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::RunStore;
use nexus_model::run::now_millis;

/// One leadership that holders contend for.
#[async_trait]
pub trait Leadership: Send + Sync + Debug + 'static {
    /// Takes or renews the leadership for `holder` for `ttl`. `Ok(true)`: `holder` leads until
    /// `ttl` from now unless it renews; `Ok(false)`: another holder leads.
    ///
    /// # Errors
    /// The backend could not be asked (the caller stands by: unknown is not leading).
    async fn try_lead(&self, holder: &str, ttl: Duration) -> Result<bool, String>;

    /// Gives the leadership up if `holder` has it, so a standby takes over at once.
    ///
    /// # Errors
    /// The backend could not be asked (the leadership then lapses by itself).
    async fn resign(&self, holder: &str) -> Result<(), String>;

    /// Where the leadership lives, for logs (`run store leadership "…"`, `Lease ns/name`).
    fn describe(&self) -> String;
}

/// The leadership `name` kept in the run store ([`RunStore::lead`]: a compare-and-set row).
#[derive(Debug, Clone)]
pub struct StoreLeadership {
    store: Arc<dyn RunStore>,
    name: String,
}

impl StoreLeadership {
    /// The leadership `name` in `store`.
    pub fn new(store: Arc<dyn RunStore>, name: impl Into<String>) -> Self {
        Self {
            store,
            name: name.into(),
        }
    }
}

#[async_trait]
impl Leadership for StoreLeadership {
    async fn try_lead(&self, holder: &str, ttl: Duration) -> Result<bool, String> {
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.store
            .lead(&self.name, holder, now_millis(), ttl)
            .await
            .map(|l| l.owner == holder)
            .map_err(|e| e.to_string())
    }

    async fn resign(&self, holder: &str) -> Result<(), String> {
        self.store
            .resign(&self.name, holder)
            .await
            .map_err(|e| e.to_string())
    }

    fn describe(&self) -> String {
        format!("run store leadership \"{}\"", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InMemoryRunStore;

    #[tokio::test]
    async fn the_store_leadership_has_one_holder_and_passes_on_resignation() {
        let store: Arc<dyn RunStore> = Arc::new(InMemoryRunStore::default());
        let l = StoreLeadership::new(store, "test-leader");
        let ttl = Duration::from_secs(60);
        assert!(l.try_lead("a", ttl).await.unwrap());
        assert!(!l.try_lead("b", ttl).await.unwrap());
        assert!(l.try_lead("a", ttl).await.unwrap(), "renewal");
        l.resign("b").await.unwrap(); // not b's: no effect
        assert!(!l.try_lead("b", ttl).await.unwrap());
        l.resign("a").await.unwrap();
        assert!(l.try_lead("b", ttl).await.unwrap());
        assert_eq!(l.describe(), "run store leadership \"test-leader\"");
    }
}
