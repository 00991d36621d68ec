"""MetaUnlearn: a meta-learned loss whose single gradient step on the support images unlearns.

While the training data exists, `prepare` meta-trains a small loss network h_φ by simulating
deletion requests over the TRAIN identities: one differentiable step θ_u = θ − η·∇θ M(θ, φ) on a
simulated support set, then φ is updated so that the simulated forget images reach, under θ_u,
the loss × error level of unseen (VAL) identities. `unlearn` applies that one step to the real
support portraits (research notes `one-shot-identity-unlearning.md` §3).

Choices this implementation makes (notes §7): support targets are the original model's own
predictions by default (`targets="pseudo"`), used alike in meta-training and at erasure; an
identity outside the index is rejected; the distance is Smooth-L1 (β = 1); σ(logits) is used even
for multi-class tasks (reference parity); meta-training runs in the model's dtype (fp32, no bf16
autocast) with the math attention kernel.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from models.data.base import TaskSpec
from models.methods.base import Artifacts, PrepareData, UnlearningMethod, UnlearnRequest
from models.methods.registry import register_method
from models.metrics.scores import batch_score_fraction, per_sample_loss
from models.nets import features_and_logits

TargetMode = Literal["pseudo", "given", "none"]
Distance = Literal["smooth_l1", "l1", "l2"]
LossType = Literal["full", "rev"]
Batch = tuple[torch.Tensor, torch.Tensor]
Params = dict[str, torch.Tensor]

# Fields that shape h_φ or its input: erasure must use the values φ was meta-trained with.
_STRUCTURAL = ("emb_dim", "hidden", "targets", "use_feats", "use_ids", "use_targets")


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
    # "full": the reference objective; "rev": ℓ_v^unl keeps its gradient and a third term
    # D(ℓ_v^unl, ℓ_v^orig) keeps VAL behaviour unchanged by the step (notes §3.4).
    loss_type: LossType = "full"
    use_accs: bool = True  # weight task losses by (1 − batch score)
    targets: TargetMode = "pseudo"
    use_feats: bool = True
    use_ids: bool = True
    use_targets: bool = True
    max_requests_per_epoch: int | None = None  # None: every chunk of N_s identities
    seed: int = 0


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


def _model_forward(
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


def trainable(model: nn.Module) -> Params:
    """The parameters the step updates (those that require a gradient)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _gradients(
    loss: torch.Tensor, params: Params, create_graph: bool
) -> dict[str, torch.Tensor | None]:
    """∇ of `loss` for each parameter (None where it does not depend on it)."""
    grads = torch.autograd.grad(
        loss, list(params.values()), create_graph=create_graph, allow_unused=True
    )
    return dict(zip(params, grads, strict=True))


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
    params = trainable(model)
    loss = support_meta_loss(
        _model_forward(model),
        meta,
        task,
        request.support,
        request.rows,
        request.support_targets,
        cfg.targets,
        cfg.batch_size,
    )
    grads = _gradients(loss, params, create_graph=True)
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
        after = _model_forward(model, unlearned)
        frozen_after = _model_forward(model, {name: p.detach() for name, p in unlearned.items()})
        before = _model_forward(model)
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
    """A = Σ|b|·(D(ℓ_f, ℓ_v^orig) + D(ℓ_f, ℓ_v^unl) [+ D(ℓ_v^unl, ℓ_v^orig)]) / Σ|b|."""
    assert losses.sizes, "a simulated request needs at least one forget batch"
    terms = []
    for forget, before, after, size in zip(
        losses.forget, losses.val_before, losses.val_after, losses.sizes, strict=True
    ):
        if loss_type == "rev":
            term = (
                distance(forget, before, kind)
                + distance(forget, after, kind)
                + distance(after, before, kind)
            )
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
    images: torch.Tensor, targets: torch.Tensor, batch_size: int, generator: torch.Generator
) -> list[Batch]:
    """Shuffled batches of (images, targets)."""
    order = torch.randperm(len(images), generator=generator)
    return [(images[b], targets[b]) for b in order.split(batch_size)]


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
    images, targets = _require(data)[:2]
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
    val_batches = _batches(*_require(data)[2:], batch_size, generator)
    return SimulatedRequest(
        support=torch.stack(support),
        rows=torch.tensor([index[key] for key in chunk]),
        support_targets=torch.stack(support_targets),
        forget=forget_batches,
        val=list(itertools.islice(itertools.cycle(val_batches), len(forget_batches))),
    )


def _require(
    data: PrepareData,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
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


def identity_rows(keys: Sequence[str], identities: Sequence[str]) -> torch.Tensor:
    """Rows of the identity table for `identities`; ValueError for a key the index lacks."""
    index = {key: row for row, key in enumerate(keys)}
    missing = [ident for ident in identities if ident not in index]
    if missing:
        raise ValueError(f"identity {missing[0]!r} is not in the identity index")
    return torch.tensor([index[ident] for ident in identities])


def _check_compatible(stored: dict[str, Any], cfg: MetaUnlearnConfig) -> None:
    """Refuse an erasure config that differs from the one h_φ was meta-trained with."""
    differ = [f for f in _STRUCTURAL if stored[f] != getattr(cfg, f)]
    if differ:
        raise ValueError(f"h_phi was meta-trained with different {differ}; prepare it again")


@register_method("metaunlearn")
class MetaUnlearn(UnlearningMethod):
    """MetaUnlearn: meta-train h_φ at onboarding, then one gradient step of it per request."""

    needs = "support"
    Config = MetaUnlearnConfig

    def prepare(self, model: nn.Module, data: PrepareData, cfg: MetaUnlearnConfig) -> Artifacts:
        """Meta-train h_φ over simulated requests of TRAIN identities; return φ and the index."""
        identities = _require(data)[0]
        keys = sorted(identities)
        device = next(model.parameters()).device
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.enable_grad():
            torch.manual_seed(cfg.seed)  # φ's initialisation and its dropout masks
            meta = build_meta_loss(model, data.task, len(keys), cfg)
            meta = meta.to(device=device, dtype=next(model.parameters()).dtype)
            history = meta_train(model, meta, data, keys, cfg)
        return export_artifacts(meta, keys, model, data.task, cfg, history)

    def unlearn(
        self,
        model: nn.Module,
        request: UnlearnRequest,
        artifacts: Artifacts,
        cfg: MetaUnlearnConfig,
    ) -> nn.Module:
        """One plain step θ ← θ − η·∇θ M on the support images, h_φ frozen."""
        _check_compatible(artifacts["config"], cfg)
        rows = identity_rows(artifacts["identity_keys"], request.identities)
        first = next(model.parameters())
        meta = load_meta_loss(artifacts, first.device, first.dtype)
        model.eval()
        params = trainable(model)
        with torch.enable_grad():  # the caller may run erasures under no_grad
            loss = support_meta_loss(
                _model_forward(model),
                meta,
                request.task,
                request.images,
                rows.to(first.device),
                request.targets,
                cfg.targets,
                cfg.batch_size,
            )
            grads = _gradients(loss, params, create_graph=False)
        with torch.no_grad():
            for name, p in params.items():
                grad = grads[name]
                if grad is not None:
                    p.sub_(cfg.inner_lr * grad)
        return model
