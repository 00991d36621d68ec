"""Request state transitions, each recorded as an append-only event, and the duplicates that
follow a request in flight."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.tables import TERMINAL, TRANSITIONS, DeletionRequest, RequestEvent, RequestStatus, utcnow


class TransitionError(RuntimeError):
    """A transition the lifecycle does not allow (e.g. cancelling a running request)."""


def transition(
    session: Session,
    request: DeletionRequest,
    to: RequestStatus,
    actor: str,
    reason: str | None = None,
) -> None:
    """Move `request` to `to` and append the event; the caller commits."""
    current = RequestStatus(request.status) if request.status else None
    if current is not None and to not in TRANSITIONS.get(current, frozenset()):
        raise TransitionError(f"request {request.id} cannot go from {current} to {to}")
    now = utcnow()
    request.status = to.value
    if to is RequestStatus.running:
        request.started_at = now
    if to in TERMINAL:
        request.finished_at = now
    event = RequestEvent(
        at=now,
        actor=actor,
        from_status=current.value if current else None,
        to_status=to.value,
        reason=reason,
    )
    # Through the relationship: a new request has no id until flushed, and the loaded history
    # stays in step with the database.
    request.events.append(event)
    session.add(event)


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


def release_followers(session: Session, request_id: str, actor: str, reason: str) -> None:
    """The request they follow will not erase them: unlink them so they run on their own.

    They stay queued with their portrait and no task; the sweeper sends them (or the caller may).
    """
    for follower in followers(session, request_id):
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


def settle_followers(session: Session, request: DeletionRequest, actor: str) -> list[str]:
    """Give the finished `request`'s duplicates its outcome; the portrait URIs to destroy."""
    uris = []
    for follower in followers(session, request.id):
        status = RequestStatus(request.status)
        transition(session, follower, status, actor, f"linked to request {request.id}")
        follower.result_version_id = request.result_version_id
        follower.batch_id = request.batch_id
        if follower.portrait_uri:
            uris.append(follower.portrait_uri)
        follower.portrait_uri = None
    return uris
