"""Build a method's onboarding data (`PrepareData`) from the protocol's split indices."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, TensorDataset

from models.data.base import FaceData
from models.data.splits import SplitIndices
from models.data.torch_dataset import FaceSubset
from models.methods.base import PrepareData

Transform = Callable[[torch.Tensor], torch.Tensor]


class ImageRows:
    """Rows of a data set, read and transformed only when indexed: nothing is held in memory,
    so preparation never stacks a whole split (CelebA-HQ's would take ~11 GB at 224 px)."""

    def __init__(self, data: FaceData, rows: Sequence[int], transform: Transform) -> None:
        self.data, self.rows, self.transform = data, list(rows), transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        """One image (3, H, W) for an int, else the chosen images stacked (n, 3, H, W)."""
        if isinstance(index, int):
            return self.transform(self.data.load_image(self.rows[index]))
        chosen = index.tolist() if isinstance(index, torch.Tensor) else list(index)
        return torch.stack([self.transform(self.data.load_image(self.rows[i])) for i in chosen])


def group_by_identity(
    data: FaceData, rows: Sequence[int], identity_key: Callable[[str], str] = str
) -> dict[str, list[int]]:
    """The rows of each identity key, in data set order."""
    groups: dict[str, list[int]] = {}
    for i in rows:
        groups.setdefault(identity_key(data.identities[i]), []).append(i)
    return groups


def build_prepare_data(
    data: FaceData,
    task: str,
    indices: SplitIndices,
    transform: Transform,
    identity_key: Callable[[str], str] = str,
    batch_size: int = 64,
    train_augment: Transform | None = None,
) -> PrepareData:
    """TRAIN (minus support) as a loader and grouped by identity key, plus VAL, test-transformed;
    with `train_augment`, TRAIN once more under that (random) training transform. Images are
    read when used (ImageRows, loaders), so memory does not grow with the data set.

    `identity_key` maps an identity ID to the key the identity index will hold: the plain ID in
    benchmarks, the keyed hash (`app.security.identity_hash`) in the service.
    """
    targets = torch.from_numpy(data.targets[task])
    augmented = None
    if train_augment is not None:
        augmented = FaceSubset(data, indices.train, task, train_augment)
    groups = group_by_identity(data, indices.train, identity_key)
    return PrepareData(
        train=DataLoader(FaceSubset(data, indices.train, task, transform), batch_size=batch_size),
        task=data.task(task),
        train_identities={key: ImageRows(data, rows, transform) for key, rows in groups.items()},
        train_targets={key: targets[rows] for key, rows in groups.items()},
        val_images=ImageRows(data, indices.val, transform),
        val_targets=targets[indices.val],
        train_augmented=None if augmented is None else DataLoader(augmented, batch_size=batch_size),
    )


def build_tail_prepare_data(
    data: FaceData,
    task: str,
    indices: SplitIndices,
    features: Callable[[Sequence[int]], torch.Tensor],
    batch_size: int = 64,
) -> PrepareData:
    """`build_prepare_data`'s TRAIN, per-identity TRAIN and VAL as a frozen trunk's outputs
    (`features` of data set rows), for a method prepared on `Tail(model, depth)`; no augmented
    TRAIN, whose views the trunk's cached outputs do not hold."""
    targets = torch.from_numpy(data.targets[task])
    train = features(indices.train)
    position = {row: k for k, row in enumerate(indices.train)}
    groups = group_by_identity(data, indices.train)
    return PrepareData(
        train=DataLoader(TensorDataset(train, targets[indices.train]), batch_size=batch_size),
        task=data.task(task),
        train_identities={key: train[[position[r] for r in rows]] for key, rows in groups.items()},
        train_targets={key: targets[rows] for key, rows in groups.items()},
        val_images=features(indices.val),
        val_targets=targets[indices.val],
    )
