"""The erasure job, phase by phase: claim (database), run (torch), record (one transaction).

A job claims the request its task names plus other queued requests of the same model and method
(a batch), erases them in one method call and writes one version. At-least-once delivery,
exactly-once effect: a finished request is a no-op, every state change is fenced on the attempt
that claimed each request, the per-model lease keeps one writer per version chain (the unique
parent constraint backs it up), and recording is one transaction. The only thing a crash can
leave behind is an unreferenced, content-addressed model file.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import session_factory
from app.settings import Settings
from app.storage import PortraitVault, portrait_vault
from app.tables import TERMINAL, DeletionRequest, ModelIdentity, RequestStatus
from worker import lease
from worker.erase import claim, record, run
from worker.erase.vocabulary import Busy, Job, JobError, Outcome, stage
from worker.verify import (
    MISMATCH,
    MISMATCH_MESSAGE,
    UNKNOWN,
    UNKNOWN_MESSAGE,
    VERIFIER_KEY,
    check_portraits,
)

log = logging.getLogger(__name__)


def _known(factory: sessionmaker[Session], job: Job) -> set[str]:
    """The members' request ids whose identity is a training identity of the job's model."""
    hashes = {m.identity_hash for m in job.members}
    with factory() as session:
        found = set(
            session.scalars(
                select(ModelIdentity.identity_hash).where(
                    ModelIdentity.model_id == job.model_id,
                    ModelIdentity.identity_hash.in_(hashes),
                )
            )
        )
    return {m.request_id for m in job.members if m.identity_hash in found}


def _verified(
    settings: Settings,
    factory: sessionmaker[Session],
    vault: PortraitVault,
    job: Job,
    images: list[torch.Tensor],
) -> tuple[Job, list[torch.Tensor], dict[str, Any]]:
    """Reject the members whose portrait does not show their identity (or, with no verifier,
    whose identity the model never saw); the job and portraits that remain, and what the audit
    records of the check."""
    members = [(m.request_id, m.identity_hash) for m in job.members]
    with stage("verification_error"):
        checks = check_portraits(settings, job.parent_artifacts, members, images)
    if checks is None:
        known = _known(factory, job)
        pairs = zip(images, job.members, strict=True)
        kept = [image for image, member in pairs if member.request_id in known]
        unknown = set(job.request_ids) - known
        job = claim.reject(factory, vault, job, unknown, UNKNOWN, UNKNOWN_MESSAGE)
        return job, kept, {"checked": False, "note": "the version has no portrait verifier"}
    matched = [c.matched for c in checks]
    kept = [image for image, ok in zip(images, matched, strict=True) if ok]
    mismatched = {c.request_id for c in checks if not c.matched}
    job = claim.reject(factory, vault, job, mismatched, MISMATCH, MISMATCH_MESSAGE)
    return (
        job,
        kept,
        {"checked": True, "matched": True, "verifier": job.parent_artifacts[VERIFIER_KEY]},
    )


def erase_request(settings: Settings, request_id: str, task_id: str | None = None) -> Outcome:
    """Run the erasure job led by `request_id` once; `task_id` is the Celery task running it.

    The job claims the request and up to `batch_max_size - 1` other queued requests of the same
    model and method, makes the head version forget all of them in one step, and records one new
    version with an audit per request.
    """
    factory = session_factory(settings)
    vault = portrait_vault(settings)
    with factory() as session:
        request = session.get(DeletionRequest, request_id)
        if request is None:
            return Outcome(request_id, "missing")
        status = RequestStatus(request.status)
        if status in TERMINAL:
            claim.forget_portrait(session, vault, request)
            return Outcome(request_id, status.value, request.result_version_id, "already finished")
        if task_id and request.task_id and request.task_id != task_id:
            return Outcome(request_id, status.value, None, "superseded by a re-sent task")
        if status is RequestStatus.received:
            raise Busy("the request is not queued yet", patience=60)
        if request.linked_request_id is not None and status is RequestStatus.queued:
            detail = f"linked to request {request.linked_request_id}, which erases it"
            return Outcome(request_id, status.value, None, detail)
        if status is RequestStatus.running:
            outcome = claim.requeue_lost(session, vault, request, task_id, settings.requeue_cap)
            if outcome is not None:
                return outcome
        attempt, model_id = request.attempts, request.model_id
        wait = claim.batch_wait(session, settings, request)
    if wait > 0:
        claim.wait_for_company(factory, settings, request_id, wait)
    owner = lease.owner_token(request_id, attempt)
    with factory() as session:
        if not lease.acquire(session, model_id, owner, settings.model_lock_seconds):
            raise Busy(f"model {model_id} is busy with another erasure")
    try:
        job = claim.claim(settings, factory, vault, request_id, task_id, attempt, owner)
        if isinstance(job, Outcome):
            return job
        start = time.perf_counter()
        try:
            with lease.kept_alive(factory, model_id, owner, settings.model_lock_seconds):
                images, unreadable = run.read_portraits(vault, job, settings.max_portrait_pixels)
                job = claim.fail_unreadable(factory, vault, job, unreadable)
                if not job.members:
                    failed = RequestStatus.failed.value
                    return Outcome(request_id, failed, None, "portrait_unreadable")
                job, images, verified = _verified(settings, factory, vault, job, images)
                if not job.members:
                    code = MISMATCH if verified["checked"] else UNKNOWN
                    return Outcome(request_id, RequestStatus.rejected.value, None, code)
                result = run.run_erasure(settings, job, images)
                result.run["portrait_verification"] = verified
        except JobError as exc:
            log.warning("erasure job %s failed: %s", job.batch_id, exc)
            return claim.finish_failed(factory, vault, job, exc.code, exc.message)
        return record.record(settings, factory, vault, job, result, start)
    finally:
        with factory() as session:
            lease.release(session, model_id, owner)
