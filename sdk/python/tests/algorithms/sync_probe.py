"""A test algorithm written with the blocking algorithm API (``run_algorithm``/``NexusRun``).

The payload's ``mode`` picks what it does, so one template covers the algorithm side:

* ``echo``: returns its payload and what it knows of its run;
* ``child``: creates a ``py-squares`` child, awaits it, reads its result, lists its children;
* ``fail``: reports a failure itself with ``run.fail``;
* ``raise``: raises an exception (reported with its traceback);
* ``bytes``: returns bytes (uploaded as they are);
* ``explicit``: writes the result and completes in two steps, then returns nothing;
* ``sleep``: sleeps ``seconds``, then echoes (a run to cancel or to time out on);
* ``map``: maps ``py-squares`` over ``lists`` as children (one batch), returns the results;
* ``progress``: reports progress three times (the second too soon, so dropped), holds
  ``seconds`` so its progress can be seen while it runs, returns what was recorded.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from nexus_sdk import AlgorithmFailure, NexusRun, run_algorithm


def main(run: NexusRun, params: Any) -> Any:
    mode = params.get("mode")
    ctx = run.context
    if mode == "echo":
        return {
            "echo": params,
            "algorithm": ctx.algorithm,
            "requestId": ctx.request_id,
            "shard": ctx.shard,
            "parent": None if ctx.parent is None else ctx.parent.request_id,
            "payload": run.payload().decode(),
        }
    if mode == "child":
        child = run.create_child("py-squares", {"numbers": params["numbers"], "leaf": 100})
        done = run.wait(child, timeout=120)
        kids = run.children()
        return {
            "child": child.request_id,
            "status": done.status,
            "childResult": run.result_json(done),
            "children": [k.request_id for k in kids],
        }
    if mode == "fail":
        run.fail("requested failure", "the payload asked for mode=fail")
        return None
    if mode == "raise":
        raise ValueError("boom from the probe")
    if mode == "bytes":
        return b"\x00raw bytes\xff"
    if mode == "explicit":
        run.write_result({"explicit": True})
        run.complete()
        return None
    if mode == "map":
        lists = params["lists"]
        results = run.map("py-squares", [{"numbers": n, "leaf": 100} for n in lists], timeout=120)
        return {"results": results, "children": len(run.children())}
    if mode == "progress":
        sent = [run.report_progress(0.5, "halfway"), run.report_progress(0.6)]
        time.sleep(1.1)
        sent.append(run.report_progress(0.75, "three quarters"))
        time.sleep(float(params["seconds"]))
        return {"sent": sent}
    if mode == "sleep":
        time.sleep(float(params["seconds"]))
        return {"slept": params["seconds"]}
    raise AlgorithmFailure(f"invalid input: unknown mode {mode!r}", "modes: echo, child, ...")


if __name__ == "__main__":
    sys.exit(run_algorithm(main))
