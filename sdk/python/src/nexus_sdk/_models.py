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
class Progress:
    """The latest progress a run reported (:meth:`NexusRun.report_progress`).

    Attributes:
        fraction: how much is done, from 0 to 1, when the algorithm said.
        message: what it said it is doing.
        reported_at: when (RFC 3339).
    """

    fraction: float | None
    message: str | None
    reported_at: str

    @classmethod
    def from_json(cls, doc: Any) -> Progress | None:
        """Reads the ``progress`` object of a run's metadata (``None`` when absent)."""
        if not isinstance(doc, dict):
            return None
        f = doc.get("fraction")
        m = doc.get("message")
        return cls(
            fraction=float(f) if isinstance(f, (int, float)) else None,
            message=str(m) if m else None,
            reported_at=str(doc.get("reported_at") or doc.get("reportedAt") or ""),
        )


@dataclass(frozen=True)
class RunSummary:
    """One run of a listing (``GET /algorithm/v1/runs``)."""

    algorithm: str
    request_id: str
    status: str
    submitted_at: str
    shard: str
    workgroup: str
    attempts: int
    root: str
    tag: str | None = None
    parent: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    result_uri: str = ""
    error_message: str = ""
    external: bool = False
    progress: Progress | None = None

    @property
    def ref(self) -> RunRef:
        """This run as a :class:`RunRef`."""
        return RunRef(self.algorithm, self.request_id)

    @classmethod
    def from_json(cls, doc: Any) -> RunSummary:
        """Reads one element of a listing's ``runs``."""
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object, got {type(doc).__name__}")

        def text(key: str) -> str | None:
            v = doc.get(key)
            return str(v) if v not in (None, "") else None

        return cls(
            algorithm=str(doc.get("algorithmName", "")),
            request_id=str(doc.get("requestId", "")),
            status=str(doc.get("status", "")),
            submitted_at=str(doc.get("submittedAt", "")),
            shard=str(doc.get("shard", "")),
            workgroup=str(doc.get("workgroup", "")),
            attempts=int(doc.get("attempts") or 0),
            root=str(doc.get("rootRequestId", "")),
            tag=text("tag"),
            parent=text("parentRequestId"),
            started_at=text("startedAt"),
            finished_at=text("finishedAt"),
            result_uri=str(doc.get("resultUri") or ""),
            error_message=str(doc.get("runErrorMessage") or ""),
            external=doc.get("external") is True,
            progress=Progress.from_json(doc.get("progress")),
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
    progress: Progress | None = None

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
            progress=Progress.from_json(doc.get("progress")),
        )
