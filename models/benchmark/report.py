"""Markdown table of benchmark rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = (
    "method",
    "requests",
    "seed",
    "retain",
    "forget",
    "test",
    "mia_auc",
    "mia_acc",
    "tow",
    "unlearn_seconds",
)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per row; scores in 0–100, times in seconds."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """Write the results table with the settings it was run with."""
    cfg = results["config"]
    dataset = cfg["dataset"]["name"]
    header = (
        f"# 1-SHUI benchmark: {dataset}, task {cfg['task']}, "
        f"{cfg['arch']} at {cfg['image_size']} px\n\n"
        f"Requests {cfg['requests']}, seeds {cfg['seeds']}, device {cfg['device']}. Scores are "
        "0–100 (macro mAP or accuracy); ToW is measured against the retrained reference.\n\n"
    )
    path.write_text(header + markdown_table(results["rows"]))
