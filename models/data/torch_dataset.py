"""A torch Dataset over some rows of a FaceData, for one task."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from models.data.base import FaceData


class FaceSubset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Rows `indices` of `data` as (transformed image, target) pairs for task `task`."""

    def __init__(
        self,
        data: FaceData,
        indices: Sequence[int],
        task: str,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        self.data = data
        self.indices = list(indices)
        self.spec = data.task(task)
        self.targets = torch.from_numpy(data.targets[task][self.indices])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.data.load_image(self.indices[k])), self.targets[k]
