"""The interface every unlearning method implements, and the inputs it receives."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from models.catalog import Needs
from models.data.base import TaskSpec

Artifacts = dict[str, Any]


class Images(Protocol):
    """Images indexed like an (n, 3, H, W) tensor: an int gives one, indices give a stack."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> torch.Tensor: ...


@dataclass
class UnlearnRequest:
    """What a method may use at erasure time.

    `images` are the support portraits after the model's test transform, `identities` their
    identity IDs. `retain` (all RETAIN images) and `forget` (all images of the requested
    identities but their support images) are only given to privileged methods
    (`needs="support+retain"`), which run in benchmarks, never on a production request.
    """

    images: torch.Tensor
    identities: list[str]
    task: TaskSpec
    targets: torch.Tensor | None = None
    retain: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None = None
    forget: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None = None


@dataclass
class PrepareData:
    """Training data available at onboarding, for methods that precompute artifacts.

    `train` is TRAIN minus the support images. The optional fields carry the same images grouped
    by identity key, and VAL, all test-transformed, for methods that simulate requests
    (`models.methods.prepare_data.build_prepare_data` fills them from the protocol's splits).
    """

    train: DataLoader[tuple[torch.Tensor, torch.Tensor]]
    task: TaskSpec
    # Images indexable like (n, 3, H, W) tensors: tensors, or rows read on use (ImageRows)
    train_identities: Mapping[str, Images] | None = None  # identity key → its images
    train_targets: dict[str, torch.Tensor] | None = None  # identity key → targets of those images
    val_images: Images | None = None
    val_targets: torch.Tensor | None = None
    train_augmented: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None = None  # train transform


class UnlearningMethod(ABC):
    """An unlearning method: optional preparation at onboarding, then erasure from portraits."""

    name: ClassVar[str]
    needs: ClassVar[Needs]  # set from models/catalog.py by register_method
    Config: ClassVar[type]
    # True where the method reads images only through the model's forward and moves only
    # parameters that require a gradient: on `Tail(model, depth)` over a frozen trunk's outputs
    # it then computes what it would on the model over images (the benchmark's shortcut).
    on_tail: ClassVar[bool] = False

    def prepare(self, model: nn.Module, data: PrepareData, cfg: Any) -> Artifacts:
        """Compute what `unlearn` will need once the training data is gone (nothing by default)."""
        return {}

    @abstractmethod
    def unlearn(
        self, model: nn.Module, request: UnlearnRequest, artifacts: Artifacts, cfg: Any
    ) -> nn.Module:
        """Return `model` changed to forget the request's identities (possibly in place)."""
