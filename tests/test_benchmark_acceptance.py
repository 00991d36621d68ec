"""Acceptance runs (minutes, `make test-slow`): the scratch preset's JiT case and the pretrained
preset's memorization bar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.cli import main


@pytest.mark.slow
def test_memorization_gap_stable_test_score_and_jit_moves_towards_retrain(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    main(
        [
            "benchmark",
            "--requests",
            "5",
            "--seeds",
            "0",
            "--methods",
            "jit",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    original, retrain, jit = rows["original"], rows["retrain"], rows["jit"]
    assert original["forget"] >= retrain["forget"] + 5
    assert abs(original["test"] - retrain["test"]) <= 2
    assert abs(jit["forget"] - retrain["forget"]) < abs(original["forget"] - retrain["forget"])


@pytest.mark.slow
@pytest.mark.parametrize("requests", [1, 5, 10])
def test_the_pretrained_recipe_memorizes_and_generalizes(tmp_path: Path, requests: int) -> None:
    """The pretrained preset's bar: the original beats the retrained model on the forget
    identities by ≥ 8 points, with test scores within 2 (about 3 minutes a size)."""
    out = tmp_path / "bench"
    argv = ["benchmark", "--preset", "pretrained", "--requests", str(requests), "--seeds", "0"]
    main([*argv, "--methods", "jit", "--no-rmia", "--out", str(out), "--quiet"])
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    original, retrain = rows["original"], rows["retrain"]
    assert original["forget"] >= retrain["forget"] + 8
    assert abs(original["test"] - retrain["test"]) <= 2
