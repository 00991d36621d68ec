"""Erasure-time audit metrics: portrait loss, confidence and membership, the
audit-set score and agreement with the parent, the parameter change."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.data.base import TaskSpec
from models.device import autocast
from models.metrics.scores import per_sample_loss, predicted_targets, task_score
from worker.audit_kit import AuditKit

Transform = Callable[[torch.Tensor], torch.Tensor]


def forward(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    transform: Transform | None = None,
    batch_size: int = 128,
) -> torch.Tensor:
    """Float32 CPU logits of `images` (transformed batch by batch when `transform` is given)."""
    model.eval()
    outputs = []
    with torch.no_grad():
        for batch in images.split(batch_size):
            inputs = transform(batch) if transform is not None else batch
            with autocast(device):
                outputs.append(model(inputs.to(device)).float().cpu())
    return torch.cat(outputs)


def decisions(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """What the model predicts: per-attribute sigmoid > 0.5, or the arg-max class."""
    return logits > 0 if kind == "multilabel" else logits.argmax(dim=1)


def pseudo_labels(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """The model's own predictions as targets (the portrait comes without labels)."""
    return predicted_targets(kind, logits)


def confidences(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Per-sample confidence in the prediction: mean max(p, 1−p) over attributes, or max softmax."""
    if kind == "multilabel":
        p = torch.sigmoid(logits)
        return torch.maximum(p, 1 - p).mean(dim=1)
    return torch.softmax(logits, dim=1).max(dim=1).values


def agreement(kind: str, logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Percentage of predictions (attribute decisions or classes) equal to the reference's."""
    same = decisions(kind, logits) == decisions(kind, reference)
    return float(same.float().mean()) * 100.0


def _finite(value: float) -> float | None:
    """JSON (and Postgres) has no NaN: map it to null."""
    return value if math.isfinite(value) else None


PORTRAIT_METRICS = ("portrait_loss", "portrait_confidence", "portrait_membership_score")


@dataclass(frozen=True)
class Snapshot:
    """The audit metrics of one model on each portrait of a batch and on the audit set."""

    portraits: list[dict[str, float]]  # per portrait: loss, confidence, membership score
    audit_score: float
    audit_logits: torch.Tensor

    def to_dict(
        self, task: TaskSpec, index: int = 0, reference: Snapshot | None = None
    ) -> dict[str, Any]:
        """JSON form for portrait `index`; with `reference` (the parent), also the agreement."""
        payload: dict[str, Any] = {
            name: _finite(self.portraits[index][name]) for name in PORTRAIT_METRICS
        }
        payload |= {
            "audit_score": _finite(self.audit_score),
            "audit_score_name": task.score_name,
            "audit_set_size": int(self.audit_logits.shape[0]),
        }
        if reference is not None:
            payload["audit_agreement"] = agreement(
                task.kind, self.audit_logits, reference.audit_logits
            )
        return payload


def snapshot(
    model: nn.Module,
    portraits: torch.Tensor,
    portrait_targets: torch.Tensor,
    kit: AuditKit,
    task: TaskSpec,
    transform: Transform,
    device: torch.device,
) -> Snapshot:
    """Measure `model` on each (transformed) portrait and on the kit's audit set."""
    logits = forward(model, portraits, device)
    losses = per_sample_loss(task.kind, logits, portrait_targets).tolist()
    confidence = confidences(task.kind, logits).tolist()
    audit_logits = forward(model, kit.audit_set.images, device, transform)
    return Snapshot(
        portraits=[
            {
                "portrait_loss": loss,
                "portrait_confidence": conf,
                "portrait_membership_score": kit.membership.score(loss),
            }
            for loss, conf in zip(losses, confidence, strict=True)
        ],
        audit_score=task_score(task.kind, audit_logits, kit.audit_set.targets),
        audit_logits=audit_logits,
    )


def delta(before: Snapshot, after: Snapshot, index: int = 0) -> dict[str, float | None]:
    """After minus before for portrait `index` and the audit-set score, and the score drop."""
    changes = {
        name: _finite(after.portraits[index][name] - before.portraits[index][name])
        for name in PORTRAIT_METRICS
    }
    changes["audit_score"] = _finite(after.audit_score - before.audit_score)
    changes["audit_score_drop"] = _finite(before.audit_score - after.audit_score)
    return changes


@torch.no_grad()
def parameter_change_l2(before: dict[str, torch.Tensor], model: nn.Module) -> float:
    """L2 norm of the change of all parameters, over the whole network."""
    total = 0.0
    for name, param in model.named_parameters():
        diff = param.detach().float() - before[name].to(param.device).float()
        total += float(diff.pow(2).sum())
    return math.sqrt(total)
