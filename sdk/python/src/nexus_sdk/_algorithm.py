"""The algorithm side of the Nexus contract: what a process Nexus launched for a run needs.

Nexus starts an algorithm with ``--sas-uri=<payload URL>`` and ``--request-id=<id>`` (when its
template asks for them) and the ``NEXUS__*`` environment: the run's names, its run token, the
signed result upload URL, the receiver URL (which carries the run token) and the schedulers'
URL. :class:`NexusRun` (blocking) and :class:`AsyncNexusRun` read all of it
(:meth:`RunContext.from_env`) and do the calls: read the payload, write the result, report
success or failure, create child runs (as the run, over HTTP: ``x-nexus-run-id`` and the run
token as the bearer, with ``parentRequest`` naming the run), await them and read their results.
:func:`run_algorithm` / :func:`run_algorithm_async` wrap a function so that it only computes.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from . import _calls as calls
from ._client import CA_FILE_ENV, AsyncNexusClient, NexusClient, RunIdentity
from ._errors import AlgorithmFailure, ConfigurationError, NexusError
from ._http import AsyncTransport, Retry, SyncTransport
from ._models import RunRef, RunResult

log = logging.getLogger("nexus_sdk")

ALGORITHM_NAME = "NEXUS__ALGORITHM_NAME"
SHARD_NAME = "NEXUS__SHARD_NAME"
REQUEST_ID = "NEXUS__REQUEST_ID"
PARENT_REQUEST_ID = "NEXUS__PARENT_REQUEST_ID"
PARENT_ALGORITHM_NAME = "NEXUS__PARENT_ALGORITHM_NAME"
RUN_TOKEN = "NEXUS__RUN_TOKEN"  # noqa: S105 - the name of a variable, not a secret
RECEIVER_URL = "NEXUS__RECEIVER_URL"
RESULT_UPLOAD_URL = "NEXUS__RESULT_UPLOAD_URL"
PAYLOAD_URL = "NEXUS__PAYLOAD_URL"
SCHEDULER_URL = "NEXUS__SCHEDULER_URL"


def _arg(argv: Sequence[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in ``argv``."""
    flag = f"--{name}"
    for i, a in enumerate(argv):
        if a.startswith(flag + "="):
            return a[len(flag) + 1 :]
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
    return None


@dataclass(frozen=True)
class RunContext:
    """What Nexus tells the process about its run.

    Attributes:
        algorithm: the run's algorithm (``NEXUS__ALGORITHM_NAME``).
        request_id: the run's id (``--request-id``, else ``NEXUS__REQUEST_ID``).
        payload_url: signed URL of the payload (``--sas-uri``, else ``NEXUS__PAYLOAD_URL``).
        result_upload_url: signed URL to ``PUT`` the result to.
        receiver_url: where to report the outcome (carries the run token).
        run_token: the run's credential.
        scheduler_url: the schedulers' URL (child runs), empty when not known.
        shard: the shard the run runs in.
        parent: the run's parent, for a child run.
    """

    algorithm: str
    request_id: str
    payload_url: str
    result_upload_url: str
    receiver_url: str
    run_token: str
    scheduler_url: str = ""
    shard: str = ""
    parent: RunRef | None = None

    def __repr__(self) -> str:
        return (
            f"RunContext(algorithm={self.algorithm!r}, request_id={self.request_id!r}, "
            f"shard={self.shard!r}, parent={self.parent!r})"
        )

    @classmethod
    def from_env(
        cls,
        argv: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> RunContext:
        """Reads the run's context from ``argv`` (default ``sys.argv``) and ``environ``
        (default ``os.environ``).

        Raises :class:`~nexus_sdk.ConfigurationError` naming what is missing (e.g. when the
        process was not started by Nexus).
        """
        argv = sys.argv[1:] if argv is None else argv
        env = os.environ if environ is None else environ

        def var(k: str) -> str:
            return env.get(k, "").strip()

        def required(value: str, what: str) -> str:
            if not value:
                raise ConfigurationError(
                    f"{what} is not set: is this process being run by Nexus? "
                    "(Nexus sets the NEXUS__* environment of the runs it launches)"
                )
            return value

        request_id = _arg(argv, "request-id") or var(REQUEST_ID)
        payload_url = _arg(argv, "sas-uri") or var(PAYLOAD_URL)
        parent_id = var(PARENT_REQUEST_ID)
        return cls(
            algorithm=required(var(ALGORITHM_NAME), ALGORITHM_NAME),
            request_id=required(request_id, f"--request-id / {REQUEST_ID}"),
            payload_url=required(payload_url, f"--sas-uri / {PAYLOAD_URL}"),
            result_upload_url=required(var(RESULT_UPLOAD_URL), RESULT_UPLOAD_URL),
            receiver_url=required(var(RECEIVER_URL), RECEIVER_URL),
            run_token=required(var(RUN_TOKEN), RUN_TOKEN),
            scheduler_url=var(SCHEDULER_URL),
            shard=var(SHARD_NAME),
            parent=RunRef(var(PARENT_ALGORITHM_NAME), parent_id) if parent_id else None,
        )

    @property
    def ref(self) -> RunRef:
        """This run as a :class:`RunRef`."""
        return RunRef(self.algorithm, self.request_id)

    @property
    def identity(self) -> RunIdentity:
        """This run's identity (to act as the run)."""
        return RunIdentity(self.request_id, self.run_token)

    @property
    def completion_url(self) -> str:
        """``{receiver}/algorithm/v1/complete/{algorithm}/requests/{id}``."""
        return (
            f"{self.receiver_url.rstrip('/')}/algorithm/v1/complete/"
            f"{quote(self.algorithm, safe='')}/requests/"
            f"{quote(self.request_id, safe='')}"
        )

    @property
    def progress_url(self) -> str:
        """``{receiver}/algorithm/v1/progress/{algorithm}/requests/{id}``."""
        return self.completion_url.replace("/algorithm/v1/complete/", "/algorithm/v1/progress/", 1)

    def scheduler(self) -> str:
        """The schedulers' URL, or an error saying why children cannot be created."""
        if not self.scheduler_url:
            raise ConfigurationError(
                f"{SCHEDULER_URL} is not set, so this run cannot create child runs "
                "(in distributed mode, set the receivers' `receiver.scheduler_url`)"
            )
        return self.scheduler_url


def _run_options(environ: Mapping[str, str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``ca_file`` from ``NEXUS_CA_FILE`` when not given."""
    env = os.environ if environ is None else environ
    ca = env.get(CA_FILE_ENV, "").strip()
    return {"ca_file": ca or None, **kwargs}


def _encode_result(result: Any, content_type: str | None) -> tuple[bytes, str]:
    if isinstance(result, (bytes, bytearray, memoryview)):
        return bytes(result), content_type or "application/octet-stream"
    return calls.dumps(result), content_type or "application/json"


PROGRESS_INTERVAL = 1.0
"""Least time between two progress reports sent (the receiver keeps at most one a second)."""


def _progress_args(fraction: float | None, message: str | None) -> None:
    """Checks a progress report before it is sent (the receiver checks again)."""
    if fraction is None and message is None:
        raise ValueError("report_progress needs a fraction (0 to 1) or a message, or both")
    if fraction is not None and not (0.0 <= fraction <= 1.0):
        raise ValueError(f"fraction must be from 0 to 1, got {fraction!r}")
    if message is not None and len(message) > 512:
        raise ValueError(f"message is {len(message)} characters; at most 512")


class _Reporting:
    """Which outcome a run reported (at most one), and when progress was last sent."""

    def __init__(self) -> None:
        self.reported: str | None = None
        self.progress_sent = float("-inf")

    def progress_due(self) -> bool:
        """True when a progress report may be sent now (and notes it as sent)."""
        now = time.monotonic()
        if now - self.progress_sent < PROGRESS_INTERVAL:
            return False
        self.progress_sent = now
        return True

    def check(self) -> None:
        if self.reported is not None:
            raise NexusError(f"the run's outcome was already reported ({self.reported})")


class NexusRun:
    """The run this process executes, with blocking calls.

    Use it as a context manager, or through :func:`run_algorithm`::

        with NexusRun.from_env() as run:
            params = run.payload_json()
            run.succeed({"answer": 42})

    Child runs are created as this run (its run token), so they are its children and it may
    act only on its own subtree.
    """

    def __init__(
        self,
        context: RunContext,
        *,
        retry: Retry | None = None,
        timeout: float = 60.0,
        ca_file: str | os.PathLike[str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.context = context
        self._retry = retry or Retry()
        self._timeout = timeout
        self._ca_file = ca_file
        self._transport = transport
        self._client: NexusClient | None = None
        # Signed URLs and the receiver: a client without a base URL or credential.
        self._plain = NexusClient(
            "http://unused.invalid",
            timeout=timeout,
            retry=self._retry,
            ca_file=ca_file,
            transport=transport,
        )
        self._t: SyncTransport = self._plain._t
        self._state = _Reporting()

    @classmethod
    def from_env(
        cls,
        argv: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> NexusRun:
        """The run Nexus launched this process for (see :meth:`RunContext.from_env`);
        ``NEXUS_CA_FILE`` names a private CA to trust for ``https://`` (``kwargs`` win)."""
        return cls(RunContext.from_env(argv, environ), **_run_options(environ, kwargs))

    @property
    def client(self) -> NexusClient:
        """A :class:`~nexus_sdk.NexusClient` of the schedulers acting as this run."""
        if self._client is None:
            self._client = NexusClient(
                self.context.scheduler(),
                identity=self.context.identity,
                timeout=self._timeout,
                retry=self._retry,
                ca_file=self._ca_file,
                transport=self._transport,
            )
        return self._client

    @property
    def reported(self) -> bool:
        """True once the outcome (success or failure) was reported."""
        return self._state.reported is not None

    def close(self) -> None:
        """Closes the connections (not the run: report its outcome first)."""
        self._plain.close()
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> NexusRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def payload(self) -> bytes:
        """The payload (the JSON of the client's ``algorithmParameters``), as bytes."""
        return self._t.execute(calls.download(self.context.payload_url, "reading the payload"))

    def payload_json(self) -> Any:
        """The payload, decoded. Raises :class:`~nexus_sdk.AlgorithmFailure`
        (``invalid input: …``) when it is not JSON."""
        return _decode_payload(self.payload())

    def write_result(self, result: Any, *, content_type: str | None = None) -> None:
        """Uploads the result: ``bytes`` as they are, anything else as JSON. It becomes the
        run's result once :meth:`complete` is called (or use :meth:`succeed`)."""
        body, ctype = _encode_result(result, content_type)
        self._t.execute(calls.put_result(self.context.result_upload_url, body, ctype))

    def complete(self) -> None:
        """Reports success (the result uploaded with :meth:`write_result`)."""
        self._state.check()
        self._t.execute(
            calls.complete(self.context.completion_url, self.context.run_token, None, None)
        )
        self._state.reported = "COMPLETED"

    def succeed(self, result: Any, *, content_type: str | None = None) -> None:
        """Uploads ``result`` and reports success."""
        self._state.check()
        self.write_result(result, content_type=content_type)
        self.complete()

    def fail(self, cause: str, details: str = "") -> None:
        """Reports failure: the run ends FAILED with ``cause`` (its error message) and
        ``details``."""
        self._state.check()
        self._t.execute(
            calls.complete(self.context.completion_url, self.context.run_token, cause, details)
        )
        self._state.reported = "FAILED"

    def report_progress(self, fraction: float | None = None, message: str | None = None) -> bool:
        """Reports how far the run is: ``fraction`` from 0 to 1 and/or a ``message`` (at most
        512 characters). It shows in the run's metadata, in listings and in the console.

        Cheap to call in a loop: at most one report a second is sent, others are dropped (the
        latest sent wins). Returns ``True`` when this report was recorded.
        """
        _progress_args(fraction, message)
        if self._state.reported is not None or not self._state.progress_due():
            return False
        return self._t.execute(
            calls.progress(self.context.progress_url, self.context.run_token, fraction, message)
        )

    def create_child(
        self,
        algorithm: str,
        parameters: Any,
        *,
        tag: str | None = None,
        idempotency_key: str | None = None,
        custom_configuration: dict[str, Any] | None = None,
        payload_valid_for: timedelta | str | None = None,
    ) -> RunRef:
        """Creates a child run of this run. Pass an ``idempotency_key`` derived from the work
        (e.g. ``f"{run_id}-part-{i}"``) to make a relaunched attempt of this run find its
        children instead of creating them again."""
        return self.client.submit(
            algorithm,
            parameters,
            tag=tag,
            idempotency_key=idempotency_key,
            custom_configuration=custom_configuration,
            payload_valid_for=payload_valid_for,
            parent=self.context.ref,
        )

    def map(
        self,
        algorithm: str,
        parameters: Sequence[Any],
        *,
        tag: str | None = None,
        timeout: float | None = 600.0,
        concurrency: int = 32,
    ) -> list[Any]:
        """Runs ``algorithm`` once per entry of ``parameters`` as children of this run (each
        batch of children all or none) and returns their results in order; see
        :meth:`NexusClient.map`."""
        return self.client.map(
            algorithm,
            parameters,
            tag=tag,
            timeout=timeout,
            concurrency=concurrency,
            parent=self.context.ref,
        )

    def wait(self, child: RunRef | RunResult, *, timeout: float | None = 600.0) -> RunResult:
        """Waits for a run (a child) to finish; see :meth:`NexusClient.wait`."""
        return self.client.wait(child, timeout=timeout)

    def result_json(self, child: RunRef | RunResult) -> Any:
        """The JSON result of a finished run (a child); see :meth:`NexusClient.result_json`."""
        return self.client.result_json(child)

    def children(self) -> list[RunResult]:
        """This run's children."""
        return self.client.children(self.context.ref)

    def cancel(self, child: RunRef | RunResult, *, reason: str = "") -> str:
        """Cancels a run of this run's subtree (a child and its descendants)."""
        return self.client.cancel(child, reason=reason, initiator=f"run {self.context.ref}")


class AsyncNexusRun:
    """The asyncio twin of :class:`NexusRun`: the same methods, as coroutines (create and
    await many children at once with ``asyncio.gather``)."""

    def __init__(
        self,
        context: RunContext,
        *,
        retry: Retry | None = None,
        timeout: float = 60.0,
        ca_file: str | os.PathLike[str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.context = context
        self._retry = retry or Retry()
        self._timeout = timeout
        self._ca_file = ca_file
        self._transport = transport
        self._client: AsyncNexusClient | None = None
        self._plain = AsyncNexusClient(
            "http://unused.invalid",
            timeout=timeout,
            retry=self._retry,
            ca_file=ca_file,
            transport=transport,
        )
        self._t: AsyncTransport = self._plain._t
        self._state = _Reporting()

    @classmethod
    def from_env(
        cls,
        argv: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> AsyncNexusRun:
        """As :meth:`NexusRun.from_env`."""
        return cls(RunContext.from_env(argv, environ), **_run_options(environ, kwargs))

    @property
    def client(self) -> AsyncNexusClient:
        """An :class:`~nexus_sdk.AsyncNexusClient` of the schedulers acting as this run."""
        if self._client is None:
            self._client = AsyncNexusClient(
                self.context.scheduler(),
                identity=self.context.identity,
                timeout=self._timeout,
                retry=self._retry,
                ca_file=self._ca_file,
                transport=self._transport,
            )
        return self._client

    @property
    def reported(self) -> bool:
        """True once the outcome (success or failure) was reported."""
        return self._state.reported is not None

    async def aclose(self) -> None:
        """Closes the connections."""
        await self._plain.aclose()
        if self._client is not None:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncNexusRun:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def payload(self) -> bytes:
        """As :meth:`NexusRun.payload`."""
        return await self._t.execute(
            calls.download(self.context.payload_url, "reading the payload")
        )

    async def payload_json(self) -> Any:
        """As :meth:`NexusRun.payload_json`."""
        return _decode_payload(await self.payload())

    async def write_result(self, result: Any, *, content_type: str | None = None) -> None:
        """As :meth:`NexusRun.write_result`."""
        body, ctype = _encode_result(result, content_type)
        await self._t.execute(calls.put_result(self.context.result_upload_url, body, ctype))

    async def complete(self) -> None:
        """As :meth:`NexusRun.complete`."""
        self._state.check()
        await self._t.execute(
            calls.complete(self.context.completion_url, self.context.run_token, None, None)
        )
        self._state.reported = "COMPLETED"

    async def succeed(self, result: Any, *, content_type: str | None = None) -> None:
        """As :meth:`NexusRun.succeed`."""
        self._state.check()
        await self.write_result(result, content_type=content_type)
        await self.complete()

    async def fail(self, cause: str, details: str = "") -> None:
        """As :meth:`NexusRun.fail`."""
        self._state.check()
        await self._t.execute(
            calls.complete(self.context.completion_url, self.context.run_token, cause, details)
        )
        self._state.reported = "FAILED"

    async def report_progress(
        self, fraction: float | None = None, message: str | None = None
    ) -> bool:
        """As :meth:`NexusRun.report_progress`."""
        _progress_args(fraction, message)
        if self._state.reported is not None or not self._state.progress_due():
            return False
        return await self._t.execute(
            calls.progress(self.context.progress_url, self.context.run_token, fraction, message)
        )

    async def create_child(
        self,
        algorithm: str,
        parameters: Any,
        *,
        tag: str | None = None,
        idempotency_key: str | None = None,
        custom_configuration: dict[str, Any] | None = None,
        payload_valid_for: timedelta | str | None = None,
    ) -> RunRef:
        """As :meth:`NexusRun.create_child`."""
        return await self.client.submit(
            algorithm,
            parameters,
            tag=tag,
            idempotency_key=idempotency_key,
            custom_configuration=custom_configuration,
            payload_valid_for=payload_valid_for,
            parent=self.context.ref,
        )

    async def map(
        self,
        algorithm: str,
        parameters: Sequence[Any],
        *,
        tag: str | None = None,
        timeout: float | None = 600.0,
        concurrency: int = 32,
    ) -> list[Any]:
        """As :meth:`NexusRun.map`."""
        return await self.client.map(
            algorithm,
            parameters,
            tag=tag,
            timeout=timeout,
            concurrency=concurrency,
            parent=self.context.ref,
        )

    async def wait(self, child: RunRef | RunResult, *, timeout: float | None = 600.0) -> RunResult:
        """As :meth:`NexusRun.wait`."""
        return await self.client.wait(child, timeout=timeout)

    async def result_json(self, child: RunRef | RunResult) -> Any:
        """As :meth:`NexusRun.result_json`."""
        return await self.client.result_json(child)

    async def children(self) -> list[RunResult]:
        """As :meth:`NexusRun.children`."""
        return await self.client.children(self.context.ref)

    async def cancel(self, child: RunRef | RunResult, *, reason: str = "") -> str:
        """As :meth:`NexusRun.cancel`."""
        return await self.client.cancel(child, reason=reason, initiator=f"run {self.context.ref}")


def _decode_payload(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:
        raise AlgorithmFailure("invalid input: the payload is not JSON", str(e)) from e


def _failure_of(e: BaseException) -> tuple[str, str]:
    """The cause and details to report for an exception the algorithm raised."""
    if isinstance(e, AlgorithmFailure):
        return e.cause, e.details
    details = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    return f"{type(e).__name__}: {e}", details


def _setup_logging() -> None:
    """Logs to stderr (the run's log), line by line, and never the URLs of requests: httpx
    logs each request's URL at INFO, and an algorithm's URLs carry its payload and result
    signatures and, in the receiver URL, its run token. The run's log is readable by whoever
    may read the run."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    for name in ("httpx", "httpcore"):
        quiet = logging.getLogger(name)
        if quiet.level == logging.NOTSET or quiet.level < logging.WARNING:
            quiet.setLevel(logging.WARNING)
    # Prints appear in order with the SDK's lines, and are not lost when the process is killed.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)


def run_algorithm(
    main: Callable[[NexusRun, Any], Any],
    *,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Runs ``main(run, payload)`` as the algorithm of the run Nexus launched this process for,
    and returns the process' exit code (``sys.exit(run_algorithm(main))``).

    * the payload is read and decoded as JSON (a payload that is not JSON fails the run with
      ``invalid input: …``);
    * what ``main`` returns is uploaded (as JSON, or as they are for ``bytes``) and the run
      reported COMPLETED, unless ``main`` reported an outcome itself;
    * :class:`~nexus_sdk.AlgorithmFailure` is reported as the run's ``errorCause`` /
      ``errorDetails``; any other exception with its type and message as the cause and its
      traceback as the details (also printed: the output is the run's log).

    Exit code 0 once an outcome is reported; 1 when it could not be (Nexus then fails the run
    as a process that exited without reporting, or retries it).
    """
    _setup_logging()
    try:
        run = NexusRun.from_env(argv, environ)
    except NexusError as e:
        log.error("%s", e)
        return 1
    with run:
        try:
            try:
                result = main(run, run.payload_json())
            except Exception as e:  # noqa: BLE001 - every failure is reported to Nexus
                if not isinstance(e, AlgorithmFailure):
                    traceback.print_exc()
                if run.reported:
                    return 0
                cause, details = _failure_of(e)
                log.info("run %s failed: %s", run.context.request_id, cause)
                run.fail(cause, details)
                return 0
            if not run.reported:
                run.succeed(result)
            log.info("run %s reported", run.context.request_id)
            return 0
        except NexusError as e:
            log.error("could not report the outcome to Nexus: %s", e)
            return 1


def run_algorithm_async(
    main: Callable[[AsyncNexusRun, Any], Awaitable[Any]],
    *,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """As :func:`run_algorithm`, for a coroutine function ``main`` (run with ``asyncio.run``)."""
    _setup_logging()

    async def go() -> int:
        try:
            run = AsyncNexusRun.from_env(argv, environ)
        except NexusError as e:
            log.error("%s", e)
            return 1
        async with run:
            try:
                try:
                    result = await main(run, await run.payload_json())
                except Exception as e:  # noqa: BLE001 - every failure is reported to Nexus
                    if not isinstance(e, AlgorithmFailure):
                        traceback.print_exc()
                    if run.reported:
                        return 0
                    cause, details = _failure_of(e)
                    log.info("run %s failed: %s", run.context.request_id, cause)
                    await run.fail(cause, details)
                    return 0
                if not run.reported:
                    await run.succeed(result)
                log.info("run %s reported", run.context.request_id)
                return 0
            except NexusError as e:
                log.error("could not report the outcome to Nexus: %s", e)
                return 1

    return asyncio.run(go())
