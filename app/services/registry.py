"""Model registry: register checkpoints, find the serving and head versions, move aliases.

Registration only copies the file and records it; the worker's `lethe.prepare` job reads the
weights (the API never imports torch) and builds the version's onboarding artifacts.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import session_factory
from app.services.lifecycle import transition
from app.services.requests import METHOD_NEEDS, PREPARED_METHODS
from app.settings import Settings
from app.storage import artifact_store
from app.tables import (
    SERVING,
    Alias,
    AliasEvent,
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
REFRESH_TASK = "lethe.refresh"
REFRESH_STALE = timedelta(hours=6)  # a refresh queued this long ago was lost; queue another
ALIAS_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")


class RegistryError(ValueError):
    """A registry operation that is invalid as asked."""


class AliasRefused(RegistryError):
    """Moving `serving` there would bring back identities whose erasure completed."""

    def __init__(self, message: str, missing_request_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing_request_ids = list(missing_request_ids or [])


class VersionUnusable(RegistryError):
    """The version is preparing, failed or purged: nothing can point at it."""


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
    session: Session,
    settings: Settings,
    name: str,
    checkpoint_path: str,
    *,
    training_data: dict[str, Any] | None = None,
    arch: str | None = None,
) -> ModelVersion:
    """Store a checkpoint as a new `preparing` root version of `name` and queue its preparation.

    Registering the same file again for a model returns its existing version (unless that one's
    preparation failed), so a retried call does not create duplicates. `training_data` (dataset,
    root, task, split_seed) defaults to what the checkpoint's own config says.
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
        arch=arch or PENDING,
        resolved_config={},
        erased_identity_hashes=[],
        artifacts={},
        training_data=dict(training_data or {}),
        progress={"stage": "queued", "done": 0, "total": None},
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
    usable = [v for v in ready if v.purged_at is None]
    if not usable:
        raise NoReadyVersion(f"model {model.name!r} has no ready version")
    head = serving_version(session, model) or usable[-1]
    # Purged versions stay in the walk: a purged middle link still carries its erasures.
    child_of = {v.parent_id: v for v in ready if v.parent_id is not None}
    while head.id in child_of:
        head = child_of[head.id]
    if head.purged_at is not None:
        raise NoReadyVersion(f"the head version {head.version} of {model.name!r} is purged")
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


def missing_requests(session: Session, model: RegisteredModel, version: ModelVersion) -> list[str]:
    """Ids of completed requests of `model` whose identity `version` has not erased."""
    erased = set(version.erased_identity_hashes or [])
    rows = session.execute(
        select(DeletionRequest.id, DeletionRequest.identity_hash)
        .where(
            DeletionRequest.model_id == model.id,
            DeletionRequest.status == RequestStatus.completed.value,
        )
        .order_by(DeletionRequest.created_at, DeletionRequest.id)
    )
    return [request_id for request_id, identity in rows if identity not in erased]


def set_alias(
    session: Session,
    model: RegisteredModel,
    name: str,
    version: ModelVersion,
    actor: str = "system",
    reason: str | None = None,
) -> Alias:
    """Point alias `name` of `model` at `version` and record the move; the caller commits.

    `serving` only moves to a ready version that contains every completed erasure of the model.
    """
    if version.model_id != model.id:
        raise RegistryError(f"version {version.id} does not belong to model {model.name!r}")
    if version.status != VersionStatus.ready.value:
        raise VersionUnusable(f"version {version.version} of {model.name!r} is not ready")
    if version.purged_at is not None:
        raise VersionUnusable(f"version {version.version} of {model.name!r} is purged")
    if name == SERVING:
        missing = missing_requests(session, model, version)
        if missing:
            raise AliasRefused(
                f"version {version.version} of {model.name!r} lacks {len(missing)} completed "
                "erasure(s); serving it would bring those identities back",
                missing,
            )
    alias = session.get(Alias, (model.id, name))
    previous = None if alias is None else alias.version_id
    if alias is None:
        alias = Alias(model_id=model.id, name=name, version_id=version.id)
        session.add(alias)
    else:
        alias.version_id = version.id
        alias.updated_at = utcnow()
    session.add(
        AliasEvent(
            model_id=model.id,
            alias=name,
            from_version_id=previous,
            to_version_id=version.id,
            actor=actor[:100],
            reason=reason,
        )
    )
    return alias


def move_alias(
    session: Session, model: RegisteredModel, name: str, version: ModelVersion, actor: str
) -> list[str]:
    """An admin's alias move; returns the `needs_review` requests it completed. Caller commits.

    Moving `serving` to a version that erased an identity whose request was held for review
    (guardrail) is the admin accepting that version, so those requests become `completed`.
    """
    if not ALIAS_NAME.fullmatch(name):
        raise RegistryError(f"alias {name!r} is not a lowercase slug")
    set_alias(session, model, name, version, actor, "moved by an admin")
    completed: list[str] = []
    if name == SERVING:
        erased = set(version.erased_identity_hashes or [])
        held = session.scalars(
            select(DeletionRequest)
            .where(
                DeletionRequest.model_id == model.id,
                DeletionRequest.status == RequestStatus.needs_review.value,
            )
            .order_by(DeletionRequest.created_at, DeletionRequest.id)
        )
        for request in held:
            if request.identity_hash in erased:
                reason = f"{actor} moved serving to v{version.version}, which erased this identity"
                transition(session, request, RequestStatus.completed, actor, reason)
                completed.append(request.id)
    log.info("alias %s of %s moved to v%s by %s", name, model.name, version.version, actor)
    return completed


def lineage(session: Session, version: ModelVersion) -> list[ModelVersion]:
    """`version` and its ancestors, newest first."""
    chain = [version]
    while chain[-1].parent_id is not None:
        parent = session.get(ModelVersion, chain[-1].parent_id)
        if parent is None or parent in chain:
            break
        chain.append(parent)
    return chain


def training_data_of(session: Session, version: ModelVersion) -> dict[str, Any]:
    """The training-data spec of `version`, inherited from the nearest ancestor that has one."""
    return next((dict(v.training_data) for v in lineage(session, version) if v.training_data), {})


def artifacts_source(session: Session, version: ModelVersion) -> ModelVersion | None:
    """The version whose weights `version`'s artifacts were computed on."""
    for v in lineage(session, version):
        if v.artifacts_version_id is not None:
            return session.get(ModelVersion, v.artifacts_version_id)
    return None


def methods_ready(version: ModelVersion) -> list[str]:
    """Methods a production request can use on `version` (its artifacts exist, or none needed)."""
    if version.status != VersionStatus.ready.value or version.purged_at is not None:
        return []
    return usable_methods(version.artifacts or {})


def usable_methods(artifacts: dict[str, str]) -> list[str]:
    """Production methods whose onboarding artifacts are among `artifacts` or need none."""
    return [
        method
        for method, needs in sorted(METHOD_NEEDS.items())
        if needs == "support"
        and (method not in PREPARED_METHODS or f"method:{method}" in artifacts)
    ]


def request_refresh(session: Session, model: RegisteredModel, reason: str) -> ModelVersion:
    """Queue `lethe.refresh` for the serving version; commits before enqueueing."""
    version = serving_version(session, model)
    if version is None or version.status != VersionStatus.ready.value or version.purged_at:
        raise NoReadyVersion(f"model {model.name!r} has no ready serving version")
    refresh = {"state": "queued", "reason": reason, "queued_at": utcnow().isoformat()}
    version.progress = {**(version.progress or {}), "refresh": refresh}
    session.commit()
    try:
        enqueue(REFRESH_TASK, version.id)
    except Exception:
        log.exception("could not enqueue the refresh of version %s", version.id)
    return version


def _stale(refresh: dict[str, Any]) -> bool:
    """Whether a queued or running refresh is old enough to count as lost."""
    try:
        since = datetime.fromisoformat(str(refresh.get("queued_at")))
    except ValueError:
        return True
    return utcnow() - since > REFRESH_STALE


def refresh_if_due(settings: Settings, model_id: int) -> bool:
    """Queue a refresh when `refresh_after_erasures` erasures happened since the last one.

    Called by the erasure job after its commit; a refresh already queued or running is not
    queued again.
    """
    every = settings.refresh_after_erasures
    if every <= 0:
        return False
    with session_factory(settings)() as session:
        model = session.get(RegisteredModel, model_id)
        if model is None or (model.erasures_since_refresh or 0) < every:
            return False
        version = serving_version(session, model)
        pending = ((version.progress or {}).get("refresh") or {}) if version else {}
        if pending.get("state") in ("queued", "running") and not _stale(pending):
            return False
        try:
            reason = f"{model.erasures_since_refresh} erasures since the last refresh"
            request_refresh(session, model, reason)
        except NoReadyVersion:
            return False
    return True
