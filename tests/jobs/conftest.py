"""Fixtures of the worker-job tests: one trained checkpoint, migrated settings on each backend,
the captured queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from api_client import FakeQueue
from job_helpers import SPEC

from app.settings import Settings
from models.data.registry import load_dataset
from models.data.splits import make_splits, split_indices
from models.protocol import ModelSetup, train_reference
from models.train.checkpoint import load_checkpoint
from models.train.config import TrainConfig
from worker.versions import clear_cache


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test_resnet trained for two epochs on 40 synthfaces identities."""
    data = load_dataset(SPEC)
    splits = make_splits(data.identities, data.keys, 1, 0)
    setup = ModelSetup(SPEC, "attributes", "test_resnet", 32, TrainConfig(epochs=2))
    path = tmp_path_factory.mktemp("checkpoint") / "original.pt"
    indices = split_indices(data, splits)
    train_reference(setup, data, splits, indices, "original", torch.device("cpu"), path, False)
    return path


@pytest.fixture
def train_ids(checkpoint: Path) -> list[str]:
    """Training identities of the checkpoint (what can be asked to be forgotten)."""
    return list(load_checkpoint(checkpoint).splits["train"])


@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    """Migrated settings: the embedded SQLite default, and real Postgres where available."""
    clear_cache()
    base = backend_settings
    # Guardrail wide open by default: these tests are about the lifecycle, not the tiny model.
    # One request per job and no waiting, unless a test is about batching.
    return base.model_copy(
        update={"guardrail_max_score_drop": 100.0, "batch_max_size": 1, "batch_window_seconds": 0}
    )


@pytest.fixture
def sent(fake_queue: FakeQueue) -> list[tuple[str, tuple[Any, ...], str | None]]:
    """Tasks sent by name (task, args, task id), captured instead of reaching a broker."""
    return fake_queue.sent
