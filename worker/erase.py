"""The erasure job (ARCHITECTURE §4): make the head version forget one identity from its portrait.

At-least-once delivery, exactly-once effect: a finished request is a no-op, every state change
is fenced on the attempt that claimed the request, the per-model lease keeps one writer per
version chain (the unique parent constraint backs it up), and the new version, its audit, the
request's final state, the alias move and the portrait's removal from the row are one
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from torch import nn

from app.db import session_factory
from app.services.lifecycle import transition
from app.services.registry import (
    SERVING,
    NoReadyVersion,
    head_version,
    missing_erasures,
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
class Job:
    """A claimed request and the parent version it erases from."""

    request_id: str
    model_id: int
    attempt: int
    owner: str
    method: str
    identity_hash: str
    portrait_uri: str
    parent_id: int
    parent_version: int
    parent_uri: str
    parent_sha256: str
    parent_artifacts: dict[str, str]
    parent_erased: list[str]


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


def _destroy(vault: PortraitVault, uri: str | None) -> None:
    if uri:
        vault.destroy(uri)


def erase_request(settings: Settings, request_id: str, task_id: str | None = None) -> Outcome:
    """Run the erasure of `request_id` once; `task_id` is the Celery task running it, if any."""
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
        if status is RequestStatus.running:
            outcome = _requeue_lost(session, vault, request, task_id, settings.requeue_cap)
            if outcome is not None:
                return outcome
        attempt, model_id = request.attempts, request.model_id
    owner = lease.owner_token(request_id, attempt)
    with factory() as session:
        if not lease.acquire(session, model_id, owner, settings.model_lock_seconds):
            raise Busy(f"model {model_id} is busy with another erasure")
    try:
        job = _claim(factory, vault, request_id, task_id, attempt, owner)
        if isinstance(job, Outcome):
            return job
        start = time.perf_counter()
        try:
            with lease.kept_alive(factory, model_id, owner, settings.model_lock_seconds):
                result = _compute(settings, vault, job)
        except JobError as exc:
            log.warning("erasure of request %s failed: %s", request_id, exc)
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
    """A `running` request seen again: its previous attempt died. Requeue it, or fail at the cap."""
    seen = request.attempts
    fresh = fence(session, request.id, RequestStatus.running, seen, task_id)
    if fresh is None:
        session.rollback()
        return Outcome(request.id, RequestStatus.running.value, None, "taken by another attempt")
    reason = f"attempt {seen + 1} did not finish (worker lost or task redelivered)"
    uri = requeue(session, fresh, ACTOR, reason, cap)
    session.commit()
    if fresh.status == RequestStatus.failed.value:
        _destroy(vault, uri)
        return Outcome(fresh.id, fresh.status, None, fresh.error_code)
    return None


def _claim(
    factory: sessionmaker[Session],
    vault: PortraitVault,
    request_id: str,
    task_id: str | None,
    attempt: int,
    owner: str,
) -> Job | Outcome:
    """Move the request from queued to running (fenced) and pick the head version as parent."""
    with factory() as session:
        request = fence(session, request_id, RequestStatus.queued, attempt, task_id)
        if request is None:
            session.rollback()
            return Outcome(request_id, "unchanged", None, "changed by someone else meanwhile")
        model = session.get_one(RegisteredModel, request.model_id)
        try:
            parent = head_version(session, model)
        except NoReadyVersion as exc:
            uri = fail(session, request, ACTOR, "model_not_ready", str(exc))
            session.commit()
            _destroy(vault, uri)
            return Outcome(request_id, request.status, None, "model_not_ready")
        if not request.portrait_uri:
            fail(session, request, ACTOR, "portrait_missing", "the request has no stored portrait")
            session.commit()
            return Outcome(request_id, request.status, None, "portrait_missing")
        reason = f"attempt {attempt + 1} on {socket.gethostname()}, from version {parent.version}"
        transition(session, request, RequestStatus.running, ACTOR, reason)
        request.parent_version_id = parent.id
        job = Job(
            request_id=request_id,
            model_id=model.id,
            attempt=attempt,
            owner=owner,
            method=request.method,
            identity_hash=request.identity_hash,
            portrait_uri=request.portrait_uri,
            parent_id=parent.id,
            parent_version=parent.version,
            parent_uri=parent.artifact_uri,
            parent_sha256=parent.sha256,
            parent_artifacts=dict(parent.artifacts or {}),
            parent_erased=list(parent.erased_identity_hashes or []),
        )
        session.commit()
        return job


def _compute(settings: Settings, vault: PortraitVault, job: Job) -> Result:
    """Audit, unlearn, audit again and store the new weights (no database access)."""
    device = default_device()
    with stage("portrait_unreadable"):
        image = decode_portrait(vault.read(job.portrait_uri), settings.max_portrait_pixels)
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
    with stage(METHOD_ERROR):
        method = get_method(job.method)
        if method.needs != "support":
            raise ValueError(f"method {job.method!r} needs retain data, which erasure never has")
        overrides = settings.method_options.get(job.method, {})
        dataset, arch = config["dataset"]["name"], parent.checkpoint.arch
        cfg = resolve_config(job.method, dataset, arch, 1, **overrides)
        artifacts = method_artifacts(settings, job.parent_artifacts, job.method, device)
    with stage("audit_error"):
        portrait = parent.transform(image).unsqueeze(0)
        target = pseudo_labels(parent.task.kind, forward(parent.model, portrait, device))
        before = snapshot(
            parent.model, portrait, target, parent.kit, parent.task, parent.transform, device
        )
    with stage(METHOD_ERROR):
        _reset_peak_memory(device)
        started = time.perf_counter()
        model = method.unlearn(
            copy.deepcopy(parent.model),
            UnlearnRequest(
                images=portrait,
                identities=[job.identity_hash],
                task=parent.task,
                targets=target,
            ),
            artifacts,
            cfg,
        ).eval()
        unlearn_seconds = time.perf_counter() - started
        peak, peak_source = _peak_memory(device)
    with stage("audit_error"):
        after = snapshot(model, portrait, target, parent.kit, parent.task, parent.transform, device)
        change = parameter_change_l2(dict(parent.model.named_parameters()), model)
    resolved = asdict(cfg)
    lineage = {
        "parent_sha256": job.parent_sha256,
        "method": job.method,
        "method_config": resolved,
        "identity_hashes": [job.identity_hash],
        "request_id": job.request_id,
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
        checkpoint=Checkpoint(
            arch=checkpoint.arch,
            task=checkpoint.task,
            config=checkpoint.config,
            splits=checkpoint.splits,
            state_dict={},
            sha256=sha,
        ),
        sha256=sha,
        config=resolved,
        before=before,
        after=after,
        run={
            "method": job.method,
            "config": resolved,
            "parent_version": job.parent_version,
            "param_change_l2": change,
            "unlearn_seconds": unlearn_seconds,
            "device": _device_name(device),
            "peak_memory_bytes": peak,
            "peak_memory_source": peak_source,
            "pseudo_label": "parent prediction",
        },
    )


def _finish_failed(
    factory: sessionmaker[Session], vault: PortraitVault, job: Job, code: str, message: str
) -> Outcome:
    """Record a failed erasure and destroy the portrait (unless another attempt took over)."""
    with factory() as session:
        request = fence(session, job.request_id, RequestStatus.running, job.attempt)
        if request is None:
            session.rollback()
            return Outcome(job.request_id, "unchanged", None, "taken by another attempt")
        uri = fail(session, request, ACTOR, code, message)
        session.commit()
    _destroy(vault, uri)
    return Outcome(job.request_id, RequestStatus.failed.value, None, code)


def _chain_moved(
    settings: Settings, factory: sessionmaker[Session], vault: PortraitVault, job: Job
) -> Outcome:
    """Another job wrote the chain meanwhile (lease lost): requeue and retry from the new head."""
    with factory() as session:
        request = fence(session, job.request_id, RequestStatus.running, job.attempt)
        if request is None:
            session.rollback()
            return Outcome(job.request_id, "unchanged", None, "taken by another attempt")
        reason = f"version {job.parent_version} got a child during the job"
        uri = requeue(session, request, ACTOR, reason, settings.requeue_cap)
        session.commit()
        if request.status == RequestStatus.failed.value:
            _destroy(vault, uri)
            return Outcome(job.request_id, request.status, None, request.error_code)
    raise Busy(reason)


def _record(
    settings: Settings,
    factory: sessionmaker[Session],
    vault: PortraitVault,
    job: Job,
    result: Result,
    start: float,
) -> Outcome:
    """One transaction: new version, audit, final state, alias move, portrait unlinked."""
    with factory() as session:
        request = fence(session, job.request_id, RequestStatus.running, job.attempt)
        if request is None:
            session.rollback()
            return Outcome(job.request_id, "unchanged", None, "taken by another attempt")
        if not lease.confirm(session, job.model_id, job.owner, settings.model_lock_seconds):
            session.rollback()
            return _chain_moved(settings, factory, vault, job)
        model = session.get_one(RegisteredModel, job.model_id)
        latest = session.scalar(
            select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
        )
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
            erased_identity_hashes=list(dict.fromkeys([*job.parent_erased, job.identity_hash])),
            artifacts=job.parent_artifacts,
            created_by_request_id=job.request_id,
        )
        session.add(version)
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            return _chain_moved(settings, factory, vault, job)

        changes = delta(result.before, result.after)
        drop = result.before.audit_score - result.after.audit_score
        limit = settings.guardrail_max_score_drop
        passed = math.isfinite(drop) and drop <= limit
        missing = missing_erasures(session, model, version)
        promote = passed and not missing
        session.add(
            Audit(
                request_id=job.request_id,
                before=result.before.to_dict(result.parent.task),
                after=result.after.to_dict(result.parent.task, reference=result.before),
                delta=changes,
                run={
                    **result.run,
                    "version": version.version,
                    "wall_seconds": time.perf_counter() - start,
                    "guardrail_max_score_drop": limit,
                    "guardrail_passed": passed,
                    "promoted": promote,
                },
            )
        )
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
        transition(session, request, to, ACTOR, reason)
        request.result_version_id = version.id
        request.error_code = request.error_message = None
        uri, request.portrait_uri = request.portrait_uri, None
        if promote:
            set_alias(session, model, SERVING, version)
        session.commit()
        version_id, number = version.id, version.version
    _destroy(vault, uri)
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
    log.info("request %s: %s, version %s", job.request_id, to.value, number)
    return Outcome(job.request_id, to.value, version_id, reason)
