"""Tug-of-War against unlearning time, one panel per request size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from models.benchmark.report import Stat, summarize

DPI = 120
PRIVILEGED = "support+retain"
MARKERS = {"support": "o", "privileged": "^", "retrain": "s"}


class _PlainLogFormatter(LogFormatter):
    """LogFormatter's choice of which ticks to label, written as plain numbers (0.1, 2, 300)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _xerr(time: Stat) -> list[list[float]]:
    """Asymmetric time error bar; the lower arm stops short of 0, which a log axis cannot show."""
    std = time.std or 0.0
    return [[min(std, 0.9 * time.mean)], [std]]


def _kind(method: str, needs: dict[str, str]) -> str:
    if method == "retrain":
        return "retrain"
    return "privileged" if needs.get(method) == PRIVILEGED else "support"


def _label(method: str, kind: str) -> str:
    if kind == "retrain":
        return "retrain (training time)"
    return f"{method} (privileged)" if kind == "privileged" else method


def _point(ax: Axes, entry: dict[str, Any], kind: str, color: str, below: bool) -> bool:
    """Draw one method at its seed mean with std error bars; False when it has no time or ToW."""
    time, tow = entry["unlearn_seconds"], entry["tow"]
    if time is None or tow is None or time.mean <= 0:
        return False
    ax.errorbar(
        time.mean,
        tow.mean,
        xerr=_xerr(time),
        yerr=tow.std or 0.0,
        fmt=MARKERS[kind],
        color=color,
        markersize=7,
        capsize=3,
    )
    ax.annotate(
        _label(entry["method"], kind),
        (time.mean, tow.mean),
        xytext=(6, -12 if below else 5),
        textcoords="offset points",
        fontsize=8,
        color=color,
        bbox={
            "boxstyle": "round,pad=0.15",
            "facecolor": "white",
            "edgecolor": "none",
            "alpha": 0.8,
        },
    )
    return True


def _original_line(ax: Axes, tow: Stat | None) -> None:
    """The original model's ToW as a dashed line, labelled at its left end."""
    if tow is None:
        return
    ax.axhline(tow.mean, linestyle="--", color="0.4", linewidth=1)
    ax.annotate(
        "original (no unlearning)",
        (0.01, tow.mean),
        xycoords=("axes fraction", "data"),
        xytext=(0, 3),
        textcoords="offset points",
        fontsize=8,
        color="0.3",
    )


def _panel(
    ax: Axes, entries: Sequence[dict[str, Any]], needs: dict[str, str], colors: dict[str, str]
) -> None:
    """One request size: methods as points, the original model as a dashed line."""
    drawn = 0
    for entry in entries:
        method = entry["method"]
        if method == "original":
            _original_line(ax, entry["tow"])
            continue
        # alternate labels above and below their points, so neighbours rarely overlap
        below = drawn % 2 == 1
        drawn += _point(ax, entry, _kind(method, needs), colors[method], below)
    if drawn:
        ax.set_xscale("log")
        ax.margins(x=0.2)
        # minor ticks get labels too while the axis spans at most two decades
        for set_formatter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            set_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("unlearning time (s, log scale)")
    ax.set_ylabel("ToW (vs retrained)")
    ax.grid(True, which="both", alpha=0.3)


def _legend_handles() -> list[Line2D]:
    """Marker and line meanings shared by every panel."""

    def marker(kind: str, label: str) -> Line2D:
        return Line2D([], [], marker=MARKERS[kind], linestyle="", color="0.3", label=label)

    return [
        marker("support", "support images only"),
        marker("privileged", "privileged: support + retain/forget data"),
        marker("retrain", "retrain (x = training time)"),
        Line2D([], [], linestyle="--", color="0.4", label="original (no unlearning)"),
    ]


def plot_tow_vs_time(results: dict[str, Any], path: Path) -> None:
    """Write a PNG of seed-mean ToW against unlearning time per method, one panel per size."""
    cfg = results["config"]
    needs: dict[str, str] = cfg.get("method_needs", {})
    entries = summarize(results["rows"])
    sizes = list(dict.fromkeys(entry["requests"] for entry in entries))
    methods = dict.fromkeys(entry["method"] for entry in entries)
    colors = {method: f"C{k % 10}" for k, method in enumerate(methods)}
    fig = Figure(figsize=(6.0 * max(1, len(sizes)), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(sizes)), squeeze=False)[0]
    for ax, size in zip(axes, sizes, strict=False):
        _panel(ax, [e for e in entries if e["requests"] == size], needs, colors)
        ax.set_title(f"N = {size} identities per request")
    fig.suptitle(
        f"ToW vs unlearning time: {cfg['dataset']['name']}, task {cfg['task']}, {cfg['arch']} "
        "(mean ± std over seeds)"
    )
    fig.legend(handles=_legend_handles(), loc="outside lower center", ncols=4, fontsize=8)
    fig.savefig(path, dpi=DPI)
