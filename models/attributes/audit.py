"""The audit of an attribute in a model: fresh probes on its pre-logit feature and its outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from concept_erasure import LeaceEraser
from torch import nn
from torch.utils.data import DataLoader

from models.attributes.labels import AttributeLabels
from models.attributes.leace import served
from models.attributes.probes import ProbeScore, ProbeSet, linear_probe, mlp_probe, shuffled
from models.data.base import FaceData
from models.data.torch_dataset import FaceSubset
from models.data.transforms import test_transform
from models.device import autocast
from models.nets import data_config, features_and_logits

# The original model must encode the attribute this far above chance for an erasure to be needed
ENCODED_MARGIN = 0.15


@torch.inference_mode()
def model_outputs(
    model: nn.Module,
    data: FaceData,
    rows: Sequence[int],
    image_size: int,
    device: torch.device,
    erasers: Sequence[LeaceEraser] = (),
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Features and logits (float64, CPU) of `rows` under the test transform: the pre-logit
    feature with `erasers` (those folded into the head, oldest first) applied, as the head
    reads it."""
    model = model.to(device).eval()
    task = next(iter(data.tasks))  # the target is not used: any task gives the images
    subset = FaceSubset(data, rows, task, test_transform(data_config(model, image_size)))
    features, logits = [], []
    for images, _ in DataLoader(subset, batch_size=batch_size):
        with autocast(device):
            pooled, out = features_and_logits(model, images.to(device))
        features.append(served(pooled.double().cpu(), erasers))
        logits.append(out.double().cpu())
    return torch.cat(features).numpy(), torch.cat(logits).numpy()


@dataclass(frozen=True)
class AttributeAudit:
    """How well fresh probes read one attribute from a model, against chance and the task."""

    attribute: str
    chance: float
    linear: ProbeScore  # on the pre-logit feature
    mlp: ProbeScore | None  # on the pre-logit feature
    control: ProbeScore  # the linear probe fitted and scored on permuted labels
    task_floor: ProbeScore  # the linear probe on the task's outputs: what the task reveals

    @property
    def encoded(self) -> bool:
        """Whether the feature encodes the attribute enough for an erasure to be needed."""
        return self.linear.balanced_accuracy >= self.chance + ENCODED_MARGIN

    @property
    def floor(self) -> float:
        """The level no erasure of the feature can be asked to go below: chance or what the
        task's own outputs reveal, whichever is higher."""
        return max(self.chance, self.task_floor.balanced_accuracy)

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON."""
        return {
            "attribute": self.attribute,
            "chance": self.chance,
            "linear": self.linear.to_dict(),
            "mlp": None if self.mlp is None else self.mlp.to_dict(),
            "control": self.control.to_dict(),
            "task_floor": self.task_floor.to_dict(),
            "floor": self.floor,
            "encoded": self.encoded,
        }


def audit_attribute(
    model: nn.Module,
    data: FaceData,
    labels: AttributeLabels,
    probe_train: Sequence[int],
    probe_test: Sequence[int],
    image_size: int,
    device: torch.device,
    mlp: bool = True,
    erasers: Sequence[LeaceEraser] = (),
) -> AttributeAudit:
    """Fit probes on `probe_train` rows and score them on `probe_test` rows (identity-disjoint,
    neither seen by an eraser) of `data`, whose attribute classes `labels` holds; the feature
    probed is the one the head reads (`erasers` folded into it, oldest first)."""
    rows = [*probe_train, *probe_test]
    features, logits = model_outputs(model, data, rows, image_size, device, erasers)
    groups = np.asarray(data.identities, dtype=object)[rows]
    values = labels.values[rows]
    split = len(probe_train)

    def sides(x: np.ndarray) -> tuple[ProbeSet, ProbeSet]:
        return (
            ProbeSet(x[:split], values[:split], groups[:split]),
            ProbeSet(x[split:], values[split:], groups[split:]),
        )

    train, test = sides(features)
    linear = linear_probe(train, test)
    return AttributeAudit(
        attribute=labels.name,
        chance=linear.chance,  # over the classes the probe sets hold
        linear=linear,
        mlp=mlp_probe(train, test) if mlp else None,
        control=linear_probe(shuffled(train), shuffled(test, seed=1)),
        task_floor=linear_probe(*sides(logits)),
    )
