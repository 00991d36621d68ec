"""The 1-SHUI protocol's building blocks: reference models, the support request, evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from models.data.base import FaceData
from models.data.registry import DatasetSpec
from models.data.splits import SplitIndices, Splits
from models.data.torch_dataset import FaceSubset
from models.data.transforms import test_transform, train_transform
from models.evaluate import SetResult, evaluate_sets, predict
from models.methods.base import Artifacts, UnlearningMethod, UnlearnRequest
from models.methods.prepare_data import build_prepare_data, build_tail_prepare_data
from models.metrics.mia import loss_mia
from models.metrics.scores import per_sample_loss, task_score
from models.metrics.tow import SetScores, tug_of_war
from models.nets import create_model, data_config, freeze_modules
from models.nets.pretrained import pretrained_weights
from models.nets.trunk import Tail, TrunkCache, run_tail, trunk_depth
from models.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from models.train.config import TrainConfig
from models.train.trainer import train_model

Role = Literal["original", "retrain"]
Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ModelSetup:
    """Which network is trained on which data for which task."""

    dataset: DatasetSpec
    task: str
    arch: str
    image_size: int
    train: TrainConfig
    pretrained: str | None = None  # weights shipped in a package (models/nets/pretrained.py)

    def to_dict(self) -> dict[str, object]:
        """Plain form for checkpoints and results (pretrained weights with their SHA-256)."""
        pretrained = None
        if self.pretrained is not None:
            weights = pretrained_weights(self.pretrained, self.arch)
            pretrained = {"name": weights.name, "file": weights.path.name, "sha256": weights.sha256}
        return {
            "dataset": self.dataset.to_dict(),
            "task": self.task,
            "arch": self.arch,
            "image_size": self.image_size,
            "pretrained": pretrained,
            "train": asdict(self.train),
        }


def build_model(setup: ModelSetup, data: FaceData) -> nn.Module:
    """A fresh (or pretrained) network for `setup`, its head sized from the task."""
    model = create_model(
        setup.arch,
        data.task(setup.task).num_outputs,
        setup.image_size,
        pretrained=setup.pretrained,
    )
    return freeze_modules(model, setup.train.frozen)


def model_from_checkpoint(checkpoint: Checkpoint) -> nn.Module:
    """Rebuild the network a checkpoint describes (frozen parts frozen) and load its weights."""
    model = create_model(
        checkpoint.arch, len(checkpoint.task["labels"]), int(checkpoint.config["image_size"])
    )
    frozen = checkpoint.config.get("train", {}).get("frozen", ())
    freeze_modules(model, frozen)
    model.load_state_dict(checkpoint.state_dict)
    return model.eval()


def trunk_cache(setup: ModelSetup, data: FaceData, device: torch.device) -> TrunkCache | None:
    """A cache of the frozen trunk's test-transform outputs for `setup`'s networks, or None
    when it has no splittable frozen trunk (models/nets/trunk.py)."""
    model = build_model(setup, data).to(device)
    depth = trunk_depth(model, setup.train.frozen)
    if depth is None:
        return None
    transform = test_transform(data_config(model, setup.image_size))
    return TrunkCache(model, depth, data.load_image, transform, device)


def train_reference(
    setup: ModelSetup,
    data: FaceData,
    splits: Splits,
    indices: SplitIndices,
    role: Role,
    device: torch.device,
    path: Path | None = None,
    progress: bool = True,
    cache: TrunkCache | None = None,
) -> tuple[nn.Module, Checkpoint, float]:
    """Train the original (TRAIN minus support) or retrained (RETAIN) model for these splits.

    With `path`, a checkpoint there trained with the same setup and splits is reused instead.
    With `cache` (`trunk_cache`) and a recipe without augmentation, only the tail trains.
    Returns the model, its checkpoint and the training time in seconds (0 when reused).
    """
    config = {**setup.to_dict(), "role": role}
    if path is not None and path.is_file():
        cached = load_checkpoint(path)
        trained_with = {k: v for k, v in cached.config.items() if k != "training"}
        if trained_with == config and cached.splits == splits.to_dict():
            return model_from_checkpoint(cached).to(device), cached, 0.0
    torch.manual_seed(setup.train.seed)
    model = build_model(setup, data)
    rows = indices.train if role == "original" else indices.retain
    result = train_model(
        model,
        data,
        setup.task,
        rows,
        indices.val,
        setup.train,
        setup.image_size,
        device,
        progress,
        cache,
    )
    spec = data.task(setup.task)
    checkpoint = Checkpoint(
        arch=setup.arch,
        task={"name": spec.name, "kind": spec.kind, "labels": list(spec.labels)},
        config={
            **config,
            "training": {
                "best_epoch": result.best_epoch,
                "best_val_score": result.best_val_score,
                "seconds": result.seconds,
            },
        },
        splits=splits.to_dict(),
        state_dict=result.state_dict,
    )
    if path is not None:
        save_checkpoint(path, checkpoint)
    return model.eval(), checkpoint, result.seconds


def support_request(
    data: FaceData, task: str, indices: SplitIndices, model: nn.Module, image_size: int
) -> UnlearnRequest:
    """The request of the protocol: each forget identity's support image, test-transformed."""
    transform = test_transform(data_config(model, image_size))
    images = torch.stack([transform(data.load_image(i)) for i in indices.support])
    targets = torch.from_numpy(data.targets[task][indices.support])
    return UnlearnRequest(
        images=images,
        identities=[data.identities[i] for i in indices.support],
        task=data.task(task),
        targets=targets,
    )


def _shuffled_loader(
    rows: Dataset[tuple[torch.Tensor, torch.Tensor]], seed: int, batch_size: int
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """`rows` in batches, reshuffled each epoch from a generator seeded with `seed`."""
    return DataLoader(
        rows, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def privileged_request(
    request: UnlearnRequest,
    data: FaceData,
    task: str,
    indices: SplitIndices,
    model: nn.Module,
    image_size: int,
    seed: int,
    batch_size: int = 32,
    cache: TrunkCache | None = None,
) -> UnlearnRequest:
    """`request` plus RETAIN and FORGET loaders (test-transformed), for `support+retain` methods.

    With a `cache` that `model` holds frozen (`TrunkCache.frozen_in`), the support images and
    both loaders carry the trunk's outputs instead, for the method to run on `Tail(model, depth)`.
    """
    if cache is not None and cache.frozen_in(model):
        targets = torch.from_numpy(data.targets[task])

        def rows(indices: Sequence[int]) -> Dataset[tuple[torch.Tensor, torch.Tensor]]:
            return TensorDataset(cache.features(model, indices), targets[list(indices)])

        request = replace(request, images=cache.features(model, indices.support))
    else:
        # test transform: the reference recipe gives these methods no train augmentation on CelebA
        transform = test_transform(data_config(model, image_size))

        def rows(indices: Sequence[int]) -> Dataset[tuple[torch.Tensor, torch.Tensor]]:
            return FaceSubset(data, indices, task, transform)

    return replace(
        request,
        retain=_shuffled_loader(rows(indices.retain), seed, batch_size),
        forget=_shuffled_loader(rows(indices.forget), seed, batch_size),
    )


@dataclass(frozen=True)
class Evaluation:
    """Scores on the protocol's sets and the loss-based membership attack."""

    retain: float
    forget: float
    test: float
    mia_auc: float
    mia_acc: float

    @property
    def scores(self) -> SetScores:
        """Retain, forget and test scores, for Tug-of-War."""
        return SetScores(retain=self.retain, forget=self.forget, test=self.test)

    def tow(self, reference: Evaluation) -> float:
        """Tug-of-War against the retrained reference's evaluation."""
        return tug_of_war(self.scores, reference.scores)


def protocol_results(
    model: nn.Module,
    data: FaceData,
    task: str,
    indices: SplitIndices,
    image_size: int,
    device: torch.device,
    cache: TrunkCache | None = None,
) -> dict[str, SetResult]:
    """Scores, losses and outputs of `model` on RETAIN, FORGET, TEST and VAL; a fitting `cache`
    runs only the network's tail."""
    sets = {
        "retain": indices.retain,
        "forget": indices.forget,
        "test": indices.test,
        "val": indices.val,
    }
    transform = test_transform(data_config(model, image_size))
    return evaluate_sets(model.to(device), data, task, sets, transform, device, cache=cache)


def _mia(results: dict[str, SetResult]) -> tuple[float, float]:
    """The RF loss MIA's (AUC, accuracy): fit on retain vs val, attack forget vs test."""
    mia = loss_mia(
        results["retain"].losses,
        results["val"].losses,
        results["forget"].losses,
        results["test"].losses,
    )
    return mia.auc, mia.acc


def evaluate_protocol(
    model: nn.Module,
    data: FaceData,
    task: str,
    indices: SplitIndices,
    image_size: int,
    device: torch.device,
    cache: TrunkCache | None = None,
) -> Evaluation:
    """Retain/forget/test scores and the RF loss MIA (retain vs val, forget vs test); a fitting
    `cache` runs only the network's tail."""
    results = protocol_results(model, data, task, indices, image_size, device, cache)
    auc, acc = _mia(results)
    return Evaluation(
        retain=results["retain"].score,
        forget=results["forget"].score,
        test=results["test"].score,
        mia_auc=auc,
        mia_acc=acc,
    )


def pool_single_requests(parts: Sequence[dict[str, SetResult]], kind: str) -> Evaluation:
    """One evaluation of several one-identity erasures, each `protocol_results` on its own
    identity's FORGET rows: FORGET is scored on every model's outputs for its own identity
    together, RETAIN, TEST and the loss MIA are the models' means."""
    if not parts:
        raise ValueError("no single-identity erasure to pool")
    forget_logits = torch.cat([part["forget"].logits for part in parts])
    forget_targets = torch.cat([part["forget"].targets for part in parts])
    mias = [_mia(part) for part in parts]
    return Evaluation(
        retain=float(np.mean([part["retain"].score for part in parts])),
        forget=task_score(kind, forget_logits, forget_targets),
        test=float(np.mean([part["test"].score for part in parts])),
        mia_auc=float(np.mean([auc for auc, _ in mias])),
        mia_acc=float(np.mean([acc for _, acc in mias])),
    )


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: map it to null."""
    return None if math.isnan(value) else value


def prepare_method(
    method: UnlearningMethod,
    cfg: object,
    model: nn.Module,
    data: FaceData,
    task: str,
    indices: SplitIndices,
    image_size: int,
    cache: TrunkCache | None = None,
) -> tuple[Artifacts, float | None]:
    """Run the method's onboarding step on TRAIN minus support; (artifacts, seconds or None).

    With a `cache` that `model` holds frozen and a method that runs `on_tail`, it prepares on
    `Tail(model, depth)` over the trunk's outputs; the artifacts then serve erasures on the tail.
    """
    if type(method).prepare is UnlearningMethod.prepare:
        return {}, None
    start = time.perf_counter()
    if cache is not None and method.on_tail and cache.frozen_in(model):
        prepared = build_tail_prepare_data(
            data, task, indices, lambda rows: cache.features(model, rows)
        )
        artifacts = method.prepare(Tail(model, cache.depth), prepared, cfg)
    else:
        config = data_config(model, image_size)
        prepared = build_prepare_data(
            data, task, indices, test_transform(config), train_augment=train_transform(config)
        )
        artifacts = method.prepare(model, prepared, cfg)
    return artifacts, time.perf_counter() - start


@dataclass(frozen=True)
class RmiaSets:
    """RMIA's rows: candidates (FORGET, label 1, then VAL, label 0) and the population Z."""

    candidates: list[int]
    labels: np.ndarray
    population: list[int]

    @property
    def rows(self) -> list[int]:
        """Every row scored once: candidates and population without repeats, in order."""
        return list(dict.fromkeys([*self.candidates, *self.population]))


def rmia_sets(indices: SplitIndices, max_population: int, seed: int) -> RmiaSets:
    """FORGET/VAL candidates and Z = (TRAIN minus support) ∪ VAL, subsampled to `max_population`."""
    pool = list(dict.fromkeys([*indices.train, *indices.val]))
    if len(pool) > max_population:
        chosen = np.random.default_rng(seed).choice(len(pool), max_population, replace=False)
        pool = [pool[k] for k in sorted(chosen)]
    labels = np.concatenate([np.ones(len(indices.forget)), np.zeros(len(indices.val))])
    return RmiaSets(
        candidates=[*indices.forget, *indices.val],
        labels=labels.astype(np.int64),
        population=pool,
    )


@torch.no_grad()
def loss_signal(
    model: nn.Module,
    data: FaceData,
    task: str,
    rows: Sequence[int],
    image_size: int,
    device: torch.device,
    augmentations: int,
    seed: int,
    crop_scale: tuple[float, float] = TrainConfig.crop_scale,
    batch_size: int = 256,
    cache: TrunkCache | None = None,
) -> np.ndarray:
    """Per-sample task loss on `augmentations` train-augmented views of `rows`, shape (AUG, n).

    The augmentations draw from torch's CPU RNG seeded with `seed`, so two models given the same
    seed are scored on the same views; with a fitting `cache`, the views' trunk outputs are
    computed once for every model.
    """
    model = model.to(device).eval()
    kind = data.task(task).kind
    transform = train_transform(data_config(model, image_size), crop_scale)
    targets = torch.from_numpy(data.targets[task][list(rows)])
    if cache is not None and cache.fits(model):
        views = cache.augmented(model, rows, transform, augmentations, seed)
        passes = []
        for features in views:
            logits = torch.cat(
                [
                    run_tail(model, cache.depth, batch.to(device)).float().cpu()
                    for batch in features.split(batch_size)
                ]
            )
            passes.append(per_sample_loss(kind, logits, targets).numpy())
        return np.stack(passes)
    subset = FaceSubset(data, rows, task, transform)
    passes = []
    # a forked RNG: the same views for every model, and the caller's random stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(augmentations):
            logits, targets = predict(model, subset, device, batch_size)
            passes.append(per_sample_loss(kind, logits, targets).numpy())
    return np.stack(passes)


def rmia_signals(
    model: nn.Module,
    data: FaceData,
    task: str,
    sets: RmiaSets,
    image_size: int,
    device: torch.device,
    augmentations: int,
    seed: int,
    crop_scale: tuple[float, float] = TrainConfig.crop_scale,
    cache: TrunkCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Loss signals (AUG, n) of the candidates and of the population, from one pass over both."""
    rows = sets.rows
    signal = loss_signal(
        model, data, task, rows, image_size, device, augmentations, seed, crop_scale, cache=cache
    )
    column = {row: k for k, row in enumerate(rows)}
    candidates = signal[:, [column[r] for r in sets.candidates]]
    population = signal[:, [column[r] for r in sets.population]]
    return candidates, population
