"""What a benchmark's rows say per seed: gap closure and test drop against the original and the
retrained model, and paired differences between methods, each with its 95 % interval."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from models.metrics.stats import Interval, mean_ci

REFERENCES = ("original", "retrain")
Key = tuple[int, int]  # (requests, seed)


def _by_pass(rows: Iterable[dict[str, Any]]) -> dict[Key, dict[str, dict[str, Any]]]:
    """Rows grouped by (request size, seed), then by method."""
    passes: dict[Key, dict[str, dict[str, Any]]] = {}
    for row in rows:
        passes.setdefault((row["requests"], row["seed"]), {})[row["method"]] = row
    return passes


def gap_closure(original: float, method: float, retrain: float) -> float:
    """(original − method) ÷ (original − retrained) forget score: 1 is the retrained model's."""
    gap = original - retrain
    return (original - method) / gap if gap > 0 else math.nan


@dataclass(frozen=True)
class Forgetting:
    """A method at one request size over seeds: gap closure and test drop, per seed and summed."""

    method: str
    requests: int
    seeds: list[int]
    closure: list[float]
    test_drop: list[float]

    @property
    def closure_ci(self) -> Interval:
        """Mean gap closure and its 95 % interval."""
        return mean_ci(self.closure)

    @property
    def test_drop_ci(self) -> Interval:
        """Mean test-score drop (points) and its 95 % interval."""
        return mean_ci(self.test_drop)


def forgetting(
    rows: Sequence[dict[str, Any]], seeds: Iterable[int] | None = None
) -> list[Forgetting]:
    """Gap closure and test drop of every method against its pass's references."""
    wanted = None if seeds is None else set(seeds)
    out: dict[tuple[str, int], Forgetting] = {}
    for (requests, seed), methods in _by_pass(rows).items():
        if (wanted is not None and seed not in wanted) or not set(REFERENCES) <= set(methods):
            continue
        original, retrain = methods["original"], methods["retrain"]
        for name, row in methods.items():
            if name in REFERENCES:
                continue
            entry = out.setdefault((name, requests), Forgetting(name, requests, [], [], []))
            entry.seeds.append(seed)
            entry.closure.append(gap_closure(original["forget"], row["forget"], retrain["forget"]))
            entry.test_drop.append(original["test"] - row["test"])
    return list(out.values())


@dataclass(frozen=True)
class Paired:
    """`metric` of `method` minus that of `other` on the same (request size, seed) passes."""

    method: str
    other: str
    requests: int
    seeds: list[int]
    differences: list[float]

    @property
    def ci(self) -> Interval:
        """Mean paired difference and its 95 % interval."""
        return mean_ci(self.differences)

    @property
    def wins(self) -> int:
        """Seeds on which `method` scored strictly higher."""
        return sum(d > 0 for d in self.differences)


def paired(
    rows: Sequence[dict[str, Any]],
    metric: str = "tow",
    seeds: Iterable[int] | None = None,
    against: Sequence[str] = ("original",),
) -> list[Paired]:
    """Every pair of methods (each also against the names in `against`), per request size."""
    wanted = None if seeds is None else set(seeds)
    passes = {k: v for k, v in _by_pass(rows).items() if wanted is None or k[1] in wanted}
    names = list(dict.fromkeys(r["method"] for r in rows if r["method"] not in REFERENCES))
    pairs = list(itertools.combinations(names, 2))
    pairs += [(name, ref) for name in names for ref in against]
    out = []
    for requests in sorted({k[0] for k in passes}):
        for method, other in pairs:
            seeds_used, diffs = [], []
            for (size, seed), methods in sorted(passes.items()):
                a, b = methods.get(method, {}).get(metric), methods.get(other, {}).get(metric)
                if size == requests and a is not None and b is not None:
                    seeds_used.append(seed)
                    diffs.append(float(a) - float(b))
            if diffs:
                out.append(Paired(method, other, requests, seeds_used, diffs))
    return out
