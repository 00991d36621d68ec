"""MI detachment (seed-inspired): fine-tune a network so its feature stops encoding an attribute.

Guo et al. (arXiv 2202.13295) detach attributes from the representation "according to their
mutual information", progressively over training; the paper's text and code are not available,
so every guess about it is a named switch (`MIDetachConfig`) with its likely reading as default:

- the estimate of I(h; z): `club_cat`, the categorical CLUB upper bound (Cheng et al. 2020)
  mean_i [log q(z_i|h_i) − Σ_k p̂_k log q(k|h_i)] with q an MLP trained by maximum likelihood on
  the detached feature; or `ba_adv`, H(z) − CE(q(h), z), a lower bound, which makes the
  objective a min-max like a gradient-reversal adversary;
- its weight λ_z(t), ramped up over training (`linear`, `dann` 2/(1+e^{−10p}) − 1, or `const`):
  the "progressive elimination";
- what keeps the rest (`preserve`): `distill`, KL from the deployed model's outputs, or `none`;
- q's updates per model step (`q_steps`) and its warm start on the frozen feature
  (`q_pretrain_epochs`), the "acceleration" guesses; what trains (`trainable`).

The loss per batch: task CE + λ_z(t)·max(Î(h; z), 0) + λ_x·KL(teacher ‖ model).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from models.attributes.labels import AttributeLabels
from models.data.base import FaceData
from models.data.torch_dataset import FaceSubset
from models.data.transforms import test_transform
from models.methods.common import distill_kl, seeded, task_loss
from models.nets import data_config, features_and_logits

Estimator = Literal["club_cat", "ba_adv"]
Schedule = Literal["linear", "dann", "const"]
Trainable = Literal["all", "last_stage"]

# The last stage of the architectures Lethe trains, with everything after it (`trainable`).
LAST_STAGE = {
    "layer4": ("layer4", "fc"),  # timm ResNets
    "blocks": ("blocks.6", "conv_head", "bn2", "classifier"),  # timm EfficientNet-Lite0
}


@dataclass(frozen=True)
class MIDetachConfig:
    """The switches of MI detachment; defaults are the seed paper's likely reading."""

    estimator: Estimator = "club_cat"
    lambda_z: float = 1.0
    schedule: Schedule = "linear"
    warmup_fraction: float = 0.1  # `linear`: share of the steps over which λ_z ramps up
    preserve: Literal["distill", "none"] = "distill"
    lambda_x: float = 1.0
    temperature: float = 2.0
    epochs: int = 5
    lr: float = 1e-2
    momentum: float = 0.9
    batch_size: int = 64
    q_hidden: int = 256
    q_lr: float = 1e-3
    q_steps: int = 1
    q_pretrain_epochs: int = 1
    trainable: Trainable = "all"
    seed: int = 0


class AttributeQ(nn.Module):
    """q(z | h): an MLP from the feature to the attribute's classes."""

    def __init__(self, width: int, classes: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of every class."""
        return self.net(h).log_softmax(dim=1)


def mi_estimate(
    estimator: Estimator, log_q: torch.Tensor, z: torch.Tensor, prior: torch.Tensor
) -> torch.Tensor:
    """Î(h; z) from q's log-probabilities on a batch, the batch's classes and p̂(z)."""
    own = log_q.gather(1, z.unsqueeze(1)).squeeze(1)
    if estimator == "club_cat":
        return (own - log_q @ prior).mean()
    if estimator == "ba_adv":
        entropy = -(prior * prior.clamp_min(1e-12).log()).sum()
        return entropy + own.mean()
    raise ValueError(f"unknown MI estimator {estimator!r}; expected 'club_cat' or 'ba_adv'")


def ramp(schedule: Schedule, progress: float, warmup_fraction: float) -> float:
    """λ_z's factor at `progress` (0 → 1) through training."""
    if schedule == "const":
        return 1.0
    if schedule == "linear":
        return min(1.0, progress / warmup_fraction) if warmup_fraction > 0 else 1.0
    if schedule == "dann":
        return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0
    raise ValueError(f"unknown schedule {schedule!r}; expected 'linear', 'dann' or 'const'")


class _Labelled(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """(image, task target, attribute class) for rows of a data set."""

    def __init__(self, images: FaceSubset, classes: np.ndarray) -> None:
        self.images, self.classes = images, torch.from_numpy(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, target = self.images[k]
        return image, target, self.classes[k]


def _trainable(model: nn.Module, scope: Trainable) -> list[nn.Parameter]:
    """The parameters `scope` trains; the others are frozen for the run."""
    if scope == "all":
        return [p for p in model.parameters() if p.requires_grad]
    stage = next((names for key, names in LAST_STAGE.items() if hasattr(model, key)), None)
    if stage is None:
        raise ValueError(f"no last stage known for {type(model).__name__}; use trainable='all'")
    chosen = [
        p for name, p in model.named_parameters() if p.requires_grad and name.startswith(stage)
    ]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in chosen:
        p.requires_grad_(True)
    return chosen


def mi_detach(
    model: nn.Module,
    data: FaceData,
    task: str,
    rows: Sequence[int],
    labels: AttributeLabels,
    image_size: int,
    device: torch.device,
    cfg: MIDetachConfig,
) -> dict[str, Any]:
    """Fine-tune `model` in place on `rows` so its pre-logit feature sheds `labels`' attribute;
    returns the record a version keeps (the config, counts, the last Î, seconds)."""
    kind = data.task(task).kind
    subset = FaceSubset(data, rows, task, test_transform(data_config(model, image_size)))
    classes = labels.values[np.asarray(rows)]
    prior = torch.bincount(torch.from_numpy(classes), minlength=labels.classes).double()
    prior = (prior / prior.sum()).float().to(device)
    model.to(device)
    teacher = (
        copy.deepcopy(model).eval().requires_grad_(False) if cfg.preserve == "distill" else None
    )
    width = int(model.num_features)  # type: ignore[arg-type]
    frozen = {name: not p.requires_grad for name, p in model.named_parameters()}
    params = _trainable(model, cfg.trainable)
    # a part-trained network keeps its BatchNorm statistics: eval mode throughout
    train_mode = cfg.trainable == "all"
    estimates: list[float] = []
    with seeded(cfg.seed, device):
        q = AttributeQ(width, labels.classes, cfg.q_hidden).to(device)
        q_opt = torch.optim.Adam(q.parameters(), lr=cfg.q_lr, betas=(0.5, 0.999))
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
        generator = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(
            _Labelled(subset, classes), batch_size=cfg.batch_size, shuffle=True, generator=generator
        )
        model.eval()
        for _ in range(cfg.q_pretrain_epochs):  # q fitted on the frozen feature first
            for images, _, z in loader:
                with torch.no_grad():
                    h, _ = features_and_logits(model, images.to(device))
                q_opt.zero_grad(set_to_none=True)
                F.nll_loss(q(h), z.to(device)).backward()
                q_opt.step()
        total, step = cfg.epochs * len(loader), 0
        model.train(train_mode)
        for _ in range(cfg.epochs):
            for images, targets, z in loader:
                images, targets, z = images.to(device), targets.to(device), z.to(device)
                h, logits = features_and_logits(model, images)
                for _ in range(cfg.q_steps):
                    q_opt.zero_grad(set_to_none=True)
                    F.nll_loss(q(h.detach()), z).backward()
                    q_opt.step()
                estimate = mi_estimate(cfg.estimator, q(h), z, prior)
                weight = cfg.lambda_z * ramp(cfg.schedule, step / total, cfg.warmup_fraction)
                loss = task_loss(kind, logits, targets) + weight * estimate.clamp_min(0)
                if teacher is not None:
                    with torch.no_grad():
                        target = teacher(images)
                    loss = loss + cfg.lambda_x * distill_kl(
                        kind, logits, target, cfg.temperature, "sigmoid"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                estimates.append(float(estimate))
                step += 1
    for name, p in model.named_parameters():
        p.requires_grad_(not frozen[name])
    model.eval()
    return {
        "method": "mi_detach",
        "attributes": [labels.name],
        "guarantee": "probe-tested",
        "scope": "network",
        "config": asdict(cfg),
        "fit_images": len(rows),
        "last_estimate": float(np.mean(estimates[-len(loader) :])) if estimates else None,
    }
