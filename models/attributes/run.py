"""Erase attributes from a checkpoint's network, audited before and after (the CLI's job)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from models.attributes.audit import audit_attribute
from models.attributes.erase import erase_attributes
from models.attributes.labels import attribute_labels
from models.attributes.leace import eraser_from_dict
from models.data.base import FaceData
from models.data.registry import DatasetSpec, load_dataset
from models.data.splits import SplitIndices
from models.data.transforms import test_transform
from models.evaluate import evaluate_sets
from models.nets import data_config

# Probes on synthfaces read a generation of their own: identities no model or eraser has seen
PROBE_SEED_OFFSET = 1000


def check_erasable(name: str, task: str, task_labels: Sequence[str]) -> None:
    """ValueError when `name` is the model's task or one of its outputs: erasing it from the
    feature would erase the task; retrain without that output first."""
    if name == task or name in task_labels:
        raise ValueError(f"attribute {name!r} is the model's task {task!r} or one of its outputs")


def probe_rows(
    spec: DatasetSpec, data: FaceData, indices: SplitIndices, identities: int
) -> tuple[FaceData, list[int], list[int]]:
    """The probes' data and its probe-train and probe-test rows, identity-disjoint: on
    synthfaces a fresh generation of `identities` people split in halves; on a folder data set
    the checkpoint's VAL and TEST identities, which it never trained on."""
    if spec.root is not None or spec.name != "synthfaces":
        return data, list(indices.val), list(indices.test)
    fresh = load_dataset(
        replace(spec, seed=spec.seed + PROBE_SEED_OFFSET, num_identities=identities)
    )
    return (fresh, *identity_halves(fresh))


def identity_halves(data: FaceData) -> tuple[list[int], list[int]]:
    """Rows of the first and second half of the people, in sorted order of their names."""
    people = sorted(set(data.identities))
    first = set(people[: len(people) // 2])
    rows = range(len(data.identities))
    return [r for r in rows if data.identities[r] in first], [
        r for r in rows if data.identities[r] not in first
    ]


def task_score(
    model: nn.Module,
    data: FaceData,
    task: str,
    rows: Sequence[int],
    size: int,
    device: torch.device,
) -> float:
    """`model`'s score (0-100) on `rows` of its task."""
    transform = test_transform(data_config(model, size))
    return evaluate_sets(model, data, task, {"test": rows}, transform, device)["test"].score


def erase_and_audit(
    model: nn.Module,
    config: dict[str, Any],
    task_labels: Sequence[str],
    data: FaceData,
    indices: SplitIndices,
    attributes: Sequence[str],
    device: torch.device,
    probe_identities: int = 400,
    mlp: bool = True,
) -> dict[str, Any]:
    """Audit, erase with LEACE fitted on TRAIN, audit again; `model` is changed in place. A
    model with erased attributes (`config["erased_attributes"]`) is audited on its served
    feature, and may not erase one of them again. Returns the record (the erasure, audits
    before and after, task score on TEST)."""
    task, size = config["task"], int(config["image_size"])
    for name in attributes:
        check_erasable(name, task, task_labels)
    earlier = config.get("erased_attributes", [])
    erased = [name for record in earlier for name in record["attributes"]]
    repeated = sorted(set(attributes) & set(erased))
    if repeated:
        raise ValueError(f"attributes {repeated} are already erased from this model")
    # the new eraser is fitted for every attribute erased so far (leace.py says why)
    labels = [attribute_labels(data, name) for name in [*erased, *attributes]]
    spec = DatasetSpec(**config["dataset"])
    probe_data, probe_train, probe_test = probe_rows(spec, data, indices, probe_identities)
    probe_labels = [attribute_labels(probe_data, name) for name in attributes]
    erasers = [eraser_from_dict(record["eraser"]) for record in earlier]

    def audits() -> list[dict[str, Any]]:
        return [
            audit_attribute(
                model, probe_data, label, probe_train, probe_test, size, device, mlp, erasers
            ).to_dict()
            for label in probe_labels
        ]

    before, score_before = audits(), task_score(model, data, task, indices.test, size, device)
    record = erase_attributes(model, data, labels, indices.train, size, device)
    erasers.append(eraser_from_dict(record["eraser"]))
    after, score_after = audits(), task_score(model, data, task, indices.test, size, device)
    erasure = {**record, "attributes": list(attributes), "fitted_for": record["attributes"]}
    return {
        "erasure": erasure,
        "probe_images": {"train": len(probe_train), "test": len(probe_test)},
        "before": before,
        "after": after,
        "task_score": {"before": score_before, "after": score_after},
    }
