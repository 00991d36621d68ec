"""Spread of a handful of values: mean with a Student-t confidence interval."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """Mean of `n` finite values and its two-sided confidence interval (None below 2 values)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int

    @property
    def half_width(self) -> float | None:
        """Half the interval's width (None without an interval)."""
        if self.low is None or self.high is None:
            return None
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain form for JSON."""
        return asdict(self)


def mean_ci(values: Iterable[float | None], level: float = 0.95) -> Interval:
    """Mean and Student-t interval of the finite values (None and NaN are dropped)."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return Interval(None, None, None, 0)
    mean = float(finite.mean())
    if finite.size < 2:
        return Interval(mean, None, None, 1)
    half = float(stats.t.ppf(0.5 + level / 2, finite.size - 1) * stats.sem(finite))
    return Interval(mean, mean - half, mean + half, int(finite.size))
