"""Worker-side request state changes: fenced claims, requeues under the cap, failures.

Every change first runs a compare-and-set UPDATE on the request row (same status, same attempt
count, same task), so two executions of one request can never both act on it: the UPDATE takes
the row's write lock until commit and the loser matches no row.
"""

from __future__ import annotations

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from app.services.duplicates import release_followers
from app.services.lifecycle import transition
from app.tables import DeletionRequest, RequestStatus, utcnow

REQUEUE_CAP_REACHED = "requeue_cap_reached"


def fence(
    session: Session,
    request_id: str,
    status: RequestStatus,
    attempts: int,
    task_id: str | None = None,
) -> DeletionRequest | None:
    """Lock the request if it is still in `status` at `attempts` (and still runs as `task_id`).

    Returns the fresh row, or None when another execution changed it first. A stored task id of
    None matches any task (the API may record the id only after sending).
    """
    conditions = [
        DeletionRequest.id == request_id,
        DeletionRequest.status == status.value,
        DeletionRequest.attempts == attempts,
    ]
    if task_id is not None:
        conditions.append(
            or_(DeletionRequest.task_id.is_(None), DeletionRequest.task_id == task_id)
        )
    result = session.execute(
        update(DeletionRequest)
        .where(*conditions)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.get(DeletionRequest, request_id, populate_existing=True)


def fail(
    session: Session,
    request: DeletionRequest,
    actor: str,
    code: str,
    message: str,
    status: RequestStatus = RequestStatus.failed,
) -> str | None:
    """End the request `failed` (or `rejected`) with its error; returns the portrait URI to
    destroy after commit. Requests that followed it are released to run on their own."""
    transition(session, request, status, actor, f"{code}: {message}"[:2000])
    request.error_code = code
    request.error_message = message[:4000]
    uri, request.portrait_uri = request.portrait_uri, None
    release_followers(session, request.id, actor, f"the request it followed was {status.value}")
    return uri


def requeue(
    session: Session, request: DeletionRequest, actor: str, reason: str, cap: int
) -> str | None:
    """Count one more attempt of a `running` request and put it back in the queue.

    Beyond `cap` requeues the request fails with `requeue_cap_reached` instead; the portrait URI
    to destroy after commit is returned then (None when requeued).
    """
    request.attempts += 1
    if request.attempts > cap:
        message = f"{reason}; gave up after {request.attempts - 1} requeue(s) (cap {cap})"
        return fail(session, request, actor, REQUEUE_CAP_REACHED, message)
    transition(
        session,
        request,
        RequestStatus.queued,
        actor,
        f"{reason}; requeue {request.attempts} of at most {cap}",
    )
    return None
