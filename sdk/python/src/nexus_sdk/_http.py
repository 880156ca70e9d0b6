"""HTTP plumbing shared by the sync and async clients.

A call is described once, as a :class:`Call` (method, URL, body, how to read the answer); the
sync and async transports only differ in how they send it and sleep. Retries live in
:class:`_Attempts`, a small state machine both transports drive, so the two cannot drift.

What is retried: connection failures and timeouts, ``429`` and ``5xx`` answers (honouring
``Retry-After``), with exponential back-off and jitter within :attr:`Retry.budget` seconds.
Every other answer is final and raised as the :class:`~nexus_sdk.ApiError` of its status.
Calls that create something are made safe to retry by the caller (an idempotency key).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from ._errors import ConflictError, NexusError, TransportError, error_for_status

T = TypeVar("T")

_RUN_TOKEN_SEGMENT = re.compile(r"/run-token/[^/]+")


@dataclass(frozen=True)
class Retry:
    """How transient failures are retried.

    Attributes:
        budget: seconds within which a call is retried (0: never retried).
        initial: first delay, seconds; doubled after each attempt.
        maximum: longest delay, seconds.
    """

    budget: float = 60.0
    initial: float = 0.2
    maximum: float = 5.0


def redact(url: str) -> str:
    """Returns ``url`` without its query string (signatures) and without a run token segment."""
    return _RUN_TOKEN_SEGMENT.sub("/run-token/***", url.split("?", 1)[0])


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call: what to send and how to read a successful answer."""

    method: str
    url: str
    parse: Callable[[httpx.Response], T]
    what: str
    json: Any = None
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] | None = None
    #: Send the client's credential (false for signed URLs, whose signature is the credential
    #: and which an object store refuses alongside an ``Authorization`` header).
    authenticated: bool = True
    #: A 409 on a retry means an earlier attempt got through (e.g. a completion whose answer
    #: was lost): treat it as success.
    conflict_ok_on_retry: bool = False
    follow_redirects: bool = False
    #: A 429 is an answer, not a reason to retry: ``parse`` reads it (advisory calls such as
    #: progress reports, which are dropped rather than delayed).
    throttle_is_answer: bool = False


def retry_after(resp: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header in seconds, if any."""
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_from_response(resp: httpx.Response, method: str, url: str) -> NexusError:
    """Builds the typed error of an error answer, with the server's message."""
    text = resp.text.strip()
    message = text
    if "json" in resp.headers.get("content-type", ""):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            message = str(doc.get("detail") or doc.get("message") or doc.get("title") or text)
    if not message:
        message = resp.reason_phrase or "error"
    return error_for_status(
        resp.status_code,
        message,
        method=method,
        url=redact(url),
        retry_after=retry_after(resp),
    )


def _retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


@dataclass
class _Done(Generic[T]):
    value: T


class _Attempts(Generic[T]):
    """The retry decisions of one call: after each attempt, either the value, a delay before the
    next attempt, or the error to raise."""

    def __init__(self, call: Call[T], retry: Retry) -> None:
        self.call = call
        self.retry = retry
        self.deadline = time.monotonic() + retry.budget
        self.delay = retry.initial
        self.attempt = 0

    def after(self, resp: httpx.Response | None, exc: Exception | None) -> _Done[T] | float:
        """Returns the value, or the delay before retrying; raises the final error."""
        self.attempt += 1
        call = self.call
        err: NexusError
        if resp is not None:
            if resp.is_success or (resp.status_code == 429 and call.throttle_is_answer):
                return _Done(call.parse(resp))
            err = error_from_response(resp, call.method, str(resp.request.url))
            if isinstance(err, ConflictError) and call.conflict_ok_on_retry and self.attempt > 1:
                return _Done(call.parse(resp))
            if not _retryable_status(resp.status_code):
                raise err
            hint = retry_after(resp)
            if hint is not None:
                self.delay = max(self.delay, min(hint, 60.0))
        else:
            if isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
                raise TransportError(f"{call.what}: {exc}") from exc
            err = TransportError(f"{call.what}: {type(exc).__name__}: {exc}")
        if time.monotonic() + self.delay > self.deadline:
            if exc is not None:
                raise err from exc
            raise err
        delay = self.delay * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto
        self.delay = min(self.delay * 2, self.retry.maximum)
        return delay


def _request_args(call: Call[Any], auth_headers: Mapping[str, str]) -> dict[str, Any]:
    headers = dict(call.headers)
    if call.authenticated:
        headers.update(auth_headers)
    args: dict[str, Any] = {"headers": headers, "follow_redirects": call.follow_redirects}
    if call.json is not None:
        args["json"] = call.json
    if call.content is not None:
        args["content"] = call.content
    if call.params is not None:
        args["params"] = dict(call.params)
    return args


class SyncTransport:
    """Sends :class:`Call` s with an ``httpx.Client``, retrying as :class:`_Attempts` says."""

    def __init__(self, client: httpx.Client, auth_headers: Mapping[str, str], retry: Retry) -> None:
        self.client = client
        self.auth_headers = dict(auth_headers)
        self.retry = retry

    def execute(self, call: Call[T]) -> T:
        """Sends ``call`` until it succeeds or fails for good; returns its parsed answer."""
        attempts = _Attempts(call, self.retry)
        args = _request_args(call, self.auth_headers)
        while True:
            resp: httpx.Response | None = None
            exc: Exception | None = None
            try:
                resp = self.client.request(call.method, call.url, **args)
            except httpx.TransportError as e:
                exc = e
            step = attempts.after(resp, exc)
            if isinstance(step, _Done):
                return step.value
            time.sleep(step)


class AsyncTransport:
    """Sends :class:`Call` s with an ``httpx.AsyncClient``, retrying as :class:`_Attempts` says."""

    def __init__(
        self, client: httpx.AsyncClient, auth_headers: Mapping[str, str], retry: Retry
    ) -> None:
        self.client = client
        self.auth_headers = dict(auth_headers)
        self.retry = retry

    async def execute(self, call: Call[T]) -> T:
        """Sends ``call`` until it succeeds or fails for good; returns its parsed answer."""
        attempts = _Attempts(call, self.retry)
        args = _request_args(call, self.auth_headers)
        while True:
            resp: httpx.Response | None = None
            exc: Exception | None = None
            try:
                resp = await self.client.request(call.method, call.url, **args)
            except httpx.TransportError as e:
                exc = e
            step = attempts.after(resp, exc)
            if isinstance(step, _Done):
                return step.value
            await asyncio.sleep(step)
