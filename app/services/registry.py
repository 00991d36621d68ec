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

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app import queue
from app.db import session_factory
from app.services.lifecycle import transition
from app.services.lookup import (
    PENDING,
    NoReadyVersion,
    find_model,
    lineage,
    serving_version,
    usable,
    versions,
)
from app.services.targets import IDENTITY, missing_requests
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
from models.catalog import METHODS

log = logging.getLogger(__name__)
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

    model = find_model(session, name)
    if model is None:
        model = RegisteredModel(name=name, task=PENDING)
        session.add(model)
        session.flush()
    else:
        existing = session.scalar(
            select(ModelVersion).where(
                ModelVersion.model_id == model.id,
                ModelVersion.parent_id.is_(None),
                or_(ModelVersion.sha256 == sha, ModelVersion.upload_sha256 == sha),
                ModelVersion.status != VersionStatus.failed.value,
            )
        )
        if existing is not None:
            return existing

    latest = max((v.version for v in versions(session, model)), default=0)
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
    session.flush()  # the id the task names
    queue.send_after_commit(session, queue.PREPARE, version.id)
    return version


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
        erased = IDENTITY.erased(version)
        held = session.scalars(
            select(DeletionRequest)
            .where(
                DeletionRequest.model_id == model.id,
                DeletionRequest.status == RequestStatus.needs_review.value,
            )
            .order_by(DeletionRequest.created_at, DeletionRequest.id)
        )
        for request in held:
            if IDENTITY.key(request) in erased:
                reason = f"{actor} moved serving to v{version.version}, which erased this identity"
                transition(session, request, RequestStatus.completed, actor, reason)
                completed.append(request.id)
    log.info("alias %s of %s moved to v%s by %s", name, model.name, version.version, actor)
    return completed


def training_data_of(session: Session, version: ModelVersion) -> dict[str, Any]:
    """The training-data spec of `version`, inherited from the nearest ancestor that has one."""
    return next((dict(v.training_data) for v in lineage(session, version) if v.training_data), {})


def artifacts_source(session: Session, version: ModelVersion) -> ModelVersion | None:
    """The version whose weights `version`'s artifacts were computed on."""
    for v in lineage(session, version):
        if v.artifacts_version_id is not None:
            return session.get(ModelVersion, v.artifacts_version_id)
    return None


def method_efficacy(session: Session, version: ModelVersion, method: str) -> dict[str, Any] | None:
    """`method`'s calibrated efficacy on `version` (from its artifacts' source), or None."""
    source = artifacts_source(session, version)
    if source is None:
        return None
    entry = ((source.efficacy or {}).get("methods") or {}).get(method)
    if entry is None:
        return None
    return {**entry, "measured_on_version": source.version}


def gap_closed(efficacy: dict[str, Any] | None) -> float | None:
    """The mean membership gap closure of a method's efficacy entry (None if unmeasured)."""
    if efficacy is None:
        return None
    value = (efficacy.get("membership_gap_closed") or {}).get("mean")
    return None if value is None else float(value)


def methods_ready(version: ModelVersion) -> list[str]:
    """Methods a production request can use on `version` (its artifacts exist, or none needed)."""
    return usable_methods(version.artifacts or {}) if usable(version) else []


def usable_methods(artifacts: dict[str, str]) -> list[str]:
    """Production methods whose onboarding artifacts are among `artifacts` or need none."""
    return [
        name
        for name, info in sorted(METHODS.items())
        if info.serves_requests and (not info.prepares or info.artifact_key in artifacts)
    ]


def request_refresh(
    session: Session, model: RegisteredModel, reason: str
) -> tuple[ModelVersion, bool]:
    """Queue `lethe.refresh` for the serving version (committing before enqueueing), unless one
    is already queued or running; the version and whether this call queued it."""
    version = serving_version(session, model)
    if version is None or not usable(version):
        raise NoReadyVersion(f"model {model.name!r} has no ready serving version")
    # the row lock makes concurrent asks take turns, so only the first one queues
    session.refresh(version, with_for_update=True)
    pending = (version.progress or {}).get("refresh") or {}
    if pending.get("state") in ("queued", "running") and not _stale(pending):
        session.commit()
        return version, False
    refresh = {"state": "queued", "reason": reason, "queued_at": utcnow().isoformat()}
    version.progress = {**(version.progress or {}), "refresh": refresh}
    queue.send_after_commit(session, queue.REFRESH, version.id)
    return version, True


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
        try:
            reason = f"{model.erasures_since_refresh} erasures since the last refresh"
            return request_refresh(session, model, reason)[1]
        except NoReadyVersion:
            return False
