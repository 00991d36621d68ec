"""The erasure job's recording phase: one transaction writes what the torch run computed.

The new version, an audit per request, the requests' final states, the alias move, the
portraits' removal from the rows and the settling of linked duplicates commit together; the
guardrail's verdict comes from the pure worker/erase/promotion.py.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.services.duplicates import settle_followers
from app.services.lifecycle import transition
from app.services.registry import method_efficacy, refresh_if_due, set_alias
from app.services.targets import IDENTITY, missing_erasures
from app.settings import Settings
from app.storage import PortraitVault, forget_references
from app.tables import SERVING, Audit, ModelVersion, RegisteredModel, VersionStatus
from worker import lease
from worker.audit import delta
from worker.erase.claim import destroy, fenced, requeue_batch
from worker.erase.promotion import decide
from worker.erase.vocabulary import ACTOR, Job, Outcome, Result
from worker.versions import LoadedVersion, remember, version_key

log = logging.getLogger(__name__)


def _new_version(
    session: Session, job: Job, result: Result, model: RegisteredModel
) -> ModelVersion:
    """The child of the job's parent that holds the result (added, not flushed)."""
    latest = session.scalar(
        select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
    )
    erased = IDENTITY.extended(job.parent_erased, (m.identity_hash for m in job.members))
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
        erased_identity_hashes=erased,
        artifacts=job.parent_artifacts,
        training_data=job.parent_training_data,
        artifacts_version_id=job.parent_artifacts_version_id,
        created_by_request_id=job.batch_id,
    )
    session.add(version)
    return version


def record(
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
        requests = fenced(session, job)
        if requests is None:
            session.rollback()
            return requeue_batch(
                settings, factory, vault, job, "a batch member was taken over by another attempt"
            )
        if not lease.confirm(session, job.model_id, job.owner, settings.model_lock_seconds):
            session.rollback()
            reason = f"version {job.parent_version} got a child during the job"
            return requeue_batch(settings, factory, vault, job, reason)
        model = session.get_one(RegisteredModel, job.model_id)
        version = _new_version(session, job, result, model)
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            reason = f"version {job.parent_version} got a child during the job"
            return requeue_batch(settings, factory, vault, job, reason)

        limit = settings.guardrail_max_score_drop
        verdict = decide(
            result.before.audit_score - result.after.audit_score,
            limit,
            len(missing_erasures(session, model, version)),
            version.version,
        )
        run = {
            **result.run,
            "version": version.version,
            "wall_seconds": time.perf_counter() - start,
            "guardrail_max_score_drop": limit,
            "guardrail_passed": verdict.passed,
            "promoted": verdict.promote,
            # what this method forgets on simulated single-portrait erasures of these weights
            "calibrated_efficacy": method_efficacy(
                session, session.get_one(ModelVersion, job.parent_id), job.method
            ),
        }
        task = result.parent.task
        erased = [request.identity_hash for request in requests]
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
            transition(session, request, verdict.status, ACTOR, verdict.reason)
            request.result_version_id = version.id
            request.error_code = request.error_message = None
            uris.append(request.portrait_uri)
            request.portrait_uri = None
            uris += settle_followers(session, request, ACTOR)
        model.erasures_since_refresh = (model.erasures_since_refresh or 0) + 1
        if verdict.promote:
            set_alias(session, model, SERVING, version, ACTOR, verdict.reason)
        session.commit()
        version_id, number = version.id, version.version
    destroy(vault, *uris)
    if verdict.promote:  # the serving version no longer knows them: neither does the verifier
        forget_references(settings, job.parent_artifacts, erased)
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
    status = verdict.status.value
    log.info("batch %s (%d): %s, version %s", job.batch_id, len(requests), status, number)
    return Outcome(job.batch_id, status, version_id, verdict.reason)
