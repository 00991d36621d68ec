"""The attribute benchmark's report: leakage over the floor and task drop, per method."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.metrics.stats import mean_ci

# issue 14's bars: (leakage above the floor, task score drop in points) for each method's probe
BARS: dict[str, tuple[str, float, float]] = {
    "leace": ("linear", 0.03, 1.0),
    "mi_detach": ("mlp", 0.05, 2.0),
    "mi_finetune": ("mlp", 0.05, 2.0),
}


def _cell(values: Sequence[float]) -> str:
    """Mean [95 % Student-t interval], or the mean alone for one value."""
    ci = mean_ci(values)
    if ci.mean is None:
        return "–"
    if ci.low is None or ci.high is None:
        return f"{ci.mean:.3f}"
    return f"{ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def _mean(values: Sequence[float]) -> str:
    ci = mean_ci(values)
    return "–" if ci.mean is None else f"{ci.mean:.3f}"


def _scores(group: list[dict[str, Any]], side: str, probe: str) -> list[float]:
    """Balanced accuracies of `probe` on `side` ("before" or "after") over the group's rows."""
    return [r[side][probe]["balanced_accuracy"] for r in group if r[side][probe]]


def _verdict(method: str, group: list[dict[str, Any]]) -> str:
    """Whether the group's mean leakage and task drop meet the method's bar."""
    if method not in BARS:
        return "–"
    probe, leakage_bar, drop_bar = BARS[method]
    leakage = mean_ci(r[f"{probe}_leakage"] for r in group).mean
    drop = mean_ci(r["task_drop"] for r in group).mean
    if leakage is None or drop is None:
        return "unmeasured"
    met = leakage <= leakage_bar and drop <= drop_bar
    return f"{'met' if met else 'missed'} ({probe} ≤ {leakage_bar}, drop ≤ {drop_bar})"


def write_report(results: dict[str, Any], path: Path) -> None:
    """Write the Markdown table: one line per (method, attribute) over the seeds."""
    config, rows = results["config"], results["rows"]
    lines = [
        f"# Attribute erasure: {config['dataset']['name']}, task {config['task']}, "
        f"{config['arch']} at {config['image_size']} px",
        "",
        "Balanced accuracy of fresh probes on identities nothing was fitted on. Leakage = the "
        "probe's balanced accuracy after erasure − the floor (the higher of chance and what the "
        "linear probe reads from the task's own outputs). Mean [95 % Student-t interval] over "
        f"seeds {config['seeds']}; the control is the linear probe fitted and scored on permuted "
        "labels; task drop = test score before − after (points).",
        "",
        "| method | attribute | seeds | linear before | linear after | linear leakage | MLP before "
        "| MLP after | MLP leakage | control after | task drop | per-seed linear leakage | bar |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, attribute in sorted({(r["method"], r["attribute"]) for r in rows}):
        group = [r for r in rows if r["method"] == method and r["attribute"] == attribute]

        cells = [
            method,
            attribute,
            str(len(group)),
            _mean(_scores(group, "before", "linear")),
            _mean(_scores(group, "after", "linear")),
            _cell([r["linear_leakage"] for r in group]),
            _mean(_scores(group, "before", "mlp")),
            _mean(_scores(group, "after", "mlp")),
            _cell([r["mlp_leakage"] for r in group if r["mlp_leakage"] is not None]),
            _mean(_scores(group, "after", "control")),
            _cell([r["task_drop"] for r in group]),
            ", ".join(f"{r['linear_leakage']:.3f}" for r in group),
            _verdict(method, group),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot_leakage(results: dict[str, Any], path: Path) -> None:
    """Linear-probe leakage against the task score drop, one point per (attribute, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = results["rows"]
    for attribute in sorted({r["attribute"] for r in rows}):
        group = [r for r in rows if r["attribute"] == attribute]
        ax.scatter(
            [r["task_drop"] for r in group], [r["linear_leakage"] for r in group], label=attribute
        )
    _, leakage_bar, drop_bar = BARS["leace"]
    ax.axhline(leakage_bar, linestyle="--", color="gray")
    ax.axvline(drop_bar, linestyle="--", color="gray")
    ax.set_xlabel("task score drop (points)")
    ax.set_ylabel("linear-probe leakage above the floor")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
