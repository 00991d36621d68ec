"""Supervised training of original and retrained-reference models."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from models.data.base import FaceData
from models.data.torch_dataset import FaceSubset
from models.data.transforms import test_transform, train_transform
from models.device import autocast
from models.evaluate import predict, predict_cached
from models.metrics.scores import per_sample_loss, task_score
from models.nets import data_config
from models.nets.trunk import TrunkCache, run_tail
from models.train.config import TrainConfig


@dataclass
class TrainResult:
    """The best-validation weights and how training went."""

    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    best_val_score: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warm-up from 0, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _batches(
    model: nn.Module,
    data: FaceData,
    task: str,
    rows: Sequence[int],
    cfg: TrainConfig,
    config: dict[str, object],
    generator: torch.Generator,
    cache: TrunkCache | None,
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled training batches: images, or cached trunk outputs with `cache`."""
    if cache is None:
        transform = (
            train_transform(config, cfg.crop_scale) if cfg.augment else test_transform(config)
        )
        subset = FaceSubset(data, rows, task, transform)
        return DataLoader(subset, batch_size=cfg.batch_size, shuffle=True, generator=generator)
    targets = torch.from_numpy(data.targets[task][list(rows)])
    order = torch.randperm(len(rows), generator=generator).split(cfg.batch_size)
    return ((cache.features(model, [rows[i] for i in b]), targets[b]) for b in order)


def train_model(
    model: nn.Module,
    data: FaceData,
    task: str,
    train_indices: Sequence[int],
    val_indices: Sequence[int],
    cfg: TrainConfig,
    image_size: int,
    device: torch.device,
    progress: bool = True,
    cache: TrunkCache | None = None,
) -> TrainResult:
    """Train `model` on `train_indices` and keep the weights of its best validation epoch.

    With a `cache` whose trunk `model` shares and `cfg.augment` off, only the tail trains, on
    the cached trunk outputs of the test-transformed images.
    """
    spec = data.task(task)
    config = data_config(model, image_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cache is not None and (cfg.augment or not cache.fits(model)):
        cache = None
    val_set = FaceSubset(data, val_indices, task, test_transform(config))
    steps = math.ceil(len(train_indices) / cfg.batch_size)
    model.to(device)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    total = cfg.epochs * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, cfg.warmup_epochs * steps, total)
    )
    best = TrainResult(state_dict={}, best_epoch=-1, best_val_score=-math.inf, seconds=0.0)
    start = time.perf_counter()
    bar = tqdm(
        range(cfg.epochs),
        desc=f"train {len(train_indices)} images",
        disable=not progress,
        leave=False,
    )
    for epoch in bar:
        model.train()
        running = 0.0
        for inputs, targets in _batches(
            model, data, task, train_indices, cfg, config, generator, cache
        ):
            with autocast(device):
                if cache is None:
                    logits = model(inputs.to(device))
                else:
                    logits = run_tail(model, cache.depth, inputs.to(device))
            loss = per_sample_loss(spec.kind, logits.float(), targets.to(device)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(inputs)
        if cache is None:
            logits, targets = predict(model, val_set, device, cfg.eval_batch_size)
        else:
            logits, targets = predict_cached(
                model, cache, data, task, val_indices, cfg.eval_batch_size
            )
        val_score = task_score(spec.kind, logits, targets)
        best.history.append(
            {"epoch": epoch, "train_loss": running / len(train_indices), "val_score": val_score}
        )
        bar.set_postfix(loss=f"{running / len(train_indices):.3f}", val=f"{val_score:.1f}")
        if val_score > best.best_val_score:
            best.best_val_score, best.best_epoch = val_score, epoch
            best.state_dict = copy.deepcopy(
                {k: v.detach().cpu() for k, v in model.state_dict().items()}
            )
    best.seconds = time.perf_counter() - start
    model.load_state_dict(best.state_dict)
    return best
