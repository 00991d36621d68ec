"""SSD, PGU and NegGrad: what each may change, prepared artifacts, both task kinds."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.data import transforms
from models.data.base import FaceData, TaskSpec
from models.data.torch_dataset import FaceSubset
from models.methods import PrepareData, UnlearnRequest, get_method, resolve_config
from models.methods.common import task_loss
from models.methods.neggrad import NegGradConfig
from models.methods.pgu import (
    ENTROPY_WEIGHT,
    PGUConfig,
    input_covariances,
    layers,
    negative_entropy,
    projector,
    reverse_multilabel,
)
from models.methods.ssd import SSDConfig, importances
from models.nets import create_model, data_config

MULTILABEL = TaskSpec("attributes", "multilabel", tuple(f"a{i}" for i in range(5)))
MULTICLASS = TaskSpec("age", "multiclass", tuple("abcd"))
TASKS = [MULTILABEL, MULTICLASS]


def _model(task: TaskSpec) -> nn.Module:
    torch.manual_seed(0)
    return create_model("test_resnet", task.num_outputs, 32).eval()


def _data(task: TaskSpec, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=gen)
    if task.kind == "multilabel":
        return images, torch.randint(0, 2, (n, task.num_outputs), generator=gen).float()
    return images, torch.randint(0, task.num_outputs, (n,), generator=gen)


def _prepare_data(task: TaskSpec, n: int = 16, batch: int = 8) -> PrepareData:
    images, targets = _data(task, n, seed=1)
    loader = DataLoader(TensorDataset(images, targets), batch_size=batch)
    return PrepareData(loader, task, train_augmented=loader)


def _request(task: TaskSpec, n: int = 4) -> UnlearnRequest:
    images, targets = _data(task, n, seed=2)
    return UnlearnRequest(images, ["x"] * n, task, targets=targets)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- SSD ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.kind)
def test_ssd_dampens_exactly_the_selected_entries(task: TaskSpec) -> None:
    model, request = _model(task), _request(task)
    cfg = SSDConfig(dampening_constant=0.5, selection_weighting=1.0, targets="given")
    method = get_method("ssd")
    artifacts = method.prepare(model, _prepare_data(task), cfg)
    before = _state(model)
    support = importances(copy.deepcopy(model), task.kind, [(request.images, request.targets)])
    method.unlearn(model, request, artifacts, cfg)
    after, selected = _state(model), 0
    for name, old in before.items():
        new = after[name]
        if name not in support:  # buffers
            assert torch.equal(new, old), name
            continue
        oimp = artifacts["importances"][name]
        mask = support[name] > cfg.selection_weighting * oimp
        factor = (cfg.dampening_constant * oimp / support[name]).clamp(max=1.0)
        assert torch.equal(new[~mask], old[~mask]), name
        assert torch.equal(new[mask], old[mask] * factor[mask]), name
        assert torch.all(new[mask].abs() <= old[mask].abs()), name
        selected += int(mask.sum())
    assert selected > 0


def test_ssd_with_an_infinite_selection_weighting_changes_nothing() -> None:
    # Any finite α still selects entries with I_D = 0 (units dead on the training data, or
    # batch-mean gradients that cancel); α = ∞ selects nothing, since ∞·0 is nan.
    model, request = _model(MULTILABEL), _request(MULTILABEL)
    cfg = SSDConfig(selection_weighting=float("inf"), targets="given")
    method = get_method("ssd")
    artifacts = method.prepare(model, _prepare_data(MULTILABEL), cfg)
    before = _state(model)
    method.unlearn(model, request, artifacts, cfg)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.kind)
def test_ssd_importances_match_a_manual_computation(task: TaskSpec) -> None:
    model = _model(task)
    data = _prepare_data(task, n=8, batch=4)
    in_order = SSDConfig(batch_size=4, shuffle_seed=None)  # the math, in the loader's order
    prepared = get_method("ssd").prepare(model, data, in_order)["importances"]
    manual = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for images, targets in data.train:
        model.zero_grad()
        logits = model(images)
        if task.kind == "multilabel":
            loss = nn.functional.binary_cross_entropy_with_logits(logits, targets)
        else:
            loss = nn.functional.cross_entropy(logits, targets)
        loss.backward()
        for n, p in model.named_parameters():
            manual[n] += p.grad**2 / 2
    assert prepared.keys() == manual.keys()
    for name, value in manual.items():
        torch.testing.assert_close(prepared[name], value, rtol=1e-5, atol=1e-12)
    # The loader's own batching does not matter: preparation regroups into cfg.batch_size.
    regrouped = dataclasses.replace(data, train=DataLoader(data.train.dataset, batch_size=3))
    again = get_method("ssd").prepare(model, regrouped, in_order)["importances"]
    for name, value in prepared.items():
        torch.testing.assert_close(again[name], value, rtol=1e-5, atol=1e-12)


def _face_loader(data: FaceData, rows: list[int]) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    subset = FaceSubset(data, rows, "attributes", lambda x: x.float() / 255)
    return DataLoader(subset, batch_size=16)


def test_ssd_importances_do_not_depend_on_the_order_of_train(small_faces: FaceData) -> None:
    task = small_faces.task("attributes")
    torch.manual_seed(0)
    model = create_model("test_resnet", task.num_outputs, 32).eval()
    rows = list(range(0, len(small_faces.keys), 2))  # in data-set order: identities clustered
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(5))
    permuted = [rows[k] for k in order.tolist()]
    cfg = SSDConfig(batch_size=32, shuffle_seed=3)
    ssd = get_method("ssd")
    first = ssd.prepare(model, PrepareData(_face_loader(small_faces, rows), task), cfg)
    second = ssd.prepare(model, PrepareData(_face_loader(small_faces, permuted), task), cfg)
    for name, value in first["importances"].items():
        assert torch.equal(second["importances"][name], value), name
    # and the seeded order is not the listed one: in data-set order the importances differ
    listed = dataclasses.replace(cfg, shuffle_seed=None)
    clustered = ssd.prepare(model, PrepareData(_face_loader(small_faces, rows), task), listed)
    assert any(
        not torch.allclose(clustered["importances"][n], v) for n, v in first["importances"].items()
    )


# --- PGU ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pgu_runs() -> dict[str, object]:
    """A multi-label model before and after PGU, clean and reference, in float64."""
    # float64, so that rounding W + ΔW does not swamp a small ΔW·P
    model, request = _model(MULTILABEL).double(), _request(MULTILABEL)
    request.images = request.images.double()
    images, targets = _data(MULTILABEL, 16, seed=1)
    data = PrepareData(DataLoader(TensorDataset(images.double(), targets), 8), MULTILABEL)
    cfg = PGUConfig(lr=0.5, epochs=2, gamma=0.9, targets="given", covariance_images="test")
    artifacts = get_method("pgu").prepare(model, data, cfg)
    retain = {
        name: artifacts["covariances"][name].double() - support
        for name, support in input_covariances(model, [request.images]).items()
    }
    after = {}
    for quirk in (False, True):
        variant = dataclasses.replace(cfg, reference_multilabel_indexing=quirk)
        after[quirk] = get_method("pgu").unlearn(copy.deepcopy(model), request, artifacts, variant)
    return {
        "before": _state(model),
        "after": after,
        "layers": list(layers(model)),
        "projectors": {n: projector(c, cfg.gamma) for n, c in retain.items()},
    }


@pytest.mark.parametrize("quirk", [False, True], ids=["clean", "reference"])
def test_pgu_moves_only_weights_and_only_off_the_retain_subspace(
    pgu_runs: dict, quirk: bool
) -> None:
    before, projectors = pgu_runs["before"], pgu_runs["projectors"]
    weights = {f"{name}.weight": name for name in pgu_runs["layers"]}
    assert weights and set(projectors) == set(pgu_runs["layers"])
    moved = 0
    for key, value in pgu_runs["after"][quirk].state_dict().items():
        if key not in weights:
            assert torch.equal(value, before[key]), key
            continue
        delta = (value - before[key]).reshape(value.shape[0], -1)
        assert (delta @ projectors[weights[key]]).norm() <= 1e-5 * delta.norm(), key
        moved += int(delta.norm() > 0)
    assert moved > 0


def test_pgu_reference_indexing_changes_the_multilabel_result(pgu_runs: dict) -> None:
    clean, reference = (pgu_runs["after"][q].state_dict() for q in (False, True))
    assert any(not torch.equal(clean[k], reference[k]) for k in clean)
    # Indexing by 0/1 target values reaches only attributes 0 and 1 (entropy term aside).
    logits = torch.randn(3, 5, requires_grad=True)
    targets = torch.tensor([[1.0, 0, 1, 1, 0], [0, 0, 1, 0, 1], [1, 1, 1, 1, 1]])
    quirky = PGUConfig(reference_multilabel_indexing=True)
    reverse = reverse_multilabel(logits, targets, quirky) - ENTROPY_WEIGHT * negative_entropy(
        logits, "binary"
    )
    (grad,) = torch.autograd.grad(reverse, logits)
    assert grad[:, 2:].abs().max() < 1e-8 and grad[:, :2].abs().sum() > 1e-2


@pytest.mark.parametrize("stride", [1, 2])
def test_layer_covariances_match_the_layer_outputs(stride: int) -> None:
    # For a bias-free layer, Σ‖W x‖² over the inputs equals tr(W C Wᵀ) with C = Σ x xᵀ.
    torch.manual_seed(0)
    images = torch.randn(2, 3, 8, 8)
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=1, dilation=stride, bias=False)
    # Linear on (batch, 4 tokens, features): its covariance sums over the tokens.
    model = nn.Sequential(conv, nn.Flatten(2), nn.Linear(conv(images)[0, 0].numel(), 5, bias=False))
    covariances = input_covariances(model, [images])
    linear = model[2]
    with torch.no_grad():
        conv_out = conv(images)
        linear_out = model(images)
    for layer, out in ((conv, conv_out), (linear, linear_out)):
        name = next(n for n, m in model.named_modules() if m is layer)
        w = layer.weight.reshape(layer.weight.shape[0], -1).double()
        expected = (w @ covariances[name] @ w.T).trace()
        torch.testing.assert_close(out.double().pow(2).sum(), expected, rtol=1e-5, atol=1e-6)


# --- NegGrad ------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.kind)
def test_neggrad_increases_the_support_loss(task: TaskSpec) -> None:
    model, request = _model(task), _request(task)

    def loss() -> float:
        with torch.no_grad():
            return float(task_loss(task.kind, model.eval()(request.images), request.targets))

    before = loss()
    cfg = NegGradConfig(lr=0.05, steps=2, max_grad_norm=10.0, targets="given")
    get_method("neggrad").unlearn(model, request, {}, cfg)
    assert loss() > before


# --- Artifacts and both task kinds --------------------------------------------------------------


@pytest.mark.parametrize("name", ["ssd", "pgu"])
def test_artifacts_round_trip_through_torch_save(name: str, tmp_path: Path) -> None:
    method = get_method(name)
    cfg = method.Config(targets="given")
    model = _model(MULTILABEL)
    artifacts = method.prepare(model, _prepare_data(MULTILABEL), cfg)
    torch.save(artifacts, tmp_path / "artifacts.pt")
    loaded = torch.load(tmp_path / "artifacts.pt", weights_only=True)
    direct = method.unlearn(copy.deepcopy(model), _request(MULTILABEL), artifacts, cfg)
    reloaded = method.unlearn(copy.deepcopy(model), _request(MULTILABEL), loaded, cfg)
    direct_state, reloaded_state = direct.state_dict(), reloaded.state_dict()
    assert all(torch.equal(direct_state[k], v) for k, v in reloaded_state.items())


@pytest.mark.parametrize("task_name", ["attributes", "age"])
@pytest.mark.parametrize("name", ["ssd", "pgu", "neggrad"])
def test_each_baseline_runs_on_synthfaces(name: str, task_name: str, small_faces: FaceData) -> None:
    task = small_faces.task(task_name)
    model = _model(task)
    transform = transforms.test_transform(data_config(model, 32))
    train = FaceSubset(small_faces, range(2, 34), task_name, transform)
    method = get_method(name)
    cfg = resolve_config(name, "synthfaces", "test_resnet", 1)
    loader = DataLoader(train, batch_size=16)
    artifacts = method.prepare(model, PrepareData(loader, task, train_augmented=loader), cfg)
    portrait = FaceSubset(small_faces, [0], task_name, transform)[0][0].unsqueeze(0)
    before = _state(model)
    method.unlearn(model, UnlearnRequest(portrait, ["p"], task), artifacts, cfg)
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in after.items())


@pytest.mark.parametrize("name", ["ssd", "pgu"])
def test_prepared_methods_refuse_to_run_without_their_artifacts(name: str) -> None:
    method = get_method(name)
    with pytest.raises(ValueError, match="prepare"):
        method.unlearn(_model(MULTICLASS), _request(MULTICLASS), {}, method.Config())


def test_pgu_sums_its_covariances_over_train_augmented_images_by_default(
    small_faces: FaceData,
) -> None:
    task = small_faces.task("attributes")
    model = _model(task)
    config = data_config(model, 32)
    plain = FaceSubset(small_faces, range(2, 34), "attributes", transforms.test_transform(config))
    augment = transforms.train_transform(config)
    augmented = DataLoader(FaceSubset(small_faces, range(2, 34), "attributes", augment), 16)
    data = PrepareData(DataLoader(plain, batch_size=16), task, train_augmented=augmented)
    pgu = get_method("pgu")
    default = pgu.prepare(model, data, PGUConfig())["covariances"]
    again = pgu.prepare(model, data, PGUConfig())["covariances"]
    test_only = pgu.prepare(model, data, PGUConfig(covariance_images="test"))["covariances"]
    expected = input_covariances(model, (images for images, _ in data.train))
    for name, value in default.items():
        torch.testing.assert_close(again[name], value)  # seeded: the same crops every time
        torch.testing.assert_close(test_only[name], expected[name].float())
    assert any(not torch.allclose(default[n], test_only[n]) for n in default)
    with pytest.raises(ValueError, match="train_augmented"):
        pgu.prepare(model, PrepareData(DataLoader(plain, batch_size=16), task), PGUConfig())
