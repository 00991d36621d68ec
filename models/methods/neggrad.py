"""NegGrad: gradient ascent on the task loss of the support images.

Not part of the 1-SHUI repository; the simplest support-only baseline. The model stays in eval
mode so that BatchNorm statistics are not refitted to the handful of support images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.methods.base import Artifacts, UnlearningMethod, UnlearnRequest
from models.methods.common import TargetSource, support_targets, task_loss
from models.methods.registry import register_method


@dataclass(frozen=True)
class NegGradConfig:
    """Hyper-parameters of NegGrad."""

    lr: float = 0.01
    steps: int = 1  # passes over the support images, one SGD step per batch
    batch_size: int = 128
    max_grad_norm: float | None = None  # clip the ascent direction's global norm
    targets: TargetSource = "pseudo"  # production portraits come without labels


@register_method("neggrad")
class NegGrad(UnlearningMethod):
    """Gradient ascent on the support images' task loss: needs only the support images."""

    Config = NegGradConfig
    on_tail = True

    def unlearn(
        self, model: nn.Module, request: UnlearnRequest, artifacts: Artifacts, cfg: NegGradConfig
    ) -> nn.Module:
        """Take `steps` passes of SGD ascent over the support batches."""
        targets = support_targets(model, request, cfg.targets)
        images = request.images.to(targets.device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=cfg.lr, maximize=True)
        model.eval()
        for _ in range(cfg.steps):
            for x, y in zip(
                images.split(cfg.batch_size), targets.split(cfg.batch_size), strict=True
            ):
                optimizer.zero_grad(set_to_none=True)
                task_loss(request.task.kind, model(x), y).backward()
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return model
