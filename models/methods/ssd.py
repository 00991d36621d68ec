"""SSD: Selective Synaptic Dampening (Foster et al., AAAI 2024).

Diagonal-Fisher importances I_D over the training data (prepared at onboarding) and I_S over the
support images; every parameter entry with I_S > α·I_D is multiplied by min(λ·I_D/I_S, 1). No
gradient steps. As in the reference, importances are squared gradients of the *batch-mean* task
loss averaged over batches, taken in eval mode, and the rule covers every parameter tensor
(biases and norms included); the task loss is BCE-with-logits on multi-label tasks and
cross-entropy on multi-class ones, as in the 1-SHUI reference code.

I_D is taken over TRAIN in a seeded random order, as the reference's shuffled loader does: a
squared batch-mean gradient over batches that each hold few identities (data-set order) is much
larger than over mixed batches, and would leave most entries undampened. The rows are put in a
canonical order first, so the batches depend on the seed only, not on how TRAIN was listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from models.data.base import TaskKind
from models.methods.base import Artifacts, PrepareData, UnlearningMethod, UnlearnRequest
from models.methods.common import TargetSource, support_targets, task_loss
from models.methods.registry import register_method

Importances = dict[str, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class SSDConfig:
    """Hyper-parameters of SSD (defaults: the original repository's ResNet setting)."""

    dampening_constant: float = 1.0  # λ
    selection_weighting: float = 10.0  # α
    batch_size: int = 128
    targets: TargetSource = "pseudo"  # production portraits come without labels
    shuffle_seed: int | None = 0  # I_D's batch order; None: TRAIN's own order (biased, see above)


def rebatch(batches: Iterable[Batch], size: int) -> Iterator[Batch]:
    """Regroup (images, targets) batches into batches of exactly `size` (the last may be short).

    The squared batch-mean gradient depends on the batch size, so I_D and I_S must share one.
    """
    images: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    held = 0
    for x, y in batches:
        images.append(x)
        targets.append(y)
        held += x.shape[0]
        while held >= size:
            all_x, all_y = torch.cat(images), torch.cat(targets)
            yield all_x[:size], all_y[:size]
            images, targets, held = [all_x[size:]], [all_y[size:]], held - size
    if held:
        yield torch.cat(images), torch.cat(targets)


def shuffled(loader: DataLoader[Batch], seed: int | None) -> Iterable[Batch]:
    """The loader's rows in an order set by `seed` alone (None: the loader as it is)."""
    if seed is None:
        return loader
    dataset = loader.dataset
    rows = getattr(dataset, "indices", None)
    canonical = (
        sorted(range(len(rows)), key=rows.__getitem__)
        if isinstance(rows, list)
        else list(range(len(dataset)))  # type: ignore[arg-type]
    )
    order = torch.randperm(len(canonical), generator=torch.Generator().manual_seed(seed))
    picked = Subset(dataset, [canonical[k] for k in order.tolist()])
    return DataLoader(picked, batch_size=loader.batch_size or 64)


def importances(model: nn.Module, kind: TaskKind, batches: Iterable[Batch]) -> Importances:
    """Mean over batches of the squared gradient of the batch-mean task loss, per parameter."""
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    totals = {n: torch.zeros_like(p) for n, p in named}
    device = named[0][1].device
    count = 0
    for images, targets in batches:
        loss = task_loss(kind, model(images.to(device)), targets.to(device))
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        for (name, _), grad in zip(named, grads, strict=True):
            if grad is not None:
                totals[name] += grad.detach() ** 2
        count += 1
    if count == 0:
        raise ValueError("no data to compute importances on")
    return {name: total / count for name, total in totals.items()}


@torch.no_grad()
def dampen(
    model: nn.Module, data_imp: Importances, support_imp: Importances, cfg: SSDConfig
) -> None:
    """Shrink, in place, each entry whose support importance exceeds α times its data one."""
    for name, param in model.named_parameters():
        if name not in support_imp:
            continue
        if name not in data_imp:
            raise KeyError(f"prepared importances lack parameter {name!r}; re-run preparation")
        oimp = data_imp[name].to(param.device, param.dtype)
        fimp = support_imp[name]
        mask = fimp > cfg.selection_weighting * oimp
        factor = (cfg.dampening_constant * oimp / fimp).clamp(max=1.0)
        param[mask] = param[mask] * factor[mask]


@register_method("ssd")
class SSD(UnlearningMethod):
    """Selective Synaptic Dampening: needs the support images and prepared importances."""

    Config = SSDConfig
    on_tail = True

    def prepare(self, model: nn.Module, data: PrepareData, cfg: SSDConfig) -> Artifacts:
        """I_D over the training data, regrouped into `cfg.batch_size` batches."""
        return {
            "importances": importances(
                model,
                data.task.kind,
                rebatch(shuffled(data.train, cfg.shuffle_seed), cfg.batch_size),
            )
        }

    def unlearn(
        self, model: nn.Module, request: UnlearnRequest, artifacts: Artifacts, cfg: SSDConfig
    ) -> nn.Module:
        """Compute I_S on the support images and dampen the selected parameters."""
        if "importances" not in artifacts:
            raise ValueError("ssd needs the importances from its prepare step; none were given")
        targets = support_targets(model, request, cfg.targets)
        images = request.images.to(targets.device)
        batches = zip(images.split(cfg.batch_size), targets.split(cfg.batch_size), strict=True)
        support_imp = importances(model, request.task.kind, batches)
        dampen(model, artifacts["importances"], support_imp, cfg)
        model.eval()
        return model
