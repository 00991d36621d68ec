"""An attribute's labels on a face data set, and their coding for an eraser."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.data.base import FaceData


@dataclass(frozen=True)
class AttributeLabels:
    """One attribute's class per row (int64, 0..classes-1) and where it was read."""

    name: str
    values: np.ndarray
    classes: int
    source: str  # the data set's task it comes from

    def coded(self, rows: np.ndarray | list[int] | None = None) -> torch.Tensor:
        """The labels as an eraser reads them: one indicator column per class but the last (one
        column for two classes); the last is one minus their sum, so it would add a direction
        of numerical noise to the eraser and nothing else."""
        values = torch.from_numpy(self.values if rows is None else self.values[rows])
        onehot = torch.nn.functional.one_hot(values, self.classes).to(torch.float64)
        return onehot[:, : self.classes - 1]


def attribute_labels(data: FaceData, name: str) -> AttributeLabels:
    """The labels of attribute `name`: a multi-label task's output (two classes) or a multi-class
    task of that name. ValueError naming what the data set has otherwise."""
    for task, spec in data.tasks.items():
        if spec.kind == "multiclass" and task == name:
            values = np.asarray(data.targets[task], dtype=np.int64)
            return AttributeLabels(name, values, spec.num_outputs, task)
    for task, spec in data.tasks.items():
        if spec.kind == "multilabel" and name in spec.labels:
            column = data.targets[task][:, spec.labels.index(name)]
            return AttributeLabels(name, (np.asarray(column) > 0.5).astype(np.int64), 2, task)
    known = sorted(
        {t for t, s in data.tasks.items() if s.kind == "multiclass"}
        | {label for s in data.tasks.values() if s.kind == "multilabel" for label in s.labels}
    )
    raise ValueError(f"data set {data.name!r} has no attribute {name!r}; it has {known}")
