"""Retries, error mapping and idempotency keys, against an in-process ``httpx.MockTransport``
(the behaviours a live server shows only when it fails)."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from nexus_sdk import (
    AsyncNexusRun,
    ConflictError,
    ForbiddenError,
    NexusClient,
    NexusRun,
    RateLimitedError,
    Retry,
    RunContext,
    RunRef,
    ServerError,
)

FAST = Retry(budget=5.0, initial=0.01, maximum=0.05)
RUN = RunRef("alg", str(uuid.uuid4()))


def client(
    handler: httpx.MockTransport, retry: Retry = FAST, token: str | None = None
) -> NexusClient:
    return NexusClient("http://nexus.test", retry=retry, transport=handler, token=token)


def test_transient_answers_are_retried_with_the_same_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if len(seen) == 1:
            return httpx.Response(503, text="restarting")
        if len(seen) == 2:
            raise httpx.ConnectError("refused", request=req)
        return httpx.Response(202, json={"requestId": RUN.request_id})

    with client(httpx.MockTransport(handle)) as c:
        assert c.submit("alg", {"a": 1}, tag="t") == RUN
    assert len(seen) == 3
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(keys) == 1
    body = json.loads(seen[0].content)
    assert body == {"algorithmParameters": {"a": 1}, "tag": "t"}


def test_client_errors_are_final_and_carry_the_message() -> None:
    calls = 0

    def handle(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        problem = {"title": "Forbidden", "status": 403, "detail": "may not read runs of alg"}
        return httpx.Response(
            403, json=problem, headers={"content-type": "application/problem+json"}
        )

    with client(httpx.MockTransport(handle)) as c, pytest.raises(ForbiddenError) as e:
        c.get(RUN)
    assert calls == 1
    assert e.value.message == "may not read runs of alg"
    assert e.value.status == 403
    assert str(e.value).startswith("HTTP 403 (GET http://nexus.test/algorithm/v1/results/alg/")


def test_retries_stop_at_the_budget_and_say_why() -> None:
    def handle(req: httpx.Request) -> httpx.Response:
        return httpx.Response(429, text="queue full", headers={"retry-after": "0"})

    slow = Retry(budget=0.1, initial=0.02)
    with client(httpx.MockTransport(handle), slow) as c, pytest.raises(RateLimitedError) as e:
        c.get(RUN)
    assert e.value.retry_after == 0
    assert e.value.message == "queue full"

    failing = httpx.MockTransport(lambda r: httpx.Response(500))
    with client(failing, Retry(budget=0)) as c, pytest.raises(ServerError, match="Internal"):
        c.get(RUN)


def test_credentials_go_to_the_api_and_never_to_signed_urls() -> None:
    seen: dict[str, httpx.Headers] = {}

    def handle(req: httpx.Request) -> httpx.Response:
        seen[req.url.host] = req.headers
        if req.url.host == "store.test":
            return httpx.Response(200, content=b'{"x": 1}')
        doc = {"requestId": RUN.request_id, "status": "COMPLETED"}
        return httpx.Response(200, json={**doc, "resultUri": "http://store.test/r?sig=1"})

    with client(httpx.MockTransport(handle), token="secret") as c:
        assert c.result_json(RUN) == {"x": 1}
    assert seen["nexus.test"]["authorization"] == "Bearer secret"
    assert "authorization" not in seen["store.test"]


def test_data_urls_are_decoded_locally() -> None:
    def handle(req: httpx.Request) -> httpx.Response:
        doc = {"requestId": RUN.request_id, "status": "COMPLETED"}
        return httpx.Response(200, json={**doc, "resultUri": "data:text/plain,Hello%2C%20Nexus%21"})

    with client(httpx.MockTransport(handle)) as c:
        assert c.result_bytes(RUN) == b"Hello, Nexus!"


def context(receiver: str = "http://nexus.test/run-token/tok") -> RunContext:
    return RunContext(
        algorithm="alg",
        request_id=RUN.request_id,
        payload_url="http://nexus.test/data/v1/payloads/alg/x?exp=1&sig=2",
        result_upload_url="http://nexus.test/data/v1/objects/r?exp=1&sig=2",
        receiver_url=receiver,
        run_token="tok",
        scheduler_url="http://nexus.test",
    )


def test_a_completion_whose_answer_was_lost_is_not_an_error() -> None:
    attempts: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        attempts.append(req)
        if len(attempts) == 1:
            raise httpx.ReadTimeout("lost", request=req)
        return httpx.Response(409, text="run already finished as COMPLETED")

    run = NexusRun(context(), retry=FAST, transport=httpx.MockTransport(handle))
    run.complete()
    assert run.reported
    assert len(attempts) == 2
    assert attempts[0].url.path.startswith("/run-token/tok/algorithm/v1/complete/alg/requests/")
    assert attempts[0].headers["authorization"] == "Bearer tok"
    assert json.loads(attempts[0].content) == {"resultUri": ""}


def test_a_first_conflict_is_an_error_and_outcomes_are_reported_once() -> None:
    def handle(req: httpx.Request) -> httpx.Response:
        return httpx.Response(409, text="run already finished as CANCELLED")

    run = NexusRun(context(), retry=FAST, transport=httpx.MockTransport(handle))
    with pytest.raises(ConflictError, match="CANCELLED"):
        run.fail("cause")


def test_children_are_created_as_the_run() -> None:
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(202, json={"requestId": str(uuid.uuid4())})

    run = NexusRun(context(), retry=FAST, transport=httpx.MockTransport(handle))
    child = run.create_child("other", {"n": 1}, idempotency_key="k-1")
    assert child.algorithm == "other"
    req = seen[0]
    assert req.headers["x-nexus-run-id"] == RUN.request_id
    assert req.headers["authorization"] == "Bearer tok"
    assert req.headers["idempotency-key"] == "k-1"
    body = json.loads(req.content)
    assert body["parentRequest"] == {"requestId": RUN.request_id, "algorithmName": "alg"}


def test_progress_is_sent_at_most_once_a_second_and_a_429_is_not_retried() -> None:
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if len(seen) == 1 or "/complete/" in req.url.path:
            return httpx.Response(202, json={})
        return httpx.Response(429, headers={"retry-after": "1"}, text="at most once a second")

    run = NexusRun(context(), retry=FAST, transport=httpx.MockTransport(handle))
    assert run.report_progress(0.25, "a quarter") is True
    assert run.report_progress(0.5) is False  # within the second: not sent
    assert len(seen) == 1
    req = seen[0]
    assert req.url.path == f"/run-token/tok/algorithm/v1/progress/alg/requests/{RUN.request_id}"
    assert req.headers["authorization"] == "Bearer tok"
    assert json.loads(req.content) == {"fraction": 0.25, "message": "a quarter"}
    run._state.progress_sent -= 2  # as if a second had passed
    assert run.report_progress(message="still going") is False  # the receiver's 429
    assert len(seen) == 2, "a 429 is an answer, not retried"
    assert json.loads(seen[1].content) == {"message": "still going"}
    for bad, says in [
        ({}, "needs a fraction"),
        ({"fraction": 1.5}, "from 0 to 1"),
        ({"fraction": -0.1}, "from 0 to 1"),
        ({"message": "x" * 513}, "at most 512"),
    ]:
        with pytest.raises(ValueError, match=says):
            run.report_progress(**bad)  # type: ignore[arg-type]
    run.complete()
    run._state.progress_sent -= 2
    assert run.report_progress(1.0) is False, "nothing is sent after the outcome"
    assert len(seen) == 3


def test_async_progress_reports() -> None:
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(202, json={})

    async def go() -> None:
        run = AsyncNexusRun(context(), retry=FAST, transport=httpx.MockTransport(handle))
        assert await run.report_progress(0.1) is True
        assert await run.report_progress(0.2) is False
        await run.aclose()

    asyncio.run(go())
    assert [json.loads(r.content) for r in seen] == [{"fraction": 0.1}]
