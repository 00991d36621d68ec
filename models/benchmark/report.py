"""Markdown report of benchmark rows: a mean ± std summary over seeds, then every run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    """Mean and sample standard deviation (ddof=1; None for a single value) of `n` values."""

    mean: float
    std: float | None
    n: int


def mean_std(values: Sequence[float | None]) -> Stat | None:
    """Mean ± sample std of the values that are not None; None when there are none."""
    present = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if present.size == 0:
        return None
    std = float(present.std(ddof=1)) if present.size > 1 else None
    return Stat(mean=float(present.mean()), std=std, n=int(present.size))


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
        return f"{value.mean:.2f}" if value.std is None else f"{value.mean:.2f} ± {value.std:.2f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _table(headings: Sequence[str], lines: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    out += ["| " + " | ".join(_cell(v) for v in line) + " |" for line in lines]
    return "\n".join(out) + "\n"


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Mean ± std over seeds per (method, request size); a single seed shows just the mean."""
    keys = [key for key, _ in SUMMARY_METRICS]
    headings = ["method", "requests", "seeds", *(heading for _, heading in SUMMARY_METRICS)]
    lines = [
        [entry["method"], entry["requests"], entry["seeds"], *(entry[k] for k in keys)]
        for entry in summarize(rows)
    ]
    return _table(headings, lines)


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
        + "## Summary (mean ± std over seeds)\n\n"
        + summary_table(rows)
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
