//! Wire conversions of `nexus.v1` (dispatches, cancellation policies) and the error mapping of
//! the link: error kinds to and from gRPC codes, retry hints, submit results.

use std::time::Duration;

use nexus_proto::grpc::{Code, RETRY_AFTER_MS, RunDispatch, SubmitResult};

use crate::shard::{Dispatch, ShardError};
use nexus_model::error::ErrorKind;
use nexus_model::run::{CancellationPolicy, Run, RunId};
use nexus_model::spec::WorkgroupSpec;

/// Returns the wire form of a dispatch (`run_json`/`workgroup_json` are the serde JSON of the
/// domain types, so a new run field needs no proto change).
#[must_use]
pub(crate) fn dispatch_to_wire(d: &Dispatch) -> RunDispatch {
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
        scheduler_url: d.scheduler_url.clone(),
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
        scheduler_url: w.scheduler_url,
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

/// Returns the error kind of a gRPC status code: the reverse of [`ErrorKind::grpc_code`], which
/// also reads the codes tonic produces on its own (`Ok` maps to `Internal`, it never reaches here).
#[must_use]
pub(crate) fn kind_of_status(code: tonic::Code) -> ErrorKind {
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

pub(crate) fn policy_to_wire(p: CancellationPolicy) -> &'static str {
    match p {
        CancellationPolicy::Background => "Background",
        CancellationPolicy::Foreground => "Foreground",
        CancellationPolicy::Orphan => "Orphan",
    }
}

/// Returns the `retry-after-ms` hint of a status, if any.
#[must_use]
pub(crate) fn retry_after_of(status: &tonic::Status) -> Option<Duration> {
    status
        .metadata()
        .get(RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// Maps a failed call to a [`ShardError`] naming the shard and endpoint.
pub(crate) fn error_of_status(shard: &str, endpoint: &str, status: &tonic::Status) -> ShardError {
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
pub(crate) fn outcome_of_result(shard: &str, r: &SubmitResult) -> Result<(), ShardError> {
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
