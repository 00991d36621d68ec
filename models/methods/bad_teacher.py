"""Bad Teacher (Chundawat et al., AAAI 2023) as run by 1-SHUI: a privileged benchmark reference.

The student is the model itself (trained in place). Over shuffled batches of forget ∪ retain it
minimises the batch-mean KL(teacher‖student) (`F.kl_div(log student, teacher)`, as in the
reference) where the teacher is the incompetent one on forget samples and the competent one (a
frozen copy of the original) on retain samples. SGD with momentum and weight decay, learning rate
cosine-annealed per epoch; the student trains in train mode, the teachers stay in eval mode.

Deviation: the reference's incompetent teacher is a randomly initialised ViT-B/16 whatever the
model; here it is the model's own architecture, re-initialised (every module with
`reset_parameters`, seeded by `seed`; parameters held directly by other modules, such as a ViT's
position embedding, keep the original values). Where the benchmark runs it on a network's tail
over a frozen trunk's cached outputs (`models.nets.trunk.Tail`), the incompetent teacher is the
re-initialised tail over the shared, pretrained trunk. The union is re-batched from the
loaders' datasets (map-style, yielding (image, target) pairs) with the retain loader's batch size
and collate function unless `batch_size` is set; `retain_fraction` < 1 draws a fixed random
subset of retain (1.0, the full retain set, is 1-SHUI's setting). `distill` is SCRUB's switch:
"softmax" reproduces the reference's softmax over all outputs, also on multi-label tasks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, Subset

from models.data.base import TaskKind
from models.methods.base import Artifacts, UnlearningMethod, UnlearnRequest
from models.methods.common import (
    Distill,
    Loader,
    distill_kl,
    frozen_copy,
    require_data,
    seeded,
    train_epochs,
)
from models.methods.registry import register_method

FlaggedBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class BadTeacherConfig:
    """Hyper-parameters of Bad Teacher (defaults: the reference's CelebA setting)."""

    lr: float = 1e-4
    epochs: int = 5
    temperature: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    retain_fraction: float = 1.0  # share of the retain set mixed with the forget set
    batch_size: int | None = None  # None: the retain loader's
    distill: Distill = "softmax"  # reference: softmax over all outputs, even multi-label ones
    seed: int = 0


class Flagged(Dataset[tuple[Any, Any, int]]):
    """A map-style dataset's (image, target) items with a constant forget flag appended."""

    def __init__(self, data: Dataset[tuple[Any, Any]], flag: int) -> None:
        self.data, self.flag = data, flag

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        image, target = self.data[index]
        return image, target, self.flag


class FlaggedCollate:
    """Collate (image, target, flag) items with the caller's collate function plus a flag tensor."""

    def __init__(self, collate: Callable[[list[tuple[Any, Any]]], Sequence[torch.Tensor]]) -> None:
        self.collate = collate

    def __call__(self, items: list[tuple[Any, Any, int]]) -> FlaggedBatch:
        images, targets = self.collate([(image, target) for image, target, _ in items])
        return images, targets, torch.tensor([flag for _, _, flag in items], dtype=torch.bool)


def map_style(loader: Loader, name: str) -> Dataset[tuple[Any, Any]]:
    """The loader's dataset, which must support indexing and `len`."""
    data = loader.dataset
    if isinstance(data, IterableDataset) or not hasattr(data, "__len__"):
        raise ValueError(f"bad_teacher needs a map-style {name} dataset to mix forget and retain")
    return data


def union_loader(forget: Loader, retain: Loader, cfg: BadTeacherConfig) -> DataLoader[FlaggedBatch]:
    """Shuffled batches of forget ∪ (a `retain_fraction` subset of) retain, forget rows flagged."""
    if not 0.0 < cfg.retain_fraction <= 1.0:
        raise ValueError(f"retain_fraction must be in (0, 1]; got {cfg.retain_fraction}")
    batch_size = cfg.batch_size or retain.batch_size or forget.batch_size
    if batch_size is None:
        raise ValueError("bad_teacher needs a batch_size: set it, or give loaders that have one")
    generator = torch.Generator().manual_seed(cfg.seed)
    retain_data = map_style(retain, "retain")
    if cfg.retain_fraction < 1.0:
        size = len(retain_data)  # type: ignore[arg-type]
        keep = max(1, round(cfg.retain_fraction * size))
        retain_data = Subset(retain_data, torch.randperm(size, generator=generator)[:keep].tolist())
    union = ConcatDataset([Flagged(map_style(forget, "forget"), 1), Flagged(retain_data, 0)])
    return DataLoader(
        union,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        num_workers=retain.num_workers,
        collate_fn=FlaggedCollate(retain.collate_fn),
        pin_memory=retain.pin_memory,
    )


def incompetent_teacher(model: nn.Module, seed: int) -> nn.Module:
    """A frozen copy of `model` with every module that can re-initialise itself re-initialised."""
    teacher = copy.deepcopy(model)
    with seeded(seed, next(model.parameters()).device):
        for module in teacher.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return frozen_copy(teacher)


@torch.no_grad()
def teacher_logits(
    good: nn.Module, bad: nn.Module, images: torch.Tensor, forget_rows: torch.Tensor
) -> torch.Tensor:
    """The incompetent teacher's outputs on forget rows and the competent one's on the others."""
    out: torch.Tensor | None = None
    for rows, teacher in ((forget_rows, bad), (~forget_rows, good)):
        if rows.any():
            logits = teacher(images[rows]).float()
            if out is None:
                out = logits.new_empty((images.shape[0], logits.shape[1]))
            out[rows] = logits
    if out is None:
        raise ValueError("empty batch")
    return out


def distill_epoch(
    model: nn.Module,
    teachers: tuple[nn.Module, nn.Module],
    batches: DataLoader[FlaggedBatch],
    kind: TaskKind,
    opt: torch.optim.SGD,
    cfg: BadTeacherConfig,
) -> None:
    """One pass over the union, distilling each row from its teacher."""
    device = opt.param_groups[0]["params"][0].device
    for images, _, flags in batches:
        images, flags = images.to(device), flags.to(device)
        target = teacher_logits(*teachers, images, flags)
        loss = distill_kl(kind, model(images), target, cfg.temperature, cfg.distill)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@register_method("bad_teacher")
class BadTeacher(UnlearningMethod):
    """Bad Teacher: distil forget from a random network, retain from the original; privileged."""

    Config = BadTeacherConfig
    on_tail = True  # its incompetent teacher is then a re-initialised tail

    def unlearn(
        self, model: nn.Module, request: UnlearnRequest, artifacts: Artifacts, cfg: BadTeacherConfig
    ) -> nn.Module:
        """Train the model in place for `epochs` passes over forget ∪ retain."""
        forget, retain = require_data(request, self.name)
        batches = union_loader(forget, retain, cfg)
        teachers = (frozen_copy(model), incompetent_teacher(model, cfg.seed))
        kind = request.task.kind

        def run_epoch(epoch: int, opt: torch.optim.SGD) -> None:
            distill_epoch(model, teachers, batches, kind, opt, cfg)

        return train_epochs(
            model, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs, cfg.seed, run_epoch
        )
