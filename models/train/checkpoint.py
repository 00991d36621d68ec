"""Checkpoints: {arch, task, config, splits, state_dict}, written atomically, with their SHA-256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Checkpoint:
    """A trained model with everything needed to rebuild and audit it."""

    arch: str
    task: dict[str, Any]
    config: dict[str, Any]
    splits: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    sha256: str = ""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: Path | str, checkpoint: Checkpoint) -> str:
    """Write `checkpoint` to `path` atomically (temp file, fsync, rename); return its SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "arch": checkpoint.arch,
        "task": checkpoint.task,
        "config": checkpoint.config,
        "splits": checkpoint.splits,
        "state_dict": {k: v.detach().cpu() for k, v in checkpoint.state_dict.items()},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is an ordinary shared file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    checkpoint.sha256 = file_sha256(path)
    return checkpoint.sha256


def load_checkpoint(path: Path | str, expected_sha256: str | None = None) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`, refusing one whose hash does not match."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    digest = file_sha256(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(f"checkpoint {path} has SHA-256 {digest}, expected {expected_sha256}")
    # weights_only: a checkpoint holds only tensors and plain containers, never code.
    payload = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"arch", "task", "config", "splits", "state_dict"} - set(payload)
    if missing:
        raise ValueError(f"checkpoint {path} lacks {sorted(missing)}")
    return Checkpoint(sha256=digest, **payload)
