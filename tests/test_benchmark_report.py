"""Benchmark outputs: summary with intervals, paired statistics, the plot, RMIA signals,
privileged data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.benchmark.paired import forgetting, paired
from models.benchmark.plot import plot_tow_vs_time
from models.benchmark.report import summarize, summary_table, write_markdown
from models.data.base import FaceData
from models.data.splits import SplitIndices, make_splits, split_indices
from models.evaluate import SetResult
from models.metrics.mia import loss_mia
from models.nets import create_model
from models.protocol import (
    loss_signal,
    pool_single_requests,
    privileged_request,
    rmia_sets,
    support_request,
)

METRICS = ("retain", "forget", "test", "mia_auc", "rmia_auc", "rmia_tpr_at_0.01pct_fpr", "tow")


def _rows(seeds: int = 3) -> list[dict[str, Any]]:
    """Hand-made rows: original, retrain and two methods over two sizes and `seeds` seeds."""
    rng = np.random.default_rng(0)
    rows = []
    for requests in (2, 5):
        for seed in range(seeds):
            for method in ("original", "retrain", "jit", "scrub"):
                row: dict[str, Any] = {"method": method, "requests": requests, "seed": seed}
                row.update({key: float(rng.uniform(0, 100)) for key in METRICS})
                row["unlearn_seconds"] = None if method == "original" else float(rng.uniform(1, 9))
                row["prepare_seconds"] = 0.5 + seed if method == "scrub" else None
                if method == "retrain":
                    row["rmia_auc"] = row["rmia_tpr_at_0.01pct_fpr"] = None
                rows.append(row)
    return rows


def _results(rows: list[dict[str, Any]]) -> dict[str, Any]:
    config = {
        "dataset": {"name": "synthfaces"},
        "task": "attributes",
        "arch": "test_resnet",
        "image_size": 32,
        "requests": [2, 5],
        "seeds": [0, 1, 2],
        "device": "cpu",
        "method_needs": {"jit": "support", "scrub": "support+retain"},
        "mia": {"rmia": "rmia-1ref@1", "rmia_augmentations": 2, "rmia_population": 100},
    }
    return {"config": config, "rows": rows}


def test_summary_is_mean_and_sample_std_over_seeds() -> None:
    rows = _rows()
    summary = summarize(rows)
    assert [(e["method"], e["requests"]) for e in summary][:4] == [
        ("original", 2),
        ("retrain", 2),
        ("jit", 2),
        ("scrub", 2),
    ]
    for entry in summary:
        group = [
            r for r in rows if (r["method"], r["requests"]) == (entry["method"], entry["requests"])
        ]
        assert entry["seeds"] == 3
        for key in (*METRICS, "unlearn_seconds", "prepare_seconds"):
            values = [r[key] for r in group if r[key] is not None]
            if not values:
                assert entry[key] is None
                continue
            assert entry[key].mean == pytest.approx(np.mean(values))
            assert entry[key].std == pytest.approx(np.std(values, ddof=1))
    jit = next(e for e in summary if (e["method"], e["requests"]) == ("jit", 5))
    assert f"{jit['tow'].mean:.2f} ± {jit['tow'].ci95:.2f}" in summary_table(rows)
    # 95 % Student-t half-width of three values: t(0.975, 2) · s / √3
    assert jit["tow"].ci95 == pytest.approx(4.302653 * jit["tow"].std / np.sqrt(3), rel=1e-5)


def _pass(
    requests: int,
    seed: int,
    forget: dict[str, float],
    test: dict[str, float],
    tow: dict[str, float],
) -> list[dict[str, Any]]:
    return [
        {"method": m, "requests": requests, "seed": seed, "forget": forget[m], "test": test[m],
         "tow": tow[m]}
        for m in forget
    ]  # fmt: skip


def test_gap_closure_test_drop_and_paired_differences_by_hand(tmp_path: Path) -> None:
    rows = []
    # seed, (original, retrain, a, b) forget; test; ToW of a and b
    for seed, forget, test, tow in (
        (0, (90, 70, 80, 88), (60, 60, 59, 60), (80, 70)),
        (1, (85, 75, 75, 85), (61, 60, 58, 61), (90, 75)),
        (2, (88, 68, 78, 84), (62, 61, 62, 60), (70, 72)),
    ):
        names = ("original", "retrain", "a", "b")
        rows += _pass(
            5, seed, dict(zip(names, map(float, forget), strict=True)),
            dict(zip(names, map(float, test), strict=True)),
            {"original": 60.0, "retrain": 100.0, "a": float(tow[0]), "b": float(tow[1])},
        )  # fmt: skip
    by_method = {f.method: f for f in forgetting(rows)}
    # a: (90−80)/20 = 0.5, (85−75)/10 = 1.0, (88−78)/20 = 0.5
    assert by_method["a"].closure == pytest.approx([0.5, 1.0, 0.5])
    assert by_method["a"].test_drop == pytest.approx([1.0, 3.0, 0.0])
    interval = by_method["a"].closure_ci
    # mean 2/3, s = 0.288675, t(0.975, 2) = 4.302653: half-width 0.717109
    assert interval.mean == pytest.approx(2 / 3)
    assert interval.low == pytest.approx(2 / 3 - 0.717109, abs=1e-5)
    assert interval.high == pytest.approx(2 / 3 + 0.717109, abs=1e-5)
    pairs = {(p.method, p.other): p for p in paired(rows)}
    assert pairs[("a", "b")].differences == [10.0, 15.0, -2.0]
    assert pairs[("a", "b")].wins == 2
    # mean 7.666667, s = 8.736895, sem = 5.044249: half-width 21.703575
    assert pairs[("a", "b")].ci.high == pytest.approx(7.666667 + 21.703575, abs=1e-4)
    assert pairs[("b", "original")].differences == [10.0, 15.0, 12.0]
    held_out = {(p.method, p.other): p for p in paired(rows, seeds=[1, 2])}
    assert held_out[("a", "b")].differences == [15.0, -2.0]

    write_markdown({"config": _results(rows)["config"], "rows": rows}, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "held-out seeds [1, 2] (seed 0 calibrates)" in text
    assert "| a | b | 5 | 3 | 7.67 [-14.04, 29.37] | 2/3 | 10.00, 15.00, -2.00 |" in text


def _set(score: float, losses: list[float], logits: list[list[float]], targets: list[list[int]]):
    return SetResult(
        score=score,
        losses=np.asarray(losses),
        logits=torch.tensor(logits),
        targets=torch.tensor(targets, dtype=torch.float32),
    )


def test_single_identity_requests_pool_forget_and_average_the_rest() -> None:
    none = [[0.0, 0.0]]
    members, others = [0.1, 0.2, 0.3, 0.2], [1.0, 1.2, 0.9, 1.1]
    parts = [
        {
            "retain": _set(80.0, members, none, [[1, 0]]),
            "val": _set(50.0, others, none, [[1, 0]]),
            "test": _set(60.0, others, none, [[1, 0]]),
            "forget": _set(75.0, [0.2, 1.0], [[2, -1], [1, -2]], [[1, 0], [1, 1]]),
        },
        {
            "retain": _set(90.0, members, none, [[1, 0]]),
            "val": _set(50.0, others, none, [[1, 0]]),
            "test": _set(70.0, others, none, [[1, 0]]),
            "forget": _set(100.0, [1.1], [[-1, 3]], [[0, 1]]),
        },
    ]
    ev = pool_single_requests(parts, "multilabel")
    # attribute 0 ranks its two positives first: AP 1; attribute 1 ranks 3 (+), -1 (−), -2 (+):
    # AP (1 + 2/3) / 2. The parts' own mAPs (75 and 100) would average 87.5 instead.
    assert ev.forget == pytest.approx(100 * (1 + 5 / 6) / 2)
    assert (ev.retain, ev.test) == (85.0, 65.0)
    mias = [loss_mia(members, others, f, others) for f in ([0.2, 1.0], [1.1])]
    assert ev.mia_auc == pytest.approx(np.mean([m.auc for m in mias]))
    with pytest.raises(ValueError, match="no single-identity"):
        pool_single_requests([], "multilabel")


def test_a_single_seed_shows_just_the_mean(tmp_path: Path) -> None:
    rows = _rows(seeds=1)
    table = summary_table(rows)
    assert "±" not in table
    assert f"| jit | 2 | 1 | {rows[2]['retain']:.2f} |" in table
    write_markdown(_results(rows), tmp_path / "results.md")
    text = (tmp_path / "results.md").read_text()
    assert "synthfaces" in text and "retrained reference" in text
    assert text.index("## Summary") < text.index("## Runs")


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rows = _rows()
    rows[2]["unlearn_seconds"] = None  # one seed of jit without a time
    path = tmp_path / "tow_vs_time.png"
    plot_tow_vs_time(_results(rows), path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def _indices(faces: FaceData, requests: int = 3, seed: int = 0) -> SplitIndices:
    return split_indices(faces, make_splits(faces.identities, faces.keys, requests, seed))


def _model(faces: FaceData, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("test_resnet", faces.task("attributes").num_outputs, 32).eval()


def test_loss_signal_repeats_for_the_same_seed_and_model(small_faces: FaceData) -> None:
    rows = _indices(small_faces).forget[:7]
    model, other = _model(small_faces, 0), _model(small_faces, 1)
    args = (small_faces, "attributes", rows, 32, torch.device("cpu"))
    first = loss_signal(model, *args, augmentations=3, seed=5)
    assert first.shape == (3, len(rows))
    assert np.array_equal(first, loss_signal(model, *args, augmentations=3, seed=5))
    assert not np.array_equal(first, loss_signal(other, *args, augmentations=3, seed=5))
    assert not np.array_equal(first[0], first[1])  # each pass is a new augmented view


def test_rmia_sets_label_forget_and_cap_the_population(small_faces: FaceData) -> None:
    indices = _indices(small_faces)
    sets = rmia_sets(indices, max_population=50, seed=1)
    assert sets.candidates == [*indices.forget, *indices.val]
    assert sets.labels.tolist() == [1] * len(indices.forget) + [0] * len(indices.val)
    assert len(sets.population) == 50
    assert set(sets.population) <= set(indices.train) | set(indices.val)
    assert sets.population == rmia_sets(indices, max_population=50, seed=1).population


def test_privileged_request_loads_exactly_retain_and_forget(small_faces: FaceData) -> None:
    indices = _indices(small_faces)
    model = _model(small_faces, 0)
    request = support_request(small_faces, "attributes", indices, model, 32)
    full = privileged_request(request, small_faces, "attributes", indices, model, 32, seed=3)
    assert full.images is request.images and request.retain is None
    again = privileged_request(request, small_faces, "attributes", indices, model, 32, seed=3)
    assert full.retain is not None and again.retain is not None
    assert torch.equal(next(iter(full.retain))[0], next(iter(again.retain))[0])  # seeded shuffle
    targets = torch.from_numpy(small_faces.targets["attributes"])
    for loader, rows in ((full.retain, indices.retain), (full.forget, indices.forget)):
        assert loader is not None and loader.batch_size == 32
        assert sorted(loader.dataset.indices) == sorted(rows)  # type: ignore[attr-defined]
        seen = torch.cat([batch_targets for _, batch_targets in loader])
        assert seen.shape[0] == len(rows)
        assert torch.equal(seen.sum(dim=0), targets[rows].sum(dim=0))


def test_the_report_names_methods_that_ran_without_a_calibrated_config(tmp_path: Path) -> None:
    rows = _rows()
    write_markdown(_results(rows), tmp_path / "calibrated.md")
    assert "Not calibrated" not in (tmp_path / "calibrated.md").read_text()
    for row in rows:
        if row["method"] == "jit":
            row["config_calibrated"] = False
        elif row["method"] == "scrub":
            row["config_calibrated"] = True
    write_markdown(_results(rows), tmp_path / "fallback.md")
    text = (tmp_path / "fallback.md").read_text()
    assert "Not calibrated for this data set and architecture" in text
    assert text.rstrip().endswith(": jit.")
