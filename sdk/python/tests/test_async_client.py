"""Every call of the asyncio client against a real standalone (run with ``asyncio.run``, so
no pytest plugin is needed)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from nexus_sdk import (
    AsyncNexusClient,
    BadRequestError,
    NotFoundError,
    RunFailedError,
    RunRef,
    RunTimeoutError,
)


def test_every_call(url: str, tmp_path: Path) -> None:
    async def go() -> None:
        t = f"apy-{uuid.uuid4().hex[:12]}"
        async with AsyncNexusClient(url) as c:
            key = f"akey-{uuid.uuid4()}"
            runs = await asyncio.gather(
                *(
                    c.submit(
                        "py-squares", {"numbers": [i, i + 1]}, tag=t, idempotency_key=f"{key}-{i}"
                    )
                    for i in range(3)
                )
            )
            assert (
                await c.submit("py-squares", {"numbers": [0, 1]}, tag=t, idempotency_key=f"{key}-0")
                == runs[0]
            )
            done = await asyncio.gather(*(c.wait(r, timeout=120) for r in runs))
            listed = await c.list_runs(tag=t)
            assert {r.request_id for r in listed} == {r.request_id for r in runs}
            assert [d.status for d in done] == ["COMPLETED"] * 3
            assert await c.result_json(done[1]) == {"sumOfSquares": 5, "runs": 1, "depth": 0}
            assert json.loads(await c.result_bytes(runs[2])) == {
                "sumOfSquares": 13,
                "runs": 1,
                "depth": 0,
            }
            await c.download_result(runs[0], tmp_path / "r.json")
            assert json.loads((tmp_path / "r.json").read_bytes())["sumOfSquares"] == 1
            assert (await c.get(runs[0])).status == "COMPLETED"

            listed = await c.runs_by_tag(t)
            assert {r.request_id for r in listed} == {r.request_id for r in runs}
            await c.set_tag(runs[0], "")
            assert len(await c.runs_by_tag(t)) == 2

            meta = await c.metadata(runs[1])
            assert meta.stage == "COMPLETED" and meta.tag == t
            assert (await c.job(runs[1]))["kind"] == "Job"
            assert json.loads(await c.payload(runs[1])) == {"numbers": [1, 2]}

            root = await c.submit("py-squares", {"numbers": list(range(1, 5)), "leaf": 2})
            assert (await c.wait(root, timeout=180)).succeeded
            kids = await c.children(root)
            assert len(kids) == 2

            slow = await c.submit("sync-probe", {"mode": "sleep", "seconds": 60})
            with pytest.raises(RunTimeoutError):
                await c.wait(slow, timeout=0.3, poll_interval=0.1)
            assert "cancelled" in await c.cancel(slow, reason="async test")
            cancelled = await c.wait(slow, timeout=30)
            assert cancelled.status == "CANCELLED"
            with pytest.raises(RunFailedError):
                await c.result_json(cancelled)

            with pytest.raises(BadRequestError, match="nope"):
                await c.submit("nope", {})
            with pytest.raises(NotFoundError):
                await c.get(RunRef("py-squares", str(uuid.uuid4())))

    asyncio.run(go())
