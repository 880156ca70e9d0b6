//! The gRPC link between components: its configuration and credentials ([`GrpcLinkConfig`],
//! [`LinkCredentials`]), the client side of the [`Shard`] seam ([`GrpcShard`]), the wire
//! conversions of `nexus.v1`, and the server-side helpers a receiver needs (TLS config,
//! [`authorize_component`]).
//!
//! Invariants: secrets and private keys are read once by [`GrpcLinkConfig::load`], never logged
//! (the `Debug` of [`LinkCredentials`] redacts them) and compared in constant time; metric labels
//! carry the shard name only. The client never holds a lock across an `.await`.
//!
//! What it must not do: decide anything about runs. The receiver owns launches, the scheduler
//! owns retries; this module moves dispatches and maps errors, once, between [`ErrorKind`] and
//! the wire's codes.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nexus_proto::grpc::shard_service_client::ShardServiceClient;
use nexus_proto::grpc::{
    CancelRequest, CapacityRequest, CapacityResponse, Code, RETRY_AFTER_MS, RunDispatch,
    SubmitRequest, SubmitResult,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

use crate::error::ErrorKind;
use crate::run::{CancellationPolicy, Run, RunId};
use crate::shard::{Dispatch, Shard, ShardError};
use crate::spec::WorkgroupSpec;

/// Environment variable holding the shared secret; it takes precedence over `grpc.secret_file`.
pub const SECRET_ENV: &str = "NEXUS_GRPC_SECRET";

/// Shortest accepted shared secret, in bytes (after trimming whitespace).
pub const MIN_SECRET_LEN: usize = 16;

// ---------------------------------------------------------------------------------------------
// Configuration and credentials
// ---------------------------------------------------------------------------------------------

/// How components authenticate each other on the gRPC link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkAuth {
    /// `authorization: Bearer <secret>` on every call (over TLS when TLS is configured).
    #[default]
    SharedSecret,
    /// Mutual TLS: client certificates signed by `grpc.tls_ca`.
    Mtls,
    /// No authentication: only for a trusted network, and only when written explicitly.
    None,
}

/// The `grpc` configuration section, shared by scheduler, receiver and supervisor.
///
/// TLS is on when `tls_cert` or `tls_ca` is given. A server needs `tls_cert` + `tls_key`; a
/// client needs `tls_ca` (or trusts the system roots). `mtls` needs all three on both sides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcLinkConfig {
    /// How components authenticate each other (`shared-secret`, `mtls` or `none`).
    pub auth: LinkAuth,
    /// File holding the shared secret (at least 16 bytes). `NEXUS_GRPC_SECRET`, when set, wins.
    pub secret_file: Option<PathBuf>,
    /// PEM CA bundle: verifies the server (client side) and client certificates (mtls, server
    /// side).
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate of this component (server identity; client identity with mtls).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Name to verify in the server certificate, when it differs from the endpoint's host.
    pub tls_server_name: Option<String>,
}

impl GrpcLinkConfig {
    /// Returns true when TLS is configured.
    #[must_use]
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() || self.tls_ca.is_some()
    }

    /// Checks the shape of the section (files are read by [`GrpcLinkConfig::load`]).
    ///
    /// # Errors
    /// A message naming the key and what to do.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_with(std::env::var_os(SECRET_ENV).is_some_and(|v| !v.is_empty()))
    }

    /// [`GrpcLinkConfig::validate`], told whether `NEXUS_GRPC_SECRET` holds a value.
    fn validate_with(&self, env_secret: bool) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(
                "grpc.tls_cert and grpc.tls_key: set both (the certificate and its private key) or neither"
                    .into(),
            );
        }
        if self.tls_server_name.is_some() && !self.tls_enabled() {
            return Err(
                "grpc.tls_server_name: only used with TLS; set grpc.tls_ca (and grpc.tls_cert/tls_key) or remove it"
                    .into(),
            );
        }
        match self.auth {
            LinkAuth::SharedSecret => {
                if self.secret_file.is_none() && !env_secret {
                    return Err(format!(
                        "grpc.secret_file: required with grpc.auth: shared-secret; point it at a file holding \
                         at least {MIN_SECRET_LEN} bytes, set {SECRET_ENV}, or choose grpc.auth: mtls"
                    ));
                }
            }
            LinkAuth::Mtls => {
                for (key, v) in [
                    ("tls_ca", &self.tls_ca),
                    ("tls_cert", &self.tls_cert),
                    ("tls_key", &self.tls_key),
                ] {
                    if v.is_none() {
                        return Err(format!(
                            "grpc.{key}: required with grpc.auth: mtls (set grpc.tls_ca, grpc.tls_cert and grpc.tls_key)"
                        ));
                    }
                }
            }
            LinkAuth::None => {
                if self.secret_file.is_some() {
                    return Err(
                        "grpc.secret_file: set while grpc.auth is none, so it would be ignored; remove it or use grpc.auth: shared-secret"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Validates, then reads the secret (from `NEXUS_GRPC_SECRET` or `secret_file`) and the PEM
    /// files once.
    ///
    /// # Errors
    /// A message naming the key: missing or unreadable file, short secret, bad PEM.
    pub fn load(&self) -> Result<LinkCredentials, String> {
        self.load_with_env(std::env::var(SECRET_ENV).ok())
    }

    /// [`GrpcLinkConfig::load`] with the value of `NEXUS_GRPC_SECRET` given (tests never mutate
    /// the process environment).
    ///
    /// # Errors
    /// As [`GrpcLinkConfig::load`].
    pub fn load_with_env(&self, env_secret: Option<String>) -> Result<LinkCredentials, String> {
        let env_secret = env_secret.filter(|s| !s.trim().is_empty());
        self.validate_with(env_secret.is_some())?;
        let secret = match self.auth {
            LinkAuth::SharedSecret => Some(match env_secret {
                Some(s) => check_secret(s.trim(), SECRET_ENV)?,
                None => {
                    // Checked above: shared-secret without the env variable has a file.
                    let Some(path) = &self.secret_file else {
                        return Err("grpc.secret_file: required".into());
                    };
                    let raw = read_file("grpc.secret_file", path)?;
                    let text = String::from_utf8(raw).map_err(|_| {
                        format!(
                            "grpc.secret_file: {} is not UTF-8 text; write the secret as text",
                            path.display()
                        )
                    })?;
                    check_secret(text.trim(), "grpc.secret_file")?
                }
            }),
            LinkAuth::Mtls | LinkAuth::None => None,
        };
        let ca_pem = match &self.tls_ca {
            Some(p) => {
                let pem = read_file("grpc.tls_ca", p)?;
                check_certs("grpc.tls_ca", p, &pem)?;
                Some(pem)
            }
            None => None,
        };
        let cert_pem = match &self.tls_cert {
            Some(p) => {
                let pem = read_file("grpc.tls_cert", p)?;
                check_certs("grpc.tls_cert", p, &pem)?;
                Some(pem)
            }
            None => None,
        };
        let key_pem = match &self.tls_key {
            Some(p) => {
                let pem = read_file("grpc.tls_key", p)?;
                PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    format!(
                        "grpc.tls_key: {} holds no usable PEM private key ({e}); give the key of grpc.tls_cert",
                        p.display()
                    )
                })?;
                Some(pem)
            }
            None => None,
        };
        Ok(LinkCredentials(Arc::new(CredsInner {
            auth: self.auth,
            secret,
            ca_pem,
            cert_pem,
            key_pem,
            server_name: self.tls_server_name.clone(),
        })))
    }
}

fn read_file(key: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "{key}: cannot read {} ({e}); check the path and the file's permissions",
            path.display()
        )
    })
}

fn check_secret(s: &str, key: &str) -> Result<String, String> {
    if s.len() < MIN_SECRET_LEN {
        return Err(format!(
            "{key}: the grpc secret is {} bytes; use at least {MIN_SECRET_LEN} (e.g. `openssl rand -hex 32`)",
            s.len()
        ));
    }
    if AsciiMetadataValue::try_from(format!("Bearer {s}")).is_err() {
        return Err(format!(
            "{key}: the grpc secret must be printable ASCII (it travels as a header)"
        ));
    }
    Ok(s.to_owned())
}

fn check_certs(key: &str, path: &std::path::Path, pem: &[u8]) -> Result<(), String> {
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem) {
        c.map_err(|e| format!("{key}: {} is not valid PEM ({e})", path.display()))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!(
            "{key}: {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(())
}

/// The loaded credentials of the gRPC link: what clients and servers need, read once. Cheap to
/// clone. Its `Debug` never shows the secret or the private key.
#[derive(Clone)]
pub struct LinkCredentials(Arc<CredsInner>);

struct CredsInner {
    auth: LinkAuth,
    secret: Option<String>,
    ca_pem: Option<Vec<u8>>,
    cert_pem: Option<Vec<u8>>,
    key_pem: Option<Vec<u8>>,
    server_name: Option<String>,
}

impl fmt::Debug for LinkCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkCredentials")
            .field("auth", &self.0.auth)
            .field("secret", &self.0.secret.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls_enabled())
            .field("server_name", &self.0.server_name)
            .finish_non_exhaustive()
    }
}

impl LinkCredentials {
    /// Returns plain-text, unauthenticated credentials (`auth: none`, no TLS).
    #[must_use]
    pub fn none() -> Self {
        Self(Arc::new(CredsInner {
            auth: LinkAuth::None,
            secret: None,
            ca_pem: None,
            cert_pem: None,
            key_pem: None,
            server_name: None,
        }))
    }

    /// Returns shared-secret credentials without TLS.
    ///
    /// # Errors
    /// A secret shorter than 16 bytes or not printable ASCII.
    pub fn shared_secret(secret: &str) -> Result<Self, String> {
        let secret = check_secret(secret.trim(), "grpc secret")?;
        Ok(Self(Arc::new(CredsInner {
            auth: LinkAuth::SharedSecret,
            secret: Some(secret),
            ca_pem: None,
            cert_pem: None,
            key_pem: None,
            server_name: None,
        })))
    }

    /// Returns the authentication mode.
    #[must_use]
    pub fn auth(&self) -> LinkAuth {
        self.0.auth
    }

    /// Returns true when TLS is configured.
    #[must_use]
    pub fn tls_enabled(&self) -> bool {
        self.0.ca_pem.is_some() || self.0.cert_pem.is_some()
    }

    /// Returns the client TLS config for an `https://` endpoint: the configured CA (or the system
    /// roots), the client certificate with mtls, the server name override.
    #[must_use]
    pub fn client_tls(&self) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.0.ca_pem {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
            None => tls.with_native_roots(),
        };
        if self.0.auth == LinkAuth::Mtls
            && let (Some(cert), Some(key)) = (&self.0.cert_pem, &self.0.key_pem)
        {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.0.server_name {
            tls = tls.domain_name(name.clone());
        }
        tls
    }

    /// Returns the server TLS config, or `None` without TLS. With mtls, client certificates are
    /// verified against `grpc.tls_ca` but optional at the handshake: algorithms calling the
    /// CompletionService have none, so [`authorize_component`] requires a verified one on the
    /// ShardService instead.
    ///
    /// # Errors
    /// TLS is configured but this component has no certificate and key to serve with.
    pub fn server_tls(&self) -> Result<Option<ServerTlsConfig>, String> {
        if !self.tls_enabled() {
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (&self.0.cert_pem, &self.0.key_pem) else {
            return Err(
                "grpc.tls_cert and grpc.tls_key: required to serve gRPC over TLS (grpc.tls_ca alone only configures clients)"
                    .into(),
            );
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if self.0.auth == LinkAuth::Mtls {
            let Some(ca) = &self.0.ca_pem else {
                return Err("grpc.tls_ca: required with grpc.auth: mtls".into());
            };
            tls = tls
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(true);
        }
        Ok(Some(tls))
    }

    fn bearer(&self) -> Option<AsciiMetadataValue> {
        let secret = self.0.secret.as_ref()?;
        // check_secret proved the value is a valid header when the credentials were built.
        AsciiMetadataValue::try_from(format!("Bearer {secret}"))
            .ok()
            .map(|mut v| {
                v.set_sensitive(true);
                v
            })
    }
}

/// Returns the bearer token of the `authorization` metadata, if any.
#[must_use]
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Checks the component credential of a call to a component-only service (ShardService):
/// the shared secret (constant-time compare), a verified client certificate (mtls), or nothing
/// (`auth: none`).
///
/// # Errors
/// `UNAUTHENTICATED` with a message saying what to check.
#[allow(clippy::result_large_err)] // tonic's Status is what handlers return
pub fn authorize_component<T>(
    creds: &LinkCredentials,
    request: &tonic::Request<T>,
) -> Result<(), tonic::Status> {
    match creds.0.auth {
        LinkAuth::None => Ok(()),
        LinkAuth::Mtls => match request.peer_certs() {
            Some(certs) if !certs.is_empty() => Ok(()),
            _ => Err(tonic::Status::unauthenticated(
                "client certificate required: configure grpc.tls_cert and grpc.tls_key signed by the receiver's grpc.tls_ca",
            )),
        },
        LinkAuth::SharedSecret => {
            let Some(expected) = creds.0.secret.as_deref() else {
                return Err(tonic::Status::internal("grpc secret not loaded"));
            };
            let Some(given) = bearer_token(request.metadata()) else {
                return Err(tonic::Status::unauthenticated(
                    "missing component credential: send 'authorization: Bearer <grpc secret>' (grpc.secret_file or NEXUS_GRPC_SECRET)",
                ));
            };
            // Hashing first makes the comparison constant-time whatever the lengths.
            let a = Sha256::digest(given.as_bytes());
            let b = Sha256::digest(expected.as_bytes());
            if bool::from(a.ct_eq(&b)) {
                Ok(())
            } else {
                Err(tonic::Status::unauthenticated(
                    "grpc secret refused: check that grpc.secret_file / NEXUS_GRPC_SECRET match on both sides",
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Wire conversions and the one error mapping
// ---------------------------------------------------------------------------------------------

/// Returns the wire form of a dispatch (`run_json`/`workgroup_json` are the serde JSON of the
/// domain types, so a new run field needs no proto change).
#[must_use]
pub fn dispatch_to_wire(d: &Dispatch) -> RunDispatch {
    RunDispatch {
        run_id: d.run.id.to_string(),
        algorithm: d.run.algorithm.clone(),
        shard: d.workgroup.cluster.clone(),
        // Serializing these plain data types cannot fail (string map keys, no custom
        // serializers that error); an empty document is refused by the receiver if it ever did.
        run_json: serde_json::to_vec(&d.run).unwrap_or_default(),
        workgroup_json: serde_json::to_vec(&d.workgroup).unwrap_or_default(),
        payload_url: d.payload_url.clone(),
        relaunch: d.relaunch,
    }
}

/// Returns the dispatch of a wire `RunDispatch`.
///
/// # Errors
/// A message for bad JSON, or ids that do not match the run document.
pub fn dispatch_from_wire(w: RunDispatch) -> Result<Dispatch, String> {
    let run: Run = serde_json::from_slice(&w.run_json).map_err(|e| {
        format!(
            "run {}: run_json is not a valid run document: {e}",
            w.run_id
        )
    })?;
    let workgroup: WorkgroupSpec = serde_json::from_slice(&w.workgroup_json).map_err(|e| {
        format!(
            "run {}: workgroup_json is not a valid workgroup spec: {e}",
            w.run_id
        )
    })?;
    let id: RunId = w.run_id.parse().map_err(|_| {
        format!(
            "run_id '{}' is not a valid request id (expected a UUID)",
            w.run_id
        )
    })?;
    if id != run.id {
        return Err(format!(
            "run_id {} does not match the run document's id {}",
            w.run_id, run.id
        ));
    }
    if w.algorithm != run.algorithm {
        return Err(format!(
            "run {}: algorithm '{}' does not match the run document's '{}'",
            w.run_id, w.algorithm, run.algorithm
        ));
    }
    Ok(Dispatch {
        run,
        workgroup,
        payload_url: w.payload_url,
        relaunch: w.relaunch,
    })
}

/// Returns the wire code of an error kind.
#[must_use]
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Conflict => Code::Conflict,
        ErrorKind::InvalidInput => Code::InvalidInput,
        ErrorKind::Unauthorized => Code::Unauthorized,
        ErrorKind::Forbidden => Code::Forbidden,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Timeout => Code::Timeout,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Internal => Code::Internal,
    }
}

/// Returns the error kind of a wire code (`OK` and unknown codes have none: `OK` is success, an
/// unspecified code is a broken peer and maps to `Internal`).
#[must_use]
pub fn kind_of(code: Code) -> ErrorKind {
    match code {
        Code::NotFound => ErrorKind::NotFound,
        Code::Conflict => ErrorKind::Conflict,
        Code::InvalidInput => ErrorKind::InvalidInput,
        Code::Unauthorized => ErrorKind::Unauthorized,
        Code::Forbidden => ErrorKind::Forbidden,
        Code::Unavailable => ErrorKind::Unavailable,
        Code::Timeout => ErrorKind::Timeout,
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        Code::Unspecified | Code::Ok | Code::Internal => ErrorKind::Internal,
    }
}

/// Returns the gRPC status code of an error kind (the one kind → gRPC table).
#[must_use]
pub fn status_code_of(kind: ErrorKind) -> tonic::Code {
    match kind {
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::Conflict => tonic::Code::FailedPrecondition,
        ErrorKind::InvalidInput => tonic::Code::InvalidArgument,
        ErrorKind::Unauthorized => tonic::Code::Unauthenticated,
        ErrorKind::Forbidden => tonic::Code::PermissionDenied,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::Timeout => tonic::Code::DeadlineExceeded,
        ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorKind::Internal => tonic::Code::Internal,
    }
}

/// Returns the error kind of a gRPC status code (the reverse table; `Ok` maps to `Internal`, it
/// never reaches here).
#[must_use]
pub fn kind_of_status(code: tonic::Code) -> ErrorKind {
    use tonic::Code as C;
    match code {
        C::NotFound => ErrorKind::NotFound,
        C::AlreadyExists | C::FailedPrecondition | C::Aborted => ErrorKind::Conflict,
        C::InvalidArgument | C::OutOfRange => ErrorKind::InvalidInput,
        C::Unauthenticated => ErrorKind::Unauthorized,
        C::PermissionDenied => ErrorKind::Forbidden,
        // `Unknown` is what tonic answers when the connection breaks mid-call (the receiver died):
        // the endpoint failed, not the run, and a Submit may be repeated (it is idempotent).
        C::Unavailable | C::Unknown => ErrorKind::Unavailable,
        // `Cancelled` is what tonic answers when the client-side request timeout expires.
        C::DeadlineExceeded | C::Cancelled => ErrorKind::Timeout,
        C::ResourceExhausted => ErrorKind::ResourceExhausted,
        C::Ok | C::Unimplemented | C::Internal | C::DataLoss => ErrorKind::Internal,
    }
}

/// Parses a wire cancellation policy (empty means `Background`).
///
/// # Errors
/// The accepted values.
pub fn parse_policy(s: &str) -> Result<CancellationPolicy, String> {
    if s.is_empty() {
        Ok(CancellationPolicy::Background)
    } else {
        s.parse()
    }
}

fn policy_to_wire(p: CancellationPolicy) -> &'static str {
    match p {
        CancellationPolicy::Background => "Background",
        CancellationPolicy::Foreground => "Foreground",
        CancellationPolicy::Orphan => "Orphan",
    }
}

/// Returns the `retry-after-ms` hint of a status, if any.
#[must_use]
pub fn retry_after_of(status: &tonic::Status) -> Option<Duration> {
    status
        .metadata()
        .get(RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// Maps a failed call to a [`ShardError`] naming the shard and endpoint.
fn error_of_status(shard: &str, endpoint: &str, status: &tonic::Status) -> ShardError {
    let kind = kind_of_status(status.code());
    let hint = match kind {
        ErrorKind::Unauthorized => {
            "; check the grpc secret (grpc.secret_file / NEXUS_GRPC_SECRET) or the client certificate (grpc.tls_cert)"
        }
        ErrorKind::Forbidden => "; the receiver refused this component",
        _ => "",
    };
    let mut e = ShardError::new(
        kind,
        format!("shard {shard} at {endpoint}: {}{hint}", status.message()),
    );
    if kind == ErrorKind::ResourceExhausted {
        e.retry_after = retry_after_of(status);
    }
    e
}

/// Maps one run's result to the submit outcome.
fn outcome_of_result(shard: &str, r: &SubmitResult) -> Result<(), ShardError> {
    let code = Code::try_from(r.code).unwrap_or(Code::Unspecified);
    if code == Code::Ok {
        return Ok(());
    }
    let mut e = ShardError::new(
        kind_of(code),
        format!("shard {shard}: run {}: {}", r.run_id, r.message),
    );
    if code == Code::ResourceExhausted && r.retry_after_ms > 0 {
        e.retry_after = Some(Duration::from_millis(r.retry_after_ms));
    }
    Err(e)
}

// ---------------------------------------------------------------------------------------------
// The client: GrpcShard
// ---------------------------------------------------------------------------------------------

/// Tuning of a [`GrpcShard`].
#[derive(Debug, Clone, Copy)]
pub struct GrpcShardOptions {
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for one call, connection excluded.
    pub request_timeout: Duration,
    /// Most runs in one `Submit` call.
    pub batch_max: usize,
    /// How long a batch waits for more runs, only when more were already queued.
    pub batch_linger: Duration,
    /// Submit calls in flight at once (further batches wait, and grow meanwhile).
    pub max_in_flight: usize,
    /// How long a failing endpoint is left alone (doubles while it keeps failing).
    pub down_for: Duration,
    /// Longest time an endpoint is left alone.
    pub down_max: Duration,
}

impl Default for GrpcShardOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            batch_max: 64,
            batch_linger: Duration::from_millis(2),
            max_in_flight: 8,
            down_for: Duration::from_secs(2),
            down_max: Duration::from_secs(30),
        }
    }
}

/// Adds `authorization: Bearer <secret>` to every call (shared-secret mode).
#[derive(Clone)]
struct BearerInterceptor(Option<AsciiMetadataValue>);

impl Interceptor for BearerInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = ShardServiceClient<InterceptedService<Channel, BearerInterceptor>>;

struct EndpointState {
    url: String,
    client: Client,
    health: std::sync::Mutex<Health>,
}

#[derive(Default)]
struct Health {
    /// Left alone until then.
    down_until: Option<Instant>,
    /// The last down period (zero after a success).
    backoff: Duration,
}

impl EndpointState {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // Each critical section assigns two fields: a poisoned lock still holds consistent data.
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_down(&self, now: Instant) -> bool {
        self.health().down_until.is_some_and(|t| t > now)
    }

    fn mark_up(&self) {
        let mut h = self.health();
        h.down_until = None;
        h.backoff = Duration::ZERO;
    }
}

struct Inner {
    shard: String,
    endpoints: Vec<EndpointState>,
    next: AtomicUsize,
    opts: GrpcShardOptions,
    in_flight: Arc<Semaphore>,
    /// `Submit` calls attempted (every endpoint tried counts).
    submit_calls: AtomicU64,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcShard")
            .field("shard", &self.shard)
            .field(
                "endpoints",
                &self.endpoints.iter().map(|e| &e.url).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

struct Pending {
    wire: RunDispatch,
    reply: oneshot::Sender<Result<(), ShardError>>,
}

/// The [`Shard`] of a remote shard cluster: its receivers' `nexus.v1.ShardService` endpoints.
///
/// Concurrent submits are gathered into `Submit` batches by a background task; batches are
/// balanced round robin across the endpoints, and an endpoint that fails at the transport level
/// (or answers UNAVAILABLE) is left alone for a while and the batch is retried at once on the
/// next one. Cancels go to every live endpoint (each receiver only knows its own runs).
#[derive(Debug, Clone)]
pub struct GrpcShard {
    inner: Arc<Inner>,
    queue: mpsc::Sender<Pending>,
}

impl GrpcShard {
    /// Builds the client of one shard. Channels connect lazily; must be called inside a tokio
    /// runtime (it spawns the batching task, which ends when the last clone is dropped).
    ///
    /// # Errors
    /// No endpoints, an endpoint that is not an `http://` / `https://` URL, or an `http://`
    /// endpoint while TLS is configured.
    pub fn new(
        shard_name: &str,
        endpoints: &[String],
        creds: &LinkCredentials,
        opts: GrpcShardOptions,
    ) -> Result<Self, String> {
        if endpoints.is_empty() {
            return Err(format!(
                "shard {shard_name}: no gRPC endpoints; list the receivers' addresses (http://host:port or https://host:port)"
            ));
        }
        let interceptor = BearerInterceptor(creds.bearer());
        let mut states = Vec::with_capacity(endpoints.len());
        for url in endpoints {
            let https = url.starts_with("https://");
            if !(https || url.starts_with("http://")) {
                return Err(format!(
                    "shard {shard_name}: endpoint '{url}' must start with http:// or https://"
                ));
            }
            if !https && creds.tls_enabled() {
                return Err(format!(
                    "shard {shard_name}: endpoint '{url}' is http:// but grpc TLS is configured; use https://"
                ));
            }
            let mut ep = Endpoint::from_shared(url.clone())
                .map_err(|e| format!("shard {shard_name}: endpoint '{url}' is not a URL: {e}"))?
                .connect_timeout(opts.connect_timeout)
                .timeout(opts.request_timeout)
                .tcp_nodelay(true);
            if https {
                ep = ep.tls_config(creds.client_tls()).map_err(|e| {
                    format!("shard {shard_name}: endpoint '{url}': TLS configuration refused: {e}")
                })?;
            }
            let client =
                ShardServiceClient::with_interceptor(ep.connect_lazy(), interceptor.clone());
            states.push(EndpointState {
                url: url.clone(),
                client,
                health: std::sync::Mutex::new(Health::default()),
            });
        }
        let opts = GrpcShardOptions {
            batch_max: opts.batch_max.max(1),
            max_in_flight: opts.max_in_flight.max(1),
            ..opts
        };
        let inner = Arc::new(Inner {
            shard: shard_name.to_owned(),
            endpoints: states,
            next: AtomicUsize::new(0),
            opts,
            in_flight: Arc::new(Semaphore::new(opts.max_in_flight)),
            submit_calls: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(opts.batch_max * opts.max_in_flight * 4);
        tokio::spawn(batcher(inner.clone(), rx));
        Ok(Self { inner, queue: tx })
    }

    /// Returns the shard's name.
    #[must_use]
    pub fn shard(&self) -> &str {
        &self.inner.shard
    }

    /// Returns how many `Submit` calls were attempted so far (each endpoint tried counts): with
    /// batching, fewer than the runs submitted under load.
    #[must_use]
    pub fn submit_calls(&self) -> u64 {
        self.inner.submit_calls.load(Ordering::Relaxed)
    }

    /// Asks every endpoint for its capacity, concurrently; one answer per endpoint, in order.
    pub async fn capacity(&self) -> Vec<(String, Result<CapacityResponse, ShardError>)> {
        let calls = self.inner.endpoints.iter().map(|ep| async move {
            let mut client = ep.client.clone();
            let res = client
                .capacity(CapacityRequest {})
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| error_of_status(&self.inner.shard, &ep.url, &s));
            (ep.url.clone(), res)
        });
        futures::future::join_all(calls).await
    }
}

#[async_trait]
impl Shard for GrpcShard {
    async fn submit(&self, dispatch: Dispatch) -> Result<(), ShardError> {
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            wire: dispatch_to_wire(&dispatch),
            reply: tx,
        };
        let stopped = || {
            ShardError::new(
                ErrorKind::Unavailable,
                format!("shard {}: the gRPC client is stopping", self.inner.shard),
            )
        };
        self.queue.send(pending).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    async fn cancel(&self, run_id: RunId, policy: CancellationPolicy) -> Result<(), ShardError> {
        let inner = &self.inner;
        let now = Instant::now();
        let live: Vec<&EndpointState> =
            inner.endpoints.iter().filter(|e| !e.is_down(now)).collect();
        // When every endpoint is marked down, try them all anyway: a cancel is rare and worth it.
        let targets = if live.is_empty() {
            inner.endpoints.iter().collect()
        } else {
            live
        };
        let req = CancelRequest {
            run_id: run_id.to_string(),
            policy: policy_to_wire(policy).to_owned(),
        };
        let calls = targets.into_iter().map(|ep| {
            let req = req.clone();
            async move {
                let mut client = ep.client.clone();
                match client.cancel(req).await {
                    Ok(_) => {
                        ep.mark_up();
                        Ok(true)
                    }
                    Err(s) if is_endpoint_failure(&s) => {
                        inner.mark_down(ep);
                        Ok(false)
                    }
                    Err(s) => Err(error_of_status(&inner.shard, &ep.url, &s)),
                }
            }
        });
        let mut reached = false;
        for r in futures::future::join_all(calls).await {
            reached |= r?;
        }
        if reached {
            Ok(())
        } else {
            Err(inner.all_down_error())
        }
    }
}

/// True when the endpoint itself failed (connection refused, reset, TLS handshake, receiver
/// stopping): the call may be retried elsewhere at once.
fn is_endpoint_failure(s: &tonic::Status) -> bool {
    // `Unknown`: tonic's code for a call cut off by a broken connection ("transport error").
    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
}

impl Inner {
    /// Returns the next live endpoint not tried yet for this batch (round robin).
    fn pick(&self, tried: &[bool]) -> Option<usize> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| !tried[i] && !self.endpoints[i].is_down(now))
    }

    fn mark_down(&self, ep: &EndpointState) {
        let mut h = ep.health();
        let now = Instant::now();
        if h.down_until.is_some_and(|t| t > now) {
            // Already down: other batches in flight when it failed do not grow the back-off;
            // only a failed probe after the pause does.
            return;
        }
        h.backoff = if h.backoff.is_zero() {
            self.opts.down_for
        } else {
            (h.backoff * 2).min(self.opts.down_max)
        };
        h.down_until = Some(now + h.backoff);
        drop(h);
        tracing::warn!(shard = %self.shard, endpoint = %ep.url, "grpc endpoint marked down");
        metrics::counter!("nexus_grpc_endpoint_down_total", "shard" => self.shard.clone())
            .increment(1);
    }

    fn all_down_error(&self) -> ShardError {
        let urls: Vec<&str> = self.endpoints.iter().map(|e| e.url.as_str()).collect();
        ShardError::new(
            ErrorKind::Unavailable,
            format!(
                "shard {}: no receiver reachable (endpoints {}); retry later",
                self.shard,
                urls.join(", ")
            ),
        )
    }

    /// Sends one batch, failing over across endpoints, and answers every waiting submit.
    async fn send_batch(&self, batch: Vec<Pending>) {
        metrics::counter!("nexus_grpc_submit_batches_total", "shard" => self.shard.clone())
            .increment(1);
        #[allow(clippy::cast_precision_loss)] // batch sizes are small
        metrics::histogram!("nexus_grpc_submit_batch_size", "shard" => self.shard.clone())
            .record(batch.len() as f64);
        let (wires, replies): (Vec<RunDispatch>, Vec<_>) =
            batch.into_iter().map(|p| (p.wire, p.reply)).unzip();
        let req = SubmitRequest { runs: wires };
        let mut tried = vec![false; self.endpoints.len()];
        let outcome: Result<Vec<SubmitResult>, ShardError> = loop {
            let Some(i) = self.pick(&tried) else {
                break Err(self.all_down_error());
            };
            tried[i] = true;
            let ep = &self.endpoints[i];
            let mut client = ep.client.clone();
            self.submit_calls.fetch_add(1, Ordering::Relaxed);
            match client.submit(req.clone()).await {
                Ok(resp) => {
                    let results = resp.into_inner().results;
                    // A receiver that is shutting down refuses every run as UNAVAILABLE: the
                    // batch goes to the next endpoint instead.
                    if !results.is_empty()
                        && results.iter().all(|r| r.code == Code::Unavailable as i32)
                    {
                        self.mark_down(ep);
                        continue;
                    }
                    ep.mark_up();
                    break Ok(results);
                }
                Err(s) if is_endpoint_failure(&s) => {
                    tracing::debug!(shard = %self.shard, endpoint = %ep.url, error = %s.message(), "submit failed; trying the next endpoint");
                    self.mark_down(ep);
                }
                Err(s) => break Err(error_of_status(&self.shard, &ep.url, &s)),
            }
        };
        match outcome {
            Ok(results) => {
                for (k, reply) in replies.into_iter().enumerate() {
                    let res = match results.get(k) {
                        Some(r) if r.run_id == req.runs[k].run_id => {
                            outcome_of_result(&self.shard, r)
                        }
                        _ => Err(ShardError::new(
                            ErrorKind::Internal,
                            format!(
                                "shard {}: the receiver's answer does not match the batch (run {})",
                                self.shard, req.runs[k].run_id
                            ),
                        )),
                    };
                    // The submitter may have given up (dropped its future): nothing to answer.
                    let _ = reply.send(res);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Gathers queued submits into batches and sends them, at most `max_in_flight` at once.
async fn batcher(inner: Arc<Inner>, mut rx: mpsc::Receiver<Pending>) {
    let max = inner.opts.batch_max;
    loop {
        // Waiting for a slot first lets the queue grow meanwhile: batches get bigger under load.
        let Ok(permit) = inner.in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // Linger only when others were already queued: a lone submit goes at once.
        if batch.len() > 1 && batch.len() < max {
            let deadline = Instant::now() + inner.opts.batch_linger;
            while batch.len() < max {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    _ => break,
                }
            }
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            inner.send_batch(batch).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Dispatch {
        let run = crate::store::test_suite::sample_run("alg");
        Dispatch {
            workgroup: WorkgroupSpec {
                cluster: run.shard.clone(),
                description: "wg".into(),
                ..Default::default()
            },
            run,
            payload_url: "http://127.0.0.1:1/p".into(),
            relaunch: true,
        }
    }

    #[test]
    fn dispatch_round_trips_through_the_wire() {
        let d = sample();
        let w = dispatch_to_wire(&d);
        assert_eq!(w.run_id, d.run.id.to_string());
        assert_eq!(w.shard, "local");
        let back = dispatch_from_wire(w).unwrap();
        assert_eq!(back.run, d.run);
        assert_eq!(back.workgroup, d.workgroup);
        assert_eq!(back.payload_url, d.payload_url);
        assert!(back.relaunch);
    }

    #[test]
    fn dispatch_from_wire_names_bad_json_and_mismatched_ids() {
        let mut w = dispatch_to_wire(&sample());
        w.run_id = RunId::new().to_string();
        assert!(
            dispatch_from_wire(w)
                .unwrap_err()
                .contains("does not match")
        );
        let mut w = dispatch_to_wire(&sample());
        w.run_json = b"{".to_vec();
        assert!(dispatch_from_wire(w).unwrap_err().contains("run_json"));
        let mut w = dispatch_to_wire(&sample());
        w.workgroup_json = b"nope".to_vec();
        assert!(
            dispatch_from_wire(w)
                .unwrap_err()
                .contains("workgroup_json")
        );
    }

    #[test]
    fn codes_and_kinds_map_both_ways() {
        for k in [
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::InvalidInput,
            ErrorKind::Unauthorized,
            ErrorKind::Forbidden,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::ResourceExhausted,
            ErrorKind::Internal,
        ] {
            assert_eq!(kind_of(code_of(k)), k);
            assert_eq!(kind_of_status(status_code_of(k)), k);
        }
        assert_eq!(parse_policy("").unwrap(), CancellationPolicy::Background);
        assert_eq!(parse_policy("Orphan").unwrap(), CancellationPolicy::Orphan);
        assert!(parse_policy("Sideways").is_err());
    }

    #[test]
    fn config_validation_names_the_key() {
        let c = GrpcLinkConfig {
            auth: LinkAuth::Mtls,
            tls_ca: Some("ca.pem".into()),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("grpc.tls_cert"));
        let c = GrpcLinkConfig {
            tls_cert: Some("c.pem".into()),
            secret_file: Some("s".into()),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("grpc.tls_key"));
        let c = GrpcLinkConfig {
            auth: LinkAuth::None,
            ..Default::default()
        };
        c.validate().unwrap();
        let parsed: GrpcLinkConfig = serde_yaml::from_str("auth: none\n").unwrap();
        assert_eq!(parsed.auth, LinkAuth::None);
        assert!(serde_yaml::from_str::<GrpcLinkConfig>("secret: x\n").is_err());
    }

    #[test]
    fn load_reads_the_secret_env_first_and_checks_length_and_pem() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "short\n").unwrap();
        let c = GrpcLinkConfig {
            secret_file: Some(f.clone()),
            ..Default::default()
        };
        assert!(c.load_with_env(None).unwrap_err().contains("at least 16"));
        let creds = c
            .load_with_env(Some("0123456789abcdef0123".into()))
            .unwrap();
        assert_eq!(creds.auth(), LinkAuth::SharedSecret);
        assert!(!format!("{creds:?}").contains("0123456789abcdef"));
        std::fs::write(&f, "0123456789abcdef-from-file\n").unwrap();
        c.load_with_env(None).unwrap();
        let missing = GrpcLinkConfig {
            secret_file: Some(dir.path().join("nope")),
            ..Default::default()
        };
        assert!(
            missing
                .load_with_env(None)
                .unwrap_err()
                .contains("cannot read")
        );
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not pem").unwrap();
        let c = GrpcLinkConfig {
            auth: LinkAuth::None,
            tls_ca: Some(bad),
            ..Default::default()
        };
        assert!(c.load_with_env(None).unwrap_err().contains("grpc.tls_ca"));
    }

    #[tokio::test]
    async fn new_refuses_empty_or_bad_endpoints() {
        let creds = LinkCredentials::none();
        let o = GrpcShardOptions::default();
        assert!(
            GrpcShard::new("s", &[], &creds, o)
                .unwrap_err()
                .contains("no gRPC endpoints")
        );
        assert!(
            GrpcShard::new("s", &["tcp://x:1".into()], &creds, o)
                .unwrap_err()
                .contains("http://")
        );
        GrpcShard::new("s", &["http://127.0.0.1:1".into()], &creds, o).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_endpoint_is_left_alone_longer_each_time_up_to_the_cap() {
        let creds = LinkCredentials::none();
        let s = GrpcShard::new(
            "s",
            &["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            &creds,
            GrpcShardOptions::default(),
        )
        .unwrap();
        let inner = &s.inner;
        let ep = &inner.endpoints[0];
        let mut seen = Vec::new();
        for _ in 0..6 {
            inner.mark_down(ep);
            // Failures of batches in flight while it is down do not grow the back-off.
            inner.mark_down(ep);
            inner.mark_down(ep);
            seen.push(ep.health().backoff.as_secs());
            // The pause ends; the next probe fails again.
            let left = ep.health().down_until.unwrap() - Instant::now();
            tokio::time::advance(left + Duration::from_millis(1)).await;
        }
        assert_eq!(seen, vec![2, 4, 8, 16, 30, 30]);
        inner.mark_down(ep);
        assert!(ep.is_down(Instant::now()));
        // Only the other endpoint is picked while the first is down.
        assert_eq!(inner.pick(&[false, false]), Some(1));
        assert_eq!(inner.pick(&[false, true]), None);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(!ep.is_down(Instant::now()));
        ep.mark_up();
        inner.mark_down(ep);
        assert_eq!(ep.health().backoff, Duration::from_secs(2));
    }
}
