"""Stranger: teach the model to see the person as a stranger would, pinned on unseen faces.

A Lethe method, in no peer. A model that never met a person predicts their labels from what the
photo shows; a model that trained on them also recalls their annotations (the quirks an
annotator gave them, the labels of their exact photos). At onboarding, `prepare` fits a
*stranger probe*, a linear probe on features of the ImageNet network of the installed wheel,
which has seen no face, on VAL photos (people outside TRAIN), and keeps a few VAL images as
anchors (models/methods/stranger_probe.py). At erasure, the support portraits and fixed random
crops and flips of them are fitted, for `steps` Adam steps, to the probe's outputs on them (soft
labels, or its class for a multi-class task), while KL(original ‖ model) on the anchors keeps the
model's outputs on unseen people where they were. Only parameters with `requires_grad` move,
less those `hold` names (on the pretrained preset, for one portrait and for 8 or more, the last
stage and the head move while the stage before holds; 2–7 portraits move the whole tail, which
closed the gap more evenly across calibration draws: configs/stranger.toml); a frozen trunk runs
once per erasure, not once per step.

What it keeps with a model version: the probe (its standardization and weights, and the SHA-256
of the extractor weights) and `anchors` VAL images after the test transform (float16). VAL holds
no one from TRAIN, so no anchor shows a person who may ask to be erased from this model; the
operator needs the same right to keep them as to hold VAL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms import v2

from models.methods.base import Artifacts, PrepareData, UnlearningMethod, UnlearnRequest
from models.methods.common import Distill, distill_kl, seeded
from models.methods.registry import register_method
from models.methods.stranger_probe import Probe, extractor, fit_probe, stranger_features
from models.metrics.scores import per_sample_loss
from models.nets.trunk import frozen_depth, run_tail, run_trunk


@dataclass(frozen=True)
class StrangerConfig:
    """Hyper-parameters of Stranger."""

    lr: float = 5e-4  # Adam
    steps: int = 80
    anchor_weight: float = 1.0  # β of the distillation term on the anchors
    anchors: int = 128  # VAL images kept at onboarding (all of VAL if it holds fewer)
    anchor_batch: int = 64  # anchors per step
    views: int = 4  # random crops and flips of each portrait, drawn once per erasure
    crop_scale: float = 0.7  # smallest area share of a random crop
    # parameter-name prefixes the erasure leaves where they are, besides what the model froze
    # (e.g. "blocks.5": a stage); leading stages held so join the trunk that runs once
    hold: tuple[str, ...] = ()
    temperature: float = 1.0
    distill: Distill = "sigmoid"
    probe_l2: float = 1e-3  # the stranger probe's weight decay
    seed: int = 0  # anchor choice at onboarding; views and anchor batches at erasure
    batch_size: int = 64  # VAL images per forward pass at onboarding


@register_method("stranger")
class Stranger(UnlearningMethod):
    """Fit the portraits to a stranger probe's view of them while distilling on VAL anchors."""

    Config = StrangerConfig

    def prepare(self, model: nn.Module, data: PrepareData, cfg: StrangerConfig) -> Artifacts:
        """The stranger probe, fitted on VAL, and `anchors` VAL images."""
        val, targets = data.val_images, data.val_targets
        if val is None or targets is None or len(val) == 0:
            raise ValueError("stranger needs VAL images at onboarding; none were given")
        generator = torch.Generator().manual_seed(cfg.seed)
        rows = torch.randperm(len(val), generator=generator)[: cfg.anchors].sort().values
        anchors = val[rows.tolist()].to(torch.float16).cpu()
        net = extractor(int(anchors.shape[-1]), next(model.parameters()).device)
        features = stranger_features(net, val, cfg.batch_size).cpu()
        probe = fit_probe(features, targets, data.task, cfg.probe_l2)
        return {"probe": probe.to_dict(), "anchors": anchors}

    def unlearn(
        self, model: nn.Module, request: UnlearnRequest, artifacts: Artifacts, cfg: StrangerConfig
    ) -> nn.Module:
        """`steps` Adam steps on loss(views, probe outputs) + β·KL(original‖model) on anchors."""
        first = next(model.parameters())
        device, dtype = first.device, first.dtype
        kind = request.task.kind
        images = request.images.to(device=device, dtype=dtype)
        probe = Probe(**artifacts["probe"])
        probe.check_extractor()
        net = extractor(int(images.shape[-1]), device)
        probe_logits = probe.logits(stranger_features(net, images))
        targets = torch.sigmoid(probe_logits) if kind == "multilabel" else probe_logits.argmax(1)
        anchors = artifacts["anchors"].to(device=device, dtype=dtype)
        model.eval()
        with seeded(cfg.seed, device), holding(model, tuple(cfg.hold)):
            depth = frozen_depth(model)
            augment = v2.Compose(
                [
                    v2.RandomResizedCrop(list(images.shape[-2:]), scale=(cfg.crop_scale, 1.0)),
                    v2.RandomHorizontalFlip(),
                ]
            )
            views = [images, *(torch.stack([augment(x) for x in images]) for _ in range(cfg.views))]
            with torch.no_grad():
                inputs = _trunk(model, depth, torch.cat(views))
                anchors = _trunk(model, depth, anchors)
                teacher = _logits(model, depth, anchors)
            y = targets.repeat(len(views), *([1] * (targets.dim() - 1)))
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(params, lr=cfg.lr)
            with torch.enable_grad():  # the caller may run erasures under no_grad
                for _ in range(cfg.steps):
                    forget = per_sample_loss(kind, _logits(model, depth, inputs), y).mean()
                    pick = torch.randperm(len(anchors), device=device)[: cfg.anchor_batch]
                    student = _logits(model, depth, anchors[pick])
                    keep = distill_kl(kind, student, teacher[pick], cfg.temperature, cfg.distill)
                    optimizer.zero_grad(set_to_none=True)
                    (forget + cfg.anchor_weight * keep).backward()
                    optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return model


@contextmanager
def holding(model: nn.Module, prefixes: tuple[str, ...]) -> Iterator[None]:
    """`model`'s trainable parameters under `prefixes` frozen for the duration, then trainable
    again; a ValueError for a prefix that names no parameter."""
    named = dict(model.named_parameters())
    held = []
    for prefix in prefixes:
        chosen = [p for n, p in named.items() if n == prefix or n.startswith(prefix + ".")]
        if not chosen:
            raise ValueError(f"stranger: hold names no parameter of the model: {prefix!r}")
        held += [p for p in chosen if p.requires_grad]
    for p in held:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in held:
            p.requires_grad_(True)


def _trunk(model: nn.Module, depth: int | None, images: torch.Tensor) -> torch.Tensor:
    """A frozen trunk's outputs on `images` (they never change: computed once per erasure), or
    the images themselves when the model froze no trunk."""
    return images if depth is None else run_trunk(model, depth, images)


def _logits(model: nn.Module, depth: int | None, inputs: torch.Tensor) -> torch.Tensor:
    """The model's logits on what `_trunk` returned."""
    return model(inputs) if depth is None else run_tail(model, depth, inputs)
