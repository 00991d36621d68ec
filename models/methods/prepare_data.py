"""Build a method's onboarding data (`PrepareData`) from the protocol's split indices."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader

from models.data.base import FaceData
from models.data.splits import SplitIndices
from models.data.torch_dataset import FaceSubset
from models.methods.base import PrepareData

Transform = Callable[[torch.Tensor], torch.Tensor]


def _stack(data: FaceData, rows: Sequence[int], transform: Transform) -> torch.Tensor:
    """Rows `rows` of `data`, transformed and stacked into one (n, 3, H, W) tensor."""
    return torch.stack([transform(data.load_image(i)) for i in rows])


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
    with `train_augment`, TRAIN once more under that (random) training transform.

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
        train_identities={key: _stack(data, rows, transform) for key, rows in groups.items()},
        train_targets={key: targets[rows] for key, rows in groups.items()},
        val_images=_stack(data, indices.val, transform),
        val_targets=targets[indices.val],
        train_augmented=None if augmented is None else DataLoader(augmented, batch_size=batch_size),
    )
