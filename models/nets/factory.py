"""Network factory over timm: task-sized heads, no downloads, features and logits separately."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from models.catalog import ARCHITECTURES, DEFAULT_ARCH

KNOWN_ARCHS = tuple(ARCHITECTURES)  # exercised by tests and benchmarks; any timm name also works
__all__ = ["DEFAULT_ARCH", "KNOWN_ARCHS", "create_model", "data_config", "features_and_logits"]


def _is_vit(arch: str) -> bool:
    return arch.startswith(("vit_", "test_vit", "deit"))


def create_model(
    arch: str,
    num_outputs: int,
    image_size: int,
    weights: Path | str | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build `arch` with a `num_outputs` head for `image_size` inputs.

    Weights come only from a local file (`weights`): timm drops a head of the wrong size and
    resizes ViT position embeddings; without one the network starts from random initialisation.
    """
    if arch not in timm.list_models():
        raise ValueError(f"unknown architecture {arch!r} (timm has no such model)")
    if _is_vit(arch):
        kwargs.setdefault("img_size", image_size)
    if weights is None:
        model = timm.create_model(arch, pretrained=False, num_classes=num_outputs, **kwargs)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist")
        model = timm.create_model(
            arch,
            pretrained=True,
            pretrained_cfg_overlay={"file": str(path)},
            num_classes=num_outputs,
            **kwargs,
        )
    _check_head(arch, model)
    return model


def classifier_name(model: nn.Module) -> str:
    """The name of the network's classifier module, as timm declares it."""
    return str(model.pretrained_cfg["classifier"])  # type: ignore[index]


def _check_head(arch: str, model: nn.Module) -> None:
    """A catalogued architecture's classifier is where models/catalog.py says (app reads it)."""
    info = ARCHITECTURES.get(arch)
    found = classifier_name(model)
    if info is not None and found != info.head:
        raise ValueError(f"{arch}: timm's classifier is {found!r}, the catalog says {info.head!r}")


def features_and_logits(
    model: nn.Module, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled pre-logit feature and the logits of `images`, from one forward pass."""
    pooled = model.forward_head(model.forward_features(images), pre_logits=True)  # type: ignore[operator]
    return pooled, model.get_classifier()(pooled)  # type: ignore[operator]


def data_config(model: nn.Module, image_size: int) -> dict[str, object]:
    """The model's own preprocessing config (mean, std, interpolation) at `image_size`."""
    config = dict(timm.data.resolve_model_data_config(model))
    config["input_size"] = (3, image_size, image_size)
    return config
