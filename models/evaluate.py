"""Model outputs, scores and per-sample losses on named sets of a data set."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from models.data.base import FaceData
from models.data.torch_dataset import FaceSubset
from models.device import autocast
from models.metrics.scores import per_sample_loss, task_score


@dataclass(frozen=True)
class SetResult:
    """A model's score (0-100) and per-sample losses on one set of images."""

    score: float
    losses: np.ndarray

    @property
    def size(self) -> int:
        """Number of images in the set."""
        return len(self.losses)


@torch.inference_mode()
def predict(
    model: nn.Module,
    subset: FaceSubset,
    device: torch.device,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and targets for every row of `subset`, in order."""
    model.eval()
    outputs, targets = [], []
    for images, target in DataLoader(subset, batch_size=batch_size, shuffle=False):
        with autocast(device):
            logits = model(images.to(device))
        outputs.append(logits.float().cpu())
        targets.append(target)
    return torch.cat(outputs), torch.cat(targets)


def evaluate_sets(
    model: nn.Module,
    data: FaceData,
    task: str,
    sets: Mapping[str, Sequence[int]],
    transform: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 256,
) -> dict[str, SetResult]:
    """Score and per-sample losses of `model` on each named set of row indices."""
    kind = data.task(task).kind
    results = {}
    for name, indices in sets.items():
        logits, targets = predict(
            model, FaceSubset(data, indices, task, transform), device, batch_size
        )
        results[name] = SetResult(
            score=task_score(kind, logits, targets),
            losses=per_sample_loss(kind, logits, targets).numpy(),
        )
    return results
