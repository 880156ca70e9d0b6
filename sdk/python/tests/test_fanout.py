"""Fan-out against a real standalone: batch submit (all or none, idempotent), ``map`` with
1,000 parameter sets in order, the async twin, and ``map`` from an algorithm (child runs)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from nexus_sdk import (
    AsyncNexusClient,
    BadRequestError,
    IdempotencyKeyReusedError,
    NexusClient,
    RunFailedError,
)


@pytest.fixture
def client(url: str) -> Iterator[NexusClient]:
    with NexusClient(url) as c:
        yield c


def tag() -> str:
    return f"fan-{uuid.uuid4().hex[:12]}"


def test_map_of_1000_parameter_sets_returns_every_result_in_order(client: NexusClient) -> None:
    # demo-squares: what py-squares computes, natively (1,000 Python interpreters would take
    # minutes of CPU on a small machine; the algorithm side is the other tests' subject).
    params = [{"numbers": [i, i + 1], "leaf": 10} for i in range(1000)]
    t = tag()
    results = client.map("demo-squares", params, tag=t, timeout=600, concurrency=64)
    assert len(results) == 1000
    for i, r in enumerate(results):
        assert r == {"sumOfSquares": i * i + (i + 1) ** 2, "runs": 1, "depth": 0}, i
    # Each run has its own id, all carry the tag, all completed.
    tagged = client.runs_by_tag(t)
    assert len({r.request_id for r in tagged}) == 1000
    assert all(r.status == "COMPLETED" for r in tagged)


def test_a_batch_is_accepted_whole_with_ids_in_order(client: NexusClient) -> None:
    t = tag()
    runs = client.submit_many("py-squares", [{"numbers": [n]} for n in range(5)], tag=t)
    assert len(runs) == 5 and len({r.request_id for r in runs}) == 5
    for n, run in enumerate(runs):
        assert client.payload(run) == f'{{"numbers":[{n}]}}'.encode()
        done = client.wait(run, timeout=120)
        assert client.result_json(done)["sumOfSquares"] == n * n
    assert {r.request_id for r in client.runs_by_tag(t)} == {r.request_id for r in runs}


def test_a_batch_with_one_bad_entry_stores_nothing(client: NexusClient) -> None:
    t = tag()
    with pytest.raises(BadRequestError) as e:
        client.submit_many("py-squares", [{"numbers": [1]}, [1, 2], {"numbers": [3]}], tag=t)
    assert "runs[1].algorithmParameters must be a JSON object" in str(e.value)
    assert client.runs_by_tag(t) == []
    with pytest.raises(BadRequestError) as e:
        client.submit_many("py-squares", [{"n": i} for i in range(1001)], tag=t)
    assert "scheduler.max_batch_runs" in str(e.value)
    with pytest.raises(BadRequestError):
        client.submit_many("no-such-algorithm", [{}], tag=t)
    assert client.runs_by_tag(t) == []


def test_a_repeated_batch_key_returns_the_same_runs(client: NexusClient) -> None:
    key = f"batch-{uuid.uuid4()}"
    params = [{"numbers": [1]}, {"numbers": [2]}]
    first = client.submit_many("py-squares", params, idempotency_key=key, dry_run=True)
    again = client.submit_many("py-squares", params, idempotency_key=key, dry_run=True)
    assert again == first
    with pytest.raises(IdempotencyKeyReusedError):
        client.submit_many("py-squares", [{"numbers": [9]}, {"numbers": [2]}], idempotency_key=key)
    with pytest.raises(IdempotencyKeyReusedError):
        client.submit_many("py-squares", params[:1], idempotency_key=key)


def test_map_raises_for_the_first_run_that_failed(client: NexusClient) -> None:
    with pytest.raises(RunFailedError) as e:
        client.map("py-squares", [{"numbers": [1]}, {"numbers": "nope"}], timeout=120)
    assert e.value.result.status == "FAILED"
    assert client.map("py-squares", []) == []


def test_async_map_keeps_the_order(url: str) -> None:
    async def go() -> list[Any]:
        async with AsyncNexusClient(url) as c:
            return await c.map(
                "py-squares", [{"numbers": [n]} for n in range(20)], concurrency=4, timeout=300
            )

    assert [r["sumOfSquares"] for r in asyncio.run(go())] == [n * n for n in range(20)]


def test_an_algorithm_maps_over_child_runs(client: NexusClient) -> None:
    lists = [[1, 2], [3], [4, 5, 6]]
    run = client.submit("sync-probe", {"mode": "map", "lists": lists})
    done = client.wait(run, timeout=300)
    assert done.status == "COMPLETED", (done, client.metadata(run).raw)
    out = client.result_json(done)
    assert [r["sumOfSquares"] for r in out["results"]] == [5, 9, 77]
    assert out["children"] == 3
    kids = client.children(run)
    assert len(kids) == 3 and all(k.status == "COMPLETED" for k in kids)
