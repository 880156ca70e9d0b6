//! S3 [`PayloadStore`] on `aws-sdk-s3`: AWS S3 or any S3-compatible store, presigned URLs.
//!
//! Configured by an `s3://bucket/prefix?...` URL ([`S3Config`], options in [`config`]'s docs).
//!
//! # Key layout
//!
//! The object of key `k` is stored at `<prefix>/<h>/<k>`, where `<h>` is the first byte of
//! SHA-256(`k`) in two hex digits ([`object_key`]). S3 partitions a bucket by key prefix and
//! scales request rates per partition (about 3 500 writes and 5 500 reads per second per
//! prefix); Nexus's keys (`payloads/<algorithm>/<run id>`) share long prefixes and run ids are
//! time-ordered UUIDv7, so without the hash every write of a busy algorithm would hit the same,
//! newest partition. 256 hash prefixes spread the load from the first request, before S3 has
//! split anything, and still leave the original key readable after the hash (an operator can
//! find `results/knapsack/<id>` under `<prefix>/*/results/knapsack/<id>`, or compute `<h>`).
//!
//! # Writes
//!
//! An object of up to `multipart_threshold` bytes (16 MiB by default) is one `PutObject`.
//! A bigger one is a multipart upload: `CreateMultipartUpload`, then `UploadPart`s of
//! `part_size` (8 MiB by default, grown if an object would need more than 10 000 parts), at most
//! [`PART_CONCURRENCY`] in flight, each a zero-copy slice of the caller's [`Bytes`], then
//! `CompleteMultipartUpload`. Either way the object appears whole or not at all, and a `put`
//! that returned is durable (S3 acknowledges only stored objects). When a part or the completion
//! fails, the upload is aborted before the error is returned; when the `put` future is dropped
//! midway (caller cancelled), the abort is sent from a spawned task. Buckets should still carry
//! a lifecycle rule `AbortIncompleteMultipartUpload` (e.g. after 1 day) for uploads cut short by
//! a crash.
//!
//! [`PayloadStore::put_stream`] (length unknown) reads up to the threshold (plus one byte) into
//! memory: a body that ended by then is one `PutObject`; otherwise a multipart upload of parts
//! of `part_size` (objects up to `part_size` × 10 000 bytes), read from the body as for
//! `put_reader`, its check run before `CompleteMultipartUpload`. [`PayloadStore::open`] streams
//! a `GetObject` body; [`PayloadStore::size`] is a `HeadObject`.
//!
//! [`PayloadStore::put_reader`] takes the same two paths by the announced length. Up to the
//! threshold it reads the body into memory (checking its length), then one `PutObject`. Above,
//! it is the same multipart upload, its parts read from the body one after the other, each only
//! when fewer than [`PART_CONCURRENCY`] parts are in flight: at most `part_size` ×
//! [`PART_CONCURRENCY`] bytes of the body are in memory at once (≈ 32 MiB by default), whatever
//! the object's size. A body that ends early, runs past the announced length or fails to read
//! aborts the upload (the completion is sent only after the body's end was seen), so nothing is
//! stored.
//!
//! # Retries and time limits
//!
//! The SDK retries in its *standard* mode: `max_attempts` attempts per request (5 by default),
//! exponential back-off from `retry_backoff` (1 s) with full jitter, capped at 20 s; it retries
//! throttling (`503 SlowDown`, `Throttling`, `429`...), transient errors (`500`, `502`, `503`,
//! `504`, `InternalError`, `RequestTimeout`) and I/O failures, within the SDK's retry quota.
//! Every request is idempotent here (a part or an object is simply written again). `timeout`
//! (30 s) limits one attempt, `connect_timeout` (5 s) a connection; the SDK's stalled-stream
//! protection fails transfers that stop moving.
//!
//! # Errors
//!
//! One function, `kind_of`, gives every failure its [`ErrorKind`] (after the retries):
//!
//! | failure | kind |
//! |---|---|
//! | `NoSuchKey` | `NotFound` (`get`: `Ok(None)`; `delete`: success) |
//! | `NoSuchBucket`, wrong region (`PermanentRedirect`, `AuthorizationHeaderMalformed`), `5xx`, `404` without `NoSuchKey`, connection/DNS/TLS failure | `Unavailable` |
//! | `InvalidAccessKeyId`, `SignatureDoesNotMatch`, `ExpiredToken`, `InvalidToken`, `NotSignedUp`, no credentials found | `Unauthorized` |
//! | `AccessDenied`, other `403` | `Forbidden` |
//! | `SlowDown`, `Throttling`, `429`... | `ResourceExhausted` |
//! | attempt timeout, connect timeout, `RequestTimeout` | `Timeout` |
//! | `KeyTooLongError`, `InvalidArgument`, `EntityTooLarge`, an invalid key | `InvalidInput` |
//! | anything else | `Internal` |
//!
//! Only `NoSuchKey` means "not found": a missing bucket, a refused credential or an unreachable
//! endpoint is an error, never `Ok(None)`. Messages name the operation, the key and the bucket,
//! say what to check (bucket name, region, credentials, permissions) and end with S3's status,
//! error code and message, or the chain of causes of a failure without an answer.
//!
//! # Signed URLs
//!
//! [`PayloadStore::signed_get_url`] and [`PayloadStore::signed_put_url`] are SigV4 presigned
//! `GetObject` / `PutObject` URLs, checked by S3 itself: a plain HTTP client can use them, an
//! altered one is refused with `403`. SigV4 caps their validity at 7 days: a longer `valid_for`
//! is clamped to 7 days (with a warning in the log), and a validity under a second is rounded
//! up to one. A URL is also only as valid as the credentials that signed it: with temporary
//! credentials (web identity, instance metadata, ECS) S3 refuses it once that session expires,
//! which can be sooner; mint long-lived URLs with long-lived keys.
//!
//! What this module must not do: expose SDK types beyond it, or read an object's bytes more
//! than once into memory (parts are slices of the caller's buffer, or chunks read once from a
//! `put_reader` body; a `get` gathers the body once).

pub mod config;
#[cfg(test)]
mod test_server;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncRead;

pub use config::{
    ACCESS_KEY_ENV, DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE, MAX_PARTS, MAX_SINGLE_PUT,
    MIN_PART_SIZE, S3Config, SECRET_KEY_ENV,
};

use super::fs::validate_key;
use super::{
    BeforeCommit, ObjectReader, PayloadError, PayloadStore, expect_end, read_chunk, read_exactly,
    read_up_to,
};
use nexus_model::error::ErrorKind;

/// Most parts of one multipart upload in flight at once.
pub(crate) const PART_CONCURRENCY: usize = 4;
/// Longest validity of a SigV4 presigned URL: 7 days.
pub(crate) const MAX_URL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Whole days of a retention for an S3 expiration rule: rounded up, at least 1 (S3 expires by
/// days only).
#[must_use]
pub(crate) fn lifecycle_days(retention: Duration) -> i32 {
    let days = retention.as_secs().div_ceil(24 * 3600).max(1);
    i32::try_from(days).unwrap_or(i32::MAX)
}

/// Returns the S3 object key of payload key `key`: `<prefix>/<h>/<key>`, `<h>` being the first
/// byte of SHA-256(`key`) in hex (see the module docs for why); `<h>/<key>` without a prefix.
#[must_use]
pub(crate) fn object_key(prefix: &str, key: &str) -> String {
    let h = Sha256::digest(key.as_bytes())[0];
    if prefix.is_empty() {
        format!("{h:02x}/{key}")
    } else {
        format!("{prefix}/{h:02x}/{key}")
    }
}

/// S3 payload store; see the module docs.
#[derive(Clone)]
pub struct S3PayloadStore {
    client: Client,
    bucket: String,
    prefix: String,
    multipart_threshold: u64,
    part_size: u64,
    /// For messages: the endpoint, or "AWS S3".
    endpoint: String,
    timeout: Duration,
    max_attempts: u32,
}

impl fmt::Debug for S3PayloadStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3PayloadStore")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

/// What an S3 call's failure looked like: just what decides its [`ErrorKind`] and its hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure<'a> {
    /// S3 answered with an error status and, usually, an error code.
    Service { status: u16, code: Option<&'a str> },
    /// An attempt or a connection ran out of time.
    Timeout,
    /// No credentials could be found (static ones absent, the default chain empty).
    NoCredentials,
    /// The request never got an answer: connection refused, DNS, TLS, I/O.
    Dispatch,
    /// The request could not be built.
    Construction,
    /// S3's answer could not be understood.
    BadResponse { status: u16 },
    /// The object's body broke off while being read.
    Body,
}

/// Gives a failure its kind: the one mapping from S3 failures to [`ErrorKind`].
fn kind_of(failure: Failure<'_>) -> ErrorKind {
    match failure {
        Failure::Service { status, code } => match code.unwrap_or_default() {
            "NoSuchKey" => ErrorKind::NotFound,
            "NoSuchBucket"
            | "PermanentRedirect"
            | "AuthorizationHeaderMalformed"
            | "IllegalLocationConstraintException"
            | "InternalError"
            | "ServiceUnavailable" => ErrorKind::Unavailable,
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "TokenRefreshRequired"
            | "MissingSecurityHeader"
            | "NotSignedUp" => ErrorKind::Unauthorized,
            "AccessDenied" | "AllAccessDisabled" | "AccountProblem" => ErrorKind::Forbidden,
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "RequestThrottled"
            | "TooManyRequests"
            | "TooManyRequestsException"
            | "BandwidthLimitExceeded" => ErrorKind::ResourceExhausted,
            "RequestTimeout" => ErrorKind::Timeout,
            "KeyTooLongError" | "InvalidArgument" | "EntityTooLarge" | "InvalidBucketName" => {
                ErrorKind::InvalidInput
            }
            _ => match status {
                401 => ErrorKind::Unauthorized,
                403 => ErrorKind::Forbidden,
                408 => ErrorKind::Timeout,
                409 | 412 => ErrorKind::Conflict,
                429 => ErrorKind::ResourceExhausted,
                // A 404 without NoSuchKey (a HEAD, a proxy, a wrong endpoint path) is not
                // evidence that the object is missing.
                301 | 307 | 404 | 500..=599 => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
        },
        Failure::Timeout => ErrorKind::Timeout,
        Failure::NoCredentials => ErrorKind::Unauthorized,
        Failure::Dispatch | Failure::Body => ErrorKind::Unavailable,
        Failure::BadResponse { status } if status >= 500 => ErrorKind::Unavailable,
        Failure::Construction | Failure::BadResponse { .. } => ErrorKind::Internal,
    }
}

/// Reduces an SDK error to a [`Failure`].
fn failure_of<E>(err: &SdkError<E>) -> Failure<'_>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(e) => Failure::Service {
            status: e.raw().status().as_u16(),
            code: e.err().code(),
        },
        SdkError::TimeoutError(_) => Failure::Timeout,
        SdkError::DispatchFailure(e) if e.is_timeout() => Failure::Timeout,
        // Credentials are resolved just before sending: a failure there is a dispatch failure.
        SdkError::DispatchFailure(_) if caused_by_credentials(err) => Failure::NoCredentials,
        SdkError::DispatchFailure(_) => Failure::Dispatch,
        SdkError::ResponseError(e) => Failure::BadResponse {
            status: e.raw().status().as_u16(),
        },
        SdkError::ConstructionFailure(_) if caused_by_credentials(err) => Failure::NoCredentials,
        _ => Failure::Construction,
    }
}

/// True when a credentials provider error is in `err`'s source chain.
fn caused_by_credentials(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// `err` and its sources, joined by ": " (without the SDK's debug dump of the raw response).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if parts.last() != Some(&s) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// Validity of a presigned URL: S3's range, whole seconds (see the module docs).
fn url_validity(valid_for: Duration) -> Duration {
    let secs = valid_for.as_secs() + u64::from(valid_for.subsec_nanos() > 0);
    let v = Duration::from_secs(secs.max(1));
    if v > MAX_URL_VALIDITY {
        tracing::warn!(
            requested = %humantime::format_duration(valid_for),
            "S3 presigned URLs are valid for at most 7 days: clamped"
        );
        MAX_URL_VALIDITY
    } else {
        v
    }
}

impl S3PayloadStore {
    /// Builds the client: credentials and region from the config or the AWS chains, retries and
    /// time limits as described in the module docs. Sends no request (a missing bucket shows up
    /// at the first operation).
    ///
    /// # Errors
    /// `InvalidInput` when the config is invalid or no region can be found.
    pub async fn open(config: &S3Config) -> Result<Self, PayloadError> {
        config
            .validate()
            .map_err(|m| PayloadError::new(ErrorKind::InvalidInput, m))?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(config.max_attempts)
                    .with_initial_backoff(config.retry_backoff),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .operation_attempt_timeout(config.timeout)
                    .build(),
            );
        if let Some(r) = &config.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let (Some(a), Some(s)) = (&config.access_key, &config.secret_key) {
            loader = loader.credentials_provider(Credentials::new(
                a,
                s.expose(),
                None,
                None,
                "nexus-s3-config",
            ));
        }
        let shared = loader.load().await;
        if shared.region().is_none() {
            return Err(PayloadError::new(
                ErrorKind::InvalidInput,
                format!(
                    "no AWS region for bucket '{}': set the payload store URL's region option \
                     or AWS_REGION",
                    config.bucket
                ),
            ));
        }
        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(config.path_style);
        if let Some(e) = &config.endpoint {
            builder = builder.endpoint_url(e);
        }
        Ok(Self {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            multipart_threshold: config.multipart_threshold,
            part_size: config.part_size,
            endpoint: config
                .endpoint
                .clone()
                .unwrap_or_else(|| "AWS S3".to_owned()),
            timeout: config.timeout,
            max_attempts: config.max_attempts,
        })
    }

    /// Bucket of the objects.
    #[must_use]
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Id of the retention rule Nexus installs for this store's prefix.
    #[must_use]
    pub fn lifecycle_rule_id(&self) -> String {
        if self.prefix.is_empty() {
            "nexus-retention".to_owned()
        } else {
            format!("nexus-retention-{}", self.prefix.replace('/', "-"))
        }
    }

    /// The retention rule as the JSON `aws s3api put-bucket-lifecycle-configuration` takes, for
    /// deployments that manage bucket rules themselves (see [`lifecycle_days`]).
    #[must_use]
    pub fn lifecycle_json(&self, retention: Duration) -> String {
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let doc = serde_json::json!({
            "Rules": [{
                "ID": self.lifecycle_rule_id(),
                "Status": "Enabled",
                "Filter": { "Prefix": prefix },
                "Expiration": { "Days": lifecycle_days(retention) },
                "AbortIncompleteMultipartUpload": { "DaysAfterInitiation": 1 },
            }]
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }

    /// Installs (or updates) the retention rule on the bucket, keeping every other rule: objects
    /// under this store's prefix expire [`lifecycle_days`]`(retention)` days after they were
    /// written, and incomplete multipart uploads are aborted after a day. Returns the days.
    ///
    /// # Errors
    /// As the store's other operations (`Forbidden` without `s3:PutLifecycleConfiguration`).
    pub async fn apply_lifecycle(&self, retention: Duration) -> Result<i32, PayloadError> {
        use aws_sdk_s3::types::{
            AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, ExpirationStatus,
            LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
        };
        let id = self.lifecycle_rule_id();
        let mut rules: Vec<LifecycleRule> = self
            .current_rules()
            .await?
            .into_iter()
            .filter(|r| r.id() != Some(id.as_str()))
            .collect();
        let days = lifecycle_days(retention);
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let bad = |e: aws_sdk_s3::error::BuildError| {
            PayloadError::new(ErrorKind::Internal, format!("lifecycle rule: {e}"))
        };
        rules.push(
            LifecycleRule::builder()
                .id(&id)
                .status(ExpirationStatus::Enabled)
                .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
                .expiration(LifecycleExpiration::builder().days(days).build())
                .abort_incomplete_multipart_upload(
                    AbortIncompleteMultipartUpload::builder()
                        .days_after_initiation(1)
                        .build(),
                )
                .build()
                .map_err(bad)?,
        );
        let config = BucketLifecycleConfiguration::builder()
            .set_rules(Some(rules))
            .build()
            .map_err(bad)?;
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .lifecycle_configuration(config)
            .send()
            .await
            .map_err(|e| self.sdk_error("put lifecycle configuration", "", &e))?;
        Ok(days)
    }

    /// Days after which the installed retention rule expires objects; `None` when it is not
    /// installed.
    ///
    /// # Errors
    /// As the store's other operations.
    pub async fn installed_lifecycle_days(&self) -> Result<Option<i32>, PayloadError> {
        let id = self.lifecycle_rule_id();
        Ok(self
            .current_rules()
            .await?
            .iter()
            .find(|r| r.id() == Some(id.as_str()))
            .and_then(|r| {
                r.expiration()
                    .and_then(aws_sdk_s3::types::LifecycleExpiration::days)
            }))
    }

    async fn current_rules(&self) -> Result<Vec<aws_sdk_s3::types::LifecycleRule>, PayloadError> {
        match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Ok(out.rules().to_vec()),
            Err(e) if e.code() == Some("NoSuchLifecycleConfiguration") => Ok(Vec::new()),
            Err(e) => Err(self.sdk_error("get lifecycle configuration", "", &e)),
        }
    }

    /// Creates the bucket if it does not exist yet: for development and tests (production
    /// buckets are provisioned with their lifecycle rules and permissions).
    ///
    /// # Errors
    /// As any operation (see the module docs).
    pub async fn create_bucket(&self) -> Result<(), PayloadError> {
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            // Some S3-compatible stores say this for a bucket of the caller's too: usable if
            // the credentials can reach it.
            Err(e) if e.code() == Some("BucketAlreadyExists") => self
                .client
                .head_bucket()
                .bucket(&self.bucket)
                .send()
                .await
                .map(|_| ())
                .map_err(|_| self.sdk_error("create bucket", "", &e)),
            Err(e) => Err(self.sdk_error("create bucket", "", &e)),
        }
    }

    /// The S3 key of payload key `key` (validated).
    fn object(&self, key: &str) -> Result<String, PayloadError> {
        validate_key(key)?;
        Ok(object_key(&self.prefix, key))
    }

    /// Builds the error of a failed `op` on `key`: kind from [`kind_of`], message with a hint.
    fn error(
        &self,
        op: &str,
        key: &str,
        failure: Failure<'_>,
        detail: &dyn fmt::Display,
    ) -> PayloadError {
        let kind = kind_of(failure);
        let bucket = &self.bucket;
        let code = match failure {
            Failure::Service { code, .. } => code.unwrap_or_default(),
            _ => "",
        };
        let hint = match (kind, code) {
            (_, "NoSuchBucket") => format!(
                "bucket '{bucket}' does not exist at {}: create it, or fix the bucket of the \
                 payload store URL",
                self.endpoint
            ),
            (
                _,
                "PermanentRedirect"
                | "AuthorizationHeaderMalformed"
                | "IllegalLocationConstraintException",
            ) => format!(
                "bucket '{bucket}' is in another region than requests are signed for: set the \
                 payload store URL's region option"
            ),
            (ErrorKind::Unauthorized, _) if failure == Failure::NoCredentials => format!(
                "no S3 credentials: set access_key and secret_key ({ACCESS_KEY_ENV}, \
                 {SECRET_KEY_ENV}), or provide AWS credentials (environment, profile, web \
                 identity, instance metadata)"
            ),
            (ErrorKind::Unauthorized, _) => format!(
                "{} refused the credentials: check the access and secret key ({ACCESS_KEY_ENV}, \
                 {SECRET_KEY_ENV}) or the AWS credential chain",
                self.endpoint
            ),
            (ErrorKind::Forbidden, _) => format!(
                "access to bucket '{bucket}' denied: the credentials need s3:GetObject, \
                 s3:PutObject, s3:DeleteObject and s3:AbortMultipartUpload on it (and the \
                 system clock must be right)"
            ),
            (ErrorKind::ResourceExhausted, _) => format!(
                "S3 is throttling requests to bucket '{bucket}' (after {} attempts with \
                 back-off)",
                self.max_attempts
            ),
            (ErrorKind::Timeout, _) => format!(
                "no answer from {} within {} (or the connection timeout)",
                self.endpoint,
                humantime::format_duration(self.timeout)
            ),
            (ErrorKind::Unavailable, _) if failure == Failure::Dispatch => {
                format!("cannot reach {}", self.endpoint)
            }
            (ErrorKind::Unavailable, _) if failure == Failure::Body => {
                "the object's body broke off while being read".to_owned()
            }
            (ErrorKind::Unavailable, _) => format!("{} is unavailable", self.endpoint),
            (ErrorKind::NotFound, _) => "no such object".to_owned(),
            _ => "unexpected failure".to_owned(),
        };
        let what = if key.is_empty() {
            format!("s3 {op} of bucket '{bucket}'")
        } else {
            format!("s3 {op} of '{key}' in bucket '{bucket}'")
        };
        PayloadError::new(kind, format!("{what}: {hint}: {detail}"))
    }

    /// [`Self::error`] for an SDK error.
    fn sdk_error<E>(&self, op: &str, key: &str, err: &SdkError<E>) -> PayloadError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let detail = match err {
            SdkError::ServiceError(e) => {
                let status = e.raw().status().as_u16();
                let code = e.err().code().unwrap_or("no error code");
                match e.err().message() {
                    Some(m) => format!("{status} {code}: {m}"),
                    None => format!("{status} {code}"),
                }
            }
            _ => chain(err),
        };
        self.error(op, key, failure_of(err), &detail)
    }

    async fn put_single(&self, key: &str, object: &str, bytes: Bytes) -> Result<(), PayloadError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(object)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.sdk_error("put", key, &e))?;
        Ok(())
    }

    /// Size of the parts of an object of `len` bytes: `part_size`, grown if the object would
    /// need more than [`MAX_PARTS`] parts.
    fn part_size_for(&self, len: u64) -> u64 {
        self.part_size.max(len.div_ceil(MAX_PARTS))
    }

    /// Stores the object as a multipart upload of `parts` (in order, at most [`MAX_PARTS`]):
    /// aborted if a part, the completion or `parts` itself fails, or if this future is dropped.
    async fn put_multipart(
        &self,
        key: &str,
        object: &str,
        parts: impl Stream<Item = Result<Bytes, PayloadError>> + Send,
        check: Option<&dyn BeforeCommit>,
    ) -> Result<(), PayloadError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
            .map_err(|e| self.sdk_error("create multipart upload", key, &e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        if upload_id.is_empty() {
            return Err(PayloadError::new(
                ErrorKind::Internal,
                format!("s3 create multipart upload of '{key}': the answer has no upload id"),
            ));
        }
        let mut guard = AbortOnDrop {
            store: Some(self.clone()),
            object: object.to_owned(),
            upload_id: upload_id.clone(),
        };
        let result = self
            .upload_parts(key, object, &upload_id, parts, check)
            .await;
        if result.is_err() {
            self.abort(object, &upload_id).await;
        }
        // Completed or aborted: nothing left for the guard (if this future is dropped during
        // the abort above, the guard sends a second one, which is harmless).
        guard.store = None;
        result
    }

    /// Uploads the parts, at most [`PART_CONCURRENCY`] at once, and completes the upload.
    ///
    /// `parts` is polled for the next part only while fewer than [`PART_CONCURRENCY`] parts are
    /// in flight (`try_buffered`), so a reader behind it is read no faster than parts go out.
    async fn upload_parts(
        &self,
        key: &str,
        object: &str,
        upload_id: &str,
        parts: impl Stream<Item = Result<Bytes, PayloadError>> + Send,
        check: Option<&dyn BeforeCommit>,
    ) -> Result<(), PayloadError> {
        let parts: Vec<CompletedPart> = parts
            .enumerate()
            .map(|(i, part)| part.map(|body| (i, body)))
            .map_ok(|(i, body)| {
                // At most MAX_PARTS parts (part_size_for), so the number fits.
                let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
                async move {
                    let out = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(object)
                        .upload_id(upload_id)
                        .part_number(number)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .map_err(|e| self.sdk_error("upload part", key, &e))?;
                    let e_tag = out.e_tag().ok_or_else(|| {
                        PayloadError::new(
                            ErrorKind::Internal,
                            format!("s3 upload part {number} of '{key}': the answer has no ETag"),
                        )
                    })?;
                    Ok::<_, PayloadError>(
                        CompletedPart::builder()
                            .part_number(number)
                            .e_tag(e_tag)
                            .build(),
                    )
                }
            })
            .try_buffered(PART_CONCURRENCY)
            .try_collect()
            .await?;
        // Every part is stored; the object appears only with the completion.
        if let Some(c) = check {
            c.check().await?;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.sdk_error("complete multipart upload", key, &e))?;
        Ok(())
    }

    /// Aborts a multipart upload, best effort (a lifecycle rule catches what this misses).
    async fn abort(&self, object: &str, upload_id: &str) {
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .send()
            .await
        {
            tracing::warn!(
                bucket = %self.bucket,
                object,
                error = %DisplayErrorContext(&e),
                "cannot abort a failed multipart upload: its parts stay until the bucket's \
                 lifecycle rule removes them"
            );
        }
    }
}

/// Aborts a multipart upload when a `put` is dropped before it finished (the caller cancelled).
struct AbortOnDrop {
    /// `None` once the upload completed or was aborted.
    store: Option<S3PayloadStore>,
    object: String,
    upload_id: String,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        let object = std::mem::take(&mut self.object);
        let upload_id = std::mem::take(&mut self.upload_id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { store.abort(&object, &upload_id).await });
        }
    }
}

#[async_trait]
impl PayloadStore for S3PayloadStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), PayloadError> {
        let object = self.object(key)?;
        let len = bytes.len() as u64;
        if len <= self.multipart_threshold {
            return self.put_single(key, &object, bytes).await;
        }
        let step = usize::try_from(self.part_size_for(len)).unwrap_or(usize::MAX);
        // Zero-copy: each part is a slice sharing the caller's buffer.
        let parts =
            futures::stream::iter((0..bytes.len()).step_by(step).map(move |start| {
                Ok(bytes.slice(start..bytes.len().min(start.saturating_add(step))))
            }));
        self.put_multipart(key, &object, parts, None).await
    }

    async fn put_reader(
        &self,
        key: &str,
        mut body: Box<dyn AsyncRead + Send + Unpin>,
        len: u64,
    ) -> Result<(), PayloadError> {
        let object = self.object(key)?;
        if len <= self.multipart_threshold {
            let bytes = read_exactly(key, &mut *body, len).await?;
            return self.put_single(key, &object, bytes).await;
        }
        let parts = body_parts(key, body, len, self.part_size_for(len));
        self.put_multipart(key, &object, parts, None).await
    }

    async fn put_stream(
        &self,
        key: &str,
        mut body: Box<dyn AsyncRead + Send + Unpin>,
        check: Option<&dyn BeforeCommit>,
    ) -> Result<u64, PayloadError> {
        let object = self.object(key)?;
        let head = read_up_to(key, &mut *body, self.multipart_threshold + 1).await?;
        if head.len() as u64 <= self.multipart_threshold {
            if let Some(c) = check {
                c.check().await?;
            }
            let n = head.len() as u64;
            self.put_single(key, &object, head).await?;
            return Ok(n);
        }
        let total = std::sync::atomic::AtomicU64::new(0);
        let parts = unsized_parts(key, head, body, self.part_size, &total);
        self.put_multipart(key, &object, parts, check).await?;
        Ok(total.load(std::sync::atomic::Ordering::Relaxed))
    }

    async fn open(&self, key: &str) -> Result<Option<ObjectReader>, PayloadError> {
        let object = self.object(key)?;
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let err = self.sdk_error("get", key, &e);
                return if err.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                };
            }
        };
        let len = out
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| {
                self.error(
                    "get",
                    key,
                    Failure::BadResponse { status: 200 },
                    &"the answer has no Content-Length",
                )
            })?;
        Ok(Some(ObjectReader {
            len,
            body: Box::new(Box::pin(out.body.into_async_read())),
        }))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, PayloadError> {
        let object = self.object(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
        {
            Ok(out) => Ok(Some(
                out.content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
            )),
            // A HEAD answer has no body, so no NoSuchKey code: its 404 is "not found".
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(None),
            Err(e) => Err(self.sdk_error("head", key, &e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, PayloadError> {
        let object = self.object(key)?;
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let err = self.sdk_error("get", key, &e);
                // Only NoSuchKey maps to NotFound (see kind_of).
                return if err.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                };
            }
        };
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| self.error("get", key, Failure::Body, &chain(&e)))?;
        Ok(Some(body.into_bytes()))
    }

    async fn delete(&self, key: &str) -> Result<(), PayloadError> {
        let object = self.object(key)?;
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = self.sdk_error("delete", key, &e);
                // S3 deletes unknown keys silently; some compatible stores say NoSuchKey.
                if err.kind == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn signed_get_url(&self, key: &str, valid_for: Duration) -> Result<String, PayloadError> {
        let object = self.object(key)?;
        let presigning = presigning(valid_for)?;
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object)
            .presigned(presigning)
            .await
        {
            Ok(req) => Ok(req.uri().to_owned()),
            Err(e) => Err(self.sdk_error("presign get", key, &e)),
        }
    }

    async fn signed_put_url(&self, key: &str, valid_for: Duration) -> Result<String, PayloadError> {
        let object = self.object(key)?;
        let presigning = presigning(valid_for)?;
        match self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&object)
            .presigned(presigning)
            .await
        {
            Ok(req) => Ok(req.uri().to_owned()),
            Err(e) => Err(self.sdk_error("presign put", key, &e)),
        }
    }
}

/// The parts of a `put_reader` body of `len` bytes: chunks of `part_size` bytes read one after
/// the other (each when the consumer asks for it), then a check that the body ends there, so an
/// upload is completed only after its body's end was seen.
fn body_parts(
    key: &str,
    body: Box<dyn AsyncRead + Send + Unpin>,
    len: u64,
    part_size: u64,
) -> impl Stream<Item = Result<Bytes, PayloadError>> + Send + '_ {
    futures::stream::try_unfold((body, 0u64), move |(mut body, done)| async move {
        if done == len {
            expect_end(key, &mut *body, len).await?;
            return Ok(None);
        }
        let n = part_size.min(len - done);
        let part = read_chunk(key, &mut *body, n, done, len).await?;
        Ok(Some((part, (body, done + n))))
    })
}

/// The parts of a `put_stream` body of unknown length whose first `head` bytes were read
/// already: parts of `part_size` bytes (slices of `head`, then chunks read from the body; a part
/// straddling both is copied once), the last one shorter; at most [`MAX_PARTS`]. Adds every
/// part's length to `total`.
fn unsized_parts<'a>(
    key: &'a str,
    head: Bytes,
    body: Box<dyn AsyncRead + Send + Unpin>,
    part_size: u64,
    total: &'a std::sync::atomic::AtomicU64,
) -> impl Stream<Item = Result<Bytes, PayloadError>> + Send + 'a {
    let step = usize::try_from(part_size).unwrap_or(usize::MAX);
    futures::stream::try_unfold(
        (head, body, 0u64),
        move |(mut head, mut body, count)| async move {
            let part = if head.len() >= step {
                head.split_to(step)
            } else {
                let want = part_size - head.len() as u64;
                let more = read_up_to(key, &mut *body, want).await?;
                if head.is_empty() {
                    more
                } else {
                    let mut joined = bytes::BytesMut::with_capacity(head.len() + more.len());
                    joined.extend_from_slice(&head);
                    joined.extend_from_slice(&more);
                    head = Bytes::new();
                    joined.freeze()
                }
            };
            if part.is_empty() {
                return Ok(None);
            }
            if count >= MAX_PARTS {
                return Err(PayloadError::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "the body of '{key}' is bigger than {MAX_PARTS} parts of {part_size} \
                         bytes: nothing stored"
                    ),
                ));
            }
            total.fetch_add(part.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(Some((part, (head, body, count + 1))))
        },
    )
}

/// The presigning config for `valid_for` (clamped, see [`url_validity`]).
fn presigning(valid_for: Duration) -> Result<PresigningConfig, PayloadError> {
    PresigningConfig::expires_in(url_validity(valid_for)).map_err(|e| {
        PayloadError::new(
            ErrorKind::Internal,
            format!("presigning config: {}", DisplayErrorContext(&e)),
        )
    })
}

#[cfg(test)]
mod tests;
