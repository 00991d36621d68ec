"""What an erasure removes: the erasure-target seam, and identity erasure, its one kind today.

A target kind answers three questions the lifecycle asks: which key a request erases (what the
request carries), which keys a version has erased, and so which completed requests a version
lacks (what a rollback must keep). Identity erasure keys a person by the keyed hash of their
identity ID and carries one portrait; attribute erasure can implement the same protocol with an
attribute name as its key (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.tables import DeletionRequest, ModelVersion, RegisteredModel, RequestStatus


class ErasureTarget(Protocol):
    """One kind of thing a model can be made to forget."""

    kind: str

    def key(self, request: DeletionRequest) -> str:
        """The key of what `request` asks to erase."""
        ...

    def erased(self, version: ModelVersion) -> set[str]:
        """The keys `version` has erased (its own and its ancestors')."""
        ...

    def extended(self, erased: Sequence[str], keys: Iterable[str]) -> list[str]:
        """What a child of a version that had erased `erased` holds once it also erases `keys`."""
        ...


class IdentityTarget:
    """A person, keyed by the HMAC of their identity ID; a request carries one portrait."""

    kind = "identity"

    def key(self, request: DeletionRequest) -> str:
        """The request's keyed identity hash."""
        return request.identity_hash

    def erased(self, version: ModelVersion) -> set[str]:
        """The identity hashes `version` has erased."""
        return set(version.erased_identity_hashes or [])

    def extended(self, erased: Sequence[str], keys: Iterable[str]) -> list[str]:
        """The parent's erased identities followed by `keys`, in order, without repeats."""
        return list(dict.fromkeys([*erased, *keys]))


IDENTITY = IdentityTarget()


def target_of(request: DeletionRequest) -> ErasureTarget:
    """The target kind of `request` (every deletion request erases an identity today)."""
    return IDENTITY


def _completed(session: Session, model: RegisteredModel) -> list[DeletionRequest]:
    return list(
        session.scalars(
            select(DeletionRequest)
            .where(
                DeletionRequest.model_id == model.id,
                DeletionRequest.status == RequestStatus.completed.value,
            )
            .order_by(DeletionRequest.created_at, DeletionRequest.id)
        )
    )


def _lacking(
    session: Session, model: RegisteredModel, version: ModelVersion
) -> list[DeletionRequest]:
    """Completed requests of `model` whose erasure `version` does not contain, oldest first."""
    return [
        request
        for request in _completed(session, model)
        if target_of(request).key(request) not in target_of(request).erased(version)
    ]


def missing_requests(session: Session, model: RegisteredModel, version: ModelVersion) -> list[str]:
    """Ids of completed requests of `model` whose erasure `version` does not contain.

    Pointing `serving` at such a version would bring those people back: a rollback must keep them.
    """
    return [request.id for request in _lacking(session, model, version)]


def missing_erasures(session: Session, model: RegisteredModel, version: ModelVersion) -> set[str]:
    """Keys of completed erasures of `model` that `version` does not contain."""
    return {target_of(request).key(request) for request in _lacking(session, model, version)}
