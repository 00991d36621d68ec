"""LEACE (Belrose et al., NeurIPS 2023) on a network's pre-logit feature, folded into its head.

The eraser r(h) = h − L·R·(h − μ) is affine, so the head's logits W·r(h) + b are exactly those of
a head with weight W − (W·L)·R and bias b + (W·L)·(R·μ): the erased network keeps its interface
and its state_dict's shapes. Several attributes are erased jointly by fitting on their coded labels
side by side. Fitted in float64 with `constrain_cov_trace` off: that option mixes the projection
toward an orthogonal one, which no longer leaves Cov(r(h), z) at zero unless Cov(h) ∝ I.

The pre-logit feature h itself is unchanged: what the network now reads is its *served* feature,
the erasers applied to h, newest first (`served`). A later erasure is fitted on h for every
attribute erased so far and folded into the current head, so the served feature r_1(r_2(h))
stays guarded for all of them: Cov(r_1(r_2(h)), z) = P_1·Cov(r_2(h), z) = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from concept_erasure import LeaceEraser, LeaceFitter
from torch import nn


def fit_eraser(features: torch.Tensor, labels: Sequence[torch.Tensor]) -> LeaceEraser:
    """The LEACE eraser of every attribute in `labels` (coded columns, one tensor each) jointly."""
    if not labels:
        raise ValueError("no attribute to erase")
    z = torch.cat([label.reshape(len(features), -1) for label in labels], dim=1)
    fitter = LeaceFitter(
        features.shape[1],
        z.shape[1],
        method="leace",
        affine=True,
        constrain_cov_trace=False,
        shrinkage=True,
        dtype=torch.float64,
    )
    fitter.update(features.to(torch.float64), z.to(torch.float64))
    return fitter.eraser


@torch.no_grad()
def fold_into_head(head: nn.Linear, eraser: LeaceEraser) -> None:
    """Make `head(h)` equal the old head applied to `eraser(h)`, in place (float64 arithmetic)."""
    left, right = eraser.proj_left.to(torch.float64), eraser.proj_right.to(torch.float64)
    weight = head.weight.to(torch.float64)
    through = weight @ left  # (outputs × k): the head's view of the erased directions
    head.weight.copy_(weight - through @ right)
    if eraser.bias is not None:
        shift = through @ (right @ eraser.bias.to(torch.float64))
        if head.bias is None:
            raise ValueError("an affine eraser needs a head with a bias to fold into")
        head.bias.copy_(head.bias.to(torch.float64) + shift)


def served(features: torch.Tensor, erasers: Sequence[LeaceEraser]) -> torch.Tensor:
    """The feature a head with `erasers` folded in (oldest first) reads: newest applied first."""
    for eraser in reversed(erasers):
        features = eraser(features.to(eraser.proj_left.dtype))
    return features


def eraser_to_dict(eraser: LeaceEraser) -> dict[str, Any]:
    """Plain (JSON) form of an eraser, kept with the version it was folded into."""
    return {
        "proj_left": eraser.proj_left.tolist(),
        "proj_right": eraser.proj_right.tolist(),
        "bias": None if eraser.bias is None else eraser.bias.tolist(),
    }


def eraser_from_dict(plain: dict[str, Any]) -> LeaceEraser:
    """The eraser `eraser_to_dict` wrote."""
    bias = plain["bias"]
    return LeaceEraser(
        proj_left=torch.tensor(plain["proj_left"], dtype=torch.float64),
        proj_right=torch.tensor(plain["proj_right"], dtype=torch.float64),
        bias=None if bias is None else torch.tensor(bias, dtype=torch.float64),
    )
