"""A Nexus algorithm in Python: the sum of the squares of a list of numbers, over an execution
tree.

A run whose list is longer than ``leaf`` splits it in two, creates two child runs of its own
algorithm for the halves (at once, with the asyncio API), awaits them and adds their answers;
a short list is summed directly. Payload and result::

    {"numbers": [1, 2, 3], "leaf": 10}   ->   {"sumOfSquares": 14, "runs": 1, "depth": 0}

``runs`` counts the runs of the subtree, ``depth`` its height. A payload without a list of
numbers fails the run with ``invalid input: …``; ``{"explode": "why"}`` raises an exception,
which the SDK reports with its traceback.

Installed as the ``nexus-py-squares`` command (``pip install ./sdk/python ./examples/python``),
which the template ``templates/py-squares.yaml`` runs.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from nexus_sdk import AlgorithmFailure, AsyncNexusRun, run_algorithm_async

MAX_NUMBERS = 100_000


def validate(params: Any) -> tuple[list[int], int]:
    """The numbers and the leaf size of a payload; :class:`AlgorithmFailure` when invalid."""
    if not isinstance(params, dict):
        raise AlgorithmFailure("invalid input: the payload must be a JSON object")
    if "explode" in params:
        raise RuntimeError(f"asked to explode: {params['explode']}")
    numbers = params.get("numbers")
    if not isinstance(numbers, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in numbers
    ):
        raise AlgorithmFailure(
            "invalid input: numbers must be a list of integers",
            f"got {type(numbers).__name__}: {str(numbers)[:200]}",
        )
    if len(numbers) > MAX_NUMBERS:
        raise AlgorithmFailure(f"invalid input: more than {MAX_NUMBERS} numbers")
    leaf = params.get("leaf", 10)
    if not isinstance(leaf, int) or leaf < 1:
        raise AlgorithmFailure("invalid input: leaf must be a positive integer")
    return numbers, leaf


async def solve(run: AsyncNexusRun, params: Any) -> dict[str, int]:
    """The algorithm: what it returns becomes the run's result."""
    numbers, leaf = validate(params)
    if len(numbers) <= leaf:
        print(f"summing {len(numbers)} squares")
        return {"sumOfSquares": sum(n * n for n in numbers), "runs": 1, "depth": 0}
    half = len(numbers) // 2
    me = run.context
    # Idempotency keys derived from this run: a relaunched attempt finds its children again.
    children = await asyncio.gather(
        *(
            run.create_child(
                me.algorithm,
                {"numbers": part, "leaf": leaf},
                idempotency_key=f"{me.request_id}-{i}",
            )
            for i, part in enumerate((numbers[:half], numbers[half:]))
        )
    )
    print(f"split {len(numbers)} numbers into runs {[c.request_id for c in children]}")
    finished = await asyncio.gather(*(run.wait(c, timeout=300) for c in children))
    results = await asyncio.gather(*(run.result_json(f) for f in finished))
    return {
        "sumOfSquares": sum(r["sumOfSquares"] for r in results),
        "runs": 1 + sum(r["runs"] for r in results),
        "depth": 1 + max(r["depth"] for r in results),
    }


def main() -> None:
    """Entry point of the ``nexus-py-squares`` command."""
    sys.exit(run_algorithm_async(solve))


if __name__ == "__main__":
    main()
