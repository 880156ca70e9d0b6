//! The Kubernetes API client of a shard cluster, with the cluster's API budget enforced in the
//! client: kube-rs has no client-side rate limiter (client-go's QPS / burst), so every request goes
//! through [`ApiBudgetLayer`], a tower layer over Nexus' [`TokenBucket`].
//!
//! One budget per cluster: every client built from the same [`ApiBudget`] shares it (a receiver's
//! executor, its watchers, the supervisor's classifier in the same process).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::{Layer, Service};

use nexus_model::limiter::{BudgetConfig, TokenBucket};

/// Where the cluster is and how fast Nexus may talk to its API server (section `kubernetes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeClientConfig {
    /// A kubeconfig file; empty: in-cluster service account, then `$KUBECONFIG`, then
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig (default: its current context).
    pub context: Option<String>,
    /// Namespace of the Jobs (default: the kubeconfig's / service account's namespace).
    pub namespace: Option<String>,
    /// Requests per second to the API server and burst, for this process.
    pub api_budget: BudgetConfig,
}

impl Default for KubeClientConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            namespace: None,
            api_budget: BudgetConfig {
                rate: 50.0,
                burst: 100,
            },
        }
    }
}

impl KubeClientConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = &self.kubeconfig
            && !p.is_file()
        {
            return Err(format!(
                "kubernetes.kubeconfig: {} does not exist",
                p.display()
            ));
        }
        if let Some(ns) = &self.namespace
            && let Err(e) = nexus_model::spec::validate_dns1123_subdomain(ns)
        {
            return Err(format!("kubernetes.namespace: {e}"));
        }
        self.api_budget.validate("kubernetes.api_budget")
    }
}

/// A cluster's API budget, shared by the clients built from it.
#[derive(Debug, Clone)]
pub struct ApiBudget {
    bucket: Arc<Mutex<TokenBucket>>,
}

impl ApiBudget {
    /// A full bucket of `config.burst` requests refilled at `config.rate` per second.
    #[must_use]
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            bucket: Arc::new(Mutex::new(TokenBucket::new(
                config.rate,
                f64::from(config.burst),
                Instant::now(),
            ))),
        }
    }

    fn try_acquire(&self) -> Result<(), Duration> {
        self.bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_acquire(Instant::now())
    }

    /// The layer that makes every request wait for a token.
    #[must_use]
    pub fn layer(&self) -> ApiBudgetLayer {
        ApiBudgetLayer {
            budget: self.clone(),
        }
    }
}

/// Tower layer: each request waits for a token of the [`ApiBudget`] before it is sent.
#[derive(Debug, Clone)]
pub struct ApiBudgetLayer {
    budget: ApiBudget,
}

impl<S> Layer<S> for ApiBudgetLayer {
    type Service = ApiBudgeted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiBudgeted {
            inner,
            budget: self.budget.clone(),
            token: false,
            wait: None,
        }
    }
}

/// The service [`ApiBudgetLayer`] produces.
pub struct ApiBudgeted<S> {
    inner: S,
    budget: ApiBudget,
    /// A token is held for the next `call`.
    token: bool,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> std::fmt::Debug for ApiBudgeted<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiBudgeted")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl<S, R> Service<R> for ApiBudgeted<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.token {
            if let Some(w) = self.wait.as_mut() {
                if w.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
            match self.budget.try_acquire() {
                Ok(()) => self.token = true,
                Err(wait) => {
                    crate::metrics::budget_wait();
                    self.wait = Some(Box::pin(tokio::time::sleep(wait)));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        // poll_ready took the token; a call without it (a contract breach) still goes, once.
        self.token = false;
        self.inner.call(req)
    }
}

/// Builds the API client of the cluster `config` names, every request behind `budget`, and
/// registers the HELP texts of the Kubernetes metrics (every process that talks to a cluster
/// comes through here).
///
/// # Errors
/// Unreadable or invalid kubeconfig, unknown context, no credentials found.
pub async fn client(config: &KubeClientConfig, budget: &ApiBudget) -> Result<kube::Client, String> {
    crate::metrics::describe();
    let opts = kube::config::KubeConfigOptions {
        context: config.context.clone(),
        ..kube::config::KubeConfigOptions::default()
    };
    let mut kc = match &config.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubernetes.kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &opts)
                .await
                .map_err(|e| format!("kubernetes.kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!(
                "no Kubernetes configuration found (in-cluster, $KUBECONFIG, ~/.kube/config): {e}; set kubernetes.kubeconfig"
            )
        })?,
    };
    if let Some(ns) = &config.namespace {
        kc.default_namespace.clone_from(ns);
    }
    let builder = kube::client::ClientBuilder::try_from(kc)
        .map_err(|e| format!("cannot build the Kubernetes client: {e}"))?;
    Ok(builder.with_layer(&budget.layer()).build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn requests_wait_for_the_budget_burst_first_then_at_the_rate() {
        let budget = ApiBudget::new(BudgetConfig {
            rate: 5.0,
            burst: 2,
        });
        let sent = Arc::new(AtomicUsize::new(0));
        let s2 = sent.clone();
        let inner = tower::service_fn(move |_: ()| {
            let s = s2.clone();
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(Instant::now())
            }
        });
        let mut svc = budget.layer().layer(inner);
        let t0 = Instant::now();
        let mut at = Vec::new();
        for _ in 0..10 {
            let t = svc.ready().await.unwrap().call(()).await.unwrap();
            at.push(t - t0);
        }
        assert_eq!(sent.load(Ordering::SeqCst), 10);
        // Paused clock: these are the logical send times, exact.
        assert!(
            at[1] < Duration::from_millis(1),
            "the burst goes at once: {at:?}"
        );
        let last = at[9];
        assert!(
            last >= Duration::from_millis(1590) && last <= Duration::from_millis(1700),
            "8 more at 5/s take 1.6 s: {last:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn clients_of_one_budget_share_it() {
        let budget = ApiBudget::new(BudgetConfig {
            rate: 1.0,
            burst: 1,
        });
        let mk = || {
            budget.layer().layer(tower::service_fn(|_: ()| async {
                Ok::<_, std::convert::Infallible>(Instant::now())
            }))
        };
        let (mut a, mut b) = (mk(), mk());
        let t0 = Instant::now();
        a.ready().await.unwrap().call(()).await.unwrap();
        let t = b.ready().await.unwrap().call(()).await.unwrap();
        assert!(
            t - t0 >= Duration::from_millis(999),
            "the second client waited for the shared token"
        );
    }

    #[test]
    fn config_is_checked() {
        let mut c = KubeClientConfig::default();
        c.validate().unwrap();
        c.kubeconfig = Some("/nonexistent/kubeconfig".into());
        assert!(c.validate().unwrap_err().contains("kubernetes.kubeconfig"));
        c.kubeconfig = None;
        c.namespace = Some("Bad_NS".into());
        assert!(c.validate().unwrap_err().contains("kubernetes.namespace"));
        c.namespace = None;
        c.api_budget.rate = 0.0;
        assert!(
            c.validate()
                .unwrap_err()
                .contains("kubernetes.api_budget.rate")
        );
    }
}
