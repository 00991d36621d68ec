"""The audit kit built at onboarding: a fixed audit set and a loss-based membership-score model.

Both are stored in the artifact store without pickle: the audit set as tensors read back with
`torch.load(weights_only=True)`, the membership model as the two numbers of a logistic regression
in JSON.
"""

from __future__ import annotations

import io
import json
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch import nn
from torchvision.transforms import v2

from app.storage import ArtifactStore
from models.data.base import FaceData
from models.data.splits import SplitIndices
from models.data.transforms import test_transform
from models.evaluate import evaluate_sets
from models.nets import data_config

AUDIT_SET_SIZE = 256
MEMBERSHIP_SAMPLES = 2048  # per side: enough for two numbers, cheap on a large training set
MEMBERSHIP_KIND = "logistic-loss@1"
KIT_KIND = "audit"  # artifact-store folder


@dataclass(frozen=True)
class MembershipModel:
    """P(member | loss) = sigmoid(coef · loss + intercept), fitted on members vs non-members."""

    coef: float
    intercept: float
    members: int = 0
    non_members: int = 0
    auc: float | None = None  # of the loss alone on the fitting data, ×100

    def score(self, loss: float) -> float:
        """Membership probability of a sample with this task loss."""
        z = self.coef * loss + self.intercept
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def to_json(self) -> bytes:
        """Canonical JSON bytes (stable content hash)."""
        payload = {
            "kind": MEMBERSHIP_KIND,
            "coef": self.coef,
            "intercept": self.intercept,
            "members": self.members,
            "non_members": self.non_members,
            "auc": self.auc,
        }
        return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> MembershipModel:
        """Inverse of `to_json`."""
        payload = json.loads(data)
        if payload.get("kind") != MEMBERSHIP_KIND:
            raise ValueError(f"unknown membership model kind {payload.get('kind')!r}")
        return cls(
            coef=float(payload["coef"]),
            intercept=float(payload["intercept"]),
            members=int(payload["members"]),
            non_members=int(payload["non_members"]),
            auc=payload["auc"],
        )


@dataclass(frozen=True)
class AuditSet:
    """Held-out images (uint8, N×3×S×S at the model's input size) and their task targets."""

    images: torch.Tensor
    targets: torch.Tensor

    def to_bytes(self) -> bytes:
        """Tensors only, so loading needs no pickle."""
        buffer = io.BytesIO()
        torch.save({"images": self.images, "targets": self.targets}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> AuditSet:
        """Inverse of `to_bytes`."""
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return cls(images=payload["images"], targets=payload["targets"])


@dataclass(frozen=True)
class AuditKit:
    """What the erasure audit needs once the training data is gone."""

    audit_set: AuditSet
    membership: MembershipModel


def _sample(rows: list[int], limit: int, seed: int) -> list[int]:
    """At most `limit` of `rows`, chosen reproducibly, in data-set order."""
    if len(rows) <= limit:
        return list(rows)
    return sorted(random.Random(seed).sample(rows, limit))


def build_audit_set(
    data: FaceData, task: str, rows: list[int], image_size: int, seed: int
) -> AuditSet:
    """Up to AUDIT_SET_SIZE of `rows` (TEST identities), resized to the model's input size."""
    chosen = _sample(rows, AUDIT_SET_SIZE, seed)
    if not chosen:
        raise ValueError("the checkpoint's splits have no test images for an audit set")
    resize = v2.Resize((image_size, image_size), antialias=True)
    images = torch.stack([resize(data.load_image(i)) for i in chosen]).to(torch.uint8)
    targets = torch.from_numpy(np.ascontiguousarray(data.targets[task][chosen]))
    return AuditSet(images=images, targets=targets)


def fit_membership(member_losses: np.ndarray, non_member_losses: np.ndarray) -> MembershipModel:
    """Logistic regression of membership on the per-sample loss (classes balanced)."""
    if member_losses.size == 0 or non_member_losses.size == 0:
        raise ValueError("membership model needs both member and non-member losses")
    losses = np.concatenate([member_losses, non_member_losses]).astype(np.float64)
    labels = np.concatenate([np.ones(member_losses.size), np.zeros(non_member_losses.size)])
    fitted = LogisticRegression(class_weight="balanced").fit(losses[:, None], labels)
    return MembershipModel(
        coef=float(fitted.coef_[0, 0]),
        intercept=float(fitted.intercept_[0]),
        members=int(member_losses.size),
        non_members=int(non_member_losses.size),
        auc=float(roc_auc_score(labels, -losses)) * 100.0,
    )


def build_audit_kit(
    model: nn.Module,
    data: FaceData,
    task: str,
    indices: SplitIndices,
    image_size: int,
    device: torch.device,
    seed: int,
) -> AuditKit:
    """The audit set from TEST and the membership model from RETAIN (members) vs VAL losses."""
    transform = test_transform(data_config(model, image_size))
    sets = {
        "members": _sample(indices.retain, MEMBERSHIP_SAMPLES, seed),
        "non_members": _sample(indices.val, MEMBERSHIP_SAMPLES, seed + 1),
    }
    results = evaluate_sets(model, data, task, sets, transform, device)
    return AuditKit(
        audit_set=build_audit_set(data, task, indices.test, image_size, seed),
        membership=fit_membership(results["members"].losses, results["non_members"].losses),
    )


def store_audit_kit(store: ArtifactStore, kit: AuditKit) -> dict[str, str]:
    """Put the kit in the store; returns the artifact names and hashes for `ModelVersion`."""
    return {
        "audit_set": store.put_bytes(KIT_KIND, kit.audit_set.to_bytes()),
        "membership": store.put_bytes(KIT_KIND, kit.membership.to_json()),
    }


def load_audit_kit(store: ArtifactStore, artifacts: dict[str, str]) -> AuditKit:
    """Read a version's kit back, verifying each blob against its hash."""
    missing = {"audit_set", "membership"} - set(artifacts)
    if missing:
        raise ValueError(f"model version lacks audit artifacts {sorted(missing)}")
    return AuditKit(
        audit_set=AuditSet.from_bytes(store.read(KIT_KIND, artifacts["audit_set"])),
        membership=MembershipModel.from_json(store.read(KIT_KIND, artifacts["membership"])),
    )
