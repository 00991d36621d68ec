"""MetaUnlearn's learned loss h_φ: the network, its input, M on a model, and reloading φ."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from models.data.base import TaskSpec
from models.methods.base import Artifacts
from models.nets import features_and_logits

TargetMode = Literal["pseudo", "given", "none"]
Params = dict[str, torch.Tensor]


class MetaLoss(nn.Module):
    """h_φ: a non-negative scalar per image from [σ(z) ‖ feature ‖ target ‖ identity embedding]."""

    def __init__(
        self,
        num_outputs: int,
        feature_dim: int,
        num_identities: int,
        emb_dim: int = 64,
        hidden: int = 512,
        dropout: float = 0.5,
        use_feats: bool = True,
        use_ids: bool = True,
        use_targets: bool = True,
    ) -> None:
        super().__init__()
        self.use_feats, self.use_ids, self.use_targets = use_feats, use_ids, use_targets
        self.embedding = nn.Embedding(num_identities, emb_dim) if use_ids else None
        in_dim = (
            num_outputs
            + (feature_dim if use_feats else 0)
            + (num_outputs if use_targets else 0)
            + (emb_dim if use_ids else 0)
        )
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LayerNorm(hidden),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.LayerNorm(hidden),
            nn.Linear(hidden, 1),
            nn.Softplus(),
        )

    def forward(
        self,
        logits: torch.Tensor,
        features: torch.Tensor,
        targets: torch.Tensor,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """The per-image meta-loss (n,)."""
        parts = [torch.sigmoid(logits)]
        if self.use_feats:
            parts.append(features)
        if self.use_targets:
            parts.append(targets.to(logits.dtype))
        if self.embedding is not None:
            parts.append(self.embedding(rows).to(logits.dtype))
        return self.net(torch.cat(parts, dim=1)).squeeze(1)


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled pre-logit feature (timm's `head_hidden_size`, else `num_features`)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)  # type: ignore[arg-type]


def target_input(
    task: TaskSpec, logits: torch.Tensor, given: torch.Tensor | None, mode: TargetMode
) -> torch.Tensor:
    """The target part of h_φ's input: multi-hot, or one-hot for a multi-class task."""
    if mode == "none":
        return torch.zeros_like(logits)
    if mode == "pseudo":
        if task.kind == "multilabel":
            return (logits.detach() > 0).to(logits.dtype)  # σ(z) > 0.5
        return F.one_hot(logits.detach().argmax(1), task.num_outputs).to(logits.dtype)
    if given is None:
        raise ValueError('targets="given" needs the support images\' targets')
    given = given.to(logits.device)
    if task.kind == "multilabel":
        return given.to(logits.dtype)
    return F.one_hot(given.long(), task.num_outputs).to(logits.dtype)


def support_meta_loss(
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    meta: MetaLoss,
    task: TaskSpec,
    images: torch.Tensor,
    rows: torch.Tensor,
    targets: torch.Tensor | None,
    mode: TargetMode,
    batch_size: int,
) -> torch.Tensor:
    """M: the mean of h_φ over the support images, evaluated batch by batch."""
    total = None
    for start in range(0, len(images), batch_size):
        span = slice(start, start + batch_size)
        features, logits = forward(images[span])
        given = None if targets is None else targets[span]
        target = target_input(task, logits, given, mode)
        values = meta(logits, features, target, rows[span].to(logits.device))
        total = values.sum() if total is None else total + values.sum()
    assert total is not None, "a request needs at least one support image"
    return total / len(images)


def model_forward(
    model: nn.Module, params: Params | None = None
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(features, logits) of images under `model`'s own parameters or the given `params`."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device

    def forward(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(device=device, dtype=dtype)
        if params is None:
            return features_and_logits(model, images)
        return functional_call(_FeaturesAndLogits(model), _prefixed(params), (images,))

    return forward


class _FeaturesAndLogits(nn.Module):
    """`features_and_logits` as a module forward, so `functional_call` can swap parameters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled feature and logits."""
        return features_and_logits(self.model, images)


def _prefixed(params: Params) -> Params:
    """Parameter names as seen from `_FeaturesAndLogits`."""
    return {f"model.{name}": value for name, value in params.items()}


def trainable(model: nn.Module, freeze_root: bool = False) -> Params:
    """The parameters the step updates: those that require a gradient, without the ones the root
    module owns itself (no dot in their name) when `freeze_root`."""
    return {
        name: p
        for name, p in model.named_parameters()
        if p.requires_grad and not (freeze_root and "." not in name)
    }


def gradients(
    loss: torch.Tensor, params: Params, create_graph: bool
) -> dict[str, torch.Tensor | None]:
    """∇ of `loss` for each parameter (None where it does not depend on it)."""
    grads = torch.autograd.grad(
        loss, list(params.values()), create_graph=create_graph, allow_unused=True
    )
    return dict(zip(params, grads, strict=True))


def load_meta_loss(artifacts: Artifacts, device: torch.device, dtype: torch.dtype) -> MetaLoss:
    """Rebuild the frozen h_φ (eval mode) that `prepare` stored."""
    config = artifacts["config"]
    meta = MetaLoss(
        num_outputs=int(config["num_outputs"]),
        feature_dim=int(config["feature_dim"]),
        num_identities=len(artifacts["identity_keys"]),
        emb_dim=int(config["emb_dim"]),
        hidden=int(config["hidden"]),
        dropout=float(config["dropout"]),
        use_feats=bool(config["use_feats"]),
        use_ids=bool(config["use_ids"]),
        use_targets=bool(config["use_targets"]),
    )
    meta.load_state_dict(artifacts["meta_loss"])
    return meta.to(device=device, dtype=dtype).eval().requires_grad_(False)
