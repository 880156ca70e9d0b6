"""The algorithm side through real Python algorithms run by Nexus: the example ``py-squares``
(asyncio API, execution tree) and the test algorithm ``sync-probe`` (blocking API)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from conftest import REPO

from nexus_sdk import (
    BadRequestError,
    ConfigurationError,
    NexusClient,
    NexusRun,
    RunContext,
    RunResult,
    run_algorithm,
)


@pytest.fixture
def client(url: str) -> Iterator[NexusClient]:
    with NexusClient(url) as c:
        yield c


def finish(client: NexusClient, algorithm: str, params: object) -> RunResult:
    run = client.submit(algorithm, params)
    return client.wait(run, timeout=180)


def test_the_example_builds_a_tree_of_child_runs(client: NexusClient) -> None:
    payload = json.loads((REPO / "examples" / "python" / "payloads" / "squares.json").read_text())
    done = finish(client, "py-squares", payload)
    assert done.status == "COMPLETED", done
    assert client.result_json(done) == {"sumOfSquares": 22140, "runs": 7, "depth": 2}
    kids = client.children(done.ref)
    assert len(kids) == 2
    grandchildren = [g for k in kids for g in client.children(k.ref)]
    assert len(grandchildren) == 4
    leaf = client.metadata(grandchildren[0].ref)
    assert leaf.depth == 2 and leaf.root == done.request_id
    assert leaf.parent is not None and leaf.parent.request_id in {k.request_id for k in kids}


def test_invalid_input_fails_with_the_algorithms_cause(client: NexusClient) -> None:
    done = finish(client, "py-squares", {"numbers": "not a list"})
    assert done.status == "FAILED"
    assert done.error_message == "invalid input: numbers must be a list of integers"
    meta = client.metadata(done.ref)
    assert meta.failure_details == "got str: not a list"


def test_an_exception_is_reported_with_its_traceback(client: NexusClient) -> None:
    done = finish(client, "py-squares", {"explode": "on purpose"})
    assert done.status == "FAILED"
    assert done.error_message == "RuntimeError: asked to explode: on purpose"
    details = client.metadata(done.ref).failure_details or ""
    assert "Traceback" in details and "nexus_example_squares.py" in details


def test_a_payload_that_is_not_an_object_is_refused_at_submission(client: NexusClient) -> None:
    with pytest.raises(BadRequestError):
        client.submit("py-squares", [1, 2])


def test_sync_run_sees_its_context_and_payload(client: NexusClient) -> None:
    params = {"mode": "echo", "x": [1, "two"]}
    done = finish(client, "sync-probe", params)
    assert done.status == "COMPLETED", done
    out = client.result_json(done)
    assert out["echo"] == params
    assert out["algorithm"] == "sync-probe"
    assert out["requestId"] == done.request_id
    assert out["shard"] == "local"
    assert out["parent"] is None
    assert json.loads(out["payload"]) == params


def test_sync_run_creates_awaits_and_reads_a_child(client: NexusClient) -> None:
    done = finish(client, "sync-probe", {"mode": "child", "numbers": [3, 4]})
    assert done.status == "COMPLETED", done
    out = client.result_json(done)
    assert out["status"] == "COMPLETED"
    assert out["childResult"] == {"sumOfSquares": 25, "runs": 1, "depth": 0}
    assert out["children"] == [out["child"]]
    child = client.metadata(client.children(done.ref)[0].ref)
    assert child.request_id == out["child"]
    assert child.parent is not None and child.parent.request_id == done.request_id
    assert child.parent.algorithm == "sync-probe"


@pytest.mark.parametrize(
    ("mode", "cause", "details"),
    [
        ("fail", "requested failure", "the payload asked for mode=fail"),
        ("raise", "ValueError: boom from the probe", "Traceback"),
        ("unknown", "invalid input: unknown mode 'unknown'", "modes:"),
    ],
)
def test_sync_run_reports_failures(
    client: NexusClient, mode: str, cause: str, details: str
) -> None:
    done = finish(client, "sync-probe", {"mode": mode})
    assert done.status == "FAILED"
    assert done.error_message == cause
    assert details in (client.metadata(done.ref).failure_details or "")


def test_sync_run_results_as_bytes_and_in_two_steps(client: NexusClient) -> None:
    raw = finish(client, "sync-probe", {"mode": "bytes"})
    assert client.result_bytes(raw) == b"\x00raw bytes\xff"
    explicit = finish(client, "sync-probe", {"mode": "explicit"})
    assert client.result_json(explicit) == {"explicit": True}


def test_sync_run_reports_progress_seen_while_it_runs(client: NexusClient) -> None:
    run = client.submit("sync-probe", {"mode": "progress", "seconds": 3})
    deadline = time.monotonic() + 60
    seen = None
    while time.monotonic() < deadline:
        meta = client.metadata(run)
        if meta.progress is not None and meta.progress.fraction == 0.75:
            seen = meta
            break
        time.sleep(0.1)
    assert seen is not None, "progress 0.75 never showed while the run ran"
    assert seen.stage in ("BUFFERED", "RUNNING")
    assert seen.progress is not None
    assert seen.progress.message == "three quarters"
    assert seen.progress.reported_at
    listed = [r for r in client.list_runs(algorithm="sync-probe") if r.request_id == run.request_id]
    assert listed, "the run is listed"
    done = client.wait(run, timeout=180)
    assert done.status == "COMPLETED"
    # The second report came within a second of the first: dropped, not sent.
    assert client.result_json(done) == {"sent": [True, False, True]}
    final = client.metadata(run).progress
    assert final is not None and final.fraction == 0.75


def test_context_reads_arguments_and_environment() -> None:
    rid = str(uuid.uuid4())
    env = {
        "NEXUS__ALGORITHM_NAME": "alg",
        "NEXUS__REQUEST_ID": "ignored-when-an-argument-is-given",
        "NEXUS__RUN_TOKEN": "tok",
        "NEXUS__RECEIVER_URL": "http://h:1/run-token/tok/",
        "NEXUS__RESULT_UPLOAD_URL": "http://h:1/up",
        "NEXUS__SCHEDULER_URL": "http://h:1",
        "NEXUS__PARENT_REQUEST_ID": "p",
        "NEXUS__PARENT_ALGORITHM_NAME": "pa",
        "NEXUS__SHARD_NAME": "local",
    }
    ctx = RunContext.from_env(["--sas-uri=http://h:1/p?sig=1", f"--request-id={rid}"], env)
    assert (ctx.algorithm, ctx.request_id, ctx.payload_url) == ("alg", rid, "http://h:1/p?sig=1")
    assert (
        ctx.completion_url == f"http://h:1/run-token/tok/algorithm/v1/complete/alg/requests/{rid}"
    )
    assert ctx.parent is not None and (ctx.parent.algorithm, ctx.parent.request_id) == ("pa", "p")
    assert "tok" not in repr(ctx)
    with pytest.raises(ConfigurationError, match="NEXUS__RUN_TOKEN"):
        RunContext.from_env(["--sas-uri=x", "--request-id=y"], {**env, "NEXUS__RUN_TOKEN": ""})
    no_scheduler = RunContext.from_env(["--sas-uri", "x"], {**env, "NEXUS__SCHEDULER_URL": ""})
    assert no_scheduler.request_id == "ignored-when-an-argument-is-given"
    with pytest.raises(ConfigurationError, match="child runs"):
        no_scheduler.scheduler()
    argv = ["--sas-uri=x", "--request-id=y"]
    with pytest.raises(ConfigurationError, match=r"CA file /nonexistent\.pem"):
        NexusRun.from_env(argv, {**env, "NEXUS_CA_FILE": "/nonexistent.pem"})
    with NexusRun.from_env(argv, env) as run:
        assert run.context.request_id == "y"


def test_run_algorithm_outside_nexus_exits_1() -> None:
    assert run_algorithm(lambda run, params: None, argv=[], environ={}) == 1


def test_the_runs_log_has_its_prints_and_no_credentials(client: NexusClient) -> None:
    done = finish(client, "py-squares", {"numbers": list(range(1, 5)), "leaf": 2})
    assert done.succeeded
    deadline = time.monotonic() + 30
    while (logs := client.metadata(done).logs_uri) is None:
        assert time.monotonic() < deadline, "no logs_uri 30 s after the run finished"
        time.sleep(0.2)
    text = httpx.get(logs, timeout=10).text
    assert "split 4 numbers into runs" in text
    assert f"run {done.request_id} reported" in text
    assert "/run-token/" not in text
    assert "sig=" not in text
