"""Onboarding checks done in the API, without torch: path, hash, format, arch, head, data spec.

Every refusal raises `Refused` with a code of `app.errors` before anything is stored; the
registry then copies the file into the artifact store and queues its preparation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.services.checkpoint_meta import CheckpointMeta, CheckpointUnreadable, read_checkpoint_meta
from app.services.lookup import PENDING, find_model
from app.services.paths import PathRefused, resolve_under
from app.services.registry import RegistryError, register_checkpoint
from app.settings import Settings
from app.storage import file_sha256
from app.tables import ModelVersion
from models.catalog import ARCHITECTURES, DATASETS


class Refused(ValueError):
    """An onboarding refusal with its stable API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DataRequest:
    """The training-data spec as a client sent it; missing fields come from the checkpoint."""

    dataset: str | None = None
    data_root: str | None = None
    task: str | None = None
    split_seed: int | None = None


def allowed_checkpoint(settings: Settings, checkpoint_path: str) -> Path:
    """The path resolved (links followed) if it is a readable file under a checkpoint folder."""
    if "\x00" in checkpoint_path:
        raise Refused("invalid_checkpoint", "the checkpoint path contains a NUL character")
    try:
        path = resolve_under(checkpoint_path, settings.resolved_checkpoint_dirs)
    except PathRefused as exc:
        raise Refused("checkpoint_path_refused", str(exc)) from None
    if not path.is_file():
        raise Refused("invalid_checkpoint", f"checkpoint {checkpoint_path} is not an existing file")
    if not os.access(path, os.R_OK):
        raise Refused("invalid_checkpoint", f"checkpoint {checkpoint_path} is not readable")
    if path.stat().st_size > settings.max_checkpoint_bytes:
        raise Refused(
            "checkpoint_too_large", f"the checkpoint is over {settings.max_checkpoint_bytes} bytes"
        )
    return path


def _data_root(settings: Settings, dataset: str, root: str | None) -> str | None:
    if DATASETS[dataset].built_in:
        return None
    if not root:
        raise Refused("invalid_training_data", f"data set {dataset!r} needs its folder (data_root)")
    try:
        path = resolve_under(root, settings.data_roots)
    except PathRefused as exc:
        raise Refused("data_root_refused", str(exc)) from None
    if not path.is_dir():
        raise Refused("data_root_refused", f"{root} is not an existing folder")
    return str(path)


def training_data(settings: Settings, meta: CheckpointMeta, asked: DataRequest) -> dict[str, Any]:
    """The validated spec {dataset, root, task, split_seed}, defaults from the checkpoint."""
    own = meta.config.get("dataset") if isinstance(meta.config.get("dataset"), dict) else {}
    own_name = own.get("name") if isinstance(own.get("name"), str) else None
    dataset = asked.dataset or own_name
    if dataset not in DATASETS:
        raise Refused(
            "invalid_training_data", f"unknown data set {dataset!r}; known: {', '.join(DATASETS)}"
        )
    if own_name is not None and own_name != dataset:
        raise Refused(
            "invalid_training_data", f"the checkpoint was trained on {own_name!r}, not {dataset!r}"
        )
    trained_task = meta.task.get("name")
    task = asked.task or meta.config.get("task") or trained_task
    tasks = DATASETS[dataset].tasks
    if task not in tasks:
        raise Refused(
            "invalid_training_data",
            f"data set {dataset!r} has no task {task!r}; it has " + ", ".join(tasks),
        )
    if trained_task != task:
        raise Refused(
            "invalid_training_data",
            f"the checkpoint was trained for {trained_task!r}, not {task!r}",
        )
    seed = meta.splits.get("seed")
    if asked.split_seed is not None and asked.split_seed != seed:
        raise Refused(
            "invalid_training_data",
            f"the checkpoint's splits use seed {seed!r}, not {asked.split_seed}",
        )
    root = asked.data_root or own.get("root")
    return {
        "dataset": dataset,
        "root": _data_root(settings, dataset, root if isinstance(root, str) else None),
        "task": task,
        "split_seed": seed,
    }


def check_network(meta: CheckpointMeta, spec: dict[str, Any]) -> None:
    """The architecture is known and its head has one output per label of the task."""
    if meta.arch not in ARCHITECTURES:
        raise Refused(
            "checkpoint_arch_unknown",
            f"architecture {meta.arch!r} is not supported; known: {', '.join(ARCHITECTURES)}",
        )
    labels = len(meta.labels)
    expected = DATASETS[spec["dataset"]].tasks[spec["task"]]
    if expected is not None and labels != expected:
        raise Refused(
            "checkpoint_head_mismatch",
            f"task {spec['task']!r} of {spec['dataset']!r} has {expected} labels, "
            f"the checkpoint names {labels}",
        )
    if meta.head_rows is None:
        raise Refused("checkpoint_head_mismatch", "the checkpoint has no classifier weight")
    if meta.head_rows != labels:
        raise Refused(
            "checkpoint_head_mismatch",
            f"the classifier has {meta.head_rows} outputs for {labels} labels",
        )


def onboard(
    session: Session,
    settings: Settings,
    name: str,
    checkpoint: Path,
    *,
    sha256: str | None = None,
    data: DataRequest | None = None,
) -> ModelVersion:
    """Validate `checkpoint` and register it as a new version of `name`; the caller commits."""
    try:
        meta = read_checkpoint_meta(checkpoint)
    except CheckpointUnreadable as exc:
        raise Refused("invalid_checkpoint", str(exc)) from None
    spec = training_data(settings, meta, data or DataRequest())
    check_network(meta, spec)
    model = find_model(session, name)
    if model is not None and model.task not in (PENDING, spec["task"]):
        raise Refused(
            "invalid_training_data",
            f"model {name!r} is for task {model.task!r}, not {spec['task']!r}",
        )
    if sha256 is not None and file_sha256(checkpoint) != sha256:
        raise Refused("checkpoint_sha256_mismatch", "the file's SHA-256 differs from sha256")
    try:
        return register_checkpoint(
            session, settings, name, str(checkpoint), training_data=spec, arch=meta.arch
        )
    except RegistryError as exc:
        raise Refused("invalid_checkpoint", str(exc)) from None
