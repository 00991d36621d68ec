"""The guardrail and promotion decision of an erasure (worker/erase/promotion.py), alone."""

from __future__ import annotations

import math

import pytest

from app.tables import RequestStatus
from worker.erase.promotion import decide


def test_a_small_drop_with_nothing_missing_is_promoted() -> None:
    verdict = decide(drop=0.4, limit=1.0, missing=0, version=3)
    assert verdict.status is RequestStatus.completed
    assert verdict.passed and verdict.promote
    assert "serving → v3" in verdict.reason


@pytest.mark.parametrize("drop", [1.0, -5.0, 0.0])
def test_the_limit_itself_and_gains_pass(drop: float) -> None:
    assert decide(drop=drop, limit=1.0, missing=0, version=2).promote


@pytest.mark.parametrize("drop", [1.01, math.inf, math.nan])
def test_a_drop_over_the_limit_or_not_finite_is_held_for_review(drop: float) -> None:
    verdict = decide(drop=drop, limit=1.0, missing=0, version=2)
    assert verdict.status is RequestStatus.needs_review
    assert not verdict.passed and not verdict.promote
    assert "serving not moved" in verdict.reason


def test_a_version_lacking_completed_erasures_is_kept_but_not_promoted() -> None:
    verdict = decide(drop=0.0, limit=1.0, missing=2, version=5)
    assert verdict.status is RequestStatus.needs_review
    assert verdict.passed and not verdict.promote
    assert "lacks 2 completed erasure(s)" in verdict.reason


def test_a_failed_guardrail_is_reported_before_missing_erasures() -> None:
    verdict = decide(drop=3.0, limit=1.0, missing=1, version=4)
    assert not verdict.passed and "exceeds 1.0" in verdict.reason
