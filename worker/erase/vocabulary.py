"""The erasure job's vocabulary: what a job claims, computes and reports, and how it fails."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from models.train.checkpoint import Checkpoint
from worker.audit import Snapshot
from worker.versions import LoadedVersion

ACTOR = "worker"
METHOD_ERROR = "method_error"


class Busy(Exception):
    """Not this request's turn yet (model leased, or not queued yet): retry it shortly.

    `patience` bounds how many retries the wait deserves (None: as many as it takes).
    """

    def __init__(self, reason: str, patience: int | None = None) -> None:
        super().__init__(reason)
        self.patience = patience


class JobError(Exception):
    """The erasure itself failed: the request ends `failed` with `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@contextlib.contextmanager
def stage(code: str) -> Iterator[None]:
    """Turn any failure inside the block into a JobError with `code`."""
    try:
        yield
    except JobError:
        raise
    except Exception as exc:
        raise JobError(code, f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class Outcome:
    """What one execution of the task did."""

    request_id: str
    status: str
    version_id: int | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain form for the Celery result."""
        return asdict(self)


@dataclass(frozen=True)
class Member:
    """One claimed request of a batch."""

    request_id: str
    attempt: int
    identity_hash: str
    portrait_uri: str


@dataclass(frozen=True)
class Job:
    """Claimed requests (one batch, one method) and the parent version they erase from."""

    batch_id: str  # the leading request's id; the lease owner names it
    model_id: int
    owner: str
    method: str
    members: tuple[Member, ...]
    parent_id: int
    parent_version: int
    parent_uri: str
    parent_sha256: str
    parent_artifacts: dict[str, str]
    parent_erased: list[str]
    parent_training_data: dict[str, Any]
    parent_artifacts_version_id: int | None

    @property
    def request_ids(self) -> list[str]:
        """The members' request ids, in batch order."""
        return [m.request_id for m in self.members]

    def without(self, request_ids: set[str]) -> Job:
        """The same job minus some members."""
        kept = tuple(m for m in self.members if m.request_id not in request_ids)
        return replace(self, members=kept)


@dataclass
class Result:
    """The new weights and the audit of one erasure, not yet recorded."""

    parent: LoadedVersion
    model: nn.Module
    checkpoint: Checkpoint
    sha256: str
    config: dict[str, Any]
    before: Snapshot
    after: Snapshot
    run: dict[str, Any]
