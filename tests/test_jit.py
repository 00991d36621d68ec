"""JiT: lowers its own Lipschitz loss, honours its switches, is in the registry."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.data.base import TaskSpec
from models.methods import UnlearnRequest, get_method, list_methods, resolve_config
from models.methods.jit import JiTConfig, lipschitz_loss, perturb
from models.nets import create_model

TASK = TaskSpec("attributes", "multilabel", tuple(f"a{i}" for i in range(5)))


def _support(n: int = 6, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)


def _loss(model: torch.nn.Module, images: torch.Tensor, cfg: JiTConfig) -> float:
    model.eval()
    with torch.no_grad():
        return float(lipschitz_loss(model, images, cfg, torch.Generator().manual_seed(123)))


@pytest.mark.parametrize(
    ("arch", "cfg"),
    [
        ("test_resnet", JiTConfig(lr=0.05, sigma=0.5, epochs=3)),
        # the reference leaves the model in train mode, so use a network without BatchNorm
        ("test_vit", JiTConfig.reference(lr=0.01, sigma=0.5, epochs=3)),
    ],
)
def test_jit_lowers_its_own_lipschitz_loss_on_the_support_batch(arch: str, cfg: JiTConfig) -> None:
    torch.manual_seed(0)
    model = create_model(arch, TASK.num_outputs, 32)
    images = _support()
    before = _loss(model, images, cfg)
    get_method("jit").unlearn(model, UnlearnRequest(images, ["x"] * 6, TASK), {}, cfg)
    after = _loss(model, images, cfg)
    assert after < 0.99 * before


def test_jit_changes_the_model_only_when_it_steps() -> None:
    model = create_model("test_resnet", TASK.num_outputs, 32)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    get_method("jit").unlearn(
        model, UnlearnRequest(_support(), ["x"] * 6, TASK), {}, JiTConfig(lr=0.0)
    )
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())
    get_method("jit").unlearn(
        model, UnlearnRequest(_support(), ["x"] * 6, TASK), {}, JiTConfig(lr=0.05)
    )
    assert any(not torch.equal(original[k], v) for k, v in model.state_dict().items())


def test_noise_switches() -> None:
    images = _support(2)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    clean, clean_norm = perturb(images, JiTConfig(sigma=2.0), gen())
    torch.testing.assert_close(clean_norm, (clean - images).flatten(1).norm(dim=1))
    assert clean.max() > images.max()
    ref, ref_norm = perturb(images, JiTConfig.reference(sigma=2.0), gen())
    assert ref.min() >= images.min() and ref.max() <= images.max()
    torch.testing.assert_close(ref_norm, (ref - images).flatten(1).norm(dim=1))
    raw = dataclasses.replace(JiTConfig.reference(sigma=2.0), denominator="raw_noise")
    _, raw_norm = perturb(images, raw, gen())
    assert torch.all(raw_norm > ref_norm)  # clamping shrinks the actual perturbation


def test_sum_reduction_scales_with_batch() -> None:
    model = create_model("test_resnet", TASK.num_outputs, 32).eval()
    images = _support(4)
    mean = _loss(model, images, JiTConfig(n_samples=3))
    total = _loss(model, images, JiTConfig(n_samples=3, batch_reduction="sum"))
    assert total == pytest.approx(4 * mean, rel=1e-5)


def test_registry_and_pinned_configs() -> None:
    assert "jit" in list_methods()
    assert get_method("jit").needs == "support"
    with pytest.raises(ValueError, match="unknown unlearning method"):
        get_method("nope")
    pinned = resolve_config("jit", "synthfaces", "test_resnet", 5)
    generic = resolve_config("jit", "celeba", "vit_base_patch16_224", 5)
    assert generic.sigma == 30.0  # 1-SHUI's ViT setting
    assert pinned != JiTConfig()
    assert resolve_config("jit", "synthfaces", "test_resnet", 5, lr=0.5).lr == 0.5
    with pytest.raises(ValueError, match="unknown jit option"):
        resolve_config("jit", "synthfaces", "test_resnet", 5, bogus=1)


def test_request_bands_match_and_an_exact_size_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from models.methods import registry

    sections = {
        "fallback": {"lr": 1.0},
        "synthfaces/test_resnet/*": {"lr": 0.1},
        "synthfaces/test_resnet/2-4": {"lr": 0.2, "sigma": 2.0},
        "synthfaces/test_resnet/3": {"lr": 0.3},
    }
    monkeypatch.setattr(registry, "_sections", lambda method: sections)
    lrs = {n: resolve_config("jit", "synthfaces", "test_resnet", n).lr for n in (1, 2, 3, 4, 5)}
    assert lrs == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.2, 5: 0.1}
    assert resolve_config("jit", "synthfaces", "test_resnet", 3).sigma == 2.0  # band, then exact
    sections["synthfaces/test_resnet/x-4"] = {}
    with pytest.raises(ValueError, match="requests must be"):
        resolve_config("jit", "synthfaces", "test_resnet", 3)
