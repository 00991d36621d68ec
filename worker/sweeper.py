"""The sweeper: re-send erasure tasks that went missing and remove portraits nothing refers to.

Record-first-then-enqueue leaves two gaps that only a sweep closes: a `queued` request whose
message never reached (or was lost by) the broker, and a `running` request whose worker died
with the message (the SQL broker does not redeliver a message a killed worker had fetched).
Neither needs Celery beat: the worker sweeps when it starts, and the embedded runner calls
`sweep(settings)` periodically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, aliased

from app import queue
from app.db import session_factory
from app.services.duplicates import settle_or_release
from app.services.lifecycle import transition
from app.settings import Settings
from app.storage import PortraitVault, portrait_vault
from app.tables import (
    TERMINAL,
    BenchmarkRun,
    BenchmarkStatus,
    DeletionRequest,
    ModelVersion,
    RegisteredModel,
    RequestStatus,
    VersionStatus,
    utcnow,
)
from worker.request_state import fence, requeue

log = logging.getLogger(__name__)
ACTOR = "sweeper"
INSPECT_TIMEOUT = 1.0


@dataclass
class SweepReport:
    """What one sweep did."""

    resent: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)  # stranded `received` requests queued
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    preparations: list[int] = field(default_factory=list)
    benchmarks: list[str] = field(default_factory=list)  # benchmark runs re-sent
    settled: list[str] = field(default_factory=list)  # requests whose duplicates were settled
    portraits_destroyed: int = 0


# what the broker holds, by task id (None: it could not be read)
Waited = dict[str, queue.Waiting] | None


@dataclass(frozen=True)
class Held:
    """Tasks that live workers hold (active, reserved or scheduled)."""

    ids: frozenset[str]
    prepared_versions: frozenset[int]


def held_tasks(timeout: float = INSPECT_TIMEOUT) -> Held | None:
    """What live workers hold, or None if no worker answered.

    Busy solo-pool workers and the SQL broker (no broadcast) never answer, so None is common.
    """
    try:
        inspector = queue.celery_app.control.inspect(timeout=timeout)
        answers = [inspector.active(), inspector.reserved(), inspector.scheduled()]
    except Exception:
        log.debug("workers could not be inspected", exc_info=True)
        return None
    if all(answer is None for answer in answers):
        return None
    ids: set[str] = set()
    versions: set[int] = set()
    for answer in answers:
        for tasks in (answer or {}).values():
            for task in tasks:
                info = task.get("request", task)  # scheduled entries wrap the request
                ids.add(str(info.get("id")))
                args = info.get("args")
                if info.get("name") == queue.PREPARE and isinstance(args, list | tuple) and args:
                    versions.add(int(args[0]))
    return Held(frozenset(ids), frozenset(versions))


def _swap_task_id(
    session: Session,
    table: type[DeletionRequest] | type[BenchmarkRun],
    row: DeletionRequest | BenchmarkRun,
    queued: str,
    **values: Any,
) -> str | None:
    """Give a queued row a new task id, if nothing changed since it was read (commits).

    The old message, if it still exists, then finds a task id that is not its own and does
    nothing. Returns the new id, or None when the row moved on meanwhile.
    """
    new_id = queue.new_task_id()
    same_task = table.task_id.is_(None) if row.task_id is None else table.task_id == row.task_id
    swapped = session.execute(
        update(table)
        .where(table.id == row.id, table.status == queued, same_task)
        .values(task_id=new_id, **values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return new_id if swapped.rowcount == 1 else None  # type: ignore[attr-defined]


def _lost(task_id: str | None, held: Held | None, waiting: Waited) -> bool:
    """Whether no worker holds the task and the broker (where readable) does not have it."""
    if held is not None and task_id in held.ids:
        return False
    return waiting is None or task_id not in waiting


def _resend_queued(
    session: Session,
    settings: Settings,
    held: Held | None,
    waiting: Waited,
    report: SweepReport,
) -> None:
    """Queued too long, and neither a worker nor the broker has its task: send it again under a
    new task id. A busy worker's backlog waits in the broker and is left alone."""
    cutoff = utcnow() - timedelta(seconds=settings.sweep_after_seconds)
    stale = session.scalars(
        select(DeletionRequest).where(
            DeletionRequest.status == RequestStatus.queued.value,
            DeletionRequest.updated_at < cutoff,
            DeletionRequest.linked_request_id.is_(None),  # duplicates follow, never run
        )
    ).all()
    for request in stale:
        if request.id in report.recovered or not _lost(request.task_id, held, waiting):
            continue
        new_id = _swap_task_id(
            session, DeletionRequest, request, RequestStatus.queued.value, updated_at=utcnow()
        )
        if new_id is not None:
            queue.send(queue.ERASE, request.id, task_id=new_id)
            report.resent.append(request.id)


def _recover_received(
    session: Session, settings: Settings, vault: PortraitVault, report: SweepReport
) -> None:
    """`received` for longer than the sweep delay: its API died before queuing it. Queue it now.

    The API now records `received` and `queued` in one commit, so such a row was left by an
    earlier release that committed them apart; one whose portrait is gone cannot run and fails.
    """
    cutoff = utcnow() - timedelta(seconds=settings.sweep_after_seconds)
    stranded = session.scalars(
        select(DeletionRequest.id).where(
            DeletionRequest.status == RequestStatus.received.value,
            DeletionRequest.updated_at < cutoff,
        )
    ).all()
    for request_id in stranded:
        request = session.scalar(
            select(DeletionRequest)
            .where(
                DeletionRequest.id == request_id,
                DeletionRequest.status == RequestStatus.received.value,
            )
            .with_for_update()
        )
        if request is None:
            session.rollback()
            continue
        if request.portrait_uri is None or not vault.exists(request.portrait_uri):
            transition(
                session,
                request,
                RequestStatus.failed,
                ACTOR,
                "stranded before it was queued, and its portrait is gone",
            )
            uri, request.portrait_uri = request.portrait_uri, None
            session.commit()
            if uri:
                vault.destroy(uri)
            report.failed.append(request.id)
            continue
        transition(
            session,
            request,
            RequestStatus.queued,
            ACTOR,
            "recovered: stranded before it was queued",
        )
        new_id = queue.new_task_id() if request.linked_request_id is None else None
        request.task_id = new_id
        session.commit()
        if new_id is not None:
            queue.send(queue.ERASE, request.id, task_id=new_id)
        report.recovered.append(request.id)


def _requeue_dead(
    session: Session, settings: Settings, vault: PortraitVault, report: SweepReport
) -> None:
    """Running, but its attempt no longer holds the model's lease: the job died. Requeue it."""
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.sweep_after_seconds)
    rows = session.execute(
        select(DeletionRequest, RegisteredModel)
        .join(RegisteredModel, RegisteredModel.id == DeletionRequest.model_id)
        .where(
            DeletionRequest.status == RequestStatus.running.value,
            DeletionRequest.started_at < cutoff,
            or_(
                RegisteredModel.lock_owner.is_(None),
                # the lease is held by the batch's leading request, named in batch_id
                ~RegisteredModel.lock_owner.like(
                    func.coalesce(DeletionRequest.batch_id, DeletionRequest.id) + ":%"
                ),
                RegisteredModel.lock_expires_at < now,
            ),
        )
    ).all()
    for request, _model in rows:
        fresh = fence(session, request.id, RequestStatus.running, request.attempts)
        if fresh is None:
            session.rollback()
            continue
        uri = requeue(
            session, fresh, ACTOR, "its job stopped holding the model lease", settings.requeue_cap
        )
        new_id = queue.new_task_id()
        if fresh.status == RequestStatus.queued.value:
            fresh.task_id = new_id
        session.commit()
        if fresh.status == RequestStatus.failed.value:
            if uri:
                vault.destroy(uri)
            report.failed.append(fresh.id)
        else:
            queue.send(queue.ERASE, fresh.id, task_id=new_id)
            report.requeued.append(fresh.id)


def _resend_preparing(
    session: Session,
    settings: Settings,
    held: Held | None,
    waiting: Waited,
    starting: bool,
    report: SweepReport,
) -> None:
    """Re-send the preparation of versions stuck in `preparing`.

    Preparation is long and a duplicate repeats all of it, so this happens only when the workers
    are known not to hold the task, when a worker starts (its predecessor may have died with
    the message), or when it never started and the broker holds no message for it (the send
    failed); a duplicate that does run finds the version ready and stops.
    """
    if held is None and waiting is None and not starting:
        return
    queued = {w.subject for w in (waiting or {}).values() if w.task == queue.PREPARE}
    cutoff = utcnow() - timedelta(seconds=settings.sweep_after_seconds)
    stale = session.execute(
        select(ModelVersion.id, ModelVersion.progress).where(
            ModelVersion.status == VersionStatus.preparing.value,
            ModelVersion.created_at < cutoff,
        )
    ).all()
    for version_id, progress in stale:
        if version_id in queued:
            continue
        if held is not None:
            lost = version_id not in held.prepared_versions
        else:  # a preparation that reported progress may be running in this very worker
            lost = starting or not (progress or {}).get("updated_at")
        if lost:
            queue.send(queue.PREPARE, version_id)
            report.preparations.append(version_id)


def _resend_benchmarks(
    session: Session,
    settings: Settings,
    held: Held | None,
    waiting: Waited,
    starting: bool,
    report: SweepReport,
) -> None:
    """Re-send benchmark runs still `queued` whose message went missing (same rule as above).

    The run gets a new task id first, so the old message, should it still arrive, finds a task
    id that is not its own and does nothing: a benchmark never runs twice at once.
    """
    if held is None and waiting is None and not starting:
        return
    cutoff = utcnow() - timedelta(seconds=settings.sweep_after_seconds)
    stale = session.scalars(
        select(BenchmarkRun).where(
            BenchmarkRun.status == BenchmarkStatus.queued.value, BenchmarkRun.created_at < cutoff
        )
    ).all()
    for run in stale:
        if not _lost(run.task_id, held, waiting):
            continue
        new_id = _swap_task_id(session, BenchmarkRun, run, BenchmarkStatus.queued.value)
        if new_id is not None:
            queue.send(queue.BENCHMARK, run.id, task_id=new_id)
            report.benchmarks.append(run.id)


def _settle_orphans(session: Session, vault: PortraitVault, report: SweepReport) -> None:
    """Duplicates still linked to a finished request (a crash between the two): settle them."""
    primary = aliased(DeletionRequest)
    finished = session.scalars(
        select(primary)
        .join(DeletionRequest, DeletionRequest.linked_request_id == primary.id)
        .where(
            DeletionRequest.status == RequestStatus.queued.value,
            primary.status.in_([s.value for s in TERMINAL]),
        )
        .distinct()
    ).all()
    for request in finished:
        uris = settle_or_release(session, request, ACTOR)
        session.commit()
        for uri in uris:
            vault.destroy(uri)
        report.settled.append(request.id)


def _clean_portraits(
    session: Session, settings: Settings, vault: PortraitVault, report: SweepReport
) -> None:
    """Destroy portraits of finished requests and stored files no request refers to."""
    finished = session.scalars(
        select(DeletionRequest).where(
            DeletionRequest.status.in_([s.value for s in TERMINAL]),
            DeletionRequest.portrait_uri.is_not(None),
        )
    ).all()
    for request in finished:
        uri, request.portrait_uri = request.portrait_uri, None
        session.commit()
        if uri:
            vault.destroy(uri)
            report.portraits_destroyed += 1
    referenced = set(
        session.scalars(
            select(DeletionRequest.portrait_uri).where(DeletionRequest.portrait_uri.is_not(None))
        )
    )
    # Files younger than the sweep delay may belong to a request the API has not committed yet.
    cutoff = time.time() - settings.sweep_after_seconds
    vault.remove_partial_writes(cutoff)
    for uri, modified in vault.stored():
        if modified < cutoff and uri not in referenced:
            vault.destroy(uri)
            report.portraits_destroyed += 1


def sweep(settings: Settings, *, inspect: bool = True, starting: bool = False) -> SweepReport:
    """One pass: re-send lost tasks, requeue dead jobs, remove stray portraits.

    `inspect=False`: a worker's own sweep, which cannot ask the workers what they hold (it is
    one of them). `starting`: the sweep of a worker that just started, whose predecessor may
    have died holding a preparation or a benchmark; later sweeps re-send those only when the
    workers or the broker show them lost, so a long job is not sent again every interval.
    """
    report = SweepReport()
    held = held_tasks() if inspect else None
    # a message fetched within the sweep delay is in a live worker's hands
    waiting = queue.waiting_tasks(settings.sweep_after_seconds)
    vault = portrait_vault(settings)
    with session_factory(settings)() as session:
        _recover_received(session, settings, vault, report)
        _resend_queued(session, settings, held, waiting, report)
        _requeue_dead(session, settings, vault, report)
        _resend_preparing(session, settings, held, waiting, starting, report)
        _resend_benchmarks(session, settings, held, waiting, starting, report)
        _settle_orphans(session, vault, report)
        _clean_portraits(session, settings, vault, report)
    if report != SweepReport():
        log.info("sweep: %s", report)
    return report
