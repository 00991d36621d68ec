"""The erasure job (ARCHITECTURE §4): make the head version forget a batch of identities, one
portrait each.

A job claims the request its task names plus other queued requests of the same model and method
(a batch), erases them in one method call and writes one version. At-least-once delivery,
exactly-once effect: a finished request is a no-op, every state change is fenced on the attempt
that claimed each request, the per-model lease keeps one writer per version chain (the unique
parent constraint backs it up), and the new version, the audits, the requests' final states, the
alias move, the portraits' removal from the rows and the settling of linked duplicates are one
transaction. The only thing a crash can leave behind is an unreferenced, content-addressed
model file.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from torch import nn

from app.db import session_factory
from app.services.lifecycle import settle_followers, transition
from app.services.registry import (
    SERVING,
    NoReadyVersion,
    head_version,
    missing_erasures,
    refresh_if_due,
    set_alias,
)
from app.settings import Settings
from app.storage import PortraitVault, artifact_store, portrait_vault
from app.tables import (
    TERMINAL,
    Audit,
    DeletionRequest,
    ModelVersion,
    RegisteredModel,
    RequestStatus,
    VersionStatus,
    utcnow,
)
from models.device import default_device
from models.methods import UnlearnRequest, get_method, resolve_config
from models.train.checkpoint import Checkpoint, save_checkpoint
from worker import lease
from worker.audit import (
    Snapshot,
    delta,
    forward,
    parameter_change_l2,
    pseudo_labels,
    snapshot,
)
from worker.request_state import fail, fence, requeue
from worker.versions import LoadedVersion, load_version, method_artifacts, remember, version_key

log = logging.getLogger(__name__)
ACTOR = "worker"
METHOD_ERROR = "method_error"
WAIT_POLL_SECONDS = 0.1


class Busy(Exception):
    """Not this request's turn yet (model leased, or not queued yet): retry it shortly.

    `patience` bounds how many retries the wait deserves (None: as many as it takes).
    """

    def __init__(self, reason: str, patience: int | None = None) -> None:
        super().__init__(reason)
        self.patience = patience


class JobError(Exception):
    """The erasure itself failed: the request ends `failed` with `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Outcome:
    """What one execution of the task did."""

    request_id: str
    status: str
    version_id: int | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain form for the Celery result."""
        return asdict(self)


@dataclass(frozen=True)
class Member:
    """One claimed request of a batch."""

    request_id: str
    attempt: int
    identity_hash: str
    portrait_uri: str


@dataclass(frozen=True)
class Job:
    """Claimed requests (one batch, one method) and the parent version they erase from."""

    batch_id: str  # the leading request's id; the lease owner names it
    model_id: int
    owner: str
    method: str
    members: tuple[Member, ...]
    parent_id: int
    parent_version: int
    parent_uri: str
    parent_sha256: str
    parent_artifacts: dict[str, str]
    parent_erased: list[str]
    parent_training_data: dict[str, Any]
    parent_artifacts_version_id: int | None

    @property
    def request_ids(self) -> list[str]:
        """The members' request ids, in batch order."""
        return [m.request_id for m in self.members]

    def without(self, request_ids: set[str]) -> Job:
        """The same job minus some members."""
        kept = tuple(m for m in self.members if m.request_id not in request_ids)
        return replace(self, members=kept)


@dataclass
class Result:
    """The new weights and the audit of one erasure, not yet recorded."""

    parent: LoadedVersion
    model: nn.Module
    checkpoint: Checkpoint
    sha256: str
    config: dict[str, Any]
    before: Snapshot
    after: Snapshot
    run: dict[str, Any]


@contextlib.contextmanager
def stage(code: str) -> Iterator[None]:
    """Turn any failure inside the block into a JobError with `code`."""
    try:
        yield
    except JobError:
        raise
    except Exception as exc:
        raise JobError(code, f"{type(exc).__name__}: {exc}") from exc


def decode_portrait(data: bytes, max_pixels: int) -> torch.Tensor:
    """The portrait as a uint8 RGB tensor (3×H×W), upright per its EXIF orientation."""
    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > max_pixels:
            raise ValueError(f"portrait has {image.width}×{image.height} pixels, over the limit")
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak memory in bytes and what it measures."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _destroy(vault: PortraitVault, *uris: str | None) -> None:
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
            _forget_portrait(session, vault, request)
            return Outcome(request_id, status.value, request.result_version_id, "already finished")
        if task_id and request.task_id and request.task_id != task_id:
            return Outcome(request_id, status.value, None, "superseded by a re-sent task")
        if status is RequestStatus.received:
            raise Busy("the request is not queued yet", patience=60)
        if request.linked_request_id is not None and status is RequestStatus.queued:
            detail = f"linked to request {request.linked_request_id}, which erases it"
            return Outcome(request_id, status.value, None, detail)
        if status is RequestStatus.running:
            outcome = _requeue_lost(session, vault, request, task_id, settings.requeue_cap)
            if outcome is not None:
                return outcome
        attempt, model_id = request.attempts, request.model_id
        wait = batch_wait(session, settings, request)
    if wait > 0:
        wait_for_company(factory, settings, request_id, wait)
    owner = lease.owner_token(request_id, attempt)
    with factory() as session:
        if not lease.acquire(session, model_id, owner, settings.model_lock_seconds):
            raise Busy(f"model {model_id} is busy with another erasure")
    try:
        job = _claim(settings, factory, vault, request_id, task_id, attempt, owner)
        if isinstance(job, Outcome):
            return job
        start = time.perf_counter()
        try:
            with lease.kept_alive(factory, model_id, owner, settings.model_lock_seconds):
                job, images = _read_portraits(settings, factory, vault, job)
                if not job.members:
                    failed = RequestStatus.failed.value
                    return Outcome(request_id, failed, None, "portrait_unreadable")
                result = _compute(settings, job, images)
        except JobError as exc:
            log.warning("erasure job %s failed: %s", job.batch_id, exc)
            return _finish_failed(factory, vault, job, exc.code, exc.message)
        return _record(settings, factory, vault, job, result, start)
    finally:
        with factory() as session:
            lease.release(session, model_id, owner)


def _forget_portrait(session: Session, vault: PortraitVault, request: DeletionRequest) -> None:
    """A finished request keeps no portrait (a crash may have left one)."""
    uri = request.portrait_uri
    if uri:
        request.portrait_uri = None
        session.commit()
        vault.destroy(uri)


def _requeue_lost(
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
    _destroy(vault, *uris)
    if fresh.status == RequestStatus.failed.value:
        return Outcome(fresh.id, fresh.status, None, fresh.error_code)
    return None


def _companions(
    session: Session, settings: Settings, leader: DeletionRequest
) -> list[DeletionRequest]:
    """Other queued requests to erase with `leader`, oldest first; same-identity ones get linked.

    A second request for an identity already in the batch (two submissions raced past the
    API's in-flight check) follows the first instead of erasing the identity twice.
    """
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
    first_of = {leader.identity_hash: leader.id}
    chosen = []
    for candidate in candidates:
        if candidate.identity_hash in first_of:
            candidate.linked_request_id = first_of[candidate.identity_hash]
            continue
        if len(chosen) == room:
            break
        member = fence(session, candidate.id, RequestStatus.queued, candidate.attempts)
        if member is not None:
            first_of[member.identity_hash] = member.id
            chosen.append(member)
    return chosen


def _claim(
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
            _destroy(vault, uri)
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
            size = f"batch of {len(batch)} led by {leader.id}" if len(batch) > 1 else "alone"
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


def _read_portraits(
    settings: Settings, factory: sessionmaker[Session], vault: PortraitVault, job: Job
) -> tuple[Job, list[torch.Tensor]]:
    """Decode every member's portrait; members whose portrait cannot be read fail alone."""
    images, unreadable = [], {}
    for member in job.members:
        try:
            images.append(
                decode_portrait(vault.read(member.portrait_uri), settings.max_portrait_pixels)
            )
        except Exception as exc:
            unreadable[member.request_id] = f"{type(exc).__name__}: {exc}"
    if unreadable:
        failed = job.without(set(job.request_ids) - set(unreadable))
        with factory() as session:
            uris = []
            for request in _fenced(session, failed) or []:
                message = unreadable[request.id]
                uris.append(fail(session, request, ACTOR, "portrait_unreadable", message))
            session.commit()
        _destroy(vault, *uris)
    return job.without(set(unreadable)), images


def _compute(settings: Settings, job: Job, images: list[torch.Tensor]) -> Result:
    """Audit, unlearn the whole batch, audit again and store the new weights (no database)."""
    device = default_device()
    with stage("version_unavailable"):
        parent = load_version(
            settings,
            job.parent_id,
            job.parent_uri,
            job.parent_sha256,
            job.parent_artifacts,
            device,
        )
    config = parent.checkpoint.config
    size = len(job.members)
    with stage(METHOD_ERROR):
        method = get_method(job.method)
        if method.needs != "support":
            raise ValueError(f"method {job.method!r} needs retain data, which erasure never has")
        overrides = settings.method_options.get(job.method, {})
        dataset, arch = config["dataset"]["name"], parent.checkpoint.arch
        cfg = resolve_config(job.method, dataset, arch, size, **overrides)
        artifacts = method_artifacts(settings, job.parent_artifacts, job.method, device)
    with stage("audit_error"):
        portraits = torch.stack([parent.transform(image) for image in images])
        target = pseudo_labels(parent.task.kind, forward(parent.model, portraits, device))
        before = snapshot(
            parent.model, portraits, target, parent.kit, parent.task, parent.transform, device
        )
    identities = [m.identity_hash for m in job.members]
    with stage(METHOD_ERROR):
        _reset_peak_memory(device)
        started = time.perf_counter()
        model = method.unlearn(
            copy.deepcopy(parent.model),
            UnlearnRequest(
                images=portraits, identities=identities, task=parent.task, targets=target
            ),
            artifacts,
            cfg,
        ).eval()
        unlearn_seconds = time.perf_counter() - started
        peak, peak_source = _peak_memory(device)
    with stage("audit_error"):
        after = snapshot(
            model, portraits, target, parent.kit, parent.task, parent.transform, device
        )
        change = parameter_change_l2(dict(parent.model.named_parameters()), model)
    resolved = asdict(cfg)
    lineage = {
        "parent_sha256": job.parent_sha256,
        "method": job.method,
        "method_config": resolved,
        "identity_hashes": identities,
        "request_ids": job.request_ids,
    }
    checkpoint = Checkpoint(
        arch=parent.checkpoint.arch,
        task=parent.checkpoint.task,
        config={**config, "unlearning": [*config.get("unlearning", []), lineage]},
        splits=parent.checkpoint.splits,
        state_dict=model.state_dict(),
    )
    store = artifact_store(settings)
    scratch = store.root / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        path = Path(folder) / "model.pt"
        save_checkpoint(path, checkpoint)
        sha = store.put_file("models", path)
    return Result(
        parent=parent,
        model=model,
        checkpoint=replace(checkpoint, state_dict={}, sha256=sha),
        sha256=sha,
        config=resolved,
        before=before,
        after=after,
        run={
            "method": job.method,
            "config": resolved,
            "parent_version": job.parent_version,
            "batch_id": job.batch_id,
            "batch_size": size,
            "param_change_l2": change,
            "unlearn_seconds": unlearn_seconds,
            "device": _device_name(device),
            "peak_memory_bytes": peak,
            "peak_memory_source": peak_source,
            "pseudo_label": "parent prediction",
        },
    )


def _fenced(session: Session, job: Job) -> list[DeletionRequest] | None:
    """Every member, locked, if each is still running at its claimed attempt; else None."""
    requests = []
    for member in job.members:
        request = fence(session, member.request_id, RequestStatus.running, member.attempt)
        if request is None:
            return None
        requests.append(request)
    return requests


def _fenced_some(session: Session, job: Job) -> list[DeletionRequest]:
    """The members still running at their claimed attempt (others were taken over)."""
    fresh = (fence(session, m.request_id, RequestStatus.running, m.attempt) for m in job.members)
    return [request for request in fresh if request is not None]


def _finish_failed(
    factory: sessionmaker[Session], vault: PortraitVault, job: Job, code: str, message: str
) -> Outcome:
    """Fail every member still ours and destroy their portraits."""
    with factory() as session:
        requests = _fenced_some(session, job)
        uris = [fail(session, request, ACTOR, code, message) for request in requests]
        session.commit()
    _destroy(vault, *uris)
    if not requests:
        return Outcome(job.batch_id, "unchanged", None, "taken by another attempt")
    return Outcome(job.batch_id, RequestStatus.failed.value, None, code)


def _requeue_batch(
    settings: Settings, factory: sessionmaker[Session], vault: PortraitVault, job: Job, reason: str
) -> Outcome:
    """Put the members still ours back in the queue (each under its requeue cap), then retry."""
    with factory() as session:
        requests = _fenced_some(session, job)
        uris = [requeue(session, r, ACTOR, reason, settings.requeue_cap) for r in requests]
        session.commit()
    _destroy(vault, *uris)
    if not requests:
        return Outcome(job.batch_id, "unchanged", None, "taken by another attempt")
    if all(r.status == RequestStatus.failed.value for r in requests):
        return Outcome(job.batch_id, RequestStatus.failed.value, None, requests[0].error_code)
    raise Busy(reason)


def _record(
    settings: Settings,
    factory: sessionmaker[Session],
    vault: PortraitVault,
    job: Job,
    result: Result,
    start: float,
) -> Outcome:
    """One transaction: new version, an audit per request, final states, alias move, portraits
    unlinked, linked duplicates settled."""
    with factory() as session:
        requests = _fenced(session, job)
        if requests is None:
            session.rollback()
            return _requeue_batch(
                settings, factory, vault, job, "a batch member was taken over by another attempt"
            )
        if not lease.confirm(session, job.model_id, job.owner, settings.model_lock_seconds):
            session.rollback()
            reason = f"version {job.parent_version} got a child during the job"
            return _requeue_batch(settings, factory, vault, job, reason)
        model = session.get_one(RegisteredModel, job.model_id)
        latest = session.scalar(
            select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
        )
        erased = [*job.parent_erased, *(m.identity_hash for m in job.members)]
        version = ModelVersion(
            model_id=model.id,
            version=int(latest or 0) + 1,
            parent_id=job.parent_id,
            status=VersionStatus.ready.value,
            artifact_uri=f"models/{result.sha256}",
            sha256=result.sha256,
            arch=result.checkpoint.arch,
            method=job.method,
            resolved_config=result.config,
            erased_identity_hashes=list(dict.fromkeys(erased)),
            artifacts=job.parent_artifacts,
            training_data=job.parent_training_data,
            artifacts_version_id=job.parent_artifacts_version_id,
            created_by_request_id=job.batch_id,
        )
        session.add(version)
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            reason = f"version {job.parent_version} got a child during the job"
            return _requeue_batch(settings, factory, vault, job, reason)

        drop = result.before.audit_score - result.after.audit_score
        limit = settings.guardrail_max_score_drop
        passed = math.isfinite(drop) and drop <= limit
        missing = missing_erasures(session, model, version)
        promote = passed and not missing
        if promote:
            to = RequestStatus.completed
            reason = f"audit-set score drop {drop:.2f} ≤ {limit}; serving → v{version.version}"
        elif not passed:
            to = RequestStatus.needs_review
            reason = (
                f"audit-set score drop {drop:.2f} exceeds {limit}; "
                f"v{version.version} kept, serving not moved"
            )
        else:
            to = RequestStatus.needs_review
            reason = f"v{version.version} lacks {len(missing)} completed erasure(s); not promoted"
        run = {
            **result.run,
            "version": version.version,
            "wall_seconds": time.perf_counter() - start,
            "guardrail_max_score_drop": limit,
            "guardrail_passed": passed,
            "promoted": promote,
        }
        task = result.parent.task
        uris: list[str | None] = []
        for index, request in enumerate(requests):
            session.add(
                Audit(
                    request_id=request.id,
                    before=result.before.to_dict(task, index),
                    after=result.after.to_dict(task, index, reference=result.before),
                    delta=delta(result.before, result.after, index),
                    run={**run, "batch_index": index},
                )
            )
            transition(session, request, to, ACTOR, reason)
            request.result_version_id = version.id
            request.error_code = request.error_message = None
            uris.append(request.portrait_uri)
            request.portrait_uri = None
            uris += settle_followers(session, request, ACTOR)
        model.erasures_since_refresh = (model.erasures_since_refresh or 0) + 1
        if promote:
            set_alias(session, model, SERVING, version, ACTOR, reason)
        session.commit()
        version_id, number = version.id, version.version
    _destroy(vault, *uris)
    try:
        refresh_if_due(settings, job.model_id)
    except Exception:
        log.exception("could not queue the refresh of model %s; it stays due", job.model_id)
    remember(
        LoadedVersion(
            key=version_key(settings, version_id, result.sha256),
            checkpoint=result.checkpoint,
            model=result.model,
            task=result.parent.task,
            image_size=result.parent.image_size,
            transform=result.parent.transform,
            kit=result.parent.kit,
        )
    )
    log.info("batch %s (%d): %s, version %s", job.batch_id, len(requests), to.value, number)
    return Outcome(job.batch_id, to.value, version_id, reason)
