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

from dataclasses import dataclass
from itertools import islice

import torch
from torch import nn

from models.data.base import TaskKind
from models.methods.base import Artifacts, UnlearningMethod, UnlearnRequest
from models.methods.common import (
    Distill,
    Loader,
    distill_kl,
    frozen_copy,
    require_data,
    task_loss,
    train_epochs,
)
from models.methods.registry import register_method


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

    Config = SCRUBConfig
    on_tail = True

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
