"""The v1 API calls, described once for both clients (see :mod:`nexus_sdk._http`)."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import httpx

from ._errors import NexusError
from ._http import Call
from ._models import (
    CancellationPolicy,
    ExternalStage,
    RunMetadata,
    RunRef,
    RunResult,
    RunSummary,
)

API = "/algorithm/v1"


def _seg(value: str) -> str:
    """One path segment, percent-encoded."""
    return quote(value, safe="")


def _json(resp: httpx.Response, what: str) -> Any:
    try:
        return resp.json()
    except ValueError as e:
        raise NexusError(f"{what}: the answer is not JSON: {e}") from e


def go_duration(d: timedelta | str) -> str:
    """A duration as the server reads it (``"90s"``); strings pass through (``"6h"``)."""
    if isinstance(d, str):
        return d
    ms = int(d.total_seconds() * 1000)
    return f"{ms}ms" if ms % 1000 else f"{ms // 1000}s"


def new_idempotency_key() -> str:
    """A fresh idempotency key (sent on every retry of one submission)."""
    return f"py-{uuid.uuid4().hex}"


def submit(
    algorithm: str,
    parameters: Any,
    *,
    tag: str | None,
    idempotency_key: str | None,
    custom_configuration: dict[str, Any] | None,
    payload_valid_for: timedelta | str | None,
    parent: RunRef | None,
    dry_run: bool,
    api_version: str | None,
) -> Call[RunRef]:
    """``POST /algorithm/v1/run/{alg}``: ``202 {requestId}`` once the run is durable."""
    body: dict[str, Any] = {"algorithmParameters": parameters}
    if tag is not None:
        body["tag"] = tag
    if custom_configuration is not None:
        body["customConfiguration"] = custom_configuration
    if payload_valid_for is not None:
        body["payloadValidFor"] = go_duration(payload_valid_for)
    if parent is not None:
        body["parentRequest"] = {
            "requestId": parent.request_id,
            "algorithmName": parent.algorithm,
        }
    if api_version is not None:
        body["requestApiVersion"] = api_version
    what = f"submitting a run of {algorithm}"

    def parse(resp: httpx.Response) -> RunRef:
        doc = _json(resp, what)
        if not isinstance(doc, dict) or not doc.get("requestId"):
            raise NexusError(f"{what}: no requestId in the answer: {resp.text[:200]}")
        return RunRef(algorithm, str(doc["requestId"]))

    return Call(
        "POST",
        f"{API}/run/{_seg(algorithm)}",
        parse,
        what,
        json=body,
        headers={"Idempotency-Key": idempotency_key or new_idempotency_key()},
        params={"dryRun": "true"} if dry_run else None,
    )


def submit_many(
    algorithm: str,
    parameters: Sequence[Any],
    *,
    tag: str | None,
    idempotency_key: str | None,
    custom_configuration: dict[str, Any] | None,
    payload_valid_for: timedelta | str | None,
    parent: RunRef | None,
    dry_run: bool,
    api_version: str | None,
) -> Call[list[RunRef]]:
    """``POST /algorithm/v1/batch/{alg}``: ``202 {requestIds}`` once every run is durable (all
    or none)."""
    body: dict[str, Any] = {"runs": [{"algorithmParameters": p} for p in parameters]}
    if tag is not None:
        body["tag"] = tag
    if custom_configuration is not None:
        body["customConfiguration"] = custom_configuration
    if payload_valid_for is not None:
        body["payloadValidFor"] = go_duration(payload_valid_for)
    if parent is not None:
        body["parentRequest"] = {
            "requestId": parent.request_id,
            "algorithmName": parent.algorithm,
        }
    if api_version is not None:
        body["requestApiVersion"] = api_version
    what = f"submitting {len(parameters)} runs of {algorithm}"

    def parse(resp: httpx.Response) -> list[RunRef]:
        doc = _json(resp, what)
        ids = doc.get("requestIds") if isinstance(doc, dict) else None
        if not isinstance(ids, list) or len(ids) != len(parameters):
            raise NexusError(f"{what}: no requestIds for every run in the answer")
        return [RunRef(algorithm, str(i)) for i in ids]

    return Call(
        "POST",
        f"{API}/batch/{_seg(algorithm)}",
        parse,
        what,
        json=body,
        headers={"Idempotency-Key": idempotency_key or new_idempotency_key()},
        params={"dryRun": "true"} if dry_run else None,
    )


def _rfc3339(t: datetime | None) -> str | None:
    if t is None:
        return None
    if t.tzinfo is None:
        raise NexusError(f"{t!r}: a naive datetime; give one with a time zone")
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def register_external(
    algorithm: str,
    parameters: Any,
    *,
    stage: ExternalStage,
    result: Any,
    result_uri: str | None,
    error_cause: str | None,
    error_details: str | None,
    received_at: datetime | None,
    started_at: datetime | None,
    finished_at: datetime | None,
    engine: str | None,
    tag: str | None,
    parent: RunRef | None,
    idempotency_key: str | None,
) -> Call[RunRef]:
    """``POST /algorithm/v1/external/{alg}``: records a run executed outside Nexus."""
    body: dict[str, Any] = {"algorithmParameters": parameters, "stage": stage}
    optional = {
        "resultUri": result_uri,
        "errorCause": error_cause,
        "errorDetails": error_details,
        "receivedAt": _rfc3339(received_at),
        "startedAt": _rfc3339(started_at),
        "finishedAt": _rfc3339(finished_at),
        "engine": engine,
        "tag": tag,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if result is not None:
        body["result"] = result
    if parent is not None:
        body["parentRequest"] = {
            "requestId": parent.request_id,
            "algorithmName": parent.algorithm,
        }
    what = f"registering an external run of {algorithm}"

    def parse(resp: httpx.Response) -> RunRef:
        doc = _json(resp, what)
        if not isinstance(doc, dict) or not doc.get("requestId"):
            raise NexusError(f"{what}: no requestId in the answer: {resp.text[:200]}")
        return RunRef(algorithm, str(doc["requestId"]))

    return Call(
        "POST",
        f"{API}/external/{_seg(algorithm)}",
        parse,
        what,
        json=body,
        headers={"Idempotency-Key": idempotency_key or new_idempotency_key()},
    )


def report_stage(
    run: RunRef,
    stage: ExternalStage,
    *,
    result: Any,
    result_uri: str | None,
    error_cause: str | None,
    error_details: str | None,
) -> Call[str]:
    """``POST /algorithm/v1/external/{alg}/requests/{id}/stage``: an external run's stage."""
    body: dict[str, Any] = {"stage": stage}
    optional = {"resultUri": result_uri, "errorCause": error_cause, "errorDetails": error_details}
    body.update({k: v for k, v in optional.items() if v is not None})
    if result is not None:
        body["result"] = result
    return Call(
        "POST",
        f"{API}/external/{_seg(run.algorithm)}/requests/{_seg(run.request_id)}/stage",
        lambda r: r.text,
        f"reporting {stage} for run {run}",
        json=body,
    )


def upload_url(run: RunRef) -> Call[str]:
    """``POST /algorithm/v1/external/{alg}/requests/{id}/upload``: a signed PUT URL for the
    external run's result (short-lived)."""
    what = f"asking for an upload URL of run {run}"

    def parse(resp: httpx.Response) -> str:
        doc = _json(resp, what)
        url = doc.get("resultUploadUrl") if isinstance(doc, dict) else None
        if not isinstance(url, str) or not url:
            raise NexusError(f"{what}: no resultUploadUrl in the answer")
        return url

    return Call(
        "POST",
        f"{API}/external/{_seg(run.algorithm)}/requests/{_seg(run.request_id)}/upload",
        parse,
        what,
    )


def get(run: RunRef, wait: float | None = None) -> Call[RunResult]:
    """``GET /algorithm/v1/results/{alg}/requests/{id}``; with ``wait`` (seconds), the server
    answers when the run ends or after that long (``?wait=``)."""
    what = f"reading the status of run {run}"
    return Call(
        "GET",
        f"{API}/results/{_seg(run.algorithm)}/requests/{_seg(run.request_id)}",
        lambda r: RunResult.from_json(_json(r, what), run.algorithm),
        what,
        params=None if wait is None else {"wait": f"{max(1, int(wait * 1000))}ms"},
    )


def _results(resp: httpx.Response, what: str) -> list[RunResult]:
    doc = _json(resp, what)
    if not isinstance(doc, list):
        raise NexusError(f"{what}: expected a JSON array")
    return [RunResult.from_json(d) for d in doc if isinstance(d, dict)]


def by_tag(tag: str) -> Call[list[RunResult]]:
    """``GET /algorithm/v1/results/tags/{tag}``."""
    what = f"listing runs tagged {tag!r}"
    return Call("GET", f"{API}/results/tags/{_seg(tag)}", lambda r: _results(r, what), what)


def children(run: RunRef) -> Call[list[RunResult]]:
    """``GET /algorithm/v1/children/{alg}/requests/{id}``."""
    what = f"listing the children of run {run}"
    return Call(
        "GET",
        f"{API}/children/{_seg(run.algorithm)}/requests/{_seg(run.request_id)}",
        lambda r: _results(r, what),
        what,
    )


def list_page(
    filters: dict[str, str], cursor: str | None, limit: int
) -> Call[tuple[list[RunSummary], str | None]]:
    """``GET /algorithm/v1/runs``: one page (newest first) and the cursor of the next."""
    what = "listing runs"
    params = {k: v for k, v in filters.items() if v}
    params["limit"] = str(limit)
    if cursor:
        params["cursor"] = cursor

    def parse(resp: httpx.Response) -> tuple[list[RunSummary], str | None]:
        doc = _json(resp, what)
        if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
            raise NexusError(f"{what}: expected an object with 'runs'")
        nxt = doc.get("nextCursor")
        return (
            [RunSummary.from_json(d) for d in doc["runs"] if isinstance(d, dict)],
            str(nxt) if nxt else None,
        )

    return Call("GET", f"{API}/runs", parse, what, params=params)


def list_filters(
    algorithm: str | None,
    stage: str | None,
    tag: str | None,
    since: datetime | str | None,
    until: datetime | str | None,
    parent: RunRef | str | None,
    root: RunRef | str | None,
    shard: str | None,
) -> dict[str, str]:
    """The query of a listing (times as RFC 3339; runs as their ids)."""

    def when(t: datetime | str | None) -> str:
        if isinstance(t, datetime):
            return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).isoformat()
        return t or ""

    def rid(r: RunRef | str | None) -> str:
        return r.request_id if isinstance(r, RunRef) else (r or "")

    return {
        "algorithm": algorithm or "",
        "stage": stage or "",
        "tag": tag or "",
        "from": when(since),
        "to": when(until),
        "parent": rid(parent),
        "root": rid(root),
        "shard": shard or "",
    }


def metadata(run: RunRef) -> Call[RunMetadata]:
    """``GET /algorithm/v1/metadata/{alg}/requests/{id}``."""
    what = f"reading the metadata of run {run}"
    return Call(
        "GET",
        f"{API}/metadata/{_seg(run.algorithm)}/requests/{_seg(run.request_id)}",
        lambda r: RunMetadata.from_json(_json(r, what)),
        what,
    )


def job(run: RunRef) -> Call[dict[str, Any]]:
    """``GET /algorithm/v1/buffer/{alg}/requests/{id}``: the run as a Kubernetes Job."""
    what = f"reading the Job of run {run}"

    def parse(resp: httpx.Response) -> dict[str, Any]:
        doc = _json(resp, what)
        if not isinstance(doc, dict):
            raise NexusError(f"{what}: expected a JSON object")
        return doc

    return Call(
        "GET",
        f"{API}/buffer/{_seg(run.algorithm)}/requests/{_seg(run.request_id)}",
        parse,
        what,
    )


def payload(run: RunRef) -> Call[bytes]:
    """``GET /data/v1/payloads/{alg}/requests/{id}`` (following the redirect of a stored
    payload to its signed URL)."""
    return Call(
        "GET",
        f"/data/v1/payloads/{_seg(run.algorithm)}/requests/{_seg(run.request_id)}",
        lambda r: r.content,
        f"reading the payload of run {run}",
        follow_redirects=True,
    )


def set_tag(run: RunRef, tag: str) -> Call[str]:
    """``POST /algorithm/v1/metadata/tags/{alg}/requests/{id}`` (an empty tag clears it)."""
    return Call(
        "POST",
        f"{API}/metadata/tags/{_seg(run.algorithm)}/requests/{_seg(run.request_id)}",
        lambda r: r.text,
        f"tagging run {run}",
        content=tag.encode(),
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )


def cancel(run: RunRef, reason: str, initiator: str, policy: CancellationPolicy) -> Call[str]:
    """``POST /algorithm/v1/cancel/{alg}/requests/{id}``: cancels the run and its subtree."""
    return Call(
        "POST",
        f"{API}/cancel/{_seg(run.algorithm)}/requests/{_seg(run.request_id)}",
        lambda r: r.text,
        f"cancelling run {run}",
        json={"reason": reason, "initiator": initiator, "cancellationPolicy": policy},
    )


def download(url: str, what: str) -> Call[bytes]:
    """``GET`` a signed URL (a result, a payload): no credential, redirects followed."""
    return Call("GET", url, lambda r: r.content, what, authenticated=False, follow_redirects=True)


def data_url_bytes(url: str) -> bytes:
    """Decodes a ``data:`` URL (how algorithms written to the Go contract may report a small
    result)."""
    header, sep, data = url.partition(",")
    if not sep:
        raise NexusError("malformed data: URL (no comma)")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(data, validate=False)
        except binascii.Error as e:
            raise NexusError(f"malformed base64 in data: URL: {e}") from e
    return unquote_to_bytes(data)


def put_result(url: str, body: bytes, content_type: str) -> Call[None]:
    """``PUT`` the result bytes to the run's signed upload URL."""
    return Call(
        "PUT",
        url,
        lambda r: None,
        "uploading the result",
        content=body,
        headers={"Content-Type": content_type},
        authenticated=False,
    )


def complete(url: str, run_token: str, cause: str | None, details: str | None) -> Call[None]:
    """``POST`` the completion to the receiver (the URL carries the run token; it is sent as a
    bearer too). A 409 on a retry means an earlier attempt got through."""
    body: dict[str, str] = {"resultUri": ""}
    if cause is not None:
        body["errorCause"] = cause
        body["errorDetails"] = details or ""
    return Call(
        "POST",
        url,
        lambda r: None,
        "reporting the run's outcome",
        json=body,
        headers={"Authorization": f"Bearer {run_token}"},
        authenticated=False,
        conflict_ok_on_retry=True,
    )


def progress(url: str, run_token: str, fraction: float | None, message: str | None) -> Call[bool]:
    """``POST`` a progress report to the receiver; ``True`` when recorded, ``False`` when the
    receiver dropped it (reported less than a second after the previous one)."""
    body: dict[str, Any] = {}
    if fraction is not None:
        body["fraction"] = fraction
    if message is not None:
        body["message"] = message
    return Call(
        "POST",
        url,
        lambda r: r.status_code != 429,
        "reporting the run's progress",
        json=body,
        headers={"Authorization": f"Bearer {run_token}"},
        authenticated=False,
        throttle_is_answer=True,
    )


def dumps(value: Any) -> bytes:
    """JSON bytes of a result."""
    return json.dumps(value, separators=(",", ":")).encode()
