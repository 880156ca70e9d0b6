//! Reading run requests without holding large payloads in memory.
//!
//! A request whose declared length is at most [`IN_MEMORY_MAX`] is read into memory and parsed
//! as before (the fast path of every ordinary submission). A bigger one, or one without a
//! length, is streamed to an unlinked temporary file (the limit `max_request_bytes` enforced as
//! it arrives), then [`crate::request_split::split`] finds the `algorithmParameters` value
//! in it: the rest of the request (small, bounded) is parsed with `serde_json`, and the payload
//! is validated as JSON and hashed in one streaming pass. A payload above the inline limit is
//! then streamed from the file to the payload store ([`PayloadStore::put_reader`]): memory stays
//! bounded by the copy buffers, whatever the payload's size.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use crate::request_split::{Span, split};
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt as _;
use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;

use crate::admission::{AdmitError, hex, require_object};
use crate::metrics;
use nexus_http::ApiError;

/// Requests declared at most this long are read into memory (1 MiB).
pub const IN_MEMORY_MAX: u64 = 1024 * 1024;
/// Most bytes of a spooled request outside its payload (tag, configuration overrides…).
pub const MAX_REST: usize = 1024 * 1024;

/// A request body, in memory or spooled to disk.
#[derive(Debug)]
pub enum Incoming {
    /// Small: the whole body.
    Memory(bytes::Bytes),
    /// Large or of unknown length: the body in an unlinked temporary file.
    Spooled(File),
}

fn too_large(limit: usize) -> ApiError {
    metrics::rejected("too_large");
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is over the limit of {limit} bytes (scheduler.max_request_bytes)"),
    )
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
}

/// Reads `body`: into memory when its declared length is small, else to a temporary file.
///
/// # Errors
/// 413 past `limit`; 400 when the client breaks the upload off; 500 when the spool file fails.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Incoming, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n <= IN_MEMORY_MAX) {
        return axum::body::to_bytes(body, limit)
            .await
            .map(Incoming::Memory)
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")));
    }
    let file = tempfile::tempfile().map_err(|e| internal("cannot create a spool file", e))?;
    let mut out = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        total += chunk.len();
        if total > limit {
            drain(stream, drain_bound(limit).saturating_sub(total as u64)).await;
            return Err(too_large(limit));
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| internal("cannot write the spool file", e))?;
    }
    out.flush()
        .await
        .map_err(|e| internal("cannot write the spool file", e))?;
    Ok(Incoming::Spooled(out.into_std().await))
}

/// How many bytes of an oversized body are read and dropped before the 413 is sent: twice the
/// limit, at least 16 MiB, at most 1 GiB.
#[must_use]
pub fn drain_bound(limit: usize) -> u64 {
    (limit as u64)
        .saturating_mul(2)
        .clamp(16 * 1024 * 1024, 1024 * 1024 * 1024)
}

/// Longest time spent draining an oversized body.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads and drops up to `bound` bytes of `stream` (at most [`DRAIN_TIME`]), so the client has
/// sent its body when the error answer reaches it.
pub async fn drain(mut stream: axum::body::BodyDataStream, bound: u64) {
    let _ = tokio::time::timeout(DRAIN_TIME, async move {
        let mut seen = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len() as u64;
            if seen >= bound {
                break;
            }
        }
    })
    .await;
}

/// A spooled request, split: the rest parsed by the caller, the payload located and checked.
#[derive(Debug)]
pub struct SpooledRequest {
    /// The request without its payload (`algorithmParameters` is `null` in it).
    pub rest: Vec<u8>,
    /// The payload, or `None` when the request has none (or it is `null`).
    pub payload: Option<SpooledPayload>,
}

/// A payload inside a spool file, validated as JSON.
#[derive(Debug)]
pub struct SpooledPayload {
    /// The spool file.
    pub file: File,
    /// Where the payload is in it.
    pub span: Span,
    /// Hex SHA-256 of the payload bytes.
    pub sha256: String,
}

impl SpooledPayload {
    /// Reads the payload into memory (for payloads small enough to be inlined).
    ///
    /// # Errors
    /// I/O failures of the spool file.
    pub fn read_all(&mut self) -> std::io::Result<Vec<u8>> {
        self.file.seek(SeekFrom::Start(self.span.start))?;
        let mut v = Vec::with_capacity(usize::try_from(self.span.len).unwrap_or(0));
        (&self.file).take(self.span.len).read_to_end(&mut v)?;
        Ok(v)
    }

    /// A reader over the payload bytes only.
    ///
    /// # Errors
    /// I/O failures of the spool file.
    pub fn into_reader(mut self) -> std::io::Result<tokio::io::Take<tokio::fs::File>> {
        use tokio::io::AsyncReadExt as _;
        self.file.seek(SeekFrom::Start(self.span.start))?;
        Ok(tokio::fs::File::from_std(self.file).take(self.span.len))
    }
}

/// Hashes what passes through.
struct Hashing<R> {
    inner: R,
    hash: sha2::Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Splits a spooled request and validates + hashes its payload (blocking: run it on a blocking
/// thread).
///
/// # Errors
/// 400 for a malformed request or payload, 413 when the request outside its payload is too
/// big, 500 for spool I/O failures.
pub fn split_spooled(mut file: File, max_depth: usize) -> Result<SpooledRequest, ApiError> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| internal("cannot read the spool file", e))?;
    let parts = split(
        BufReader::with_capacity(256 * 1024, &file),
        MAX_REST,
        max_depth,
    )
    .map_err(|e| match e {
        crate::request_split::SplitError::TooDeep(n) => AdmitError::too_deep(n).into(),
        crate::request_split::SplitError::Io(e) => internal("cannot read the spool file", e),
        crate::request_split::SplitError::RestTooLarge(n) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request outside algorithmParameters is over {n} bytes"),
        ),
        other @ crate::request_split::SplitError::Malformed(_) => {
            ApiError::bad_request(format!("Algorithm payload is invalid: {other}"))
        }
    })?;
    let Some(span) = parts.payload else {
        return Ok(SpooledRequest {
            rest: parts.rest,
            payload: None,
        });
    };
    file.seek(SeekFrom::Start(span.start))
        .map_err(|e| internal("cannot read the spool file", e))?;
    let mut first = [0u8; 1];
    (&file)
        .read_exact(&mut first)
        .map_err(|e| internal("cannot read the spool file", e))?;
    if first[0] == b'n' && span.len == 4 {
        // `null`: no payload (the caller says it is required).
        return Ok(SpooledRequest {
            rest: parts.rest,
            payload: None,
        });
    }
    require_object(Some(first[0]))?;
    file.seek(SeekFrom::Start(span.start))
        .map_err(|e| internal("cannot read the spool file", e))?;
    let mut hashing = Hashing {
        inner: BufReader::with_capacity(256 * 1024, (&file).take(span.len)),
        hash: sha2::Sha256::new(),
    };
    serde_json::from_reader::<_, serde::de::IgnoredAny>(&mut hashing).map_err(|e| {
        metrics::rejected("invalid_body");
        ApiError::bad_request(format!(
            "Algorithm payload is invalid: algorithmParameters: {e}"
        ))
    })?;
    // The value is whole JSON; anything after it inside the span would have failed above.
    let sha256 = hex(&hashing.hash.finalize());
    Ok(SpooledRequest {
        rest: parts.rest,
        payload: Some(SpooledPayload { file, span, sha256 }),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn split_spooled_t(f: File) -> Result<SpooledRequest, ApiError> {
        split_spooled(f, 128)
    }

    fn spool(body: &str) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(body.as_bytes()).unwrap();
        f
    }

    #[test]
    fn payload_is_located_validated_and_hashed() {
        let payload = r#"{"capacity": 10, "items": [1, 2, 3]}"#;
        let body = format!(r#"{{"tag": "t", "algorithmParameters": {payload}}}"#);
        let mut r = split_spooled_t(spool(&body)).unwrap();
        let rest: serde_json::Value = serde_json::from_slice(&r.rest).unwrap();
        assert_eq!(
            rest,
            serde_json::json!({"tag": "t", "algorithmParameters": null})
        );
        let p = r.payload.as_mut().unwrap();
        assert_eq!(p.read_all().unwrap(), payload.as_bytes());
        assert_eq!(p.sha256, hex(&sha2::Sha256::digest(payload.as_bytes())));
    }

    #[test]
    fn malformed_payload_and_missing_payload() {
        let e = split_spooled_t(spool(r#"{"algorithmParameters": {"a": tru}}"#)).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("algorithmParameters"), "{}", e.message);
        assert!(
            split_spooled_t(spool(r#"{"algorithmParameters": null}"#))
                .unwrap()
                .payload
                .is_none()
        );
        assert!(
            split_spooled_t(spool(r#"{"tag": "x"}"#))
                .unwrap()
                .payload
                .is_none()
        );
        let e = split_spooled_t(spool(r#"{"algorithmParameters": {"a": 1}"#)).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
