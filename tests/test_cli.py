"""The `lethe` CLI end to end on a tiny synthfaces setup: train, unlearn, evaluate, benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.cli import main
from models.metrics.mia import RMIA_NAME
from models.train.checkpoint import load_checkpoint

TINY = ["--synth-identities", "40", "--image-size", "32", "--epochs", "2", "--arch", "test_resnet"]
TINY_RMIA = ["--rmia-augs", "2", "--rmia-population", "100"]


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def test_train_unlearn_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original, retrain, unlearned = (
        tmp_path / "original.pth",
        tmp_path / "retrain.pth",
        tmp_path / "jit.pth",
    )
    main(["train", *TINY, "--requests", "3", "--seed", "1", "--out", str(original)])
    trained = _json(capsys)
    assert len(trained["forget_identities"]) == 3
    assert load_checkpoint(original).sha256 == trained["sha256"]
    main(
        [
            "train",
            *TINY,
            "--requests",
            "3",
            "--seed",
            "1",
            "--role",
            "retrain",
            "--out",
            str(retrain),
        ]
    )
    capsys.readouterr()

    main(
        [
            "unlearn",
            "--checkpoint",
            str(original),
            "--method",
            "jit",
            "--set",
            "lr=0.1",
            "--out",
            str(unlearned),
        ]
    )
    result = _json(capsys)
    assert result["parent_sha256"] == trained["sha256"]
    assert result["method_config"]["lr"] == 0.1
    assert sorted(result["identities"]) == sorted(trained["forget_identities"])
    lineage = load_checkpoint(unlearned).config["unlearning"]
    assert lineage[-1]["parent_sha256"] == trained["sha256"]

    main(["evaluate", "--checkpoint", str(unlearned), "--reference", str(retrain)])
    evaluation = _json(capsys)
    for key in ("retain", "forget", "test", "mia_auc", "mia_acc", "tow"):
        assert 0 <= evaluation[key] <= 100
    assert evaluation["reference"]["forget"] != evaluation["forget"]


def test_benchmark_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    main(
        [
            "benchmark",
            *TINY,
            "--requests",
            "2",
            "--seeds",
            "0,1",
            "--methods",
            "jit",
            *TINY_RMIA,
            "--out",
            str(out),
            "--quiet",
        ]
    )
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["requests"] == [2] and results["config"]["seeds"] == [0, 1]
    assert results["config"]["mia"]["rmia"] == RMIA_NAME
    assert results["config"]["mia"]["rmia_augmentations"] == 2
    rows = results["rows"]
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("original", 0),
        ("retrain", 0),
        ("jit", 0),
        ("original", 1),
        ("retrain", 1),
        ("jit", 1),
    ]
    keys = {
        "method",
        "seed",
        "requests",
        "retain",
        "forget",
        "test",
        "mia_auc",
        "mia_acc",
        "tow",
        "unlearn_seconds",
        "rmia_auc",
        "rmia_tpr_at_0.01pct_fpr",
    }
    assert all(keys <= set(row) for row in rows)
    assert all(row["tow"] == 100.0 for row in rows if row["method"] == "retrain")
    assert all(row["unlearn_seconds"] > 0 for row in rows if row["method"] == "jit")
    for row in rows:
        if row["method"] == "retrain":
            assert row["rmia_auc"] is None and row["rmia_tpr_at_0.01pct_fpr"] is None
        else:
            assert 0 <= row["rmia_auc"] <= 100 and 0 <= row["rmia_tpr_at_0.01pct_fpr"] <= 100
    table = (out / "results.md").read_text()
    summary = table[table.index("## Summary") : table.index("## Forgetting")]
    assert "| method | requests | seeds | retain |" in summary
    assert summary.count("| jit | 2 | 2 |") == 1 and " ± " in summary
    runs = table[table.index("## Runs") :]
    assert runs.count("| jit |") == 2  # one per seed
    assert "| jit | original | 2 | 2 |" in table  # the paired difference against the original
    assert (out / "tow_vs_time.png").read_bytes().startswith(b"\x89PNG")
    assert len(results["config"]["runs"][0]["splits_sha256"]) == 64


def test_unknown_method_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", *TINY, "--methods", "nope", "--out", str(tmp_path / "b")])
    assert exc.value.code == 2
    assert "unknown unlearning method" in capsys.readouterr().err
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_missing_data_root_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit):
        main(["benchmark", "--dataset", "celeba", "--out", str(tmp_path / "b")])
    assert "--data-root" in capsys.readouterr().err


def test_benchmark_runs_the_multiclass_age_task(tmp_path: Path) -> None:
    out = tmp_path / "age"
    argv = ["benchmark", *TINY, "--task", "age", "--requests", "2", "--no-rmia", "--out", str(out)]
    argv.append("--quiet")
    main(argv)
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["task"] == "age"
    assert [r["method"] for r in results["rows"]] == ["original", "retrain", "jit"]
    assert all(0 <= r["test"] <= 100 for r in results["rows"])
    assert results["config"]["mia"]["rmia"] is None
    assert all(r["rmia_auc"] is None for r in results["rows"])


def test_single_identity_requests_share_one_reference_pair(tmp_path: Path) -> None:
    out = tmp_path / "one"
    argv = ["benchmark", *TINY, "--requests", "1", "--single-identities", "3", *TINY_RMIA]
    main([*argv, "--methods", "jit,neggrad", "--out", str(out), "--quiet"])
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["single_identities"] == 3
    assert [r["method"] for r in results["rows"]] == ["original", "retrain", "jit", "neggrad"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "original_1x3_0.pth",
        "retrain_1x3_0.pth",
    ]
    assert len(load_checkpoint(out / "checkpoints" / "original_1x3_0.pth").splits["forget"]) == 3
    rows = {r["method"]: r for r in results["rows"]}
    assert all(r["rmia_auc"] is None for r in results["rows"])  # one target model per part
    assert rows["jit"]["unlearn_seconds"] > 0 and rows["jit"]["requests"] == 1
    assert rows["jit"]["forget"] != rows["original"]["forget"]
    assert "N = 1 runs 3 one-identity requests per seed" in (out / "results.md").read_text()


def test_benchmark_prepares_and_runs_every_method(tmp_path: Path) -> None:
    out = tmp_path / "all"
    argv = ["benchmark", *TINY, "--requests", "2", "--methods", "all", *TINY_RMIA, "--quiet"]
    # each method also runs on the retrained reference for RMIA: shorten the slowest two
    quick = ["--set", "metaunlearn.meta_epochs=1", "--set", "pgu.epochs=1"]
    quick += ["--set", "stranger.steps=5"]
    main([*argv, *quick, "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in results["rows"]}
    assert set(results["config"]["method_needs"]) == set(rows) - {"original", "retrain"}
    assert all(rows[m]["rmia_auc"] is not None for m in results["config"]["method_needs"])
    assert {"jit", "metaunlearn", "neggrad", "pgu", "ssd", "stranger"} <= set(rows)
    # prepared at "onboarding" before erasure
    for name in ("metaunlearn", "pgu", "ssd", "stranger"):
        assert rows[name]["prepare_seconds"] > 0
    assert rows["jit"]["prepare_seconds"] is None
