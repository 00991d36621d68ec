"""Per-set task scores (macro mAP, top-1 accuracy) and per-sample task losses."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multilabel_average_precision

TASK_KINDS = ("multilabel", "multiclass")
MACRO_MAP_NAME = "macro-map-torchmetrics-defined-columns@1"
ACCURACY_NAME = "top1-accuracy@1"

# torchmetrics' message for a column with no positive target (it then sets recall to 1 and scores
# AP 0 in torchmetrics 1.9); those columns are masked out below, so the warning carries no news.
_NO_POSITIVE_WARNING = r"No positive samples found in target"


def _check_kind(kind: str) -> None:
    """Reject a task kind other than "multilabel" or "multiclass"."""
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {TASK_KINDS}")


def _check_multilabel(scores: torch.Tensor, targets: torch.Tensor) -> None:
    """Reject multi-label inputs whose shapes do not match."""
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"multilabel scores and targets must both be (n, C); got {tuple(scores.shape)} "
            f"and {tuple(targets.shape)}"
        )


def _check_multiclass(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Reject multi-class inputs whose shapes do not match."""
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"multiclass logits must be (n, C) and targets (n,); got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )


def per_attribute_ap(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Average precision (0-1) per column; nan for a column with no positive target."""
    _check_multilabel(scores, targets)
    targets = targets.detach().long()
    has_positive = (targets == 1).any(dim=0)
    if scores.shape[0] == 0 or not bool(has_positive.any()):
        return torch.full((scores.shape[1],), math.nan, dtype=torch.float64)
    # float64: torchmetrics applies a sigmoid to logits outside [0, 1], and in float32 that
    # saturates to exactly 1.0 above ~17, turning distinct logits into ties.
    preds = scores.detach().to(torch.float64)
    num_labels = scores.shape[1]
    if num_labels == 1:
        # torchmetrics requires num_labels ≥ 2; a duplicated column has the same AP.
        preds, targets = preds.repeat(1, 2), targets.repeat(1, 2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_POSITIVE_WARNING, category=UserWarning)
        ap = multilabel_average_precision(preds, targets, num_labels=preds.shape[1], average="none")
    ap = ap.detach().to(device="cpu", dtype=torch.float64)[:num_labels]
    # torchmetrics 1.9 scores a column without positives as AP 0 and would count it in its own
    # macro average; AP is undefined there, so such columns are excluded (nan) explicitly.
    return torch.where(has_positive.cpu(), ap, torch.full_like(ap, math.nan))


def macro_map(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro mean average precision ×100 over the columns that have a positive; nan if none."""
    ap = per_attribute_ap(scores, targets)
    defined = ap[~torch.isnan(ap)]
    if defined.numel() == 0:
        return math.nan
    return float(defined.mean()) * 100.0


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy ×100 (argmax, first index on ties); nan for an empty set."""
    _check_multiclass(logits, targets)
    if targets.shape[0] == 0:
        return math.nan
    correct = logits.detach().argmax(dim=1) == targets.detach().to(logits.device)
    return float(correct.double().mean()) * 100.0


def task_score(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The 0-100 set score of a task: macro mAP (multilabel) or top-1 accuracy (multiclass)."""
    _check_kind(kind)
    if kind == "multilabel":
        return macro_map(outputs, targets)
    return accuracy(outputs, targets)


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Promote half/bfloat16 logits to float32 so that losses are not rounded to 8 bits."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        return logits.float()
    return logits


def per_sample_loss(kind: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample task loss (n,): BCE averaged over attributes, or cross-entropy."""
    _check_kind(kind)
    logits = _upcast(logits)
    if kind == "multilabel":
        _check_multilabel(logits, targets)
        losses = F.binary_cross_entropy_with_logits(
            logits, targets.to(logits.dtype), reduction="none"
        )
        return losses.mean(dim=1)
    _check_multiclass(logits, targets)
    return F.cross_entropy(logits, targets.long(), reduction="none")


@torch.no_grad()
def batch_score_fraction(kind: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Batch mAP or accuracy as a gradient-free fraction in [0, 1]; 0 where mAP is undefined."""
    value = task_score(kind, logits, targets) / 100.0
    if math.isnan(value):
        value = 0.0
    return torch.tensor(value, dtype=torch.float32, device=logits.device)


def predicted_targets(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """The model's own decisions as targets: logit > 0 per attribute, or the arg-max class."""
    _check_kind(kind)
    if kind == "multilabel":
        return (logits > 0).float()
    return logits.argmax(dim=1)
