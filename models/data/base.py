"""The common in-memory description of a face data set: images, identities and task labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

TaskKind = Literal["multilabel", "multiclass"]

# MUFAC's eight age groups (inclusive bounds, years); shared by synthfaces' `age` task.
AGE_GROUPS: tuple[tuple[str, int, int], ...] = (
    ("a", 0, 6),
    ("b", 7, 12),
    ("c", 13, 19),
    ("d", 20, 30),
    ("e", 31, 45),
    ("f", 46, 55),
    ("g", 56, 66),
    ("h", 67, 80),
)


def age_group(age: float) -> int:
    """Index (0..7) of the MUFAC age group that contains `age` years."""
    for index, (_, _, high) in enumerate(AGE_GROUPS):
        if age < high + 1:
            return index
    return len(AGE_GROUPS) - 1


class DatasetError(ValueError):
    """A data set folder is missing a file or holds a file that cannot be parsed."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass(frozen=True)
class TaskSpec:
    """What a model predicts: the loss, score and head size follow from `kind` and `labels`."""

    name: str
    kind: TaskKind
    labels: tuple[str, ...]

    @property
    def num_outputs(self) -> int:
        """Width of the model head."""
        return len(self.labels)

    @property
    def score_name(self) -> str:
        """Name of the score reported for this task (0-100)."""
        return "mAP" if self.kind == "multilabel" else "accuracy"


ImageLoader = Callable[[int], torch.Tensor]


@dataclass
class FaceData:
    """A face data set: one row per image with its key, identity and per-task targets.

    `load_image(i)` returns image `i` as a uint8 tensor of shape (3, H, W). Targets are float32
    multi-hot arrays of shape (n, C) for multi-label tasks and int64 arrays of shape (n,) for
    multi-class tasks.
    """

    name: str
    keys: list[str]
    identities: list[str]
    tasks: dict[str, TaskSpec]
    targets: dict[str, np.ndarray]
    load_image: ImageLoader
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.keys)
        if len(self.identities) != n:
            raise ValueError("keys and identities differ in length")
        for name, values in self.targets.items():
            if len(values) != n:
                raise ValueError(f"targets for task {name!r} have {len(values)} rows, expected {n}")
        missing = set(self.tasks) ^ set(self.targets)
        if missing:
            raise ValueError(f"tasks and targets disagree on {sorted(missing)}")

    def __len__(self) -> int:
        return len(self.keys)

    def task(self, name: str) -> TaskSpec:
        """The task called `name`, or a ValueError listing the ones this data set has."""
        if name not in self.tasks:
            raise ValueError(
                f"data set {self.name!r} has no task {name!r}; it has {sorted(self.tasks)}"
            )
        return self.tasks[name]

    def indices_of(self, identities: Sequence[str]) -> list[int]:
        """Indices of every image whose identity is in `identities`, in data set order."""
        wanted = set(identities)
        return [i for i, ident in enumerate(self.identities) if ident in wanted]

    def index_of_key(self) -> dict[str, int]:
        """Map from image key to row index."""
        return {key: i for i, key in enumerate(self.keys)}
