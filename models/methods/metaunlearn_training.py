"""MetaUnlearn's meta-training of h_φ over simulated deletion requests of TRAIN identities."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from models.data.base import TaskSpec
from models.methods.base import Artifacts, Images, PrepareData
from models.methods.meta_loss import (
    MetaLoss,
    Params,
    TargetMode,
    feature_dim,
    gradients,
    model_forward,
    support_meta_loss,
    trainable,
)
from models.metrics.scores import batch_score_fraction, per_sample_loss

Distance = Literal["smooth_l1", "l1", "l2"]
LossType = Literal["full", "rev"]
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class MetaUnlearnConfig:
    """Hyper-parameters of meta-training and of the erasure step."""

    inner_lr: float = 0.1  # η, of the simulated step and of the real one
    meta_epochs: int = 3
    phi_lr: float = 1e-4
    n_simulated: int = 5  # N_s, identities per simulated request
    batch_size: int = 64
    emb_dim: int = 64
    hidden: int = 512
    dropout: float = 0.5
    distance: Distance = "smooth_l1"
    # The reference's two objectives, its distance never differentiating its second argument:
    # "full": D(ℓ_f, sg ℓ_v^orig) + D(ℓ_f, sg ℓ_v^unl);
    # "rev": D(ℓ_f, sg ℓ_v^unl) + D(ℓ_v^unl, sg ℓ_v^orig), so the step also keeps VAL unchanged.
    loss_type: LossType = "full"
    # The reference's functional copy writes only into leaf modules, so parameters the root module
    # owns itself (a ViT's cls_token and pos_embed) never move, in meta-training or at erasure.
    # False (Lethe's default): the step updates them like any other parameter; True: as the
    # reference. No effect on networks without such parameters (ResNets).
    freeze_root_params: bool = False
    use_accs: bool = True  # weight task losses by (1 − batch score)
    targets: TargetMode = "pseudo"
    use_feats: bool = True
    use_ids: bool = True
    use_targets: bool = True
    max_requests_per_epoch: int | None = None  # None: every chunk of N_s identities
    seed: int = 0


def build_meta_loss(
    model: nn.Module, task: TaskSpec, num_identities: int, cfg: MetaUnlearnConfig
) -> MetaLoss:
    """A fresh h_φ sized for `model`'s features and `task`'s outputs."""
    return MetaLoss(
        num_outputs=task.num_outputs,
        feature_dim=feature_dim(model),
        num_identities=num_identities,
        emb_dim=cfg.emb_dim,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        use_feats=cfg.use_feats,
        use_ids=cfg.use_ids,
        use_targets=cfg.use_targets,
    )


@dataclass
class SimulatedRequest:
    """A simulated deletion: support images, their identity rows, and paired forget/VAL batches."""

    support: torch.Tensor
    rows: torch.Tensor
    support_targets: torch.Tensor
    forget: list[Batch]
    val: list[Batch]  # val[k] is paired with forget[k]


def inner_step(
    model: nn.Module,
    meta: MetaLoss,
    task: TaskSpec,
    request: SimulatedRequest,
    cfg: MetaUnlearnConfig,
) -> Params:
    """θ_u = θ − η·∇θ M, kept differentiable with respect to φ (second order)."""
    params = trainable(model, cfg.freeze_root_params)
    loss = support_meta_loss(
        model_forward(model),
        meta,
        task,
        request.support,
        request.rows,
        request.support_targets,
        cfg.targets,
        cfg.batch_size,
    )
    grads = gradients(loss, params, create_graph=True)
    return {
        name: p if grads[name] is None else p - cfg.inner_lr * grads[name]  # type: ignore[operator]
        for name, p in params.items()
    }


def weighted_task_loss(
    task: TaskSpec, logits: torch.Tensor, targets: torch.Tensor, use_accs: bool
) -> torch.Tensor:
    """Batch-mean task loss, times (1 − batch score) when `use_accs`; the score has no gradient."""
    targets = targets.to(logits.device)
    loss = per_sample_loss(task.kind, logits, targets).mean()
    if not use_accs:
        return loss
    score = batch_score_fraction(task.kind, logits.detach(), targets).to(loss.dtype)
    return loss * (1 - score)


def distance(a: torch.Tensor, b: torch.Tensor, kind: Distance) -> torch.Tensor:
    """The alignment distance D between two scalar losses."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(a, b)
    if kind == "l1":
        return F.l1_loss(a, b)
    if kind == "l2":
        return F.mse_loss(a, b)
    raise ValueError(f"unknown distance {kind!r}; expected smooth_l1, l1 or l2")


@dataclass
class RequestLosses:
    """Per forget batch: ℓ_f (differentiable in φ) and the paired VAL targets ℓ_v^orig, ℓ_v^unl."""

    forget: list[torch.Tensor]
    val_before: list[torch.Tensor]  # constants: under θ
    val_after: list[torch.Tensor]  # under θ_u: constants (stop-gradient) unless loss_type "rev"
    sizes: list[int]


def request_losses(
    model: nn.Module,
    meta: MetaLoss,
    task: TaskSpec,
    request: SimulatedRequest,
    cfg: MetaUnlearnConfig,
) -> RequestLosses:
    """The inner step, then the weighted task losses of the forget and the paired VAL batches."""
    # Fused attention kernels have no double backward; the math kernel decomposes into plain ops.
    with sdpa_kernel(SDPBackend.MATH):
        unlearned = inner_step(model, meta, task, request, cfg)
        after = model_forward(model, unlearned)
        frozen_after = model_forward(model, {name: p.detach() for name, p in unlearned.items()})
        before = model_forward(model)
        losses = RequestLosses([], [], [], [])
        for (x_f, y_f), (x_v, y_v) in zip(request.forget, request.val, strict=True):
            losses.forget.append(weighted_task_loss(task, after(x_f)[1], y_f, cfg.use_accs))
            with torch.no_grad():
                losses.val_before.append(
                    weighted_task_loss(task, before(x_v)[1], y_v, cfg.use_accs)
                )
            if cfg.loss_type == "rev":
                losses.val_after.append(weighted_task_loss(task, after(x_v)[1], y_v, cfg.use_accs))
            else:
                with torch.no_grad():
                    losses.val_after.append(
                        weighted_task_loss(task, frozen_after(x_v)[1], y_v, cfg.use_accs)
                    )
            losses.sizes.append(len(x_f))
    return losses


def alignment(losses: RequestLosses, kind: Distance, loss_type: LossType = "full") -> torch.Tensor:
    """A = Σ|b|·term / Σ|b| over forget batches b (terms: MetaUnlearnConfig.loss_type)."""
    assert losses.sizes, "a simulated request needs at least one forget batch"
    terms = []
    for forget, before, after, size in zip(
        losses.forget, losses.val_before, losses.val_after, losses.sizes, strict=True
    ):
        if loss_type == "rev":
            term = distance(forget, after.detach(), kind) + distance(after, before.detach(), kind)
        else:
            term = distance(forget, before, kind) + distance(forget, after, kind)
        terms.append(size * term)
    return torch.stack(terms).sum() / sum(losses.sizes)


def outer_objective(
    model: nn.Module,
    meta: MetaLoss,
    task: TaskSpec,
    request: SimulatedRequest,
    cfg: MetaUnlearnConfig,
) -> torch.Tensor:
    """A(φ): forget losses after the inner step, pulled to VAL losses before and after it."""
    return alignment(request_losses(model, meta, task, request, cfg), cfg.distance, cfg.loss_type)


def _batches(
    images: Images | torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    count: int | None = None,
) -> list[Batch]:
    """Shuffled batches of (images, targets); with `count`, that many, cycling, and only
    those images read."""
    order = list(torch.randperm(len(images), generator=generator).split(batch_size))
    if count is not None:
        order = list(itertools.islice(itertools.cycle(order), count))
    return [(images[b], targets[b]) for b in order]


def identity_chunks(keys: Sequence[str], size: int, rng: random.Random) -> list[list[str]]:
    """One meta-epoch's requests: shuffled keys cut into chunks of `size`, the last wrapping."""
    order = list(keys)
    rng.shuffle(order)
    size = min(size, len(order))
    count = math.ceil(len(order) / size)
    cycled = itertools.cycle(order)
    return [list(itertools.islice(cycled, size)) for _ in range(count)]


def simulate_request(
    chunk: Sequence[str],
    data: PrepareData,
    index: dict[str, int],
    batch_size: int,
    generator: torch.Generator,
) -> SimulatedRequest:
    """One random support image per identity, the rest as forget set, paired with VAL batches."""
    images, targets = meta_training_data(data)[:2]
    support, support_targets, forget, forget_targets = [], [], [], []
    for key in chunk:
        own, own_targets = images[key], targets[key]
        pick = int(torch.randint(len(own), (1,), generator=generator))
        rest = [i for i in range(len(own)) if i != pick] or [pick]
        support.append(own[pick])
        support_targets.append(own_targets[pick])
        forget.append(own[rest])
        forget_targets.append(own_targets[rest])
    forget_batches = _batches(torch.cat(forget), torch.cat(forget_targets), batch_size, generator)
    val_images, val_targets = meta_training_data(data)[2:]
    val = _batches(val_images, val_targets, batch_size, generator, count=len(forget_batches))
    return SimulatedRequest(
        support=torch.stack(support),
        rows=torch.tensor([index[key] for key in chunk]),
        support_targets=torch.stack(support_targets),
        forget=forget_batches,
        val=val,
    )


def meta_training_data(
    data: PrepareData,
) -> tuple[Mapping[str, Images], dict[str, torch.Tensor], Images, torch.Tensor]:
    """The per-identity TRAIN and the VAL data meta-training needs, or a ValueError."""
    if (
        data.train_identities is None
        or data.train_targets is None
        or data.val_images is None
        or data.val_targets is None
    ):
        raise ValueError(
            "MetaUnlearn needs TRAIN grouped by identity and VAL "
            "(models.methods.prepare_data.build_prepare_data)"
        )
    return data.train_identities, data.train_targets, data.val_images, data.val_targets


def meta_train(
    model: nn.Module, meta: MetaLoss, data: PrepareData, keys: list[str], cfg: MetaUnlearnConfig
) -> list[float]:
    """Meta-train h_φ in place; returns the outer objective of every simulated request."""
    optimizer = torch.optim.AdamW(meta.parameters(), lr=cfg.phi_lr, amsgrad=True, weight_decay=0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.meta_epochs)
    rng, generator = random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    index = {key: row for row, key in enumerate(keys)}
    history = []
    model.eval()
    meta.train()
    for _ in range(cfg.meta_epochs):
        chunks = identity_chunks(keys, cfg.n_simulated, rng)[: cfg.max_requests_per_epoch]
        for chunk in chunks:
            request = simulate_request(chunk, data, index, cfg.batch_size, generator)
            objective = outer_objective(model, meta, data.task, request, cfg)
            optimizer.zero_grad(set_to_none=True)
            objective.backward(inputs=list(meta.parameters()))
            optimizer.step()
            history.append(objective.item())
        schedule.step()
    meta.eval()
    return history


def export_artifacts(
    meta: MetaLoss,
    keys: list[str],
    model: nn.Module,
    task: TaskSpec,
    cfg: MetaUnlearnConfig,
    history: list[float],
) -> Artifacts:
    """φ, the identity index and the config, as plain tensors and values (`weights_only` safe)."""
    config = {
        **dataclasses.asdict(cfg),
        "num_outputs": task.num_outputs,
        "feature_dim": feature_dim(model),
        "task_kind": task.kind,
    }
    state = {name: t.detach().cpu().clone() for name, t in meta.state_dict().items()}
    return {"meta_loss": state, "identity_keys": list(keys), "config": config, "history": history}
