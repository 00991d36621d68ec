"""The onboarding job: read a registered checkpoint, build its identity index and audit kit.

Runs while the training data still exists (ARCHITECTURE §1). The computation touches no
database; its results are written in one transaction, so a version is `ready` only with its
identity index, artifacts and (for a model's first version) the `serving` alias.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import session_factory
from app.security import identity_hash
from app.services.registry import PENDING, SERVING, serving_version, set_alias
from app.settings import Settings
from app.storage import ArtifactStore, artifact_store
from app.tables import ModelIdentity, ModelVersion, RegisteredModel, VersionStatus
from models.data.base import FaceData
from models.data.registry import DatasetSpec, load_dataset
from models.data.splits import SplitIndices, Splits, split_indices
from models.data.transforms import test_transform
from models.device import default_device
from models.methods import UnlearningMethod, get_method, resolve_config
from models.methods.prepare_data import build_prepare_data
from models.nets import data_config
from models.protocol import model_from_checkpoint
from models.train.checkpoint import load_checkpoint
from worker.audit_kit import build_audit_kit, store_audit_kit
from worker.versions import METHOD_KIND, task_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What preparation computed for a version, ready to be written to the database."""

    arch: str
    task: str
    identity_hashes: list[str]
    artifacts: dict[str, str]


def _prepare_methods(
    settings: Settings,
    store: ArtifactStore,
    model: torch.nn.Module,
    data: FaceData,
    task: str,
    indices: SplitIndices,
    image_size: int,
    arch: str,
) -> dict[str, str]:
    """Run `prepare` of each method in settings.prepare_methods; store results as tensors.

    A method whose preparation fails is logged and left out: the version still serves the
    methods that need nothing, and requests for the missing one are refused by the API.
    """
    artifacts = {}
    transform = test_transform(data_config(model, image_size))
    prepare_data = None
    for name in settings.prepare_methods:
        method = get_method(name)
        if type(method).prepare is UnlearningMethod.prepare:
            continue
        try:
            if prepare_data is None:
                # The identity index is keyed like the service's stored identities.
                prepare_data = build_prepare_data(
                    data, task, indices, transform, lambda i: identity_hash(i, settings)
                )
            cfg = resolve_config(name, data.name, arch, 1, **settings.method_options.get(name, {}))
            computed: dict[str, Any] = method.prepare(model, prepare_data, cfg)
        except Exception:
            log.exception("preparation of method %s failed; it will not be selectable", name)
            continue
        if computed:
            buffer = io.BytesIO()
            torch.save(computed, buffer)
            artifacts[f"method:{name}"] = store.put_bytes(METHOD_KIND, buffer.getvalue())
    return artifacts


def compute(settings: Settings, sha256: str) -> Prepared:
    """Everything a version needs before it can serve erasures (no database access)."""
    store = artifact_store(settings)
    checkpoint = load_checkpoint(store.path("models", sha256), expected_sha256=sha256)
    config = checkpoint.config
    data = load_dataset(DatasetSpec(**config["dataset"]))
    splits = Splits.from_dict(checkpoint.splits)
    indices = split_indices(data, splits)
    task, image_size = str(config["task"]), int(config["image_size"])
    if task_spec(checkpoint) != data.task(task):
        raise ValueError(f"the checkpoint's task {task!r} differs from its data set's")
    device = default_device()
    model = model_from_checkpoint(checkpoint).to(device)
    kit = build_audit_kit(model, data, task, indices, image_size, device, seed=splits.seed)
    artifacts = store_audit_kit(store, kit)
    artifacts |= _prepare_methods(
        settings, store, model, data, task, indices, image_size, checkpoint.arch
    )
    return Prepared(
        arch=checkpoint.arch,
        task=task,
        identity_hashes=sorted({identity_hash(i, settings) for i in splits.train}),
        artifacts=artifacts,
    )


def _mark_failed(session: Session, version: ModelVersion, message: str) -> dict[str, Any]:
    version.status = VersionStatus.failed.value
    version.prepare_error = message[:4000]
    session.commit()
    return {"version_id": version.id, "status": version.status, "error": version.prepare_error}


def _apply(session: Session, version: ModelVersion, prepared: Prepared) -> dict[str, Any]:
    """Write the results and mark the version ready (the caller's session, one commit)."""
    model = session.get_one(RegisteredModel, version.model_id)
    if model.task not in (PENDING, prepared.task):
        return _mark_failed(
            session,
            version,
            f"checkpoint task {prepared.task!r} differs from model {model.name!r}'s {model.task!r}",
        )
    model.task = prepared.task
    version.arch = prepared.arch
    version.artifacts = prepared.artifacts
    known = set(
        session.scalars(
            select(ModelIdentity.identity_hash).where(ModelIdentity.model_id == model.id)
        )
    )
    session.add_all(
        ModelIdentity(model_id=model.id, identity_hash=h)
        for h in prepared.identity_hashes
        if h not in known
    )
    version.status = VersionStatus.ready.value
    version.prepare_error = None
    if serving_version(session, model) is None:
        set_alias(session, model, SERVING, version)
    session.commit()
    return {"version_id": version.id, "status": version.status}


def prepare_version(settings: Settings, version_id: int) -> dict[str, Any]:
    """Prepare a `preparing` version; anything else is left as it is (the job is idempotent)."""
    factory = session_factory(settings)
    with factory() as session:
        version = session.get(ModelVersion, version_id)
        if version is None:
            return {"version_id": version_id, "status": "missing"}
        if version.status != VersionStatus.preparing.value:
            return {"version_id": version_id, "status": version.status, "noop": True}
        sha = version.sha256
    try:
        prepared = compute(settings, sha)
    except Exception as exc:
        log.exception("preparing model version %s failed", version_id)
        with factory() as session:
            version = session.get_one(ModelVersion, version_id)
            if version.status != VersionStatus.preparing.value:
                return {"version_id": version_id, "status": version.status, "noop": True}
            return _mark_failed(session, version, f"{type(exc).__name__}: {exc}")
    # Two versions of one model prepared at once may insert the same identity rows; the loser
    # of that race re-reads the index once and inserts what is still missing.
    for retry in (False, True):
        with factory() as session:
            version = session.get_one(ModelVersion, version_id)
            if version.status != VersionStatus.preparing.value:
                return {"version_id": version_id, "status": version.status, "noop": True}
            try:
                return _apply(session, version, prepared)
            except IntegrityError:
                session.rollback()
                if retry:
                    raise
    raise AssertionError("unreachable")
