"""Retention: purge the weights and artifacts of superseded versions, keeping their metadata.

A purged version keeps its row (SHA-256, lineage, erased set) for the audit trail. Blobs are
content-addressed and shared (children inherit their parent's artifacts, two models may register
one file), so only blobs that no un-purged version of any model references are deleted.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.services.lookup import NoReadyVersion, head_version
from app.settings import Settings
from app.storage import VERIFIER_ARTIFACT, VERIFIER_KIND, artifact_store, reference_vault
from app.tables import Alias, ModelVersion, RegisteredModel, VersionStatus, utcnow
from models.catalog import ARTIFACT_PREFIX

log = logging.getLogger(__name__)
AUDIT_KIND = "audit"  # worker.audit_kit.KIT_KIND, without importing torch
METHOD_KIND = "method"  # worker.versions.METHOD_KIND
AUDIT_ARTIFACTS = frozenset({"audit_set", "membership"})
Blob = tuple[str, str]  # (store kind, sha256)


class PurgeRefused(ValueError):
    """An asked-for version must be kept (serving, aliased, head of the chain or preparing)."""

    def __init__(self, message: str, versions: list[int]) -> None:
        super().__init__(message)
        self.versions = versions


class UnknownVersions(LookupError):
    """Asked-for version numbers the model does not have."""

    def __init__(self, versions: list[int]) -> None:
        super().__init__(f"no such version(s): {versions}")
        self.versions = versions


@dataclass(frozen=True)
class Purged:
    """What a purge did."""

    versions: list[int]
    deleted_blobs: int
    kept_blobs: int


def blobs_of(version: ModelVersion) -> set[Blob]:
    """The store entries a version's weights and artifacts live in."""
    kind, _, sha = version.artifact_uri.partition("/")
    blobs = {(kind, sha)} if sha else set()
    for name, digest in (version.artifacts or {}).items():
        if name in AUDIT_ARTIFACTS:
            blobs.add((AUDIT_KIND, digest))
        elif name.startswith(ARTIFACT_PREFIX):
            blobs.add((METHOD_KIND, digest))
        elif name == VERIFIER_ARTIFACT:
            blobs.add((VERIFIER_KIND, digest))
    return blobs


def protected_versions(session: Session, model: RegisteredModel) -> dict[int, str]:
    """Version ids that cannot be purged, with why."""
    kept: dict[int, str] = {}
    for alias in session.scalars(select(Alias).where(Alias.model_id == model.id)):
        kept.setdefault(alias.version_id, f"alias {alias.name!r} points at it")
    with contextlib.suppress(NoReadyVersion):
        kept.setdefault(head_version(session, model).id, "it is the head of the version chain")
    for version in model.versions:
        if version.status == VersionStatus.preparing.value:
            kept.setdefault(version.id, "it is being prepared")
    return kept


def purge(
    session: Session, settings: Settings, model: RegisteredModel, asked: list[int] | None = None
) -> Purged:
    """Purge `asked` (default: every superseded version) of `model`; commits, then deletes."""
    by_number = {v.version: v for v in model.versions}
    kept = protected_versions(session, model)
    if asked is None:
        targets = [v for v in model.versions if v.id not in kept and v.purged_at is None]
    else:
        unknown = sorted(set(asked) - set(by_number))
        if unknown:
            raise UnknownVersions(unknown)
        refused = sorted(n for n in set(asked) if by_number[n].id in kept)
        if refused:
            reasons = "; ".join(f"v{n}: {kept[by_number[n].id]}" for n in refused)
            raise PurgeRefused(f"cannot purge {reasons}", refused)
        targets = [by_number[n] for n in sorted(set(asked)) if by_number[n].purged_at is None]
    now = utcnow()
    candidates: set[Blob] = set()
    for version in targets:
        candidates |= blobs_of(version)
        version.purged_at = now
    session.flush()
    drop = unneeded(session, candidates)
    session.commit()
    # After the commit: a failed delete leaves a stray file, never a live version without one.
    deleted = delete_blobs(settings, drop)
    numbers = [v.version for v in targets]
    log.info("purged versions %s of %s (%d blobs deleted)", numbers, model.name, deleted)
    return Purged(numbers, deleted, len(candidates - drop))


def unneeded(session: Session, candidates: set[Blob]) -> set[Blob]:
    """Those of `candidates` that no un-purged version of any model references."""
    needed: set[Blob] = set()
    for version in session.scalars(select(ModelVersion).where(ModelVersion.purged_at.is_(None))):
        needed |= blobs_of(version)
    return candidates - needed


def delete_blobs(settings: Settings, blobs: set[Blob]) -> int:
    """Delete `blobs` (a verifier with all its references); how many went."""
    store = artifact_store(settings)
    deleted = 0
    for kind, sha in sorted(blobs):
        try:
            if kind == VERIFIER_KIND:
                # its references are biometric templates: they go with the verifier
                reference_vault(sha, settings).delete_all()
            store.delete(kind, sha)
            deleted += 1
        except (OSError, ValueError):
            log.exception("could not delete %s/%s", kind, sha)
    return deleted
