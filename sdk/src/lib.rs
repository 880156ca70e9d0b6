//! Client SDK for Nexus: create, watch, await and cancel runs over gRPC
//! (`nexus.v1.RunService` on the schedulers).
//!
//! An algorithm builds an execution tree with it: [`Nexus::from_env`] reads the scheduler URL
//! and the run's identity from the environment Nexus launched it with (`NEXUS__SCHEDULER_URL`,
//! `NEXUS__REQUEST_ID`, `NEXUS__RUN_TOKEN`), so every run it creates is its child, and it can
//! only cancel its own subtree. A client uses [`Nexus::connect`] without an identity and creates
//! root runs.
//!
//! ```no_run
//! # async fn f() -> Result<(), nexus_sdk::SdkError> {
//! let nexus = nexus_sdk::Nexus::from_env().await?;
//! let child = nexus.create("knapsack", &serde_json::json!({"capacity": 10, "items": []})).await?;
//! let done = nexus.wait(&child).await?;
//! let result = nexus.result_json(&done).await?;
//! # Ok(()) }
//! ```
//!
//! Over `https://` the channel uses TLS (system roots plus [`ConnectOptions::ca_file`]). A
//! client of a scheduler with authentication presents a bearer token ([`ConnectOptions::token`]:
//! an OIDC token or an API key; [`ConnectOptions::from_env`] reads `NEXUS_TOKEN` and
//! `NEXUS_CA_FILE`); a run presents its run token.
//!
//! Transient failures (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`, a scheduler restarting behind the
//! load balancer) are retried with exponential back-off for up to [`Nexus::with_retry_for`]
//! (default 60 s); a creation is retried with the same idempotency key, so it never makes two runs.

use std::time::Duration;

use futures::StreamExt;
use nexus_proto::grpc::run_service_client::RunServiceClient;
use nexus_proto::grpc::{
    CancelRunRequest, CreateRunRequest, CreateRunsRequest, GetRunRequest, ListRunsRequest,
    WatchRunRequest,
};
pub use nexus_proto::grpc::{RunRef, RunStatus};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Environment variable: the schedulers' base URL.
pub const SCHEDULER_URL: &str = "NEXUS__SCHEDULER_URL";
/// Environment variable: the calling run's id.
pub const REQUEST_ID: &str = "NEXUS__REQUEST_ID";
/// Environment variable: the calling run's token.
pub const RUN_TOKEN: &str = "NEXUS__RUN_TOKEN";
/// Environment variable: a client's bearer token (OIDC token or API key).
pub const TOKEN: &str = "NEXUS_TOKEN";
/// Environment variable: PEM CA certificates trusted for `https://` besides the system's.
pub const CA_FILE: &str = nexus_proto::v1::env::CA_FILE;

/// How to reach and authenticate to the schedulers, besides the URL.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Bearer token of a client (OIDC token or API key); ignored when connecting as a run.
    pub token: Option<String>,
    /// PEM file of CA certificates trusted for `https://` (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

impl ConnectOptions {
    /// `NEXUS_TOKEN` and `NEXUS_CA_FILE`, when set and not empty.
    #[must_use]
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            token: var(TOKEN),
            ca_file: var(CA_FILE).map(Into::into),
        }
    }
}

/// Errors of the SDK.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// Missing or invalid configuration (environment, URL).
    #[error("nexus sdk configuration: {0}")]
    Config(String),
    /// The scheduler answered with an error that retrying will not fix (or retries ran out).
    #[error("nexus: {} ({:?})", .0.message(), .0.code())]
    Status(Status),
    /// Reading a result failed.
    #[error("nexus result: {0}")]
    Result(String),
}

impl SdkError {
    /// The gRPC code, for status errors.
    #[must_use]
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// The identity of a calling run.
#[derive(Debug, Clone)]
pub struct RunIdentity {
    /// Its request id.
    pub request_id: String,
    /// Its run token.
    pub token: String,
}

/// A connection to the schedulers.
#[derive(Debug, Clone)]
pub struct Nexus {
    client: RunServiceClient<Channel>,
    identity: Option<RunIdentity>,
    token: Option<String>,
    retry_for: Duration,
    http: nexus_http::client::HttpClient,
}

fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted
    )
}

impl Nexus {
    /// Connects as the run Nexus launched this process for (`NEXUS__SCHEDULER_URL`,
    /// `NEXUS__REQUEST_ID`, `NEXUS__RUN_TOKEN`).
    ///
    /// # Errors
    /// A variable is missing or the URL is invalid.
    pub async fn from_env() -> Result<Self, SdkError> {
        let var = |k: &str| {
            std::env::var(k).map_err(|_| {
                SdkError::Config(format!(
                    "{k} is not set: Nexus sets it for the runs it launches (receivers need `receiver.scheduler_url` in distributed mode)"
                ))
            })
        };
        let url = var(SCHEDULER_URL)?;
        let identity = RunIdentity {
            request_id: var(REQUEST_ID)?,
            token: var(RUN_TOKEN)?,
        };
        Self::connect_with(&url, Some(identity), ConnectOptions::from_env()).await
    }

    /// Connects to the schedulers at `url` (`http://host:port`), as `identity` or as a client.
    /// The connection is made lazily, on the first call.
    ///
    /// # Errors
    /// The URL is invalid.
    pub async fn connect(url: &str, identity: Option<RunIdentity>) -> Result<Self, SdkError> {
        Self::connect_with(url, identity, ConnectOptions::default()).await
    }

    /// Connects to the schedulers at `url` (`http://` or `https://`), as `identity` or as a
    /// client presenting `options.token`, trusting `options.ca_file` for TLS.
    ///
    /// # Errors
    /// The URL is invalid; the CA file cannot be used.
    pub async fn connect_with(
        url: &str,
        identity: Option<RunIdentity>,
        options: ConnectOptions,
    ) -> Result<Self, SdkError> {
        let mut endpoint = Endpoint::from_shared(url.trim_end_matches('/').to_owned())
            .map_err(|e| SdkError::Config(format!("scheduler url '{url}': {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &options.ca_file {
                let pem = std::fs::read(ca).map_err(|e| {
                    SdkError::Config(format!("CA file {}: cannot read: {e}", ca.display()))
                })?;
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| SdkError::Config(format!("TLS for '{url}': {e}")))?;
        }
        let http = nexus_http::client::HttpClient::new(
            options.ca_file.as_deref(),
            Duration::from_secs(300),
            1024 * 1024 * 1024,
            concat!("nexus-sdk/", env!("CARGO_PKG_VERSION")),
        )
        .map_err(|e| SdkError::Config(format!("TLS: {e}")))?;
        Ok(Self {
            client: RunServiceClient::new(endpoint.connect_lazy()),
            identity,
            token: options.token.filter(|t| !t.trim().is_empty()),
            retry_for: Duration::from_secs(60),
            http,
        })
    }

    /// How long transient failures are retried (default 60 s).
    #[must_use]
    pub fn with_retry_for(mut self, d: Duration) -> Self {
        self.retry_for = d;
        self
    }

    /// The calling run's id, when connected as a run.
    #[must_use]
    pub fn run_id(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.request_id.as_str())
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(id) = &self.identity {
            let md = r.metadata_mut();
            if let (Ok(rid), Ok(auth)) = (
                id.request_id.parse(),
                format!("Bearer {}", id.token).parse(),
            ) {
                md.insert("x-nexus-run-id", rid);
                md.insert("authorization", auth);
            }
        } else if let Some(token) = &self.token
            && let Ok(auth) = format!("Bearer {token}").parse()
        {
            r.metadata_mut().insert("authorization", auth);
        }
        r
    }

    /// Calls `f` until it succeeds, fails for good, or `retry_for` has passed.
    async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T, SdkError>
    where
        F: FnMut(RunServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let until = tokio::time::Instant::now() + self.retry_for;
        let mut wait = Duration::from_millis(50);
        loop {
            match f(self.client.clone()).await {
                Ok(v) => return Ok(v),
                Err(s) if retryable(&s) && tokio::time::Instant::now() + wait < until => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(s) => return Err(SdkError::Status(s)),
            }
        }
    }

    /// Creates a run of `algorithm` with `parameters` (a child of the calling run, or a root for
    /// a client). Retried safely: the same idempotency key is sent on every attempt.
    ///
    /// # Errors
    /// Invalid input (unknown algorithm, tree limits), permanent failures, retries exhausted.
    pub async fn create(
        &self,
        algorithm: &str,
        parameters: &serde_json::Value,
    ) -> Result<RunRef, SdkError> {
        self.create_with(algorithm, parameters, "").await
    }

    /// As [`Nexus::create`], with a tag.
    ///
    /// # Errors
    /// As [`Nexus::create`].
    pub async fn create_with(
        &self,
        algorithm: &str,
        parameters: &serde_json::Value,
        tag: &str,
    ) -> Result<RunRef, SdkError> {
        let key = format!("sdk-{:016x}{:016x}", rand_u64(), rand_u64());
        let msg = CreateRunRequest {
            algorithm: algorithm.to_owned(),
            parameters_json: parameters.to_string(),
            tag: tag.to_owned(),
            custom_configuration_json: String::new(),
            idempotency_key: key,
        };
        self.retry(|mut c| {
            let req = self.request(msg.clone());
            async move { c.create_run(req).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Creates one run of `algorithm` per entry of `parameters`, all or none, in one request
    /// (children of the calling run, or roots for a client); returns their refs in order.
    /// Retried safely: the same batch idempotency key is sent on every attempt. At most the
    /// server's `scheduler.max_batch_runs` (1,000 by default) per call.
    ///
    /// # Errors
    /// Invalid input (unknown algorithm, an invalid entry, named by its index; too many runs),
    /// permanent failures, retries exhausted.
    pub async fn create_many(
        &self,
        algorithm: &str,
        parameters: &[serde_json::Value],
        tag: &str,
    ) -> Result<Vec<RunRef>, SdkError> {
        let key = format!("sdk-{:016x}{:016x}", rand_u64(), rand_u64());
        let msg = CreateRunsRequest {
            algorithm: algorithm.to_owned(),
            parameters_json: parameters.iter().map(ToString::to_string).collect(),
            tag: tag.to_owned(),
            custom_configuration_json: String::new(),
            idempotency_key: key,
        };
        self.retry(|mut c| {
            let req = self.request(msg.clone());
            async move { c.create_runs(req).await.map(|r| r.into_inner().runs) }
        })
        .await
    }

    /// Runs `algorithm` once per entry of `parameters` and returns the results in the same
    /// order: the runs are created in batches of at most `MapOptions::chunk` (each batch all or
    /// none), then awaited with at most `MapOptions::concurrency` waits in flight.
    ///
    /// # Errors
    /// Creation failures; the first run (in order) that did not complete, with its index, or
    /// whose result is not JSON.
    pub async fn map(
        &self,
        algorithm: &str,
        parameters: &[serde_json::Value],
    ) -> Result<Vec<serde_json::Value>, SdkError> {
        self.map_with(algorithm, parameters, &MapOptions::default())
            .await
    }

    /// As [`Nexus::map`], with options.
    ///
    /// # Errors
    /// As [`Nexus::map`]; `MapOptions` of zero are refused.
    pub async fn map_with(
        &self,
        algorithm: &str,
        parameters: &[serde_json::Value],
        options: &MapOptions,
    ) -> Result<Vec<serde_json::Value>, SdkError> {
        if options.chunk == 0 || options.concurrency == 0 {
            return Err(SdkError::Result(
                "map: chunk and concurrency must be at least 1".to_owned(),
            ));
        }
        let mut runs = Vec::with_capacity(parameters.len());
        for chunk in parameters.chunks(options.chunk) {
            runs.extend(self.create_many(algorithm, chunk, &options.tag).await?);
        }
        let results = futures::stream::iter(runs.iter().enumerate())
            .map(|(i, run)| async move {
                let status = self.wait(run).await?;
                self.result_json(&status).await.map_err(|e| match e {
                    SdkError::Result(m) => SdkError::Result(format!("map: entry {i}: {m}")),
                    other => other,
                })
            })
            .buffered(options.concurrency);
        results.collect::<Vec<_>>().await.into_iter().collect()
    }

    /// The run's status now.
    ///
    /// # Errors
    /// Unknown run, retries exhausted.
    pub async fn get(&self, run: &RunRef) -> Result<RunStatus, SdkError> {
        let msg = GetRunRequest {
            request_id: run.request_id.clone(),
        };
        self.retry(|mut c| {
            let req = self.request(msg.clone());
            async move { c.get_run(req).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Waits until the run is terminal and returns its last status, following the server's
    /// stream of stage changes (no polling); a broken stream is resumed.
    ///
    /// # Errors
    /// Unknown run, retries exhausted.
    pub async fn wait(&self, run: &RunRef) -> Result<RunStatus, SdkError> {
        let until = tokio::time::Instant::now() + self.retry_for;
        loop {
            let msg = WatchRunRequest {
                request_id: run.request_id.clone(),
            };
            let mut stream = self
                .retry(|mut c| {
                    let req = self.request(msg.clone());
                    async move { c.watch_run(req).await.map(tonic::Response::into_inner) }
                })
                .await?;
            let mut last = None;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(s) if s.terminal => return Ok(s),
                    Ok(s) => last = Some(s),
                    Err(s) if retryable(&s) || s.code() == Code::Unknown => break,
                    Err(s) => return Err(SdkError::Status(s)),
                }
            }
            // The stream ended early (a scheduler restart): resume, within the retry budget.
            if tokio::time::Instant::now() >= until {
                return Err(SdkError::Status(Status::unavailable(format!(
                    "run {} still {} when the retry budget ran out",
                    run.request_id,
                    last.map_or_else(|| "unknown".to_owned(), |s| s.stage)
                ))));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The result of a COMPLETED run, as JSON (fetched from its signed result URL).
    ///
    /// # Errors
    /// The run did not complete, the result cannot be read or is not JSON.
    pub async fn result_json(&self, status: &RunStatus) -> Result<serde_json::Value, SdkError> {
        if status.stage != "COMPLETED" {
            return Err(SdkError::Result(format!(
                "run {} ended {}: {} {}",
                status.request_id, status.stage, status.cause, status.details
            )));
        }
        let r = self
            .http
            .send(
                tonic::codegen::http::Method::GET,
                &status.result_uri,
                &[],
                None,
            )
            .await
            .map_err(|e| SdkError::Result(format!("GET {}: {e}", status.result_uri)))?;
        if !r.status.is_success() {
            return Err(SdkError::Result(format!(
                "GET result of {}: HTTP {}",
                status.request_id, r.status
            )));
        }
        r.json().map_err(|e| {
            SdkError::Result(format!("result of {} is not JSON: {e}", status.request_id))
        })
    }

    /// Cancels the run and its descendants; returns how many descendants were cancelled.
    ///
    /// # Errors
    /// Not in the caller's subtree (PERMISSION_DENIED), already finished (FAILED_PRECONDITION).
    pub async fn cancel(&self, run: &RunRef, reason: &str) -> Result<u32, SdkError> {
        let msg = CancelRunRequest {
            request_id: run.request_id.clone(),
            reason: reason.to_owned(),
            cancellation_policy: String::new(),
        };
        self.retry(|mut c| {
            let req = self.request(msg.clone());
            async move {
                c.cancel_run(req)
                    .await
                    .map(|r| r.into_inner().descendants_cancelled)
            }
        })
        .await
    }

    /// The children of `run`, oldest first.
    ///
    /// # Errors
    /// Retries exhausted.
    pub async fn children(&self, run: &RunRef) -> Result<Vec<RunStatus>, SdkError> {
        let msg = ListRunsRequest {
            parent_request_id: run.request_id.clone(),
            ..ListRunsRequest::default()
        };
        self.retry(|mut c| {
            let req = self.request(msg.clone());
            async move { c.list_runs(req).await.map(|r| r.into_inner().runs) }
        })
        .await
    }
}

/// Options of [`Nexus::map_with`].
#[derive(Debug, Clone)]
pub struct MapOptions {
    /// Runs created per request (each request all or none): at most the server's
    /// `scheduler.max_batch_runs`. Default 1,000.
    pub chunk: usize,
    /// Waits in flight at once. Default 64.
    pub concurrency: usize,
    /// Tag of every run (empty: none).
    pub tag: String,
}

impl Default for MapOptions {
    fn default() -> Self {
        Self {
            chunk: 1_000,
            concurrency: 64,
            tag: String::new(),
        }
    }
}

/// 64 random bits for idempotency keys (from the OS through the std hasher's random seed).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
