"""Stranger: its probe, what an erasure pulls and what it pins, and the frozen-trunk shortcut."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.data.base import TaskSpec
from models.methods import PrepareData, UnlearnRequest, get_method
from models.methods.common import distill_kl
from models.methods.stranger import StrangerConfig
from models.methods.stranger_probe import (
    EXTRACTOR,
    WEIGHTS,
    Probe,
    extractor,
    fit_probe,
    stranger_features,
)
from models.metrics.scores import per_sample_loss
from models.nets import create_model, freeze_modules
from models.nets.pretrained import pretrained_weights
from models.nets.trunk import frozen_depth

MULTILABEL = TaskSpec("attributes", "multilabel", tuple(f"a{i}" for i in range(4)))
MULTICLASS = TaskSpec("age", "multiclass", tuple("abc"))
TRUNK = ["conv_stem", "bn1", *(f"blocks.{i}" for i in range(5))]


def _labels(task: TaskSpec, features: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    scores = features @ w
    return (scores > 0).float() if task.kind == "multilabel" else scores.argmax(1)


@pytest.mark.parametrize("task", [MULTILABEL, MULTICLASS], ids=lambda t: t.kind)
def test_the_probe_learns_a_linear_rule_it_was_not_shown_on_new_rows(task: TaskSpec) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(12, task.num_outputs, generator=gen)
    train, test = (torch.randn(n, 12, generator=gen) * 3 + 1 for n in (400, 200))
    probe = fit_probe(train, _labels(task, train, w), task, l2=1e-4)
    logits = probe.logits(test)
    predicted = (logits > 0).float() if task.kind == "multilabel" else logits.argmax(1)
    # chance would agree on about half (multi-label) or a third (three classes) of the rows
    assert (predicted == _labels(task, test, w)).float().mean() > 0.9
    assert probe.weights_sha256 == pretrained_weights(WEIGHTS, EXTRACTOR).sha256
    assert Probe(**probe.to_dict()).logits(test).equal(logits)


def _model(task: TaskSpec) -> nn.Module:
    torch.manual_seed(0)
    return create_model("test_resnet", task.num_outputs, 32).eval()


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _prepare_data(task: TaskSpec, val: int = 24) -> PrepareData:
    gen = torch.Generator().manual_seed(3)
    train = DataLoader(TensorDataset(_images(8, 1), torch.zeros(8, task.num_outputs)), 8)
    if task.kind == "multilabel":
        targets = torch.randint(0, 2, (val, task.num_outputs), generator=gen).float()
    else:
        targets = torch.randint(0, task.num_outputs, (val,), generator=gen)
        targets[: task.num_outputs] = torch.arange(task.num_outputs)  # every class present
    return PrepareData(train, task, val_images=_images(val, 2), val_targets=targets)


def _request(task: TaskSpec) -> UnlearnRequest:
    return UnlearnRequest(_images(2, 4), ["x", "y"], task)


@pytest.mark.parametrize("task", [MULTILABEL, MULTICLASS], ids=lambda t: t.kind)
def test_an_erasure_pulls_the_portraits_to_the_probe_and_holds_the_anchors(
    task: TaskSpec,
) -> None:
    method, data = get_method("stranger"), _prepare_data(task)
    cfg = StrangerConfig(steps=30, lr=3e-3, anchors=16, anchor_batch=16, views=2)
    artifacts = method.prepare(_model(task), data, cfg)
    anchors = artifacts["anchors"]
    assert anchors.dtype == torch.float16 and anchors.shape == (16, 3, 32, 32)
    net = extractor(32, torch.device("cpu"))
    logits = Probe(**artifacts["probe"]).logits(stranger_features(net, _request(task).images))
    targets = torch.sigmoid(logits) if task.kind == "multilabel" else logits.argmax(1)

    def portrait_loss(model: nn.Module) -> float:
        with torch.no_grad():
            return float(per_sample_loss(task.kind, model(_request(task).images), targets).mean())

    def anchor_drift(model: nn.Module) -> float:
        with torch.no_grad():
            x = anchors.float()
            return float(distill_kl(task.kind, model(x), original(x), 1.0, "sigmoid"))

    original = _model(task)
    pinned = method.unlearn(_model(task), _request(task), artifacts, cfg)
    loose = method.unlearn(_model(task), _request(task), artifacts, replace(cfg, anchor_weight=0))
    assert portrait_loss(pinned) < 0.8 * portrait_loss(original)
    assert anchor_drift(pinned) < 0.5 * anchor_drift(loose)


def test_a_probe_fitted_on_other_extractor_weights_is_refused() -> None:
    method, data = get_method("stranger"), _prepare_data(MULTILABEL)
    cfg = StrangerConfig(steps=1, anchors=4, anchor_batch=4, views=0)
    artifacts = method.prepare(_model(MULTILABEL), data, cfg)
    artifacts["probe"]["weights_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="other extractor weights"):
        method.unlearn(_model(MULTILABEL), _request(MULTILABEL), artifacts, cfg)


def test_it_needs_val_images_at_onboarding() -> None:
    data = _prepare_data(MULTILABEL)
    data.val_images = None
    with pytest.raises(ValueError, match="VAL"):
        get_method("stranger").prepare(_model(MULTILABEL), data, StrangerConfig())


def _frozen_lite0(task: TaskSpec) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", task.num_outputs, 64, pretrained="imagenet")
    return freeze_modules(model, TRUNK).eval()


def test_frozen_depth_reads_the_trunk_from_the_parameters() -> None:
    assert frozen_depth(_frozen_lite0(MULTILABEL)) == 5
    assert frozen_depth(create_model("tf_efficientnet_lite0", 4, 64)) is None
    assert frozen_depth(_model(MULTILABEL)) is None


def _lite0_erasure(task: TaskSpec) -> tuple[UnlearnRequest, StrangerConfig, dict]:
    """A 64 px request, a short config and artifacts prepared on the frozen Lite0."""
    data = _prepare_data(task)
    data.val_images = torch.nn.functional.interpolate(data.val_images, size=64)
    request = UnlearnRequest(torch.nn.functional.interpolate(_images(2, 4), size=64), ["x"], task)
    cfg = StrangerConfig(steps=5, lr=1e-3, anchors=8, anchor_batch=4, views=1)
    return request, cfg, get_method("stranger").prepare(_frozen_lite0(task), data, cfg)


def test_running_a_frozen_trunk_once_gives_the_model_a_whole_forward_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task, method = MULTILABEL, get_method("stranger")
    request, cfg, artifacts = _lite0_erasure(task)
    shortcut = method.unlearn(_frozen_lite0(task), copy.copy(request), artifacts, cfg)
    monkeypatch.setattr("models.methods.stranger.frozen_depth", lambda model: None)
    whole = method.unlearn(_frozen_lite0(task), copy.copy(request), artifacts, cfg)
    moved = 0
    for (name, a), b, c in zip(
        shortcut.named_parameters(),
        whole.parameters(),
        _frozen_lite0(task).parameters(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
        moved += int(not torch.equal(a, c))
    assert moved > 0


def test_held_stages_stay_where_they_were_and_join_the_trunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task, method = MULTILABEL, get_method("stranger")
    request, cfg, artifacts = _lite0_erasure(task)
    depths: list[int | None] = []

    def recorded(model: nn.Module) -> int | None:
        depths.append(frozen_depth(model))
        return depths[-1]

    monkeypatch.setattr("models.methods.stranger.frozen_depth", recorded)
    held = replace(cfg, hold=("blocks.5", "blocks.6"))
    erased = method.unlearn(_frozen_lite0(task), copy.copy(request), artifacts, held)
    assert depths == [7]  # the held stages ran once with the trunk
    moved = {
        n
        for (n, a), b in zip(
            erased.named_parameters(), _frozen_lite0(task).parameters(), strict=True
        )
        if not torch.equal(a, b)
    }
    assert moved and all(n.startswith(("conv_head", "bn2", "classifier")) for n in moved)
    # trainable again afterwards, as the model came
    assert all(p.requires_grad for n, p in erased.named_parameters() if n.startswith("blocks.6"))
    with pytest.raises(ValueError, match="names no parameter"):
        method.unlearn(_frozen_lite0(task), request, artifacts, replace(cfg, hold=("block.5",)))


def test_every_batch_size_the_service_forms_runs_a_pinned_pretrained_config() -> None:
    from app.settings import Settings
    from models.methods import resolve_config
    from models.methods.registry import is_calibrated

    sizes = range(1, Settings.model_fields["batch_max_size"].default + 1)
    pins = {n: resolve_config("stranger", "synthfaces", "tf_efficientnet_lite0", n) for n in sizes}
    assert all(is_calibrated("stranger", "synthfaces", "tf_efficientnet_lite0", n) for n in sizes)
    # the bands of configs/stranger.toml: one portrait, 2-7 (the whole tail moves), 8-16
    assert (tuple(pins[1].hold), pins[1].lr) == (("blocks.5",), 7e-4)
    assert {(tuple(pins[n].hold), pins[n].lr) for n in range(2, 8)} == {((), 5e-4)}
    assert {(tuple(pins[n].hold), pins[n].lr) for n in range(8, 17)} == {(("blocks.5",), 2e-3)}
