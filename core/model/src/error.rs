//! Error kinds shared by every seam, and the one mapping from kind to HTTP status.
//!
//! Each backend maps its driver errors to an [`ErrorKind`] in exactly one function; the API layers
//! map kinds to status codes through [`ErrorKind::http_status`] only.

/// What kind of failure happened: drives retries and status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The object does not exist.
    NotFound,
    /// A compare-and-set precondition failed, or the object already exists.
    Conflict,
    /// The input is invalid.
    InvalidInput,
    /// The caller is not authenticated (missing, forged or expired token).
    Unauthorized,
    /// The caller is authenticated but not allowed (bad or expired URL signature).
    Forbidden,
    /// The backend is unreachable or refused (retryable).
    Unavailable,
    /// The backend did not answer in time (retryable).
    Timeout,
    /// The backend asks callers to slow down (retryable, with back-off).
    ResourceExhausted,
    /// A bug or an unexpected backend answer.
    Internal,
}

impl ErrorKind {
    /// Returns the HTTP status code for this kind.
    #[must_use]
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::InvalidInput => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
            ErrorKind::ResourceExhausted => 429,
            ErrorKind::Internal => 500,
        }
    }

    /// Returns true when retrying the same call later may succeed.
    #[must_use]
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::ResourceExhausted
        )
    }
}
