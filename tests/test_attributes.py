"""Attribute unlearning: the LEACE eraser, its exact folding into the head, and attribute labels."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from models.attributes.labels import attribute_labels
from models.attributes.leace import (
    eraser_from_dict,
    eraser_to_dict,
    fit_eraser,
    fold_into_head,
    served,
)
from models.attributes.mi_detach import MIDetachConfig, mi_detach, mi_estimate, ramp
from models.attributes.probes import (
    ProbeSet,
    identity_interval,
    linear_probe,
    mlp_probe,
    shuffled,
)
from models.attributes.report import write_report
from models.cli import main as ml_main
from models.data.base import FaceData
from models.nets import create_model, features_and_logits
from models.train.checkpoint import load_checkpoint


def _features(
    n: int = 600, d: int = 16, seed: int = 0
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Features that encode a binary and a three-class attribute linearly, with correlated noise."""
    rng = np.random.default_rng(seed)
    binary = rng.integers(0, 2, n)
    three = rng.integers(0, 3, n)
    mix = rng.normal(size=(d, d))
    h = rng.normal(size=(n, d)) @ mix
    h[:, 0] += 8.0 * binary
    h[:, 1] += 6.0 * three - 1.0 * binary
    return torch.from_numpy(h), binary, three


def _coded(binary: np.ndarray, three: np.ndarray) -> list[torch.Tensor]:
    return [
        torch.from_numpy(binary).to(torch.float64).unsqueeze(1),
        nn.functional.one_hot(torch.from_numpy(three), 3).to(torch.float64),
    ]


def _probe(h: torch.Tensor, z: np.ndarray) -> float:
    """Balanced accuracy of a logistic regression fitted and scored on `h` (the fit set)."""
    x = h.numpy()
    return float(balanced_accuracy_score(z, LogisticRegression(max_iter=2000).fit(x, z).predict(x)))


def test_the_folded_head_equals_the_eraser_then_the_old_head() -> None:
    h, binary, three = _features()
    eraser = fit_eraser(h, _coded(binary, three))
    torch.manual_seed(0)
    head = nn.Linear(h.shape[1], 5)
    folded = copy.deepcopy(head)
    fold_into_head(folded, eraser)
    x = h.to(torch.float32)
    with torch.no_grad():
        expected = head(eraser(h).to(torch.float32))
        torch.testing.assert_close(folded(x), expected, atol=1e-4, rtol=1e-4)
        assert (folded(x) - head(x)).abs().max() > 0.1  # the fold changed the head
    assert folded.weight.shape == head.weight.shape and folded.bias.shape == head.bias.shape


def test_class_conditional_means_coincide_after_erasure() -> None:
    h, binary, three = _features()
    erased = fit_eraser(h, _coded(binary, three))(h)
    scale = h.std(0).max().item()
    for z in (binary, three):
        before = [h[torch.from_numpy(z == c)].mean(0) for c in np.unique(z)]
        after = [erased[torch.from_numpy(z == c)].mean(0) for c in np.unique(z)]
        assert max((m - before[0]).abs().max().item() for m in before) > 0.5
        assert max((m - after[0]).abs().max().item() for m in after) < 1e-6 * scale


def test_a_linear_probe_falls_to_chance_on_the_fit_set() -> None:
    h, binary, three = _features()
    erased = fit_eraser(h, _coded(binary, three))(h)
    assert _probe(h, binary) > 0.8 and _probe(h, three) > 0.6
    assert _probe(erased, binary) < 0.56 and _probe(erased, three) < 0.40


def test_erasing_one_attribute_leaves_another_readable() -> None:
    h, binary, three = _features()
    erased = fit_eraser(h, _coded(binary, three)[:1])(h)
    assert _probe(erased, binary) < 0.56
    assert _probe(erased, three) > 0.6


def test_a_network_erased_through_its_head_keeps_its_interface(small_faces: FaceData) -> None:
    torch.manual_seed(0)
    model = create_model("test_resnet", 8, 32).eval()
    labels = attribute_labels(small_faces, "Eyeglasses")
    rows = list(range(len(small_faces.keys)))
    images = torch.stack([small_faces.load_image(r) for r in rows]).float() / 255
    with torch.no_grad():
        features, _ = features_and_logits(model, images)
    eraser = fit_eraser(features.double(), [labels.coded()])
    erased = copy.deepcopy(model)
    fold_into_head(erased.get_classifier(), eraser)
    assert {k: v.shape for k, v in erased.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    with torch.no_grad():
        expected = model.get_classifier()(eraser(features.double()).float())
        torch.testing.assert_close(erased(images), expected, atol=1e-4, rtol=1e-4)


def test_attribute_labels_come_from_a_label_or_a_multiclass_task(small_faces: FaceData) -> None:
    glasses = attribute_labels(small_faces, "Eyeglasses")
    spec = small_faces.task("attributes")
    column = small_faces.targets["attributes"][:, spec.labels.index("Eyeglasses")]
    assert glasses.classes == 2 and glasses.source == "attributes"
    assert np.array_equal(glasses.values, column.astype(np.int64))
    assert glasses.coded().shape == (len(column), 1)
    age = attribute_labels(small_faces, "age")
    assert age.classes == 8 and age.source == "age"
    coded = age.coded()
    assert coded.shape == (len(age.values), 7) and coded.sum(1).le(1).all()
    assert torch.equal(
        coded.argmax(1)[coded.sum(1) == 1], torch.from_numpy(age.values)[coded.sum(1) == 1]
    )
    with pytest.raises(ValueError, match=r"no attribute 'Spectacles'.*Eyeglasses"):
        attribute_labels(small_faces, "Spectacles")


def test_no_attribute_is_refused() -> None:
    h, _, _ = _features(n=20)
    with pytest.raises(ValueError, match="no attribute"):
        fit_eraser(h, [])


def _identities(identities: int, seed: int) -> ProbeSet:
    """Four images per identity; a per-identity binary attribute written into two dimensions."""
    rng = np.random.default_rng(seed)
    attribute = rng.integers(0, 2, identities)
    groups = np.repeat(np.arange(identities) + 10_000 * seed, 4)
    labels = attribute[groups - 10_000 * seed]
    features = rng.normal(size=(len(groups), 12))
    features[:, :2] += 1.5 * labels[:, None]
    return ProbeSet(features, labels, groups)


def test_probes_read_an_encoded_attribute_and_not_a_shuffled_one() -> None:
    train, test = _identities(150, seed=1), _identities(150, seed=2)
    linear, mlp = linear_probe(train, test), mlp_probe(train, test)
    assert linear.balanced_accuracy > 0.8 and mlp.balanced_accuracy > 0.75
    assert linear.low <= linear.balanced_accuracy <= linear.high and linear.chance == 0.5
    control = linear_probe(shuffled(train), shuffled(test))
    assert abs(control.balanced_accuracy - 0.5) < 0.06


def test_leace_fitted_on_other_identities_leaves_fresh_probes_near_chance() -> None:
    fit, train, test = (_identities(300, seed=s) for s in (3, 4, 5))
    eraser = fit_eraser(torch.from_numpy(fit.features), [torch.from_numpy(fit.labels).double()])

    def erased(side: ProbeSet) -> ProbeSet:
        features = eraser(torch.from_numpy(side.features)).numpy()
        return ProbeSet(features, side.labels, side.groups)

    assert linear_probe(train, test).balanced_accuracy > 0.8
    assert linear_probe(erased(train), erased(test)).balanced_accuracy < 0.58


def test_the_interval_resamples_identities() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    groups = np.array([1, 1, 2, 2, 3, 3])
    assert identity_interval(labels, labels, groups) == (1.0, 1.0)
    low, high = identity_interval(labels, np.zeros(6, dtype=int), groups)
    assert low == high == 0.5  # every resample with both classes predicts one class


def test_a_probe_needs_two_classes_to_learn_from() -> None:
    side = _identities(20, seed=6)
    one = ProbeSet(side.features, np.zeros_like(side.labels), side.groups)
    with pytest.raises(ValueError, match="single class"):
        linear_probe(one, side)


def _erase_cli(
    checkpoint: Path, out: Path, attribute: str, capsys: pytest.CaptureFixture[str]
) -> dict:
    ml_main(
        ["erase-attribute", "--checkpoint", str(checkpoint), "--attribute", attribute,
         "--probe-identities", "60", "--no-mlp", "--out", str(out)]
    )  # fmt: skip
    return json.loads(capsys.readouterr().out)


def test_the_cli_erases_an_attribute_folded_into_the_head_and_audits_it(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "erased.pth"
    report = _erase_cli(tiny_checkpoint, out, "age", capsys)
    parent, child = load_checkpoint(tiny_checkpoint), load_checkpoint(out)
    assert report["parent_sha256"] == parent.sha256 and report["sha256"] == child.sha256
    erasure = report["erasure"]
    assert erasure["attributes"] == ["age"] and erasure["guarantee"] == "linear"
    assert erasure["rank"] <= 7 and sum(erasure["class_counts"]["age"]) == erasure["fit_images"]
    (kept,) = child.config["erased_attributes"]
    assert {k: v for k, v in kept.items() if k != "eraser"} == erasure
    assert len(kept["eraser"]["proj_left"]) == 96  # test_resnet's pre-logit width
    changed = [
        k for k in parent.state_dict if not torch.equal(parent.state_dict[k], child.state_dict[k])
    ]
    assert changed and all(k.startswith("fc.") for k in changed)  # only the head moved
    for side in ("before", "after"):
        (audit,) = report[side]
        assert audit["attribute"] == "age" and audit["mlp"] is None
        assert 0 <= audit["linear"]["balanced_accuracy"] <= 1
    assert report["probe_images"]["train"] > 0 and report["probe_images"]["test"] > 0
    assert report["task_score"]["after"] > report["task_score"]["before"] - 20


def test_an_erased_attribute_is_audited_on_the_served_feature_and_not_erased_twice(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    once = tmp_path / "once.pth"
    first = _erase_cli(tiny_checkpoint, once, "age", capsys)
    (after,) = first["after"]
    # LEACE leaves no linear read-out above chance on the served feature (probe-test is fresh)
    assert after["linear"]["balanced_accuracy"] < after["chance"] + 0.1
    with pytest.raises(SystemExit, match="already erased"):
        _erase_cli(once, tmp_path / "twice.pth", "age", capsys)


def test_a_later_eraser_fitted_for_every_attribute_keeps_the_served_feature_guarded() -> None:
    h, binary, three = _features()
    first = fit_eraser(h, _coded(binary, three)[:1])
    second = fit_eraser(h, _coded(binary, three))
    features = served(h, [first, second])
    torch.testing.assert_close(features, first(second(h)))
    scale = h.std(0).max().item()
    for z in (binary, three):
        means = [features[torch.from_numpy(z == c)].mean(0) for c in np.unique(z)]
        assert max((m - means[0]).abs().max().item() for m in means) < 1e-6 * scale
    assert torch.equal(eraser_from_dict(eraser_to_dict(second)).proj_left, second.proj_left)


def test_the_cli_refuses_to_erase_the_task_or_an_unknown_attribute(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task_output = load_checkpoint(tiny_checkpoint).task["labels"][0]
    for attribute, message in (
        (task_output, "is the model's task"),
        ("Spectacles", "no attribute"),
    ):
        with pytest.raises(SystemExit, match=message):
            _erase_cli(tiny_checkpoint, tmp_path / "x.pth", attribute, capsys)
    assert not (tmp_path / "x.pth").exists()


def _row(seed: int, leakage: float, drop: float) -> dict:
    audit = {"balanced_accuracy": 0.5 + leakage}
    side = {"linear": audit, "mlp": None, "control": {"balanced_accuracy": 0.5}}
    return {
        "seed": seed, "attribute": "Eyeglasses", "method": "leace", "linear_leakage": leakage,
        "mlp_leakage": None, "task_drop": drop, "before": side, "after": side,
    }  # fmt: skip


def test_the_report_states_means_intervals_and_the_bar(tmp_path: Path) -> None:
    config = {"dataset": {"name": "synthfaces"}, "task": "age", "arch": "a", "image_size": 8}
    met = {"config": {**config, "seeds": [1, 2]}, "rows": [_row(1, 0.01, 0.5), _row(2, 0.03, 0.7)]}
    write_report(met, tmp_path / "met.md")
    line = (tmp_path / "met.md").read_text().splitlines()[-1]
    # mean 0.02, standard error 0.01, t(0.975, 1 df) = 12.706: 0.02 ± 0.127
    assert "| 0.020 [-0.107, 0.147] |" in line and "| 0.010, 0.030 |" in line
    assert line.endswith("| met (linear ≤ 0.03, drop ≤ 1.0) |")
    missed = {"config": {**config, "seeds": [1]}, "rows": [_row(1, 0.01, 1.5)]}
    write_report(missed, tmp_path / "missed.md")
    assert "missed (linear ≤ 0.03, drop ≤ 1.0)" in (tmp_path / "missed.md").read_text()


def test_the_attribute_benchmark_writes_rows_a_report_and_a_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ml_main(
        ["attribute-benchmark", "--synth-identities", "40", "--image-size", "32", "--epochs", "1",
         "--seeds", "1", "--attributes", "Eyeglasses", "--fit-identities", "60",
         "--probe-identities", "60", "--no-mlp", "--out", str(tmp_path)]
    )  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    (row,) = results["rows"]
    assert row["attribute"] == "Eyeglasses" and row["method"] == "leace" and row["seed"] == 1
    assert row["linear_leakage"] == pytest.approx(
        row["after"]["linear"]["balanced_accuracy"] - row["floor"]
    )
    assert row["task_drop"] == pytest.approx(row["task_before"] - row["task_after"])
    assert row["rank"] == 1 and row["fit_images"] > 0 and row["seconds"] > 0
    assert "| leace | Eyeglasses | 1 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "leakage_vs_task.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="unknown attribute methods"):
        ml_main(["attribute-benchmark", "--methods", "inlp", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=r"unknown mi_detach options \['lambda'\]"):
        ml_main(
            ["attribute-benchmark", "--methods", "mi_detach", "--set", "mi_detach.lambda=1",
             "--out", str(tmp_path / "x")]
        )  # fmt: skip


def test_the_mi_estimates_by_hand() -> None:
    log_q = torch.log(torch.tensor([[0.7, 0.3], [0.2, 0.8]]))
    z, prior = torch.tensor([0, 1]), torch.tensor([0.5, 0.5])
    own = (math.log(0.7) + math.log(0.8)) / 2
    cross = ((math.log(0.7) + math.log(0.3)) / 2 + (math.log(0.2) + math.log(0.8)) / 2) / 2
    assert mi_estimate("club_cat", log_q, z, prior).item() == pytest.approx(own - cross)
    assert mi_estimate("ba_adv", log_q, z, prior).item() == pytest.approx(math.log(2) + own)
    with pytest.raises(ValueError, match="unknown MI estimator"):
        mi_estimate("mine", log_q, z, prior)  # type: ignore[arg-type]


def test_the_weight_ramps_up() -> None:
    assert ramp("linear", 0.05, 0.1) == pytest.approx(0.5) and ramp("linear", 0.5, 0.1) == 1
    assert ramp("dann", 0.0, 0.1) == 0 and ramp("dann", 1.0, 0.1) == pytest.approx(1, abs=1e-4)
    assert ramp("const", 0.0, 0.1) == 1


def test_mi_detach_fine_tunes_the_network_and_leaves_frozen_parts_frozen(
    small_faces: FaceData,
) -> None:
    torch.manual_seed(0)
    model = create_model("test_resnet", small_faces.task("age").num_outputs, 32)
    stem = next(model.conv1.parameters())
    stem.requires_grad_(False)
    before = [p.detach().clone() for p in model.conv1.parameters()]
    labels = attribute_labels(small_faces, "Eyeglasses")
    rows = list(range(64))
    cfg = MIDetachConfig(epochs=1, batch_size=16, q_pretrain_epochs=1, q_hidden=16)
    record = mi_detach(model, small_faces, "age", rows, labels, 32, torch.device("cpu"), cfg)
    assert record["method"] == "mi_detach" and record["fit_images"] == 64
    assert record["config"]["estimator"] == "club_cat" and record["last_estimate"] is not None
    assert not stem.requires_grad and model.fc.weight.requires_grad
    assert torch.equal(stem, before[0])
    assert not all(torch.equal(p, b) for p, b in zip(model.conv1.parameters(), before, strict=True))
    last = copy.deepcopy(model)
    mi_detach(
        last, small_faces, "age", rows, labels, 32, torch.device("cpu"),
        MIDetachConfig(epochs=1, batch_size=16, q_hidden=16, trainable="last_stage"),
    )  # fmt: skip
    assert torch.equal(last.layer3[0].conv1.weight, model.layer3[0].conv1.weight)
    assert not torch.equal(last.layer4[0].conv1.weight, model.layer4[0].conv1.weight)
