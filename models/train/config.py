"""The training recipe for original and retrained-reference models."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """SGD with momentum, linear warm-up then cosine decay, best-validation checkpoint.

    The defaults are the fast CPU recipe for synthfaces; the 1-SHUI ViT-B/16 recipe is
    `TrainConfig(epochs=30, batch_size=32, lr=1e-3, weight_decay=1e-4, warmup_epochs=2,
    crop_scale=(0.08, 1.0))`.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 2
    crop_scale: tuple[float, float] = (0.6, 1.0)
    seed: int = 0
    eval_batch_size: int = 256
    # modules kept at their pretrained values, weights and BN statistics (models/nets/factory.py)
    frozen: tuple[str, ...] = ()
    # False: train on test-transformed images; with a frozen trunk, on its cached outputs
    augment: bool = True
