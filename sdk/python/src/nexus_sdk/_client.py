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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from . import _calls as calls
from ._errors import ConfigurationError, NexusError, RunFailedError, RunTimeoutError
from ._http import AsyncTransport, Call, Retry, SyncTransport, error_from_response, redact
from ._models import (
    CancellationPolicy,
    ExternalStage,
    RunMetadata,
    RunRef,
    RunResult,
    RunSummary,
)
from ._version import __version__

#: Environment variable: the server's base URL (as the ``nexus`` CLI reads it).
SERVER_ENV = "NEXUS_SERVER"
#: Environment variable: a client's bearer token (OIDC token or API key).
TOKEN_ENV = "NEXUS_TOKEN"  # noqa: S105 - the name of a variable, not a secret
#: Environment variable: PEM CA certificates trusted for ``https://`` besides the system's.
CA_FILE_ENV = "NEXUS_CA_FILE"
#: The standalone server's default address.
DEFAULT_SERVER = "http://127.0.0.1:8090"

#: Runs per batch request of :meth:`NexusClient.map` (the server's default
#: ``scheduler.max_batch_runs``).
MAP_CHUNK = 1000
#: Waits in flight at once in :meth:`NexusClient.map`.
MAP_CONCURRENCY = 32

#: Runs per page when listing (the server's most is 1,000).
LIST_PAGE = 500

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


#: Longest a status read asks the server to hold it (``?wait=``); the server's limit is 60 s.
_MAX_HOLD = 20.0


class _Waiting:
    """Deadline and poll interval of one :meth:`NexusClient.wait` (shared by both clients).

    Each status read asks the server to hold it until the run ends (``?wait=``, at most
    :data:`_MAX_HOLD` and well within the request timeout), so an end is seen at once; the
    poll interval only paces reads a server answered early (one that does not hold them)."""

    def __init__(
        self,
        timeout: float | None,
        poll_interval: float,
        max_poll_interval: float,
        request_timeout: httpx.Timeout,
    ) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.interval = poll_interval
        self.max_interval = max(max_poll_interval, poll_interval)
        read = request_timeout.read
        self.max_hold = _MAX_HOLD if read is None else min(_MAX_HOLD, read / 2)
        self.asked = time.monotonic()

    def hold(self) -> float | None:
        """How long the next read may be held (``None``: not at all); marks when it was asked."""
        self.asked = time.monotonic()
        hold = self.max_hold
        if self.deadline is not None:
            hold = min(hold, self.deadline - self.asked)
        return hold if hold >= 0.05 else None

    def pause(self, run: RunRef, last: RunResult) -> float:
        """The pause after a read that saw no end: what the poll interval asks beyond the time
        the read was held; raises :class:`RunTimeoutError` past the deadline."""
        return max(0.0, self.next_sleep(run, last) - (time.monotonic() - self.asked))

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


def _check_map(chunk_size: int, concurrency: int) -> None:
    if chunk_size < 1 or concurrency < 1:
        raise ConfigurationError("map: chunk_size and concurrency must be at least 1")


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
        self._timeout = s.timeout

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

    def submit_many(
        self,
        algorithm: str,
        parameters: Sequence[Any],
        *,
        tag: str | None = None,
        idempotency_key: str | None = None,
        custom_configuration: dict[str, Any] | None = None,
        payload_valid_for: timedelta | str | None = None,
        parent: RunRef | None = None,
        dry_run: bool = False,
        api_version: str | None = None,
    ) -> list[RunRef]:
        """Submits one run of ``algorithm`` per entry of ``parameters`` in one request, all or
        none (fan-out), and returns them in order once every one is durable. At most the
        server's ``scheduler.max_batch_runs`` (1,000 by default) per call; the other arguments
        are shared by every run, as in :meth:`submit`. A retry sends the same batch key, so a
        retried batch never makes runs twice."""
        return self._t.execute(
            calls.submit_many(
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

    def map(
        self,
        algorithm: str,
        parameters: Sequence[Any],
        *,
        tag: str | None = None,
        timeout: float | None = 600.0,
        chunk_size: int = MAP_CHUNK,
        concurrency: int = MAP_CONCURRENCY,
        parent: RunRef | None = None,
    ) -> list[Any]:
        """Runs ``algorithm`` once per entry of ``parameters`` and returns their results (JSON)
        in the same order.

        The runs are submitted in batches of ``chunk_size`` (each batch all or none, see
        :meth:`submit_many`), then awaited with at most ``concurrency`` waits in flight, each
        bounded by ``timeout`` seconds. Raises :class:`~nexus_sdk.RunFailedError` for the first
        run (in order) that did not complete; the runs stay as they are (cancel them if needed).
        ``parent`` makes them children of that run (execution trees; :meth:`NexusRun.map` passes
        the calling run).
        """
        _check_map(chunk_size, concurrency)
        runs: list[RunRef] = []
        for i in range(0, len(parameters), chunk_size):
            runs.extend(
                self.submit_many(algorithm, parameters[i : i + chunk_size], tag=tag, parent=parent)
            )
        if not runs:
            return []

        def one(run: RunRef) -> Any:
            return self.result_json(self.wait(run, timeout=timeout))

        pool = ThreadPoolExecutor(max_workers=min(concurrency, len(runs)))
        try:
            return list(pool.map(one, runs))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def register_external(
        self,
        algorithm: str,
        parameters: Any,
        *,
        stage: ExternalStage = "COMPLETED",
        result: Any = None,
        result_uri: str | None = None,
        error_cause: str | None = None,
        error_details: str | None = None,
        received_at: datetime | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        engine: str | None = None,
        tag: str | None = None,
        parent: RunRef | None = None,
        idempotency_key: str | None = None,
    ) -> RunRef:
        """Records a run executed outside Nexus (a Spark job, a notebook): its input, its stage
        (``CREATED``, ``RUNNING``, ``COMPLETED``, ``FAILED``), its ``result`` (any JSON, stored
        as the run's result) or ``result_uri``, or its error, its times (timezone-aware) and the
        ``engine`` that ran it. It then appears in results, tags, metadata and listings like any
        run, marked external; Nexus never runs it. Report later stages with
        :meth:`report_stage`."""
        return self._t.execute(
            calls.register_external(
                algorithm,
                parameters,
                stage=stage,
                result=result,
                result_uri=result_uri,
                error_cause=error_cause,
                error_details=error_details,
                received_at=received_at,
                started_at=started_at,
                finished_at=finished_at,
                engine=engine,
                tag=tag,
                parent=parent,
                idempotency_key=idempotency_key,
            )
        )

    def report_stage(
        self,
        run: RunRef | RunResult,
        stage: ExternalStage,
        *,
        result: Any = None,
        result_uri: str | None = None,
        error_cause: str | None = None,
        error_details: str | None = None,
    ) -> str:
        """Reports a stage of an external run as it happens: ``RUNNING``, then ``COMPLETED``
        (with ``result``, ``result_uri``, or after :meth:`upload_result`) or ``FAILED`` (with
        ``error_cause``). Repeating the current stage is a no-op; an illegal move raises
        :class:`~nexus_sdk.ConflictError`."""
        return self._t.execute(
            calls.report_stage(
                _ref(run),
                stage,
                result=result,
                result_uri=result_uri,
                error_cause=error_cause,
                error_details=error_details,
            )
        )

    def upload_result(
        self,
        run: RunRef | RunResult,
        data: bytes,
        content_type: str = "application/json",
    ) -> None:
        """Uploads the result of an external run that has not finished, through a signed,
        short-lived URL for that run's result only; then report ``COMPLETED``."""
        url = self._t.execute(calls.upload_url(_ref(run)))
        self._t.execute(calls.put_result(url, data, content_type))

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

        Each status read is held by the server until the run ends (``?wait=``, up to 20 s at a
        time), so the end is seen the moment it happens. Against a server that answers at once,
        reads start every ``poll_interval`` seconds and back off (1.5 times longer each time)
        to ``max_poll_interval``. Raises :class:`~nexus_sdk.RunTimeoutError` (with the last
        status) when ``timeout`` seconds pass first (``None``: wait for ever).
        """
        waiting = _Waiting(timeout, poll_interval, max_poll_interval, self._timeout)
        while True:
            last = self._t.execute(calls.get(_ref(run), waiting.hold()))
            if last.finished:
                return last
            time.sleep(waiting.pause(_ref(run), last))

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

    def list_runs(
        self,
        *,
        algorithm: str | None = None,
        stage: str | None = None,
        tag: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        parent: RunRef | str | None = None,
        root: RunRef | str | None = None,
        shard: str | None = None,
        limit: int = 1000,
    ) -> list[RunSummary]:
        """Runs the caller may read, newest first, matching every filter given (``since``
        inclusive, ``until`` exclusive, on submission time); at most ``limit``, read page by
        page."""
        filters = calls.list_filters(algorithm, stage, tag, since, until, parent, root, shard)
        out: list[RunSummary] = []
        cursor: str | None = None
        while len(out) < limit:
            page, cursor = self._t.execute(
                calls.list_page(filters, cursor, min(LIST_PAGE, limit - len(out)))
            )
            out.extend(page)
            if cursor is None:
                break
        return out[:limit]

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
        self._timeout = s.timeout

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

    async def submit_many(
        self,
        algorithm: str,
        parameters: Sequence[Any],
        *,
        tag: str | None = None,
        idempotency_key: str | None = None,
        custom_configuration: dict[str, Any] | None = None,
        payload_valid_for: timedelta | str | None = None,
        parent: RunRef | None = None,
        dry_run: bool = False,
        api_version: str | None = None,
    ) -> list[RunRef]:
        """As :meth:`NexusClient.submit_many`."""
        return await self._t.execute(
            calls.submit_many(
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

    async def map(
        self,
        algorithm: str,
        parameters: Sequence[Any],
        *,
        tag: str | None = None,
        timeout: float | None = 600.0,
        chunk_size: int = MAP_CHUNK,
        concurrency: int = MAP_CONCURRENCY,
        parent: RunRef | None = None,
    ) -> list[Any]:
        """As :meth:`NexusClient.map` (waits are tasks, at most ``concurrency`` at once)."""
        _check_map(chunk_size, concurrency)
        runs: list[RunRef] = []
        for i in range(0, len(parameters), chunk_size):
            runs.extend(
                await self.submit_many(
                    algorithm, parameters[i : i + chunk_size], tag=tag, parent=parent
                )
            )
        gate = asyncio.Semaphore(concurrency)

        async def one(run: RunRef) -> Any:
            async with gate:
                return await self.result_json(await self.wait(run, timeout=timeout))

        tasks = [asyncio.ensure_future(one(r)) for r in runs]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for t in tasks:
                t.cancel()

    async def register_external(
        self,
        algorithm: str,
        parameters: Any,
        *,
        stage: ExternalStage = "COMPLETED",
        result: Any = None,
        result_uri: str | None = None,
        error_cause: str | None = None,
        error_details: str | None = None,
        received_at: datetime | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        engine: str | None = None,
        tag: str | None = None,
        parent: RunRef | None = None,
        idempotency_key: str | None = None,
    ) -> RunRef:
        """As :meth:`NexusClient.register_external`."""
        return await self._t.execute(
            calls.register_external(
                algorithm,
                parameters,
                stage=stage,
                result=result,
                result_uri=result_uri,
                error_cause=error_cause,
                error_details=error_details,
                received_at=received_at,
                started_at=started_at,
                finished_at=finished_at,
                engine=engine,
                tag=tag,
                parent=parent,
                idempotency_key=idempotency_key,
            )
        )

    async def report_stage(
        self,
        run: RunRef | RunResult,
        stage: ExternalStage,
        *,
        result: Any = None,
        result_uri: str | None = None,
        error_cause: str | None = None,
        error_details: str | None = None,
    ) -> str:
        """As :meth:`NexusClient.report_stage`."""
        return await self._t.execute(
            calls.report_stage(
                _ref(run),
                stage,
                result=result,
                result_uri=result_uri,
                error_cause=error_cause,
                error_details=error_details,
            )
        )

    async def upload_result(
        self,
        run: RunRef | RunResult,
        data: bytes,
        content_type: str = "application/json",
    ) -> None:
        """As :meth:`NexusClient.upload_result`."""
        url = await self._t.execute(calls.upload_url(_ref(run)))
        await self._t.execute(calls.put_result(url, data, content_type))

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
        waiting = _Waiting(timeout, poll_interval, max_poll_interval, self._timeout)
        while True:
            last = await self._t.execute(calls.get(_ref(run), waiting.hold()))
            if last.finished:
                return last
            await asyncio.sleep(waiting.pause(_ref(run), last))

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

    async def list_runs(
        self,
        *,
        algorithm: str | None = None,
        stage: str | None = None,
        tag: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        parent: RunRef | str | None = None,
        root: RunRef | str | None = None,
        shard: str | None = None,
        limit: int = 1000,
    ) -> list[RunSummary]:
        """As :meth:`NexusClient.list_runs`."""
        filters = calls.list_filters(algorithm, stage, tag, since, until, parent, root, shard)
        out: list[RunSummary] = []
        cursor: str | None = None
        while len(out) < limit:
            page, cursor = await self._t.execute(
                calls.list_page(filters, cursor, min(LIST_PAGE, limit - len(out)))
            )
            out.extend(page)
            if cursor is None:
                break
        return out[:limit]

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
