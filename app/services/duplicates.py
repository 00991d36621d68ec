"""Duplicate requests: every rule for a second request of the same person, in one place.

A request for an identity the serving version has already erased, by an erasure that checked the
person's portrait, completes at once, keeping no portrait. A request for an identity already in
flight follows that request (it is linked to it) and takes its outcome; its portrait is kept in
case the followed request fails or is canceled, which releases its followers to run on their own.
Two same-identity requests that still meet in one batch are linked there too, and the sweeper
settles followers a crash left behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session

from app.services.lifecycle import transition
from app.tables import (
    Audit,
    DeletionRequest,
    ModelVersion,
    RegisteredModel,
    RequestEvent,
    RequestStatus,
    utcnow,
)

ACTIVE = (RequestStatus.received, RequestStatus.queued, RequestStatus.running)
SUCCESS = (RequestStatus.completed, RequestStatus.needs_review)  # outcomes followers take over


@dataclass(frozen=True)
class Plan:
    """How a new request proceeds: keep its portrait?, transitions now, a request to follow."""

    store_portrait: bool = True
    steps: list[tuple[RequestStatus, str]] = field(default_factory=list)
    follows: DeletionRequest | None = None


def lock_identity(session: Session, model: RegisteredModel, identity: str) -> None:
    """Hold, until the transaction ends, the turn to plan a request for `identity` on `model`.

    Two submissions for one person then cannot both miss each other between the in-flight check
    and their commit, while submissions for different people never wait for each other. A no-op
    on SQLite, which has one writer at a time anyway.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    # the two-integer key space of advisory locks, apart from the one-bigint keys used elsewhere
    person = int(identity[:8], 16) - 2**31
    session.execute(
        select(func.pg_advisory_xact_lock(cast(model.id, Integer), cast(person, Integer)))
    )


def in_flight(session: Session, model: RegisteredModel, identity: str) -> DeletionRequest | None:
    """The unfinished request erasing `identity` from `model` (the one others follow), if any."""
    found = session.scalar(
        select(DeletionRequest)
        .where(
            DeletionRequest.model_id == model.id,
            DeletionRequest.identity_hash == identity,
            DeletionRequest.status.in_([s.value for s in ACTIVE]),
        )
        .order_by(DeletionRequest.linked_request_id.is_not(None), DeletionRequest.created_at)
    )
    if found is not None and found.linked_request_id is not None:
        return session.get(DeletionRequest, found.linked_request_id)
    return found


def verified_erasure(session: Session, model: RegisteredModel, identity: str) -> bool:
    """Whether an erasure of `identity` from `model` succeeded with the person's portrait checked.

    An erasure by a version without a verifier may have unlearned any image sent in the name:
    a later request for the person runs again rather than trusting it.
    """
    runs = session.scalars(
        select(Audit.run)
        .join(DeletionRequest, DeletionRequest.id == Audit.request_id)
        .where(
            DeletionRequest.model_id == model.id,
            DeletionRequest.identity_hash == identity,
            DeletionRequest.status.in_([s.value for s in SUCCESS]),
        )
    )
    return any((run or {}).get("portrait_verification", {}).get("checked") is True for run in runs)


def plan(session: Session, model: RegisteredModel, serving: ModelVersion, identity: str) -> Plan:
    """How a request for `identity` on `model` (whose serving version is `serving`) proceeds.

    Already forgotten by the serving version, by an erasure that checked the portrait: complete
    now, no portrait kept, no job. Already in flight: follow that request (its portrait is kept
    in case that one fails). Else: a new job.
    """
    if identity in (serving.erased_identity_hashes or []) and verified_erasure(
        session, model, identity
    ):
        reason = f"the identity is already erased from serving version v{serving.version}"
        return Plan(store_portrait=False, steps=[(RequestStatus.completed, reason)])
    primary = in_flight(session, model, identity)
    if primary is not None:
        # no id: the request followed may be another client's
        reason = "duplicate of a request in flight for the same identity; follows its outcome"
        return Plan(steps=[(RequestStatus.queued, reason)], follows=primary)
    return Plan()


def batch_companions(
    leader: DeletionRequest,
    candidates: Iterable[DeletionRequest],
    room: int,
    claim: Callable[[DeletionRequest], DeletionRequest | None],
) -> list[DeletionRequest]:
    """Up to `room` candidates to erase with `leader`, each `claim`ed; same-identity ones follow.

    A second request for an identity already in the batch (two submissions raced past the API's
    in-flight check) is linked to the first instead of erasing the identity twice. `claim`
    returns the locked request, or None when another execution took it first.
    """
    first_of = {leader.identity_hash: leader.id}
    chosen: list[DeletionRequest] = []
    for candidate in candidates:
        if candidate.identity_hash in first_of:
            candidate.linked_request_id = first_of[candidate.identity_hash]
            continue
        if len(chosen) == room:
            break
        member = claim(candidate)
        if member is not None:
            first_of[member.identity_hash] = member.id
            chosen.append(member)
    return chosen


def followers(session: Session, request_id: str) -> list[DeletionRequest]:
    """Queued duplicates linked to `request_id`, oldest first."""
    return list(
        session.scalars(
            select(DeletionRequest)
            .where(
                DeletionRequest.linked_request_id == request_id,
                DeletionRequest.status == RequestStatus.queued.value,
            )
            .order_by(DeletionRequest.created_at)
        )
    )


def release_followers(
    session: Session, request_id: str, actor: str, reason: str
) -> list[DeletionRequest]:
    """The request they follow will not erase them: unlink them so they run on their own.

    They stay queued with their portrait and no task; the sweeper sends them (or the caller may,
    after its commit). Returns them.
    """
    released = followers(session, request_id)
    for follower in released:
        follower.linked_request_id = None
        follower.updated_at = utcnow()
        # An event without a status change: the history shows why it ran on its own.
        note = RequestEvent(
            at=utcnow(),
            actor=actor,
            from_status=follower.status,
            to_status=follower.status,
            reason=f"{reason}; it will run on its own",
        )
        follower.events.append(note)
        session.add(note)
    return released


def settle_followers(session: Session, request: DeletionRequest, actor: str) -> list[str]:
    """Give the finished `request`'s duplicates its outcome; the portrait URIs to destroy."""
    uris = []
    for follower in followers(session, request.id):
        status = RequestStatus(request.status)
        transition(session, follower, status, actor, "the outcome of the request it followed")
        follower.result_version_id = request.result_version_id
        follower.batch_id = request.batch_id
        if follower.portrait_uri:
            uris.append(follower.portrait_uri)
        follower.portrait_uri = None
    return uris


def settle_or_release(session: Session, request: DeletionRequest, actor: str) -> list[str]:
    """A finished request's leftover followers: they take a success, or run alone after a failure.

    Returns the portrait URIs to destroy after the caller commits.
    """
    if RequestStatus(request.status) in SUCCESS:
        return settle_followers(session, request, actor)
    release_followers(session, request.id, actor, f"the request it followed {request.status}")
    return []
