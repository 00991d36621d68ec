"""Small, untrained `lethe train`-shaped checkpoints for registry tests (no training needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.data.registry import DatasetSpec, load_dataset
from models.data.splits import make_splits
from models.nets import create_model
from models.train.checkpoint import Checkpoint, save_checkpoint

SPEC = DatasetSpec(num_identities=40, image_size=32)


def write_checkpoint(
    path: Path,
    *,
    arch: str = "test_resnet",
    task: str = "attributes",
    outputs: int | None = None,
    split_seed: int = 0,
    spec: DatasetSpec = SPEC,
    config: dict[str, Any] | None = None,
) -> Path:
    """A randomly initialised checkpoint of `arch` for synthfaces `task` with real splits."""
    data = load_dataset(spec)
    task_spec = data.task(task)
    splits = make_splits(data.identities, data.keys, 1, split_seed)
    network = create_model(arch, outputs or task_spec.num_outputs, spec.image_size)
    save_checkpoint(
        path,
        Checkpoint(
            arch=arch,
            task={"name": task, "kind": task_spec.kind, "labels": list(task_spec.labels)},
            config=config
            if config is not None
            else {"dataset": spec.to_dict(), "task": task, "arch": arch, "image_size": 32},
            splits=splits.to_dict(),
            state_dict=network.state_dict(),
        ),
    )
    return path
