"""The clients of the v1 API: :class:`NexusClient` (blocking) and :class:`AsyncNexusClient`
(asyncio). Both send the same :mod:`~nexus_sdk._calls`; only sending and sleeping differ."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from . import _calls as calls
from ._errors import ConfigurationError, NexusError, RunFailedError, RunTimeoutError
from ._http import AsyncTransport, Call, Retry, SyncTransport, error_from_response, redact
from ._models import CancellationPolicy, RunMetadata, RunRef, RunResult
from ._version import __version__

#: Environment variable: the server's base URL (as the ``nexus`` CLI reads it).
SERVER_ENV = "NEXUS_SERVER"
#: Environment variable: a client's bearer token (OIDC token or API key).
TOKEN_ENV = "NEXUS_TOKEN"  # noqa: S105 - the name of a variable, not a secret
#: Environment variable: PEM CA certificates trusted for ``https://`` besides the system's.
CA_FILE_ENV = "NEXUS_CA_FILE"
#: The standalone server's default address.
DEFAULT_SERVER = "http://127.0.0.1:8090"

#: Header naming the calling run (with its run token as the bearer).
RUN_ID_HEADER = "x-nexus-run-id"


@dataclass(frozen=True)
class RunIdentity:
    """The identity of a calling run: its request id and run token (``NEXUS__REQUEST_ID``,
    ``NEXUS__RUN_TOKEN``). A client with an identity acts as that run: what it submits are
    the run's children, and it may act on the run's subtree only."""

    request_id: str
    token: str

    def __repr__(self) -> str:
        return f"RunIdentity(request_id={self.request_id!r}, token='***')"


@dataclass(frozen=True)
class _Settings:
    base_url: str
    auth_headers: dict[str, str]
    verify: ssl.SSLContext | bool
    timeout: httpx.Timeout
    retry: Retry
    headers: dict[str, str]


def _settings(
    base_url: str,
    token: str | None,
    identity: RunIdentity | None,
    ca_file: str | os.PathLike[str] | None,
    timeout: float,
    retry: Retry | None,
) -> _Settings:
    if not base_url.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"server URL {base_url!r}: expected http://host:port or https://host:port"
        )
    auth: dict[str, str] = {}
    if identity is not None:
        auth = {RUN_ID_HEADER: identity.request_id, "Authorization": f"Bearer {identity.token}"}
    elif token and token.strip():
        auth = {"Authorization": f"Bearer {token.strip()}"}
    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        path = Path(ca_file)
        if not path.is_file():
            raise ConfigurationError(f"CA file {path}: not a readable file")
        verify = ssl.create_default_context()
        verify.load_verify_locations(cafile=str(path))
    return _Settings(
        base_url=base_url.rstrip("/"),
        auth_headers=auth,
        verify=verify,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        retry=retry or Retry(),
        headers={"User-Agent": f"nexus-sdk-python/{__version__}", "Accept": "application/json"},
    )


def _env_settings() -> dict[str, Any]:
    def var(k: str) -> str | None:
        v = os.environ.get(k, "").strip()
        return v or None

    return {
        "base_url": var(SERVER_ENV) or DEFAULT_SERVER,
        "token": var(TOKEN_ENV),
        "ca_file": var(CA_FILE_ENV),
    }


def _default_initiator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} (nexus-sdk-python)"


def _ref(run: RunRef | RunResult) -> RunRef:
    if isinstance(run, RunResult):
        if not run.algorithm:
            raise ConfigurationError(
                f"run {run.request_id}: its algorithm is unknown; pass a RunRef"
            )
        return run.ref
    return run


class _Waiting:
    """Deadline and poll interval of one :meth:`NexusClient.wait` (shared by both clients)."""

    def __init__(
        self, timeout: float | None, poll_interval: float, max_poll_interval: float
    ) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.interval = poll_interval
        self.max_interval = max(max_poll_interval, poll_interval)

    def next_sleep(self, run: RunRef, last: RunResult) -> float:
        """The pause before the next poll; raises :class:`RunTimeoutError` past the deadline."""
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            raise RunTimeoutError(f"run {run} still {last.status} after {self.timeout:g}s", last)
        pause = self.interval
        if self.deadline is not None:
            pause = min(pause, max(0.0, self.deadline - now))
        self.interval = min(self.interval * 1.5, self.max_interval)
        return pause


def _result_call(result: RunResult) -> Call[bytes] | bytes:
    """How to read a finished run's result: bytes at once for a ``data:`` URL, else a call."""
    if not result.succeeded:
        raise RunFailedError(result)
    uri = result.result_uri
    if not uri:
        raise NexusError(f"run {result.request_id} completed without a result")
    if uri.startswith("data:"):
        return calls.data_url_bytes(uri)
    return calls.download(uri, f"downloading the result of run {result.request_id}")


class NexusClient:
    """A blocking client of the Nexus v1 HTTP API.

    Args:
        base_url: the server (standalone) or the schedulers' load balancer,
            ``http://host:port`` or ``https://…``.
        token: bearer token of a client (OIDC token or API key), when the server requires one.
        identity: act as a run instead (algorithms: see :class:`nexus_sdk.NexusRun`).
        ca_file: PEM CA certificates trusted for ``https://`` besides the system's.
        timeout: seconds for one HTTP request.
        retry: how transient failures are retried (default: for up to 60 s).
        transport: an ``httpx`` transport (tests).

    Every method raises an :class:`~nexus_sdk.ApiError` subclass for an error answer (with
    the server's message) and :class:`~nexus_sdk.TransportError` when the server cannot be
    reached within the retry budget.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_SERVER,
        *,
        token: str | None = None,
        identity: RunIdentity | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        retry: Retry | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        s = _settings(base_url, token, identity, ca_file, timeout, retry)
        self.base_url = s.base_url
        self.identity = identity
        self._http = httpx.Client(
            base_url=s.base_url,
            verify=s.verify,
            timeout=s.timeout,
            headers=s.headers,
            transport=transport,
        )
        self._t = SyncTransport(self._http, s.auth_headers, s.retry)

    @classmethod
    def from_env(cls, **kwargs: Any) -> NexusClient:
        """A client configured as the ``nexus`` CLI is: ``NEXUS_SERVER`` (default
        ``http://127.0.0.1:8090``), ``NEXUS_TOKEN``, ``NEXUS_CA_FILE``; ``kwargs`` win."""
        return cls(**{**_env_settings(), **kwargs})

    def close(self) -> None:
        """Closes the connections."""
        self._http.close()

    def __enter__(self) -> NexusClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def submit(
        self,
        algorithm: str,
        parameters: Any,
        *,
        tag: str | None = None,
        idempotency_key: str | None = None,
        custom_configuration: dict[str, Any] | None = None,
        payload_valid_for: timedelta | str | None = None,
        parent: RunRef | None = None,
        dry_run: bool = False,
        api_version: str | None = None,
    ) -> RunRef:
        """Submits a run of ``algorithm`` with ``parameters`` (any JSON object) and returns it
        once the server has made it durable.

        ``idempotency_key``: submitting again with the same key returns the same run. Without
        one, a fresh key is sent on every retry of this call, so a retried submission never
        makes two runs. ``parent`` makes the run a child of another (execution trees).
        """
        return self._t.execute(
            calls.submit(
                algorithm,
                parameters,
                tag=tag,
                idempotency_key=idempotency_key,
                custom_configuration=custom_configuration,
                payload_valid_for=payload_valid_for,
                parent=parent,
                dry_run=dry_run,
                api_version=api_version,
            )
        )

    def get(self, run: RunRef | RunResult) -> RunResult:
        """Returns the run's status now (stage, result URI, error message)."""
        return self._t.execute(calls.get(_ref(run)))

    def wait(
        self,
        run: RunRef | RunResult,
        *,
        timeout: float | None = 600.0,
        poll_interval: float = 0.25,
        max_poll_interval: float = 5.0,
    ) -> RunResult:
        """Polls the run until it is in a terminal stage and returns its final status.

        Polls start every ``poll_interval`` seconds and back off (1.5 times longer each poll) to
        ``max_poll_interval``. Raises :class:`~nexus_sdk.RunTimeoutError` (with the last
        status) when ``timeout`` seconds pass first (``None``: wait for ever).
        """
        waiting = _Waiting(timeout, poll_interval, max_poll_interval)
        while True:
            last = self.get(run)
            if last.finished:
                return last
            time.sleep(waiting.next_sleep(_ref(run), last))

    def result_bytes(self, run: RunRef | RunResult) -> bytes:
        """The result of a COMPLETED run, downloaded through its signed URL.

        Raises :class:`~nexus_sdk.RunFailedError` when the run ended otherwise (and
        :class:`~nexus_sdk.NexusError` while it has not finished).
        """
        result = run if isinstance(run, RunResult) else self.get(run)
        if not result.finished:
            raise NexusError(f"run {result.request_id} has not finished: {result.status}")
        how = _result_call(result)
        return how if isinstance(how, bytes) else self._t.execute(how)

    def result_json(self, run: RunRef | RunResult) -> Any:
        """The result of a COMPLETED run, decoded as JSON (see :meth:`result_bytes`)."""
        data = self.result_bytes(run)
        try:
            return json.loads(data)
        except ValueError as e:
            rid = run.request_id
            raise NexusError(f"the result of run {rid} is not JSON: {e}") from e

    def download_result(self, run: RunRef | RunResult, path: str | os.PathLike[str]) -> int:
        """Streams the result of a COMPLETED run into the file ``path``; returns its size."""
        result = run if isinstance(run, RunResult) else self.get(run)
        how = _result_call(result)
        target = Path(path)
        if isinstance(how, bytes):
            target.write_bytes(how)
            return len(how)
        size = 0
        try:
            with self._http.stream("GET", how.url, follow_redirects=True) as resp:
                if not resp.is_success:
                    resp.read()
                    raise _download_error(resp, how.url)
                with target.open("wb") as f:
                    for chunk in resp.iter_bytes():
                        f.write(chunk)
                        size += len(chunk)
        except httpx.TransportError as e:
            raise NexusError(f"{how.what}: {e}") from e
        return size

    def metadata(self, run: RunRef | RunResult) -> RunMetadata:
        """Everything the server knows about the run (stage, timings, parent, cause, logs)."""
        return self._t.execute(calls.metadata(_ref(run)))

    def job(self, run: RunRef | RunResult) -> dict[str, Any]:
        """The run rendered as a Kubernetes ``batch/v1`` Job (credentials left out)."""
        return self._t.execute(calls.job(_ref(run)))

    def payload(self, run: RunRef | RunResult) -> bytes:
        """The run's payload (the JSON of its ``algorithmParameters``), as bytes."""
        return self._t.execute(calls.payload(_ref(run)))

    def set_tag(self, run: RunRef | RunResult, tag: str) -> str:
        """Replaces the run's tag (``""`` clears it); returns the server's confirmation."""
        return self._t.execute(calls.set_tag(_ref(run), tag))

    def runs_by_tag(self, tag: str) -> list[RunResult]:
        """Every run with ``tag`` that the caller may read."""
        return self._t.execute(calls.by_tag(tag))

    def children(self, run: RunRef | RunResult) -> list[RunResult]:
        """The run's direct children."""
        return self._t.execute(calls.children(_ref(run)))

    def cancel(
        self,
        run: RunRef | RunResult,
        *,
        reason: str = "",
        initiator: str | None = None,
        policy: CancellationPolicy = "Background",
    ) -> str:
        """Cancels the run and its whole subtree; returns the server's message (which says
        when the run had already finished and nothing changed)."""
        who = initiator if initiator is not None else _default_initiator()
        return self._t.execute(calls.cancel(_ref(run), reason, who, policy))


class AsyncNexusClient:
    """The asyncio twin of :class:`NexusClient`: the same methods, as coroutines."""

    def __init__(
        self,
        base_url: str = DEFAULT_SERVER,
        *,
        token: str | None = None,
        identity: RunIdentity | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        retry: Retry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        s = _settings(base_url, token, identity, ca_file, timeout, retry)
        self.base_url = s.base_url
        self.identity = identity
        self._http = httpx.AsyncClient(
            base_url=s.base_url,
            verify=s.verify,
            timeout=s.timeout,
            headers=s.headers,
            transport=transport,
        )
        self._t = AsyncTransport(self._http, s.auth_headers, s.retry)

    @classmethod
    def from_env(cls, **kwargs: Any) -> AsyncNexusClient:
        """As :meth:`NexusClient.from_env`."""
        return cls(**{**_env_settings(), **kwargs})

    async def aclose(self) -> None:
        """Closes the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncNexusClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def submit(
        self,
        algorithm: str,
        parameters: Any,
        *,
        tag: str | None = None,
        idempotency_key: str | None = None,
        custom_configuration: dict[str, Any] | None = None,
        payload_valid_for: timedelta | str | None = None,
        parent: RunRef | None = None,
        dry_run: bool = False,
        api_version: str | None = None,
    ) -> RunRef:
        """As :meth:`NexusClient.submit`."""
        return await self._t.execute(
            calls.submit(
                algorithm,
                parameters,
                tag=tag,
                idempotency_key=idempotency_key,
                custom_configuration=custom_configuration,
                payload_valid_for=payload_valid_for,
                parent=parent,
                dry_run=dry_run,
                api_version=api_version,
            )
        )

    async def get(self, run: RunRef | RunResult) -> RunResult:
        """As :meth:`NexusClient.get`."""
        return await self._t.execute(calls.get(_ref(run)))

    async def wait(
        self,
        run: RunRef | RunResult,
        *,
        timeout: float | None = 600.0,
        poll_interval: float = 0.25,
        max_poll_interval: float = 5.0,
    ) -> RunResult:
        """As :meth:`NexusClient.wait`."""
        waiting = _Waiting(timeout, poll_interval, max_poll_interval)
        while True:
            last = await self.get(run)
            if last.finished:
                return last
            await asyncio.sleep(waiting.next_sleep(_ref(run), last))

    async def result_bytes(self, run: RunRef | RunResult) -> bytes:
        """As :meth:`NexusClient.result_bytes`."""
        result = run if isinstance(run, RunResult) else await self.get(run)
        if not result.finished:
            raise NexusError(f"run {result.request_id} has not finished: {result.status}")
        how = _result_call(result)
        return how if isinstance(how, bytes) else await self._t.execute(how)

    async def result_json(self, run: RunRef | RunResult) -> Any:
        """As :meth:`NexusClient.result_json`."""
        data = await self.result_bytes(run)
        try:
            return json.loads(data)
        except ValueError as e:
            rid = run.request_id
            raise NexusError(f"the result of run {rid} is not JSON: {e}") from e

    async def download_result(self, run: RunRef | RunResult, path: str | os.PathLike[str]) -> int:
        """As :meth:`NexusClient.download_result` (chunks are written to the file as they
        arrive)."""
        result = run if isinstance(run, RunResult) else await self.get(run)
        how = _result_call(result)
        target = Path(path)
        if isinstance(how, bytes):
            target.write_bytes(how)
            return len(how)
        size = 0
        try:
            async with self._http.stream("GET", how.url, follow_redirects=True) as resp:
                if not resp.is_success:
                    await resp.aread()
                    raise _download_error(resp, how.url)
                with target.open("wb") as f:
                    async for chunk in resp.aiter_bytes():
                        f.write(chunk)
                        size += len(chunk)
        except httpx.TransportError as e:
            raise NexusError(f"{how.what}: {e}") from e
        return size

    async def metadata(self, run: RunRef | RunResult) -> RunMetadata:
        """As :meth:`NexusClient.metadata`."""
        return await self._t.execute(calls.metadata(_ref(run)))

    async def job(self, run: RunRef | RunResult) -> dict[str, Any]:
        """As :meth:`NexusClient.job`."""
        return await self._t.execute(calls.job(_ref(run)))

    async def payload(self, run: RunRef | RunResult) -> bytes:
        """As :meth:`NexusClient.payload`."""
        return await self._t.execute(calls.payload(_ref(run)))

    async def set_tag(self, run: RunRef | RunResult, tag: str) -> str:
        """As :meth:`NexusClient.set_tag`."""
        return await self._t.execute(calls.set_tag(_ref(run), tag))

    async def runs_by_tag(self, tag: str) -> list[RunResult]:
        """As :meth:`NexusClient.runs_by_tag`."""
        return await self._t.execute(calls.by_tag(tag))

    async def children(self, run: RunRef | RunResult) -> list[RunResult]:
        """As :meth:`NexusClient.children`."""
        return await self._t.execute(calls.children(_ref(run)))

    async def cancel(
        self,
        run: RunRef | RunResult,
        *,
        reason: str = "",
        initiator: str | None = None,
        policy: CancellationPolicy = "Background",
    ) -> str:
        """As :meth:`NexusClient.cancel`."""
        who = initiator if initiator is not None else _default_initiator()
        return await self._t.execute(calls.cancel(_ref(run), reason, who, policy))


def _download_error(resp: httpx.Response, url: str) -> NexusError:
    """The typed error of a failed download."""
    return error_from_response(resp, resp.request.method, redact(url))
