"""Request state transitions, each recorded as an append-only event (rules: app/tables.py)."""

from __future__ import annotations

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
