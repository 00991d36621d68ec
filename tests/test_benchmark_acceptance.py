"""The foundation acceptance run: synthfaces, attributes, 5 requests, seed 0, JiT (minutes)."""

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
