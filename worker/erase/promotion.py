"""The guardrail and promotion decision of an erasure: a pure function of what the job measured."""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.tables import RequestStatus


@dataclass(frozen=True)
class Verdict:
    """Where the batch's requests go, why, and whether `serving` moves to the new version."""

    status: RequestStatus
    reason: str
    passed: bool  # the audit-set score dropped by at most the guardrail
    promote: bool


def decide(drop: float, limit: float, missing: int, version: int) -> Verdict:
    """Judge new version `version` by its audit-set score `drop` and the erasures it lacks.

    Promoted (requests `completed`, serving moves) only when the drop is finite and at most
    `limit` and the version holds every completed erasure of the model (`missing` == 0);
    otherwise the version is kept and its requests wait for an admin (`needs_review`).
    """
    passed = math.isfinite(drop) and drop <= limit
    if passed and not missing:
        reason = f"audit-set score drop {drop:.2f} ≤ {limit}; serving → v{version}"
        return Verdict(RequestStatus.completed, reason, passed=True, promote=True)
    if not passed:
        reason = (
            f"audit-set score drop {drop:.2f} exceeds {limit}; v{version} kept, serving not moved"
        )
        return Verdict(RequestStatus.needs_review, reason, passed=False, promote=False)
    reason = f"v{version} lacks {missing} completed erasure(s); not promoted"
    return Verdict(RequestStatus.needs_review, reason, passed=True, promote=False)
