"""Training recipe and checkpoints: learning happens, files round-trip and are verified."""

from __future__ import annotations

import itertools

import pytest
import torch

from models.data.registry import DatasetSpec
from models.data.splits import make_splits, split_indices
from models.protocol import (
    ModelSetup,
    build_model,
    evaluate_protocol,
    model_from_checkpoint,
    train_reference,
)
from models.train.checkpoint import load_checkpoint
from models.train.config import TrainConfig
from models.train.trainer import warmup_cosine
from tests.conftest import SMALL

CPU = torch.device("cpu")
SETUP = ModelSetup(
    dataset=DatasetSpec(
        image_size=SMALL.image_size, seed=SMALL.seed, num_identities=SMALL.num_identities
    ),
    task="attributes",
    arch="test_resnet",
    image_size=SMALL.image_size,
    train=TrainConfig(epochs=10, batch_size=32, warmup_epochs=1),
)


def test_warmup_then_cosine() -> None:
    factors = [warmup_cosine(s, 10, 100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[-1] < 0.01


def test_training_beats_an_untrained_model_and_checkpoint_round_trips(
    small_faces, tmp_path
) -> None:
    splits = make_splits(small_faces.identities, small_faces.keys, 3, seed=0)
    idx = split_indices(small_faces, splits)
    untrained = build_model(SETUP, small_faces)
    before = evaluate_protocol(untrained, small_faces, "attributes", idx, SETUP.image_size, CPU)
    path = tmp_path / "original.pth"
    model, ckpt, seconds = train_reference(
        SETUP, small_faces, splits, idx, "original", CPU, path, progress=False
    )
    after = evaluate_protocol(model, small_faces, "attributes", idx, SETUP.image_size, CPU)
    assert seconds > 0
    assert after.retain > before.retain + 10

    loaded = load_checkpoint(path, expected_sha256=ckpt.sha256)
    assert loaded.arch == "test_resnet" and loaded.splits == splits.to_dict()
    assert loaded.config["role"] == "original" and loaded.task["kind"] == "multilabel"
    assert (
        evaluate_protocol(
            model_from_checkpoint(loaded), small_faces, "attributes", idx, SETUP.image_size, CPU
        )
        == after
    )
    assert (path.parent / ".original.pth.tmp").exists() is False

    # the same setup and splits reuse the file instead of training again
    _, again, seconds = train_reference(
        SETUP, small_faces, splits, idx, "original", CPU, path, progress=False
    )
    assert seconds == 0.0 and again.sha256 == ckpt.sha256


def test_tampered_checkpoint_is_refused(tmp_path, small_faces) -> None:
    splits = make_splits(small_faces.identities, small_faces.keys, 3, seed=0)
    idx = split_indices(small_faces, splits)
    fast = ModelSetup(
        **{**SETUP.__dict__, "train": TrainConfig(epochs=1, batch_size=64, warmup_epochs=0)}
    )
    path = tmp_path / "m.pth"
    _, ckpt, _ = train_reference(
        fast, small_faces, splits, idx, "retrain", CPU, path, progress=False
    )
    with path.open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(ValueError, match="SHA-256"):
        load_checkpoint(path, expected_sha256=ckpt.sha256)
