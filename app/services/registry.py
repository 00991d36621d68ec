"""Model registry: register checkpoints, find the serving and head versions, move aliases.

Registration only copies the file and records it; the worker's `lethe.prepare` job reads the
weights (the API never imports torch) and builds the version's onboarding artifacts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.settings import Settings
from app.storage import artifact_store
from app.tables import (
    SERVING,
    Alias,
    DeletionRequest,
    ModelVersion,
    RegisteredModel,
    RequestStatus,
    VersionStatus,
    utcnow,
)
from worker.celery_app import enqueue

log = logging.getLogger(__name__)
PENDING = "pending"  # task/arch of a model version until its preparation job has read the weights
PREPARE_TASK = "lethe.prepare"


class RegistryError(ValueError):
    """A registry operation that is invalid as asked."""


class AliasRefused(RegistryError):
    """Moving `serving` there would bring back identities whose erasure completed."""


class NoReadyVersion(LookupError):
    """The model has no version whose onboarding artifacts exist."""


def _readable_file(checkpoint_path: str) -> Path:
    """The checkpoint path resolved, or a RegistryError saying why it cannot be read."""
    path = Path(checkpoint_path).expanduser().resolve()
    if not path.exists():
        raise RegistryError(f"checkpoint {checkpoint_path} does not exist")
    if not path.is_file():
        raise RegistryError(f"checkpoint {checkpoint_path} is not a file")
    if not os.access(path, os.R_OK):
        raise RegistryError(f"checkpoint {checkpoint_path} is not readable")
    return path


def _model_named(session: Session, name: str) -> RegisteredModel | None:
    return session.scalar(select(RegisteredModel).where(RegisteredModel.name == name))


def register_checkpoint(
    session: Session, settings: Settings, name: str, checkpoint_path: str
) -> ModelVersion:
    """Store a checkpoint as a new `preparing` root version of `name` and queue its preparation.

    Registering the same file again for a model returns its existing version (unless that one's
    preparation failed), so a retried call does not create duplicates.
    """
    name = name.strip()
    if not name or len(name) > 200:
        raise RegistryError("a model name needs 1 to 200 characters")
    path = _readable_file(checkpoint_path)
    sha = artifact_store(settings).put_file("models", path)

    model = _model_named(session, name)
    if model is None:
        model = RegisteredModel(name=name, task=PENDING)
        session.add(model)
        session.flush()
    else:
        existing = session.scalar(
            select(ModelVersion).where(
                ModelVersion.model_id == model.id,
                ModelVersion.parent_id.is_(None),
                ModelVersion.sha256 == sha,
                ModelVersion.status != VersionStatus.failed.value,
            )
        )
        if existing is not None:
            return existing

    latest = max((v.version for v in _versions(session, model)), default=0)
    version = ModelVersion(
        model_id=model.id,
        version=latest + 1,
        parent_id=None,
        status=VersionStatus.preparing.value,
        artifact_uri=f"models/{sha}",
        sha256=sha,
        arch=PENDING,
        resolved_config={},
        erased_identity_hashes=[],
        artifacts={},
    )
    session.add(version)
    session.commit()
    # Record first, then enqueue: a lost message leaves a `preparing` row that the sweeper
    # re-sends, never a job without a row.
    try:
        enqueue(PREPARE_TASK, version.id)
    except Exception:
        log.exception(
            "could not enqueue the preparation of version %s; the sweeper will", version.id
        )
    return version


def _versions(session: Session, model: RegisteredModel) -> list[ModelVersion]:
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.model_id == model.id)
            .order_by(ModelVersion.version)
        )
    )


def serving_version(session: Session, model: RegisteredModel) -> ModelVersion | None:
    """The version the `serving` alias points at, if any."""
    alias = session.get(Alias, (model.id, SERVING))
    return None if alias is None else session.get(ModelVersion, alias.version_id)


def head_version(session: Session, model: RegisteredModel) -> ModelVersion:
    """The latest version of the serving chain: it contains every erasure made so far.

    Starting from `serving` (or, before anything serves, the newest ready version), follow the
    child links to the end. Children that were not promoted (`needs_review`) still carry their
    erasure, so the next erasure builds on them rather than undoing them.
    """
    ready = [v for v in _versions(session, model) if v.status == VersionStatus.ready.value]
    if not ready:
        raise NoReadyVersion(f"model {model.name!r} has no ready version")
    head = serving_version(session, model) or ready[-1]
    child_of = {v.parent_id: v for v in ready if v.parent_id is not None}
    while head.id in child_of:
        head = child_of[head.id]
    return head


def missing_erasures(session: Session, model: RegisteredModel, version: ModelVersion) -> set[str]:
    """Identity hashes of completed erasures of `model` that `version` does not contain."""
    completed = session.scalars(
        select(DeletionRequest.identity_hash).where(
            DeletionRequest.model_id == model.id,
            DeletionRequest.status == RequestStatus.completed.value,
        )
    )
    return set(completed) - set(version.erased_identity_hashes or [])


def set_alias(session: Session, model: RegisteredModel, name: str, version: ModelVersion) -> Alias:
    """Point alias `name` of `model` at `version`; the caller commits.

    `serving` only moves to a ready version that contains every completed erasure of the model.
    """
    if version.model_id != model.id:
        raise RegistryError(f"version {version.id} does not belong to model {model.name!r}")
    if version.status != VersionStatus.ready.value:
        raise RegistryError(f"version {version.version} of {model.name!r} is not ready")
    if name == SERVING:
        missing = missing_erasures(session, model, version)
        if missing:
            raise AliasRefused(
                f"version {version.version} of {model.name!r} lacks {len(missing)} completed "
                "erasure(s); serving it would bring those identities back"
            )
    alias = session.get(Alias, (model.id, name))
    if alias is None:
        alias = Alias(model_id=model.id, name=name, version_id=version.id)
        session.add(alias)
    else:
        alias.version_id = version.id
        alias.updated_at = utcnow()
    return alias
