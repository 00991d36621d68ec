"""Network factory over timm: task-sized heads, no downloads, features and logits separately."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import timm.utils.model
import torch
from torch import nn

from models.catalog import ARCHITECTURES
from models.nets.pretrained import load_pretrained, pretrained_weights

KNOWN_ARCHS = tuple(ARCHITECTURES)  # exercised by tests and benchmarks; any timm name also works


def _is_vit(arch: str) -> bool:
    return arch.startswith(("vit_", "test_vit", "deit"))


def create_model(
    arch: str,
    num_outputs: int,
    image_size: int,
    weights: Path | str | None = None,
    pretrained: str | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build `arch` with a `num_outputs` head for `image_size` inputs.

    Weights come only from a local file (`weights`: timm drops a head of the wrong size and
    resizes ViT position embeddings) or from an installed package (`pretrained`, e.g.
    "imagenet", models/nets/pretrained.py); with neither the network starts from random
    initialisation.
    """
    if arch not in timm.list_models():
        raise ValueError(f"unknown architecture {arch!r} (timm has no such model)")
    if weights is not None and pretrained is not None:
        raise ValueError("give a weights file or pretrained weights, not both")
    if _is_vit(arch):
        kwargs.setdefault("img_size", image_size)
    if pretrained is not None:
        source = pretrained_weights(pretrained, arch)
        model = timm.create_model(arch, pretrained=False, num_classes=1000, **kwargs)
        load_pretrained(model, source)
        if num_outputs != 1000:  # 1000 outputs keep the ImageNet head (its own sanity check)
            model.reset_classifier(num_outputs)
    elif weights is None:
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
    # channels-last weights make every convolution run channels-last (outputs follow the
    # weights): on CPU whole networks train 1.3-1.5x and evaluate 1.5-2x faster, the pretrained
    # tail evaluates 1.7-2x faster and trains as fast (bench/tail_channels_last.py)
    return model.to(memory_format=torch.channels_last)


def freeze_modules(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Freeze the named submodules in place: no gradients, BatchNorm statistics fixed.

    Frozen BatchNorms become timm's FrozenBatchNorm (their state_dict loses
    `num_batches_tracked`), so a frozen network is frozen again before its weights are loaded.
    """
    if not names:
        return model
    known = dict(model.named_modules())
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"cannot freeze {unknown}: the network has no such modules")
    timm.utils.model.freeze(model, list(names))
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
