"""Value types of the v1 API: run references, statuses, metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: Stages after which a run never changes again.
TERMINAL_STAGES: frozenset[str] = frozenset(
    {"COMPLETED", "FAILED", "SCHEDULING_FAILED", "DEADLINE_EXCEEDED", "CANCELLED"}
)

#: How the cluster deletes a cancelled run's workload (``cancellationPolicy``).
CancellationPolicy = Literal["Background", "Foreground", "Orphan"]

#: The stages an external engine reports for a run it executes (``CREATED`` is stored as
#: ``BUFFERED``: known to Nexus, not started).
ExternalStage = Literal["CREATED", "RUNNING", "COMPLETED", "FAILED"]


@dataclass(frozen=True)
class RunRef:
    """A run, addressed as the v1 API does: by its algorithm and its request id."""

    algorithm: str
    request_id: str

    def __str__(self) -> str:
        return f"{self.algorithm}/{self.request_id}"


@dataclass(frozen=True)
class RunResult:
    """A run's status (``GET /algorithm/v1/results/…``, one element of a tag or children list).

    Attributes:
        request_id: the run's id.
        status: its stage (``BUFFERED``, ``RUNNING``, ``COMPLETED``, ``FAILED``, …).
        result_uri: signed URL of the result once COMPLETED, else empty.
        error_message: the failure cause once it ended in another terminal stage, else empty.
        algorithm: the run's algorithm (known for listed runs and for runs the SDK addressed).
    """

    request_id: str
    status: str
    result_uri: str = ""
    error_message: str = ""
    algorithm: str = ""

    @property
    def finished(self) -> bool:
        """True once the run is in a terminal stage."""
        return self.status in TERMINAL_STAGES

    @property
    def succeeded(self) -> bool:
        """True when the run COMPLETED."""
        return self.status == "COMPLETED"

    @property
    def ref(self) -> RunRef:
        """The run as a :class:`RunRef`."""
        return RunRef(self.algorithm, self.request_id)

    @classmethod
    def from_json(cls, doc: Any, algorithm: str = "") -> RunResult:
        """Reads a ``RequestResult`` or ``TaggedRequestResult`` document."""
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
        return cls(
            request_id=str(doc.get("requestId", "")),
            status=str(doc.get("status", "")),
            result_uri=str(doc.get("resultUri") or ""),
            error_message=str(doc.get("runErrorMessage") or ""),
            algorithm=str(doc.get("algorithmName") or algorithm),
        )


@dataclass(frozen=True)
class RunMetadata:
    """Everything the server knows about a run (``GET /algorithm/v1/metadata/…``, Go's
    ``CheckpointedRequest`` plus Nexus' additions). The common fields are attributes; ``raw``
    is the whole document.
    """

    algorithm: str
    request_id: str
    stage: str
    received_at: str
    tag: str | None
    parent: RunRef | None
    root: str | None
    depth: int
    attempts: int
    failure_cause: str | None
    failure_details: str | None
    logs_uri: str | None
    raw: dict[str, Any] = field(repr=False)
    external: bool = False

    @classmethod
    def from_json(cls, doc: Any) -> RunMetadata:
        """Reads a ``CheckpointedRequest`` document."""
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
        parent = doc.get("parent")
        parent_ref = (
            RunRef(str(parent.get("algorithmName", "")), str(parent.get("requestId", "")))
            if isinstance(parent, dict) and parent.get("requestId")
            else None
        )

        def text(key: str) -> str | None:
            v = doc.get(key)
            return str(v) if v not in (None, "") else None

        return cls(
            algorithm=str(doc.get("algorithm", "")),
            request_id=str(doc.get("id", "")),
            stage=str(doc.get("lifecycle_stage", "")),
            received_at=str(doc.get("received_at", "")),
            tag=text("tag"),
            parent=parent_ref,
            root=text("root"),
            depth=int(doc.get("depth") or 0),
            attempts=int(doc.get("attempts") or 0),
            failure_cause=text("algorithm_failure_cause"),
            failure_details=text("algorithm_failure_details"),
            logs_uri=text("logs_uri"),
            raw=doc,
            external=doc.get("external") is True,
        )
