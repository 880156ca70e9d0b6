"""Python SDK of Nexus, the run scheduler: the client side and the algorithm side of its v1
HTTP API, blocking and asyncio.

Client::

    from nexus_sdk import NexusClient

    with NexusClient("http://127.0.0.1:8090") as nexus:
        run = nexus.submit("knapsack", {"capacity": 10, "items": []}, tag="nightly")
        done = nexus.wait(run, timeout=300)
        print(nexus.result_json(done))
        # Fan-out: one run per parameter set, submitted all or none, results in order.
        squares = nexus.map("py-squares", [{"numbers": [n]} for n in range(1000)])

Algorithm (a process Nexus launches for a run)::

    import sys
    from nexus_sdk import AlgorithmFailure, NexusRun, run_algorithm

    def main(run: NexusRun, params: dict) -> dict:
        if "n" not in params:
            raise AlgorithmFailure("invalid input: n is missing")
        child = run.create_child("square", {"x": params["n"]})
        return {"square": run.result_json(run.wait(child))}

    sys.exit(run_algorithm(main))
"""

from ._algorithm import (
    AsyncNexusRun,
    NexusRun,
    RunContext,
    run_algorithm,
    run_algorithm_async,
)
from ._client import AsyncNexusClient, NexusClient, RunIdentity
from ._errors import (
    AlgorithmFailure,
    ApiError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    ForbiddenError,
    IdempotencyKeyReusedError,
    NexusError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    RunFailedError,
    RunTimeoutError,
    ServerError,
    TransportError,
    UnauthorizedError,
)
from ._http import Retry
from ._models import (
    TERMINAL_STAGES,
    CancellationPolicy,
    ExternalStage,
    Progress,
    RunMetadata,
    RunRef,
    RunResult,
    RunSummary,
)
from ._version import __version__

__all__ = [
    "TERMINAL_STAGES",
    "AlgorithmFailure",
    "ApiError",
    "AsyncNexusClient",
    "AsyncNexusRun",
    "BadRequestError",
    "CancellationPolicy",
    "ConfigurationError",
    "ConflictError",
    "ExternalStage",
    "ForbiddenError",
    "IdempotencyKeyReusedError",
    "NexusClient",
    "NexusError",
    "NexusRun",
    "NotFoundError",
    "PayloadTooLargeError",
    "Progress",
    "RateLimitedError",
    "Retry",
    "RunContext",
    "RunFailedError",
    "RunIdentity",
    "RunMetadata",
    "RunRef",
    "RunResult",
    "RunSummary",
    "RunTimeoutError",
    "ServerError",
    "TransportError",
    "UnauthorizedError",
    "__version__",
    "run_algorithm",
    "run_algorithm_async",
]
