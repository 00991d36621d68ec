"""Tug-of-War (ToW): how closely an unlearned model's set scores match the retrained model's."""

from __future__ import annotations

from dataclasses import dataclass

TOW_NAME = "tow@1"


@dataclass(frozen=True)
class SetScores:
    """Task scores (0-100) of one model on the retain, forget and test sets."""

    retain: float
    forget: float
    test: float


def _closeness(unlearned: float, retrained: float) -> float:
    """1 − |difference|/100 for two 0-100 scores."""
    return 1.0 - abs(unlearned - retrained) / 100.0


def tug_of_war(unlearned: SetScores, retrained: SetScores) -> float:
    """ToW = 100·Π_s (1 − |M_s(u) − M_s(r)|/100) over retain, forget and test (100 = retraining)."""
    return (
        100.0
        * _closeness(unlearned.retain, retrained.retain)
        * _closeness(unlearned.forget, retrained.forget)
        * _closeness(unlearned.test, retrained.test)
    )
