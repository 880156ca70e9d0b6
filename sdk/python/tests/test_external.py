"""External runs against a real standalone: registration in every stage, stage reports as they
happen (legal moves only), the signed upload URL, and such runs showing in results, tags,
metadata, listings and children like any other run, marked external and never executed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from nexus_sdk import (
    AsyncNexusClient,
    BadRequestError,
    ConflictError,
    NexusClient,
    NotFoundError,
    RunFailedError,
    RunRef,
)


@pytest.fixture
def client(url: str) -> Iterator[NexusClient]:
    with NexusClient(url) as c:
        yield c


def tag() -> str:
    return f"ext-{uuid.uuid4().hex[:12]}"


def listed(url: str, t: str) -> list[dict[str, object]]:
    r = httpx.get(f"{url}/algorithm/v1/runs", params={"tag": t})
    r.raise_for_status()
    runs: list[dict[str, object]] = r.json()["runs"]
    return runs


def test_a_completed_external_run_reads_like_any_run(client: NexusClient, url: str) -> None:
    t = tag()
    now = datetime.now(timezone.utc)
    run = client.register_external(
        "py-squares",
        {"numbers": [1, 2, 3]},
        stage="COMPLETED",
        result={"sumOfSquares": 14, "engine": "spark"},
        received_at=now - timedelta(minutes=5),
        started_at=now - timedelta(minutes=4),
        finished_at=now - timedelta(minutes=1),
        engine="spark",
        tag=t,
    )
    done = client.get(run)
    assert done.status == "COMPLETED" and done.result_uri
    assert client.result_json(done) == {"sumOfSquares": 14, "engine": "spark"}
    assert client.payload(run) == b'{"numbers":[1,2,3]}'
    meta = client.metadata(run)
    assert meta.external is True
    assert meta.raw["job_uid"] == "external:spark"
    assert meta.raw["started_at"].startswith((now - timedelta(minutes=4)).strftime("%Y-%m-%dT%H"))
    assert [r.request_id for r in client.runs_by_tag(t)] == [run.request_id]
    rows = listed(url, t)
    assert len(rows) == 1 and rows[0]["external"] is True and rows[0]["status"] == "COMPLETED"


def test_stages_reported_as_they_happen(client: NexusClient) -> None:
    run = client.register_external("py-squares", {"numbers": [2]}, stage="CREATED", engine="spark")
    assert client.get(run).status == "BUFFERED"
    # Never picked up by Nexus: it stays CREATED with no attempt, however long it waits.
    time.sleep(3)
    meta = client.metadata(run)
    assert (meta.stage, meta.attempts) == ("BUFFERED", 0)
    with pytest.raises(ConflictError) as e:
        client.report_stage(run, "COMPLETED", result={"x": 1})
    assert "cannot move to COMPLETED" in str(e.value)
    assert "now RUNNING" in client.report_stage(run, "RUNNING")
    assert "already" in client.report_stage(run, "RUNNING")
    client.upload_result(run, b'{"sumOfSquares": 4}')
    assert "now COMPLETED" in client.report_stage(run, "COMPLETED")
    done = client.get(run)
    assert client.result_json(done) == {"sumOfSquares": 4}
    timeline = httpx.get(
        f"{client.base_url}/algorithm/v1/timeline/py-squares/requests/{run.request_id}"
    ).json()
    moves = [(c["from"], c["to"]) for c in timeline["timeline"]]
    assert moves[-2:] == [("BUFFERED", "RUNNING"), ("RUNNING", "COMPLETED")], timeline
    with pytest.raises(ConflictError):
        client.report_stage(run, "FAILED", error_cause="too late")
    with pytest.raises(ConflictError):
        client.upload_result(run, b"{}")


def test_a_failed_external_run_and_its_error(client: NexusClient) -> None:
    run = client.register_external("py-squares", {"numbers": []}, stage="RUNNING")
    client.report_stage(run, "FAILED", error_cause="executor lost", error_details="node gone")
    done = client.get(run)
    assert (done.status, done.error_message) == ("FAILED", "executor lost")
    with pytest.raises(RunFailedError):
        client.result_json(done)
    failed = client.register_external(
        "py-squares", {}, stage="FAILED", error_cause="OOM", error_details="exit 137"
    )
    assert client.metadata(failed).failure_details == "exit 137"


def test_external_children_and_cancel(client: NexusClient) -> None:
    parent = client.register_external("py-squares", {"numbers": [1]}, stage="RUNNING")
    kid = client.register_external("py-squares", {"numbers": [1]}, stage="CREATED", parent=parent)
    assert [k.request_id for k in client.children(parent)] == [kid.request_id]
    assert client.metadata(kid).parent == parent
    client.cancel(parent, reason="stop the job")
    assert client.get(parent).status == "CANCELLED"
    assert client.get(kid).status == "CANCELLED"


def test_invalid_registrations_and_reports_are_refused(client: NexusClient) -> None:
    now = datetime.now(timezone.utc)
    cases = [
        ({"stage": "DONE"}, "stage"),
        ({"stage": "FAILED"}, "errorCause: required"),
        ({"stage": "RUNNING", "result": {"a": 1}}, "only a COMPLETED run has a result"),
        ({"stage": "CREATED", "started_at": now}, "startedAt"),
        (
            {"stage": "COMPLETED", "started_at": now, "received_at": now + timedelta(seconds=5)},
            "earlier than receivedAt",
        ),
        ({"stage": "COMPLETED", "finished_at": now + timedelta(days=1)}, "in the future"),
        ({"stage": "COMPLETED", "engine": "spark job!"}, "engine"),
    ]
    for kwargs, message in cases:
        with pytest.raises(BadRequestError) as e:
            client.register_external("py-squares", {"numbers": []}, **kwargs)
        assert message in str(e.value), (kwargs, str(e.value))
    with pytest.raises(BadRequestError):
        client.register_external("no-such-algorithm", {}, stage="COMPLETED")
    # A run Nexus executes takes no stage report.
    ordinary = client.submit("py-squares", {"numbers": [1]})
    with pytest.raises(ConflictError) as e:
        client.report_stage(ordinary, "RUNNING")
    assert "not an external run" in str(e.value)
    with pytest.raises(NotFoundError):
        client.report_stage(RunRef("py-squares", str(uuid.uuid4())), "RUNNING")


def test_a_repeated_registration_key_returns_the_same_run(client: NexusClient) -> None:
    key = f"ext-{uuid.uuid4()}"
    first = client.register_external(
        "py-squares", {"numbers": [7]}, result={"sumOfSquares": 49}, idempotency_key=key
    )
    again = client.register_external(
        "py-squares", {"numbers": [7]}, result={"sumOfSquares": 49}, idempotency_key=key
    )
    assert again == first


def test_the_async_client_registers_and_reports(url: str) -> None:
    async def go() -> object:
        async with AsyncNexusClient(url) as c:
            run = await c.register_external("py-squares", {"numbers": [3]}, stage="CREATED")
            await c.report_stage(run, "RUNNING")
            await c.upload_result(run, b'{"sumOfSquares": 9}')
            await c.report_stage(run, "COMPLETED")
            return await c.result_json(run)

    assert asyncio.run(go()) == {"sumOfSquares": 9}
