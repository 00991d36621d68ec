"""The erasure job's database phase before and after the torch run: batching, claiming, fencing,
and ending members that fail or must go back to the queue. No torch here.

Every state change is fenced on the attempt that claimed the request (worker/request_state.py),
so a redelivered or overtaken execution can never act on a request twice.
"""

from __future__ import annotations

import socket
import time

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.services import duplicates
from app.services.lifecycle import transition
from app.services.lookup import NoReadyVersion, head_version
from app.settings import Settings
from app.storage import PortraitVault
from app.tables import DeletionRequest, RegisteredModel, RequestStatus, utcnow
from worker.erase.vocabulary import ACTOR, Busy, Job, Member, Outcome
from worker.request_state import fail, fence, requeue

WAIT_POLL_SECONDS = 0.1


def destroy(vault: PortraitVault, *uris: str | None) -> None:
    """Destroy the named portraits (after the commit that unlinked them)."""
    for uri in uris:
        if uri:
            vault.destroy(uri)


def _batchable(model_id: int, method: str) -> list[ColumnElement[bool]]:
    """Queued requests that may join one batch: same model and method, not linked to another."""
    return [
        DeletionRequest.model_id == model_id,
        DeletionRequest.method == method,
        DeletionRequest.status == RequestStatus.queued.value,
        DeletionRequest.linked_request_id.is_(None),
    ]


def batch_wait(session: Session, settings: Settings, request: DeletionRequest) -> float:
    """Seconds to wait for company: until the oldest batchable request is a window old, or full."""
    window = settings.batch_window_seconds
    if window <= 0 or settings.batch_max_size <= 1:
        return 0.0
    group = _batchable(request.model_id, request.method)
    waiting = session.scalar(select(func.count()).select_from(DeletionRequest).where(*group))
    oldest = session.scalar(
        select(DeletionRequest.created_at).where(*group).order_by(DeletionRequest.created_at)
    )
    if oldest is None or int(waiting or 0) >= settings.batch_max_size:
        return 0.0
    return min(window, max(0.0, window - (utcnow() - oldest).total_seconds()))


def wait_for_company(
    factory: sessionmaker[Session], settings: Settings, request_id: str, wait: float
) -> None:
    """Pause (at most `wait`, within the window) until the batch is full or old enough.

    A short pause turns a burst of requests into a few jobs; the count is checked every
    WAIT_POLL_SECONDS so a batch that fills up early starts at once.
    """
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, WAIT_POLL_SECONDS))
        with factory() as session:
            request = session.get(DeletionRequest, request_id)
            if request is None or batch_wait(session, settings, request) <= 0:
                return


def forget_portrait(session: Session, vault: PortraitVault, request: DeletionRequest) -> None:
    """A finished request keeps no portrait (a crash may have left one)."""
    uri = request.portrait_uri
    if uri:
        request.portrait_uri = None
        session.commit()
        vault.destroy(uri)


def requeue_lost(
    session: Session,
    vault: PortraitVault,
    request: DeletionRequest,
    task_id: str | None,
    cap: int,
) -> Outcome | None:
    """A `running` request seen again: its job died. Requeue its batch, or fail at the cap."""
    companions = []
    if request.batch_id:
        companions = session.scalars(
            select(DeletionRequest).where(
                DeletionRequest.batch_id == request.batch_id,
                DeletionRequest.status == RequestStatus.running.value,
                DeletionRequest.id != request.id,
            )
        ).all()
    seen = request.attempts
    fresh = fence(session, request.id, RequestStatus.running, seen, task_id)
    if fresh is None:
        session.rollback()
        return Outcome(request.id, RequestStatus.running.value, None, "taken by another attempt")
    reason = f"attempt {seen + 1} did not finish (worker lost or task redelivered)"
    uris = [requeue(session, fresh, ACTOR, reason, cap)]
    for other in companions:
        member = fence(session, other.id, RequestStatus.running, other.attempts)
        if member is not None:
            uris.append(requeue(session, member, ACTOR, f"its batch {reason}", cap))
    session.commit()
    destroy(vault, *uris)
    if fresh.status == RequestStatus.failed.value:
        return Outcome(fresh.id, fresh.status, None, fresh.error_code)
    return None


def _companions(
    session: Session, settings: Settings, leader: DeletionRequest
) -> list[DeletionRequest]:
    """Other queued requests to erase with `leader`, oldest first, locked and claimed."""
    room = settings.batch_max_size - 1
    if room <= 0:
        return []
    candidates = session.scalars(
        select(DeletionRequest)
        .where(
            *_batchable(leader.model_id, leader.method),
            DeletionRequest.id != leader.id,
            DeletionRequest.portrait_uri.is_not(None),
        )
        .order_by(DeletionRequest.created_at, DeletionRequest.id)
        .limit(room * 2)
        .with_for_update(skip_locked=True)
    ).all()
    return duplicates.batch_companions(
        leader,
        candidates,
        room,
        lambda c: fence(session, c.id, RequestStatus.queued, c.attempts),
    )


def claim(
    settings: Settings,
    factory: sessionmaker[Session],
    vault: PortraitVault,
    request_id: str,
    task_id: str | None,
    attempt: int,
    owner: str,
) -> Job | Outcome:
    """Move the request and its companions from queued to running (fenced) under one parent."""
    with factory() as session:
        leader = fence(session, request_id, RequestStatus.queued, attempt, task_id)
        if leader is None:
            session.rollback()
            return Outcome(request_id, "unchanged", None, "changed by someone else meanwhile")
        model = session.get_one(RegisteredModel, leader.model_id)
        try:
            parent = head_version(session, model)
        except NoReadyVersion as exc:
            uri = fail(session, leader, ACTOR, "model_not_ready", str(exc))
            session.commit()
            destroy(vault, uri)
            return Outcome(request_id, leader.status, None, "model_not_ready")
        if not leader.portrait_uri:
            fail(session, leader, ACTOR, "portrait_missing", "the request has no stored portrait")
            session.commit()
            return Outcome(request_id, leader.status, None, "portrait_missing")
        batch = [leader, *_companions(session, settings, leader)]
        # Members' own tasks must find a task id that is not theirs, and stop.
        batch_task = task_id or leader.task_id or f"batch-{leader.id}"
        where = f"on {socket.gethostname()}, from version {parent.version}"
        for request in batch:
            # no leader id: the batch mixes clients, and batch_id is shown only to its own
            size = f"batch of {len(batch)}" if len(batch) > 1 else "alone"
            reason = f"attempt {request.attempts + 1} {where}, {size}"
            transition(session, request, RequestStatus.running, ACTOR, reason)
            request.parent_version_id = parent.id
            request.batch_id = leader.id
            request.task_id = batch_task
        job = Job(
            batch_id=leader.id,
            model_id=model.id,
            owner=owner,
            method=leader.method,
            members=tuple(
                Member(r.id, r.attempts, r.identity_hash, str(r.portrait_uri)) for r in batch
            ),
            parent_id=parent.id,
            parent_version=parent.version,
            parent_uri=parent.artifact_uri,
            parent_sha256=parent.sha256,
            parent_artifacts=dict(parent.artifacts or {}),
            parent_erased=list(parent.erased_identity_hashes or []),
            parent_training_data=dict(parent.training_data or {}),
            parent_artifacts_version_id=parent.artifacts_version_id or parent.id,
        )
        session.commit()
        return job


def fenced(session: Session, job: Job) -> list[DeletionRequest] | None:
    """Every member, locked, if each is still running at its claimed attempt; else None."""
    requests = []
    for member in job.members:
        request = fence(session, member.request_id, RequestStatus.running, member.attempt)
        if request is None:
            return None
        requests.append(request)
    return requests


def fenced_some(session: Session, job: Job) -> list[DeletionRequest]:
    """The members still running at their claimed attempt (others were taken over)."""
    fresh = (fence(session, m.request_id, RequestStatus.running, m.attempt) for m in job.members)
    return [request for request in fresh if request is not None]


def fail_unreadable(
    factory: sessionmaker[Session], vault: PortraitVault, job: Job, unreadable: dict[str, str]
) -> Job:
    """Fail the members whose portrait could not be read (each alone); the job without them."""
    if not unreadable:
        return job
    failing = job.without(set(job.request_ids) - set(unreadable))
    with factory() as session:
        uris = []
        for request in fenced(session, failing) or []:
            message = unreadable[request.id]
            uris.append(fail(session, request, ACTOR, "portrait_unreadable", message))
        session.commit()
    destroy(vault, *uris)
    return job.without(set(unreadable))


def reject(
    factory: sessionmaker[Session],
    vault: PortraitVault,
    job: Job,
    refused: set[str],
    code: str,
    message: str,
) -> Job:
    """Reject the members `refused` with `code` and keep nothing of them; the job without them.

    The message says no more than the code: a similarity score would guide a forger."""
    if not refused:
        return job
    rejecting = job.without(set(job.request_ids) - refused)
    with factory() as session:
        uris = [
            fail(session, request, ACTOR, code, message, RequestStatus.rejected)
            for request in fenced(session, rejecting) or []
        ]
        session.commit()
    destroy(vault, *uris)
    return job.without(refused)


def finish_failed(
    factory: sessionmaker[Session], vault: PortraitVault, job: Job, code: str, message: str
) -> Outcome:
    """Fail every member still ours and destroy their portraits."""
    with factory() as session:
        requests = fenced_some(session, job)
        uris = [fail(session, request, ACTOR, code, message) for request in requests]
        session.commit()
    destroy(vault, *uris)
    if not requests:
        return Outcome(job.batch_id, "unchanged", None, "taken by another attempt")
    return Outcome(job.batch_id, RequestStatus.failed.value, None, code)


def requeue_batch(
    settings: Settings, factory: sessionmaker[Session], vault: PortraitVault, job: Job, reason: str
) -> Outcome:
    """Put the members still ours back in the queue (each under its requeue cap), then retry."""
    with factory() as session:
        requests = fenced_some(session, job)
        uris = [requeue(session, r, ACTOR, reason, settings.requeue_cap) for r in requests]
        session.commit()
    destroy(vault, *uris)
    if not requests:
        return Outcome(job.batch_id, "unchanged", None, "taken by another attempt")
    if all(r.status == RequestStatus.failed.value for r in requests):
        return Outcome(job.batch_id, RequestStatus.failed.value, None, requests[0].error_code)
    raise Busy(reason)
