"""Registry lookups: a model by name, its versions, the serving version and the head version."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.tables import SERVING, Alias, ModelVersion, RegisteredModel, VersionStatus

PENDING = "pending"  # task/arch of a model version until its preparation job has read the weights


class NoReadyVersion(LookupError):
    """The model has no version whose onboarding artifacts exist."""


def storable(text: str) -> bool:
    """Whether `text` can be used in a query (PostgreSQL refuses NUL characters in text)."""
    return "\x00" not in text


def find_model(session: Session, name: str) -> RegisteredModel | None:
    """The registered model called `name`, if any."""
    if not storable(name):
        return None
    return session.scalar(select(RegisteredModel).where(RegisteredModel.name == name))


def versions(session: Session, model: RegisteredModel) -> list[ModelVersion]:
    """Every version of `model`, oldest first."""
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.model_id == model.id)
            .order_by(ModelVersion.version)
        )
    )


def serving_version(session: Session, model: RegisteredModel) -> ModelVersion | None:
    """The version the `serving` alias points at, whatever its status; None before any serves."""
    alias = session.get(Alias, (model.id, SERVING))
    return None if alias is None else session.get(ModelVersion, alias.version_id)


def model_and_serving(
    session: Session, name: str
) -> tuple[RegisteredModel | None, ModelVersion | None]:
    """The model called `name` and its serving version, in one query (the submission path's)."""
    if not storable(name):
        return None, None
    row = session.execute(
        select(RegisteredModel, ModelVersion)
        .outerjoin(Alias, (Alias.model_id == RegisteredModel.id) & (Alias.name == SERVING))
        .outerjoin(ModelVersion, ModelVersion.id == Alias.version_id)
        .where(RegisteredModel.name == name)
    ).first()
    return (None, None) if row is None else (row[0], row[1])


def usable(version: ModelVersion | None) -> bool:
    """Whether `version` exists, is ready and is not purged."""
    return (
        version is not None
        and version.status == VersionStatus.ready.value
        and version.purged_at is None
    )


def head_version(session: Session, model: RegisteredModel) -> ModelVersion:
    """The latest version of the serving chain: it contains every erasure made so far.

    Starting from `serving` (or, before anything serves, the newest ready version), follow the
    child links to the end. Children that were not promoted (`needs_review`) still carry their
    erasure, so the next erasure builds on them rather than undoing them.
    """
    ready = [v for v in versions(session, model) if v.status == VersionStatus.ready.value]
    candidates = [v for v in ready if v.purged_at is None]
    if not candidates:
        raise NoReadyVersion(f"model {model.name!r} has no ready version")
    head = serving_version(session, model) or candidates[-1]
    # Purged versions stay in the walk: a purged middle link still carries its erasures.
    child_of = {v.parent_id: v for v in ready if v.parent_id is not None}
    while head.id in child_of:
        head = child_of[head.id]
    if head.purged_at is not None:
        raise NoReadyVersion(f"the head version {head.version} of {model.name!r} is purged")
    return head


def lineage(session: Session, version: ModelVersion) -> list[ModelVersion]:
    """`version` and its ancestors, newest first."""
    chain = [version]
    while chain[-1].parent_id is not None:
        parent = session.get(ModelVersion, chain[-1].parent_id)
        if parent is None or parent in chain:
            break
        chain.append(parent)
    return chain
