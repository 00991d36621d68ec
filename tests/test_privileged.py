"""SCRUB and Bad Teacher: privileged references that train on the full forget and retain sets."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.data.base import TaskSpec
from models.methods import UnlearnRequest, get_method, list_methods, resolve_config
from models.methods.bad_teacher import BadTeacherConfig, incompetent_teacher
from models.methods.common import distill_kl, task_loss
from models.methods.scrub import SCRUBConfig
from models.nets import create_model

MULTILABEL = TaskSpec("attributes", "multilabel", tuple(f"a{i}" for i in range(5)))
MULTICLASS = TaskSpec("age", "multiclass", tuple("abcd"))
TASKS = [MULTILABEL, MULTICLASS]
SIZE = 16  # image side: small enough for the 2-core machine
PRIVILEGED = ["scrub", "bad_teacher"]
# Small, fast settings with steps large enough for the effects to show on a tiny model.
SCRUB = SCRUBConfig(lr=0.05, epochs=4, max_epochs=3)
BAD_TEACHER = BadTeacherConfig(lr=0.01, epochs=4)
CONFIGS = {"scrub": SCRUB, "bad_teacher": BAD_TEACHER}
ONE_EPOCH = {name: dataclasses.replace(cfg, epochs=1) for name, cfg in CONFIGS.items()}


def _model(task: TaskSpec) -> nn.Module:
    torch.manual_seed(0)
    return create_model("test_resnet", task.num_outputs, SIZE).eval()


def _fitted(task: TaskSpec, request: UnlearnRequest) -> nn.Module:
    """A small BatchNorm-free network fitted to forget ∪ retain, standing in for a trained model.

    Without BatchNorm, eval-mode outputs follow the train-mode objective even after a few steps.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 32), nn.ReLU(), nn.Linear(32, task.num_outputs)
    )
    forget, retain = _tensors(request.forget), _tensors(request.retain)
    images, targets = torch.cat([forget[0], retain[0]]), torch.cat([forget[1], retain[1]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(50):
        optimizer.zero_grad()
        task_loss(task.kind, model(images), targets).backward()
        optimizer.step()
    return model.eval()


def _data(task: TaskSpec, n: int, seed: int, shift: float = 0.0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, SIZE, SIZE, generator=gen) + shift
    if task.kind == "multilabel":
        targets = torch.randint(0, 2, (n, task.num_outputs), generator=gen).float()
    else:
        targets = torch.randint(0, task.num_outputs, (n,), generator=gen)
    return TensorDataset(images, targets)


def _request(task: TaskSpec) -> UnlearnRequest:
    # The forget identity's images are shifted so that the network can tell them from retain.
    forget = DataLoader(_data(task, 8, seed=1, shift=1.0), batch_size=4, shuffle=True)
    retain = DataLoader(_data(task, 24, seed=2), batch_size=8, shuffle=True)
    support = _data(task, 1, seed=3, shift=1.0).tensors
    return UnlearnRequest(support[0], ["x"], task, support[1], retain=retain, forget=forget)


def _tensors(loader: DataLoader | None) -> tuple[torch.Tensor, torch.Tensor]:
    assert loader is not None
    return loader.dataset.tensors  # type: ignore[attr-defined]


@torch.no_grad()
def _kl(task: TaskSpec, student: nn.Module, teacher: nn.Module, images: torch.Tensor) -> float:
    return distill_kl(task.kind, student(images), teacher(images), 1.0, "softmax").item()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", PRIVILEGED)
def test_registered_as_privileged(name: str) -> None:
    assert name in list_methods()
    assert get_method(name).needs == "support+retain"


@pytest.mark.parametrize("name", PRIVILEGED)
@pytest.mark.parametrize("missing", [("forget",), ("retain",), ("forget", "retain")])
def test_refuses_a_request_without_forget_or_retain(name: str, missing: tuple[str, ...]) -> None:
    request = dataclasses.replace(_request(MULTILABEL), **dict.fromkeys(missing))
    with pytest.raises(ValueError, match=" and ".join(missing)):
        get_method(name).unlearn(_model(MULTILABEL), request, {}, CONFIGS[name])


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.kind)
def test_scrub_pushes_forget_from_the_teacher_and_keeps_retain(task: TaskSpec) -> None:
    request = _request(task)
    model = _fitted(task, request)
    original = copy.deepcopy(model)
    forget_x, _ = _tensors(request.forget)
    retain_x, retain_y = _tensors(request.retain)
    with torch.no_grad():
        retain_loss = task_loss(task.kind, original(retain_x), retain_y).item()
    get_method("scrub").unlearn(model, request, {}, SCRUB)
    assert not model.training
    forget_kl, retain_kl = (
        _kl(task, model, original, forget_x),
        _kl(task, model, original, retain_x),
    )
    assert forget_kl > 0.1
    assert forget_kl > 5 * retain_kl
    with torch.no_grad():
        assert task_loss(task.kind, model(retain_x), retain_y).item() < retain_loss + 0.05


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.kind)
def test_bad_teacher_moves_forget_toward_the_random_network(task: TaskSpec) -> None:
    request = _request(task)
    model = _fitted(task, request)
    original = copy.deepcopy(model)
    bad = incompetent_teacher(model, BAD_TEACHER.seed)
    forget_x, _ = _tensors(request.forget)
    retain_x, _ = _tensors(request.retain)
    before = _kl(task, model, bad, forget_x)
    get_method("bad_teacher").unlearn(model, request, {}, BAD_TEACHER)
    assert _kl(task, model, bad, forget_x) < 0.5 * before
    assert _kl(task, model, original, retain_x) < 0.5 * _kl(task, model, original, forget_x)


def test_incompetent_teacher_is_a_seeded_reinitialisation() -> None:
    model = _model(MULTILABEL)
    # Not seed 0: `_model` was built under it, so its untrained head would be drawn again.
    first, again = incompetent_teacher(model, 1), incompetent_teacher(model, 1)
    other = incompetent_teacher(model, 2)
    params = dict(model.named_parameters())
    for name, value in first.named_parameters():
        assert not value.requires_grad
        assert torch.equal(value, dict(again.named_parameters())[name])
        if value.ndim > 1:  # weights; norms reset to constants
            assert not torch.equal(value, params[name])
            assert not torch.equal(value, dict(other.named_parameters())[name])


@pytest.mark.parametrize("name", PRIVILEGED)
@pytest.mark.parametrize("distill", ["softmax", "sigmoid"])
@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.kind)
def test_both_task_kinds_and_distill_modes(name: str, distill: str, task: TaskSpec) -> None:
    model, request = _model(task), _request(task)
    before = _state(model)
    cfg = dataclasses.replace(ONE_EPOCH[name], distill=distill)
    out = get_method(name).unlearn(model, request, {}, cfg)
    assert out is model and not model.training
    after = _state(model)
    assert all(torch.isfinite(v.float()).all() for v in after.values())
    assert any(not torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("name", PRIVILEGED)
def test_same_seed_same_result(name: str) -> None:
    task = MULTILABEL
    runs = []
    for _ in range(2):
        model = _model(task)
        torch.manual_seed(123 + len(runs))  # the global RNG must not matter
        get_method(name).unlearn(model, _request(task), {}, ONE_EPOCH[name])
        runs.append(_state(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_training_leaves_the_global_rng_alone() -> None:
    model, request = _model(MULTILABEL), _request(MULTILABEL)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    get_method("bad_teacher").unlearn(model, request, {}, ONE_EPOCH["bad_teacher"])
    assert torch.equal(torch.rand(3), expected)


def test_distill_modes() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    softmax = distill_kl("multiclass", student, teacher, 2.0, "softmax")
    assert torch.equal(distill_kl("multiclass", student, teacher, 2.0, "sigmoid"), softmax)
    expected = F.kl_div((student / 2).log_softmax(1), (teacher / 2).softmax(1), reduction="sum") / 6
    assert torch.allclose(softmax, expected)
    # Bernoulli KL(t‖s) = BCE(s-logits, p_t) − BCE(t-logits, p_t), summed over attributes.
    p_t = torch.sigmoid(teacher)
    bce = F.binary_cross_entropy_with_logits
    bernoulli = (bce(student, p_t, reduction="sum") - bce(teacher, p_t, reduction="sum")) / 6
    assert torch.allclose(distill_kl("multilabel", student, teacher, 1.0, "sigmoid"), bernoulli)
    assert distill_kl("multilabel", teacher, teacher, 1.0, "sigmoid").abs() < 1e-6
    with pytest.raises(ValueError, match="distill"):
        distill_kl("multilabel", student, teacher, 1.0, "bogus")  # type: ignore[arg-type]


def test_bad_teacher_retain_fraction() -> None:
    request, seen = _request(MULTICLASS), []
    model = _model(MULTICLASS)
    # Counts the student's rows only: the teachers (copies, hook included) run in eval mode.
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0] * m.training))
    cfg = dataclasses.replace(BAD_TEACHER, epochs=1, retain_fraction=0.5)
    get_method("bad_teacher").unlearn(model, request, {}, cfg)
    assert sum(seen) == 8 + 12  # the whole forget set and half of the 24 retain images
    with pytest.raises(ValueError, match="retain_fraction"):
        get_method("bad_teacher").unlearn(
            model, request, {}, dataclasses.replace(cfg, retain_fraction=0.0)
        )


def test_pinned_configs() -> None:
    scrub = resolve_config("scrub", "synthfaces", "test_resnet", 5)
    assert (scrub.epochs, scrub.max_epochs, scrub.lr) == (2, 1, 5e-3)
    assert resolve_config("scrub", "celeba", "vit_base_patch16_224", 200).max_epochs == 7
    assert resolve_config("scrub", "celebahq", "vit_base_patch16_224", 500).lr == 5e-4
    bad = resolve_config("bad_teacher", "synthfaces", "test_resnet", 5)
    assert (bad.epochs, bad.lr) == (1, 1e-2)
    assert resolve_config("bad_teacher", "celebahq", "vit_base_patch16_224", 500).lr == 1e-5
    assert resolve_config("bad_teacher", "mufac", "vit_base_patch16_224", 10).lr == 1e-3
