"""Model versions loaded for erasure: weights on the device and the audit kit, cached in-process.

Consecutive erasures on one model read the version the previous one wrote, so a two-entry LRU
keyed by (database, version, weights hash) avoids reloading from the store.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from app.settings import Settings
from app.storage import artifact_store
from models import catalog
from models.data.base import TaskSpec
from models.data.transforms import test_transform
from models.nets import data_config
from models.protocol import model_from_checkpoint
from models.train.checkpoint import Checkpoint, load_checkpoint
from worker.audit import Transform
from worker.audit_kit import AuditKit, load_audit_kit

CACHE_SIZE = 2
METHOD_KIND = "method"  # artifact-store folder of methods' onboarding artifacts
VersionKey = tuple[str, int, str]


@dataclass
class LoadedVersion:
    """A version ready to erase from: `checkpoint` is metadata only, the weights are in `model`."""

    key: VersionKey
    checkpoint: Checkpoint
    model: nn.Module
    task: TaskSpec
    image_size: int
    transform: Transform
    kit: AuditKit


_cache: OrderedDict[VersionKey, LoadedVersion] = OrderedDict()


def version_key(settings: Settings, version_id: int, sha256: str) -> VersionKey:
    """Cache key; the database URL keeps versions of different databases apart."""
    return (settings.resolved_database_url, version_id, sha256)


def task_spec(checkpoint: Checkpoint) -> TaskSpec:
    """The checkpoint's task, rebuilt without loading its data set."""
    task = checkpoint.task
    return TaskSpec(name=task["name"], kind=task["kind"], labels=tuple(task["labels"]))


def remember(loaded: LoadedVersion) -> None:
    """Put a version in the cache, evicting the least recently used beyond CACHE_SIZE."""
    _cache[loaded.key] = loaded
    _cache.move_to_end(loaded.key)
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)


def clear_cache() -> None:
    """Forget every loaded version."""
    _cache.clear()


def load_version(
    settings: Settings,
    version_id: int,
    artifact_uri: str,
    sha256: str,
    artifacts: dict[str, str],
    device: torch.device,
) -> LoadedVersion:
    """The version's network (on `device`, eval mode) and audit kit, from the cache or the store."""
    key = version_key(settings, version_id, sha256)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    store = artifact_store(settings)
    kind, _, name = artifact_uri.partition("/")
    if name != sha256:
        raise ValueError(f"artifact URI {artifact_uri} does not match hash {sha256}")
    with store.local_copy(kind, sha256) as path:
        checkpoint = load_checkpoint(path, expected_sha256=sha256)
    model = model_from_checkpoint(checkpoint).to(device).eval()
    image_size = int(checkpoint.config["image_size"])
    loaded = LoadedVersion(
        key=key,
        checkpoint=replace(checkpoint, state_dict={}),
        model=model,
        task=task_spec(checkpoint),
        image_size=image_size,
        transform=test_transform(data_config(model, image_size)),
        kit=load_audit_kit(store, artifacts),
    )
    remember(loaded)
    return loaded


def method_artifacts(
    settings: Settings, artifacts: dict[str, str], method: str, device: torch.device
) -> dict[str, Any]:
    """What `method` computed at onboarding for this version (empty if it needs nothing)."""
    sha = artifacts.get(catalog.method(method).artifact_key)
    if sha is None:
        return {}
    data = artifact_store(settings).read(METHOD_KIND, sha)
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
