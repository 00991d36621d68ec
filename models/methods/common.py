"""Helpers shared by several unlearning methods."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from models.data.base import TaskKind
from models.methods.base import UnlearnRequest
from models.metrics.scores import per_sample_loss, predicted_targets

TargetSource = Literal["given", "pseudo"]
Distill = Literal["softmax", "sigmoid"]
Loader = DataLoader[tuple[torch.Tensor, torch.Tensor]]


def task_loss(kind: TaskKind, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Batch-mean task loss: BCE-with-logits (multi-label) or cross-entropy (multi-class)."""
    return per_sample_loss(kind, logits, targets).mean()


@torch.no_grad()
def pseudo_labels(model: nn.Module, kind: TaskKind, images: torch.Tensor) -> torch.Tensor:
    """The model's own decisions on `images`: logit > 0 per attribute, or the argmax class."""
    return predicted_targets(kind, model(images))


def support_targets(
    model: nn.Module, request: UnlearnRequest, source: TargetSource
) -> torch.Tensor:
    """Targets of the support images: the request's labels or the model's pseudo-labels."""
    device = next(model.parameters()).device
    if source == "given":
        if request.targets is None:
            raise ValueError("targets='given' but the request carries no targets")
        return request.targets.to(device)
    if source != "pseudo":
        raise ValueError(f"unknown targets source {source!r}; expected 'given' or 'pseudo'")
    model.eval()
    return pseudo_labels(model, request.task.kind, request.images.to(device))


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Cosine-annealed learning rate of `epoch` (stepped per epoch, to 0 after the last)."""
    return base * (1 + math.cos(math.pi * epoch / epochs)) / 2


def require_data(request: UnlearnRequest, method: str) -> tuple[Loader, Loader]:
    """The request's forget and retain loaders, or a ValueError naming the missing ones."""
    forget, retain = request.forget, request.retain
    if forget is None or retain is None:
        missing = [name for name, data in (("forget", forget), ("retain", retain)) if data is None]
        raise ValueError(
            f"{method} is a privileged method and needs the request's "
            f"{' and '.join(missing)} data; none was given"
        )
    return forget, retain


def frozen_copy(model: nn.Module) -> nn.Module:
    """A gradient-free copy of `model` in eval mode."""
    return copy.deepcopy(model).eval().requires_grad_(False)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the global RNGs seeded, restoring their previous states afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def sgd(params: list[nn.Parameter], lr: float, momentum: float, wd: float) -> torch.optim.SGD:
    """The reference optimiser: SGD with momentum and weight decay."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_epochs(
    model: nn.Module,
    lr: float,
    momentum: float,
    weight_decay: float,
    epochs: int,
    seed: int,
    run_epoch: Callable[[int, torch.optim.SGD], None],
) -> nn.Module:
    """Seeded SGD epochs in train mode with a cosine learning rate; the model ends in eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = sgd(params, lr, momentum, weight_decay)
    with seeded(seed, params[0].device):
        model.train()
        for epoch in range(epochs):
            set_lr(opt, cosine_lr(lr, epoch, epochs))
            run_epoch(epoch, opt)
    opt.zero_grad(set_to_none=True)
    return model.eval()


def distill_kl(
    kind: TaskKind,
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    mode: Distill,
) -> torch.Tensor:
    """Batch-mean KL(teacher‖student) between the temperature-scaled output distributions.

    `F.kl_div(log student, teacher)` as in the references; "sigmoid" on a multi-label task sums the
    per-attribute Bernoulli KLs (the KL of their product distribution).
    """
    if mode not in ("softmax", "sigmoid"):
        raise ValueError(f"unknown distill mode {mode!r}; expected 'softmax' or 'sigmoid'")
    s, t = student.float() / temperature, teacher.float() / temperature
    if mode == "sigmoid" and kind == "multilabel":
        p_t = torch.sigmoid(t)
        per_attribute = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (
            F.logsigmoid(-t) - F.logsigmoid(-s)
        )
        return per_attribute.sum(dim=1).mean()
    return F.kl_div(s.log_softmax(dim=1), t.softmax(dim=1), reduction="batchmean")
