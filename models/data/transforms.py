"""Train and test transforms built from a model's data config."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2


def _interpolation(config: dict[str, object]) -> InterpolationMode:
    return InterpolationMode(str(config.get("interpolation", "bilinear")))


def test_transform(config: dict[str, object]) -> v2.Compose:
    """Resize the whole image (no crop, as in 1-SHUI) and normalise."""
    _, height, width = config["input_size"]  # type: ignore[misc]
    return v2.Compose(
        [
            v2.Resize((height, width), interpolation=_interpolation(config), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(config["mean"]), std=list(config["std"])),  # type: ignore[call-overload]
        ]
    )


def train_transform(
    config: dict[str, object], crop_scale: tuple[float, float] = (0.5, 1.0)
) -> v2.Compose:
    """Random resized crop and horizontal flip, then normalise."""
    _, height, width = config["input_size"]  # type: ignore[misc]
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                (height, width),
                scale=crop_scale,
                interpolation=_interpolation(config),
                antialias=True,
            ),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(config["mean"]), std=list(config["std"])),  # type: ignore[call-overload]
        ]
    )
