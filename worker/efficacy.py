"""Calibrated efficacy: simulated single-identity erasures on copies of a model, while the
training data exists, so that every later erasure can cite how much its method really forgets.

Each trial picks a RETAIN identity with at least MIN_PHOTOS training photos, erases it from one
of them (the service's request: one portrait, the parent's prediction as its label) and measures
the identity's *other* training photos before and after: their membership score under the attack
fitted at onboarding, against the non-member level (VAL photos), and their task score; plus the
drop on the audit set. Membership gap closure = (before − after) ÷ (before − non-member level):
1 means the photos now look like photos the model never saw.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.data.base import FaceData
from models.data.splits import SplitIndices
from models.methods import UnlearnRequest, get_method
from models.methods.prepare_data import group_by_identity
from models.metrics.scores import per_sample_loss, task_score
from models.metrics.stats import mean_ci
from worker.audit import forward, pseudo_labels
from worker.audit_kit import AuditKit

EFFICACY_KIND = "simulated-single-portrait@1"
MIN_PHOTOS = 3  # one portrait and at least two other photos to measure
NON_MEMBER_SAMPLES = 256
Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Trial:
    """One simulated identity: its portrait row and the other training rows measured."""

    identity: str
    portrait: int
    others: list[int]


def pick_trials(data: FaceData, indices: SplitIndices, count: int, seed: int) -> list[Trial]:
    """Up to `count` RETAIN identities with ≥ MIN_PHOTOS photos, each with one portrait."""
    groups = group_by_identity(data, indices.retain)
    eligible = sorted(name for name, rows in groups.items() if len(rows) >= MIN_PHOTOS)
    rng = random.Random(seed)
    chosen = rng.sample(eligible, min(count, len(eligible)))
    trials = []
    for name in chosen:
        rows = groups[name]
        portrait = rng.choice(rows)
        trials.append(Trial(name, portrait, [r for r in rows if r != portrait]))
    return trials


@dataclass
class _Measures:
    """What one model scores on the trials' photos and on the audit set."""

    membership: list[float]  # mean membership score of each trial's other photos
    logits: list[torch.Tensor]  # logits of each trial's other photos
    audit_score: float


class Calibration:
    """Everything the trials share: photos, targets, the parent's measures, the non-member level."""

    def __init__(
        self,
        model: nn.Module,
        data: FaceData,
        task: str,
        indices: SplitIndices,
        kit: AuditKit,
        transform: Transform,
        device: torch.device,
        trials: Sequence[Trial],
        identity_key: Callable[[str], str] = str,
    ) -> None:
        self.model, self.kit, self.device, self.trials = model, kit, device, list(trials)
        self.spec = data.task(task)
        self.transform, self.identity_key = transform, identity_key
        targets = torch.from_numpy(data.targets[task])

        def load(rows: Sequence[int]) -> torch.Tensor:
            return torch.stack([transform(data.load_image(r)) for r in rows])

        self.portraits = [load([t.portrait]) for t in self.trials]
        self.others = [load(t.others) for t in self.trials]
        self.other_targets = [targets[t.others] for t in self.trials]
        non_members = sorted(
            random.Random(0).sample(indices.val, min(len(indices.val), NON_MEMBER_SAMPLES))
        )
        self.non_member_level = math.nan  # no VAL rows: no level, so no gap closure
        if non_members:
            val_logits = forward(model, load(non_members), device)
            val_losses = per_sample_loss(self.spec.kind, val_logits, targets[non_members])
            self.non_member_level = float(np.mean([kit.membership.score(x) for x in val_losses]))
        self.before = self.measure(model, range(len(self.trials)))

    def measure(self, model: nn.Module, which: Sequence[int]) -> _Measures:
        """`model` on the other photos of trials `which` and on the audit set."""
        membership, logits = [], []
        for k in which:
            out = forward(model, self.others[k], self.device)
            losses = per_sample_loss(self.spec.kind, out, self.other_targets[k])
            membership.append(float(np.mean([self.kit.membership.score(x) for x in losses])))
            logits.append(out)
        audit = forward(model, self.kit.audit_set.images, self.device, self.transform)
        return _Measures(
            membership, logits, task_score(self.spec.kind, audit, self.kit.audit_set.targets)
        )

    def erase(self, method: str, cfg: Any, artifacts: Mapping[str, Any], k: int) -> nn.Module:
        """A copy of the model after `method` erased trial `k` from its one portrait."""
        portrait = self.portraits[k]
        target = pseudo_labels(self.spec.kind, forward(self.model, portrait, self.device))
        request = UnlearnRequest(
            images=portrait,
            identities=[self.identity_key(self.trials[k].identity)],
            task=self.spec,
            targets=target,
        )
        return get_method(method).unlearn(copy.deepcopy(self.model), request, dict(artifacts), cfg)

    def calibrate(self, method: str, cfg: Any, artifacts: Mapping[str, Any]) -> dict[str, Any]:
        """Run every trial through `method`; the summary stored as its calibrated efficacy."""
        before, closure, drops, after_logits, after_membership = self.before, [], [], [], []
        gap_floor = 1e-6
        for k in range(len(self.trials)):
            after = self.measure(self.erase(method, cfg, artifacts, k), [k])
            after_membership.append(after.membership[0])
            after_logits.append(after.logits[0])
            drops.append(before.audit_score - after.audit_score)
            gap = before.membership[k] - self.non_member_level
            shift = before.membership[k] - after.membership[0]
            closure.append(shift / gap if gap > gap_floor else math.nan)
        targets = torch.cat(self.other_targets)
        kind = self.spec.kind
        return {
            "kind": EFFICACY_KIND,
            "config": asdict(cfg),
            "trials": len(self.trials),
            "membership_before": _finite(float(np.mean(before.membership))),
            "membership_after": _finite(float(np.mean(after_membership))),
            "non_member_membership": _finite(self.non_member_level),
            "membership_gap_closed": mean_ci(closure).to_dict(),
            "identity_score_before": _finite(task_score(kind, torch.cat(before.logits), targets)),
            "identity_score_after": _finite(task_score(kind, torch.cat(after_logits), targets)),
            "identity_score_name": self.spec.score_name,
            "audit_score_drop": mean_ci(drops).to_dict(),
        }


def _finite(value: float) -> float | None:
    """JSON (and Postgres) has no NaN: an undefined figure is null."""
    return value if math.isfinite(value) else None
