"""Every call of the blocking client against a real standalone."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import nexus_sdk._client as nexus_client_module
from nexus_sdk import (
    BadRequestError,
    IdempotencyKeyReusedError,
    NexusClient,
    NexusError,
    NotFoundError,
    Retry,
    RunFailedError,
    RunRef,
    RunTimeoutError,
    TransportError,
)

SQUARES = {"numbers": [1, 2, 3, 4], "leaf": 10}


def tag() -> str:
    return f"py-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(url: str) -> Iterator[NexusClient]:
    with NexusClient(url) as c:
        yield c


def test_submit_wait_and_read_the_result_three_ways(client: NexusClient, tmp_path: Path) -> None:
    run = client.submit("py-squares", SQUARES)
    assert run.algorithm == "py-squares"
    uuid.UUID(run.request_id)
    done = client.wait(run, timeout=120)
    assert done.status == "COMPLETED", done
    assert done.finished and done.succeeded and done.result_uri
    expected = {"sumOfSquares": 30, "runs": 1, "depth": 0}
    assert client.result_json(done) == expected
    assert json.loads(client.result_bytes(run)) == expected
    size = client.download_result(run, tmp_path / "result.json")
    assert json.loads((tmp_path / "result.json").read_bytes()) == expected
    assert size == (tmp_path / "result.json").stat().st_size
    assert client.get(run).status == "COMPLETED"


def test_an_idempotency_key_returns_the_same_run(client: NexusClient) -> None:
    key = f"key-{uuid.uuid4()}"
    first = client.submit("py-squares", SQUARES, idempotency_key=key)
    again = client.submit("py-squares", SQUARES, idempotency_key=key)
    assert again == first
    with pytest.raises(IdempotencyKeyReusedError) as e:
        client.submit("py-squares", {"numbers": [9]}, idempotency_key=key)
    assert e.value.status == 422
    assert first.request_id in e.value.message
    # Without a key, each submission is a new run.
    assert client.submit("py-squares", SQUARES) != client.submit("py-squares", SQUARES)


def test_errors_carry_the_servers_message(client: NexusClient) -> None:
    with pytest.raises(BadRequestError) as bad:
        client.submit("no-such-algorithm", {})
    assert bad.value.status == 400
    assert "no-such-algorithm" in bad.value.message
    assert bad.value.method == "POST" and "/algorithm/v1/run/" in bad.value.url
    unknown = RunRef("py-squares", str(uuid.uuid4()))
    with pytest.raises(NotFoundError) as missing:
        client.get(unknown)
    assert unknown.request_id in missing.value.message
    with pytest.raises(NotFoundError):
        client.metadata(unknown)
    with pytest.raises(BadRequestError) as invalid:
        client.get(RunRef("py-squares", "not-a-uuid"))
    assert "not-a-uuid" in invalid.value.message


def test_metadata_job_and_payload(client: NexusClient) -> None:
    t = tag()
    run = client.submit(
        "py-squares",
        SQUARES,
        tag=t,
        payload_valid_for="1h",
        custom_configuration={"runtimeEnvironment": {"deadlineSeconds": 30}},
        api_version="1.2",
    )
    client.wait(run, timeout=120)
    meta = client.metadata(run)
    assert (meta.algorithm, meta.request_id, meta.stage) == (
        "py-squares",
        run.request_id,
        "COMPLETED",
    )
    assert meta.tag == t
    assert meta.attempts >= 1
    assert meta.parent is None and meta.depth == 0 and meta.root == run.request_id
    assert meta.raw["payload_valid_for"] == "1h0m0s"
    assert meta.raw["api_version"] == "1.2"
    assert meta.raw["applied_configuration"]["runtimeEnvironment"]["deadlineSeconds"] == 30
    job = client.job(run)
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    assert json.loads(client.payload(run)) == SQUARES


def test_tags_set_list_and_clear(client: NexusClient) -> None:
    t = tag()
    runs = [client.submit("py-squares", SQUARES, tag=t) for _ in range(2)]
    other = client.submit("py-squares", SQUARES)
    listed = client.runs_by_tag(t)
    assert {r.request_id for r in listed} == {r.request_id for r in runs}
    assert all(r.algorithm == "py-squares" for r in listed)
    assert "set to" in client.set_tag(other, t)
    assert other.request_id in {r.request_id for r in client.runs_by_tag(t)}
    client.set_tag(other, "")
    assert other.request_id not in {r.request_id for r in client.runs_by_tag(t)}
    assert client.runs_by_tag(tag()) == []


def test_list_runs_filters_and_follows_the_cursor(
    client: NexusClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = tag()
    runs = [client.submit("py-squares", SQUARES, tag=t) for _ in range(3)]
    for r in runs:
        client.wait(r, timeout=120)
    listed = client.list_runs(tag=t)
    # Newest first.
    assert [r.request_id for r in listed] == [r.request_id for r in reversed(runs)]
    assert all(r.algorithm == "py-squares" and r.tag == t for r in listed)
    assert all(r.status == "COMPLETED" and r.result_uri for r in listed)
    assert listed[0].ref == runs[-1]
    assert len(client.list_runs(tag=t, limit=2)) == 2
    assert client.list_runs(tag=t, stage="FAILED") == []
    # Page by page (one run a page): the cursor carries on to the end.
    monkeypatch.setattr(nexus_client_module, "LIST_PAGE", 1)
    assert [r.request_id for r in client.list_runs(tag=t)] == [r.request_id for r in listed]
    with pytest.raises(BadRequestError, match="stage"):
        client.list_runs(stage="DONE")


def test_children_of_a_tree(client: NexusClient) -> None:
    root = client.submit("py-squares", {"numbers": list(range(1, 21)), "leaf": 10})
    done = client.wait(root, timeout=180)
    assert done.succeeded, done
    assert client.result_json(done) == {"sumOfSquares": 2870, "runs": 3, "depth": 1}
    kids = client.children(root)
    assert len(kids) == 2
    assert all(k.status == "COMPLETED" and k.algorithm == "py-squares" for k in kids)
    child_meta = client.metadata(kids[0].ref)
    assert child_meta.parent == root
    assert child_meta.depth == 1


def test_cancel_and_wait_timeout(client: NexusClient) -> None:
    run = client.submit("sync-probe", {"mode": "sleep", "seconds": 60})
    with pytest.raises(RunTimeoutError) as slow:
        client.wait(run, timeout=0.5, poll_interval=0.1)
    assert slow.value.last is not None and not slow.value.last.finished
    said = client.cancel(run, reason="test", initiator="pytest")
    assert run.request_id in said and "cancelled" in said
    done = client.wait(run, timeout=30)
    assert done.status == "CANCELLED"
    meta = client.metadata(run)
    assert meta.failure_cause and "pytest" in meta.failure_cause
    assert "already finished" in client.cancel(run, reason="again")
    with pytest.raises(RunFailedError) as failed:
        client.result_bytes(done)
    assert failed.value.result.status == "CANCELLED"


def test_a_dry_run_has_no_result(client: NexusClient) -> None:
    run = client.submit("py-squares", SQUARES, dry_run=True)
    done = client.get(run)
    assert done.status == "COMPLETED"
    with pytest.raises(NexusError, match="without a result"):
        client.result_bytes(done)


def test_an_unreachable_server_is_a_transport_error() -> None:
    from conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with (
        NexusClient(dead, retry=Retry(budget=0.5)) as c,
        pytest.raises(TransportError, match="reading the status"),
    ):
        c.get(RunRef("a", str(uuid.uuid4())))


def test_from_env(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("NEXUS_SERVER", url)
    monkeypatch.setenv("NEXUS_TOKEN", "")
    with NexusClient.from_env() as c:
        assert c.base_url == url
        assert c.runs_by_tag(tag()) == []
