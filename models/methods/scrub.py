"""SCRUB (Kurmanji et al., NeurIPS 2023) as run by 1-SHUI: a privileged benchmark reference.

The student is the model itself (trained in place); the teacher is a frozen copy of the original.
Each epoch below `max_epochs` first takes a max-step pass over the forget batches, minimising
−T²·KL(teacher‖student) with the gradient norm clipped; every epoch then takes a min-step pass over
the retain batches, minimising α·T²·KL(teacher‖student) + γ·task loss. One SGD optimiser (momentum,
weight decay) serves both passes, its learning rate cosine-annealed per epoch. As in the reference,
the student trains in train mode in both passes (BatchNorm uses batch statistics and refits its
running ones, dropout is active) while the teacher stays in eval mode. The max-step gradient is
zero while the student equals the teacher, so forgetting starts once train-mode noise or a
min-step has moved the student, as in the reference.

Uses the request's full `forget` and `retain` loaders, not the support images (the forget set of
the benchmark excludes them). `distill="softmax"` reproduces the reference, which applies a softmax
over all outputs even when they are independent attributes; `"sigmoid"` uses per-attribute
Bernoulli distributions on multi-label tasks instead. On multi-class tasks both are the softmax.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from models.data.base import TaskKind
from models.methods.base import Artifacts, UnlearningMethod, UnlearnRequest
from models.methods.pgu import cosine_lr
from models.methods.registry import register_method
from models.methods.ssd import task_loss

Distill = Literal["softmax", "sigmoid"]
Loader = DataLoader[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SCRUBConfig:
    """Hyper-parameters of SCRUB (defaults: the reference's CelebA setting for small N)."""

    lr: float = 5e-3
    epochs: int = 10
    max_epochs: int = 5  # the first epochs that also take the max-step (forgetting) pass
    temperature: float = 4.0
    alpha: float = 0.001  # weight of the retain distillation term
    gamma: float = 0.99  # weight of the retain task loss
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_grad_norm: float | None = 1.0  # clip of the max-step gradient
    distill: Distill = "softmax"  # reference: softmax over all outputs, even multi-label ones
    max_steps_per_epoch: int | None = None  # cap on the batches of each pass
    seed: int = 0


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


def max_step(
    model: nn.Module,
    teacher: nn.Module,
    forget: Loader,
    kind: TaskKind,
    opt: torch.optim.SGD,
    cfg: SCRUBConfig,
) -> None:
    """One pass over the forget batches pushing the student away from the teacher."""
    params = [p for group in opt.param_groups for p in group["params"]]
    device = params[0].device
    for x, _ in islice(forget, cfg.max_steps_per_epoch):
        x = x.to(device)
        with torch.no_grad():
            target = teacher(x)
        kl = distill_kl(kind, model(x), target, cfg.temperature, cfg.distill)
        opt.zero_grad(set_to_none=True)
        (-(cfg.temperature**2) * kl).backward()
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()


def min_step(
    model: nn.Module,
    teacher: nn.Module,
    retain: Loader,
    kind: TaskKind,
    opt: torch.optim.SGD,
    cfg: SCRUBConfig,
) -> None:
    """One pass over the retain batches keeping the student close to the teacher and the task."""
    device = opt.param_groups[0]["params"][0].device
    for x, y in islice(retain, cfg.max_steps_per_epoch):
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            target = teacher(x)
        logits = model(x)
        kl = distill_kl(kind, logits, target, cfg.temperature, cfg.distill)
        loss = cfg.alpha * cfg.temperature**2 * kl + cfg.gamma * task_loss(kind, logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@register_method("scrub")
class SCRUB(UnlearningMethod):
    """SCRUB: alternating max/min distillation steps; needs the full forget and retain data."""

    needs = "support+retain"
    Config = SCRUBConfig

    def unlearn(
        self, model: nn.Module, request: UnlearnRequest, artifacts: Artifacts, cfg: SCRUBConfig
    ) -> nn.Module:
        """Train the model in place: max-steps on forget for `max_epochs`, min-steps every epoch."""
        forget, retain = require_data(request, self.name)
        teacher = frozen_copy(model)
        kind = request.task.kind

        def run_epoch(epoch: int, opt: torch.optim.SGD) -> None:
            if epoch < cfg.max_epochs:
                max_step(model, teacher, forget, kind, opt, cfg)
            min_step(model, teacher, retain, kind, opt, cfg)

        return train_epochs(
            model, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs, cfg.seed, run_epoch
        )
