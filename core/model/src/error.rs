//! Error kinds shared by every seam, and the one table from kind to HTTP status and gRPC code.
//!
//! Each backend maps its driver errors to an [`ErrorKind`] in exactly one function; the API layers
//! map kinds to status codes through [`ErrorKind::http_status`] and [`ErrorKind::grpc_code`] only,
//! both read from the one table in `ErrorKind::codes`.

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
    /// The one table: each kind's HTTP status and gRPC code, side by side.
    fn codes(self) -> (u16, tonic::Code) {
        use tonic::Code;
        match self {
            ErrorKind::NotFound => (404, Code::NotFound),
            ErrorKind::Conflict => (409, Code::FailedPrecondition),
            ErrorKind::InvalidInput => (400, Code::InvalidArgument),
            ErrorKind::Unauthorized => (401, Code::Unauthenticated),
            ErrorKind::Forbidden => (403, Code::PermissionDenied),
            ErrorKind::Unavailable => (503, Code::Unavailable),
            ErrorKind::Timeout => (504, Code::DeadlineExceeded),
            ErrorKind::ResourceExhausted => (429, Code::ResourceExhausted),
            ErrorKind::Internal => (500, Code::Internal),
        }
    }

    /// Returns the HTTP status code for this kind.
    #[must_use]
    pub fn http_status(self) -> u16 {
        self.codes().0
    }

    /// Returns the gRPC status code for this kind.
    #[must_use]
    pub fn grpc_code(self) -> tonic::Code {
        self.codes().1
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
