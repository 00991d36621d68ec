"""Markdown report of benchmark rows: a summary over seeds with 95 % intervals, forgetting
against the references, paired differences between methods, then every run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.benchmark.paired import forgetting, paired
from models.metrics.stats import Interval, mean_ci

# Pinned configs are calibrated on this seed; the other seeds are the held-out evidence.
CALIBRATION_SEED = 0

COLUMNS = (
    "method",
    "requests",
    "seed",
    "retain",
    "forget",
    "test",
    "mia_auc",
    "mia_acc",
    "rmia_auc",
    "rmia_tpr_at_0.01pct_fpr",
    "tow",
    "unlearn_seconds",
    "prepare_seconds",
)

# (row key, summary column heading)
SUMMARY_METRICS = (
    ("retain", "retain"),
    ("forget", "forget"),
    ("test", "test"),
    ("mia_auc", "mia_auc"),
    ("rmia_auc", "rmia_auc"),
    ("rmia_tpr_at_0.01pct_fpr", "rmia_tpr"),
    ("tow", "tow"),
    ("unlearn_seconds", "unlearn_seconds"),
    ("prepare_seconds", "prepare_seconds"),
)


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (ddof=1) and 95 % Student-t half-width of `n` values
    (std and half-width None for a single value)."""

    mean: float
    std: float | None
    n: int
    ci95: float | None = None


def mean_std(values: Sequence[float | None]) -> Stat | None:
    """Mean, sample std and 95 % half-width of the values that are not None; None if none."""
    present = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if present.size == 0:
        return None
    std = float(present.std(ddof=1)) if present.size > 1 else None
    interval = mean_ci(present.tolist())
    return Stat(float(present.mean()), std, int(present.size), interval.half_width)


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (method, request size) in run order: seed count and a Stat per metric."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["requests"]), []).append(row)
    return [
        {
            "method": method,
            "requests": requests,
            "seeds": len(group),
            **{key: mean_std([row.get(key) for row in group]) for key, _ in SUMMARY_METRICS},
        }
        for (method, requests), group in groups.items()
    ]


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, Stat):
        return f"{value.mean:.2f}" if value.ci95 is None else f"{value.mean:.2f} ± {value.ci95:.2f}"
    if isinstance(value, Interval):
        if value.mean is None:
            return "–"
        if value.low is None or value.high is None:
            return f"{value.mean:.2f}"
        return f"{value.mean:.2f} [{value.low:.2f}, {value.high:.2f}]"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _table(headings: Sequence[str], lines: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    out += ["| " + " | ".join(_cell(v) for v in line) + " |" for line in lines]
    return "\n".join(out) + "\n"


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Mean ± 95 % half-width over seeds per (method, request size); one seed: the mean."""
    keys = [key for key, _ in SUMMARY_METRICS]
    headings = ["method", "requests", "seeds", *(heading for _, heading in SUMMARY_METRICS)]
    lines = [
        [entry["method"], entry["requests"], entry["seeds"], *(entry[k] for k in keys)]
        for entry in summarize(rows)
    ]
    return _table(headings, lines)


def _values(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def forgetting_table(rows: Sequence[dict[str, Any]], seeds: Sequence[int] | None = None) -> str:
    """Gap closure and test drop per (method, request size), with intervals and per seed."""
    headings = ["method", "requests", "seeds", "gap_closure", "test_drop", "per-seed gap closure"]
    lines = [
        [f.method, f.requests, len(f.seeds), f.closure_ci, f.test_drop_ci, _values(f.closure)]
        for f in forgetting(rows, seeds)
    ]
    return _table(headings, lines)


def paired_table(rows: Sequence[dict[str, Any]], seeds: Sequence[int] | None = None) -> str:
    """ToW of each method minus another's on the same passes, with intervals and per seed."""
    headings = ["method", "other", "requests", "seeds", "ToW difference", "wins", "per seed"]
    lines = [
        [p.method, p.other, p.requests, len(p.seeds), p.ci, f"{p.wins}/{len(p.seeds)}",
         _values(p.differences)]
        for p in paired(rows, "tow", seeds)
    ]  # fmt: skip
    return _table(headings, lines)


def _evidence(rows: Sequence[dict[str, Any]]) -> str:
    """The forgetting and paired tables over all seeds, and over held-out seeds when any."""
    seeds = sorted({row["seed"] for row in rows})
    held_out = [s for s in seeds if s != CALIBRATION_SEED]
    scopes: list[tuple[str, Sequence[int] | None]] = [("all seeds", None)]
    if CALIBRATION_SEED in seeds and held_out:
        scopes.append((f"held-out seeds {held_out} (seed {CALIBRATION_SEED} calibrates)", held_out))
    text = ""
    for label, chosen in scopes:
        text += (
            f"\n## Forgetting against the references, {label}\n\n"
            "gap_closure = (original forget − method forget) ÷ (original forget − retrained "
            "forget), 1 being the retrained model's; test_drop = original test − method test "
            "(points). Mean [95 % Student-t interval].\n\n"
            + forgetting_table(rows, chosen)
            + f"\n## Paired ToW differences, {label}\n\n"
            "ToW of `method` minus ToW of `other` on the same request size and seed; wins counts "
            "the seeds where `method` is ahead. Mean [95 % Student-t interval].\n\n"
            + paired_table(rows, chosen)
        )
    return text


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per row; scores in 0–100, times in seconds."""
    return _table(COLUMNS, [[row.get(c) for c in COLUMNS] for row in rows])


def _header(cfg: dict[str, Any]) -> str:
    mia = cfg.get("mia", {})
    rmia = (
        f"RMIA ({mia['rmia']}, {mia['rmia_augmentations']} augmentations, population ≤ "
        f"{mia['rmia_population']}) attacks each model against the retrained model run through "
        "the same method (the plain retrained model for the original); the retrain row has none."
        if mia.get("rmia")
        else "RMIA was not run."
    )
    singles = cfg.get("single_identities", 1)
    if 1 in cfg["requests"] and singles > 1:
        rmia += (
            f" N = 1 runs {singles} one-identity requests per seed, each from the original, "
            f"against one retrained model that never saw any of the {singles} identities; FORGET "
            "is scored on each erased model's outputs for its own identity together, retain, "
            "test, the loss MIA and unlearn_seconds are the requests' means, and RMIA is not run."
        )
    return (
        f"# 1-SHUI benchmark: {cfg['dataset']['name']}, task {cfg['task']}, "
        f"{cfg['arch']} at {cfg['image_size']} px\n\n"
        f"Requests {cfg['requests']}, seeds {cfg['seeds']}, device {cfg['device']}. Scores are "
        "0–100 (macro mAP or accuracy); ToW is measured against the retrained reference. "
        "The retrain row's unlearn_seconds is its training time. "
        f"{rmia}\n\n"
    )


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """Write the summary over seeds and the per-run table, with the settings they came from."""
    rows = results["rows"]
    path.write_text(
        _header(results["config"])
        + "## Summary (mean ± 95 % interval half-width over seeds, Student t)\n\n"
        + summary_table(rows)
        + _evidence(rows)
        + "\n## Runs\n\n"
        + markdown_table(rows)
        + _uncalibrated_note(rows)
    )


def _uncalibrated_note(rows: list[dict[str, Any]]) -> str:
    """A warning naming the methods that ran on their `[fallback]` config, if any did."""
    names = sorted({row["method"] for row in rows if row.get("config_calibrated") is False})
    if not names:
        return ""
    return (
        "\nNot calibrated for this data set and architecture (their `[fallback]` config ran): "
        + ", ".join(names)
        + ".\n"
    )
