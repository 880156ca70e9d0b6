"""Typed exceptions of the SDK.

Every error the server answers becomes an :class:`ApiError` subclass chosen by its HTTP status,
carrying the server's own message (the ``text/plain`` body, or the ``detail`` of an
``application/problem+json`` body), the status, the method and the URL (without its query
string, which may hold a signature).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import RunResult


class NexusError(Exception):
    """Base class of every error raised by the SDK."""


class ConfigurationError(NexusError):
    """The SDK is missing configuration: an environment variable, a URL, a credential."""


class TransportError(NexusError):
    """The server could not be reached (connection refused, DNS, timeout), after retries."""


class ApiError(NexusError):
    """The server answered with an error status.

    Attributes:
        status: the HTTP status code.
        message: the server's message (what to fix, in the server's words).
        method: the HTTP method of the request.
        url: the URL of the request, without its query string.
        retry_after: seconds from the ``Retry-After`` header, when the server sent one.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        method: str = "",
        url: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.method = method
        self.url = url
        self.retry_after = retry_after
        where = f" ({method} {url})" if method else ""
        super().__init__(f"HTTP {status}{where}: {message}")


class BadRequestError(ApiError):
    """400 (invalid input: unknown algorithm, bad JSON, bad tag…), 415 (not JSON)."""


class UnauthorizedError(ApiError):
    """401: no credential, or one that does not verify (the message says what to send)."""


class ForbiddenError(ApiError):
    """403: authenticated but not allowed; a forged or expired signed URL."""


class NotFoundError(ApiError):
    """404: unknown run (or a run under another algorithm), unknown route."""


class ConflictError(ApiError):
    """409: the run already finished (a completion or result upload came too late)."""


class IdempotencyKeyReusedError(ApiError):
    """422: the idempotency key was used before for a different request (the message names the
    first run and the field that differs)."""


class PayloadTooLargeError(ApiError):
    """413: the request body or the result is over the server's limit."""


class RateLimitedError(ApiError):
    """429: the queue is full or the client is over its rate limit (see ``retry_after``)."""


class ServerError(ApiError):
    """5xx: the server failed; retried with back-off before being raised."""


class RunTimeoutError(NexusError):
    """A run did not finish within the time given to :meth:`NexusClient.wait`.

    Attributes:
        last: the last status seen.
    """

    def __init__(self, message: str, last: RunResult | None) -> None:
        self.last = last
        super().__init__(message)


class RunFailedError(NexusError):
    """A run ended in a stage other than COMPLETED, so it has no result.

    Attributes:
        result: its final status (``status``, ``error_message``).
    """

    def __init__(self, result: RunResult) -> None:
        self.result = result
        cause = f": {result.error_message}" if result.error_message else ""
        super().__init__(f"run {result.request_id} ended {result.status}{cause}")


class AlgorithmFailure(NexusError):  # noqa: N818 - the name says what the algorithm reports
    """Raised by an algorithm to report a failure with a cause and details of its own.

    :func:`nexus_sdk.run_algorithm` reports it as the run's ``errorCause`` / ``errorDetails``;
    any other exception is reported with its type and traceback.
    """

    def __init__(self, cause: str, details: str = "") -> None:
        self.cause = cause
        self.details = details
        super().__init__(cause if not details else f"{cause}: {details}")


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: BadRequestError,
    422: IdempotencyKeyReusedError,
    429: RateLimitedError,
}


def error_for_status(
    status: int,
    message: str,
    *,
    method: str = "",
    url: str = "",
    retry_after: float | None = None,
) -> ApiError:
    """Returns the :class:`ApiError` subclass instance for ``status``."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ApiError
    return cls(status, message, method=method, url=url, retry_after=retry_after)
