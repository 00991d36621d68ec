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
from models.nets.trunk import TrunkCache, run_tail


@dataclass(frozen=True)
class SetResult:
    """A model's score (0-100), per-sample losses and outputs on one set of images."""

    score: float
    losses: np.ndarray
    logits: torch.Tensor
    targets: torch.Tensor

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


@torch.inference_mode()
def predict_cached(
    model: nn.Module,
    cache: TrunkCache,
    data: FaceData,
    task: str,
    rows: Sequence[int],
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`predict` on rows whose trunk outputs `cache` holds: only the tail runs."""
    features = cache.features(model, rows)
    model.eval()
    outputs = []
    for batch in features.split(batch_size):
        with autocast(cache.device):
            outputs.append(run_tail(model, cache.depth, batch.to(cache.device)).float().cpu())
    targets = torch.from_numpy(data.targets[task][list(rows)])
    empty = torch.zeros((0, data.task(task).num_outputs))
    return (torch.cat(outputs) if outputs else empty), targets


def evaluate_sets(
    model: nn.Module,
    data: FaceData,
    task: str,
    sets: Mapping[str, Sequence[int]],
    transform: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 256,
    cache: TrunkCache | None = None,
) -> dict[str, SetResult]:
    """Score and per-sample losses of `model` on each named set of row indices; with a `cache`
    of `transform`'s trunk outputs that fits the model, only its tail runs."""
    kind = data.task(task).kind
    fitting = cache if cache is not None and cache.fits(model) else None
    results = {}
    for name, indices in sets.items():
        if fitting is not None:
            logits, targets = predict_cached(model, fitting, data, task, indices, batch_size)
        else:
            subset = FaceSubset(data, indices, task, transform)
            logits, targets = predict(model, subset, device, batch_size)
        results[name] = SetResult(
            score=task_score(kind, logits, targets),
            losses=per_sample_loss(kind, logits, targets).numpy(),
            logits=logits,
            targets=targets,
        )
    return results
