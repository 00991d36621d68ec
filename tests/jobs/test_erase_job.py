"""The erasure job (worker/erase/) for one request: claim, run, record; leases and fencing."""

from __future__ import annotations

import io
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from celery.exceptions import Retry
from job_helpers import (
    load_request,
    onboard,
    portrait_uri_of,
    seed_request,
    serving_number,
    session_for,
    statuses,
)
from sqlalchemy import select

from app.db import session_factory
from app.security import identity_hash
from app.services.lifecycle import transition
from app.services.lookup import head_version
from app.services.registry import AliasRefused, set_alias
from app.settings import Settings
from app.storage import artifact_store, portrait_vault
from app.tables import (
    SERVING,
    Audit,
    DeletionRequest,
    ModelVersion,
    RegisteredModel,
    RequestStatus,
    utcnow,
)
from worker.erase import erase_request
from worker.versions import clear_cache

# --- erasure --------------------------------------------------------------------------------


def test_erase_completes_promotes_and_destroys_the_portrait(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    v1 = onboard(settings, checkpoint)
    request_id = seed_request(settings, train_ids[0])
    uri = portrait_uri_of(settings, request_id)
    assert portrait_vault(settings).exists(uri)

    outcome = erase_request(settings, request_id)
    assert outcome.status == "completed", outcome

    request = load_request(settings, request_id)
    assert request.status == "completed" and request.portrait_uri is None
    assert not portrait_vault(settings).exists(uri)
    assert statuses(request) == ["received", "queued", "running", "completed"]
    assert request.parent_version_id == v1.id and request.finished_at is not None
    with session_for(settings) as session:
        v2 = session.get_one(ModelVersion, request.result_version_id)
        assert v2.version == 2 and v2.parent_id == v1.id and v2.status == "ready"
        assert v2.method == "jit" and v2.resolved_config["lr"] > 0
        assert v2.erased_identity_hashes == [request.identity_hash]
        assert v2.created_by_request_id == request_id
        assert v2.artifacts == v1.artifacts and v2.sha256 != v1.sha256
        assert artifact_store(settings).exists("models", v2.sha256)
    assert serving_number(settings) == 2

    audit = request.audit
    assert audit is not None
    for side in (audit.before, audit.after):
        assert {"portrait_loss", "portrait_confidence", "portrait_membership_score"} <= set(side)
        assert side["audit_score_name"] == "mAP" and side["audit_score"] is not None
    assert 0.0 <= audit.after["audit_agreement"] <= 100.0
    assert audit.after["portrait_loss"] != audit.before["portrait_loss"]
    assert audit.run["param_change_l2"] > 0 and audit.run["wall_seconds"] > 0
    assert audit.run["device"] and audit.run["peak_memory_bytes"] > 0
    assert audit.run["promoted"] is True
    assert audit.run["config_calibrated"] is True  # synthfaces/test_resnet has a pinned section
    assert audit.delta["audit_score_drop"] == pytest.approx(
        audit.before["audit_score"] - audit.after["audit_score"]
    )

    # At-least-once delivery: running the task again changes nothing.
    again = erase_request(settings, request_id)
    assert again.status == "completed" and again.detail == "already finished"
    assert statuses(load_request(settings, request_id)) == statuses(request)
    with session_for(settings) as session:
        assert len(session.scalars(select(ModelVersion)).all()) == 2
        assert len(session.scalars(select(Audit)).all()) == 1


def test_two_erasures_make_a_linear_chain(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    onboard(settings, checkpoint)
    first = seed_request(settings, train_ids[0])
    second = seed_request(settings, train_ids[1])
    assert erase_request(settings, first).status == "completed"
    clear_cache()  # the second job loads v2 from the store rather than the cache
    assert erase_request(settings, second).status == "completed"
    with session_for(settings) as session:
        versions = session.scalars(select(ModelVersion).order_by(ModelVersion.version)).all()
        model = session.get_one(RegisteredModel, versions[0].model_id)
        assert head_version(session, model).version == 3
    assert [v.version for v in versions] == [1, 2, 3]
    assert [v.parent_id for v in versions] == [None, versions[0].id, versions[1].id]
    h1, h2 = (identity_hash(i, settings) for i in train_ids[:2])
    assert [v.erased_identity_hashes for v in versions] == [[], [h1], [h1, h2]]
    assert load_request(settings, second).parent_version_id == versions[1].id
    assert serving_number(settings) == 3

    # each checkpoint names people only by keyed hash, and drops those it forgot
    store = artifact_store(settings)
    blobs = [store.read("models", v.sha256) for v in versions]
    assert not any(i.encode() in blob for i in train_ids for blob in blobs)
    trained = [set(torch.load(io.BytesIO(b), weights_only=True)["splits"]["train"]) for b in blobs]
    assert [h1 in names for names in trained] == [True, False, False]
    assert [h2 in names for names in trained] == [True, True, False]
    assert identity_hash(train_ids[2], settings) in trained[2]  # the others stay

    # and no stored file at all, the registered upload included, names anyone in plain
    stored = [p for p in settings.resolved_artifact_dir.rglob("*") if p.is_file()]
    assert not store.exists("models", versions[0].upload_sha256 or "0" * 64)
    named = [p.name for p in stored if any(i.encode() in p.read_bytes() for i in train_ids)]
    assert named == []


def test_guardrail_keeps_the_version_without_promoting_it(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    strict = settings.model_copy(update={"guardrail_max_score_drop": -1.0})
    onboard(strict, checkpoint)
    request_id = seed_request(strict, train_ids[0])
    uri = portrait_uri_of(strict, request_id)

    outcome = erase_request(strict, request_id)
    assert outcome.status == "needs_review", outcome
    request = load_request(strict, request_id)
    assert statuses(request) == ["received", "queued", "running", "needs_review"]
    assert request.result_version_id is not None and request.portrait_uri is None
    assert not portrait_vault(strict).exists(uri)
    assert request.audit is not None and request.audit.run["promoted"] is False
    assert serving_number(strict) == 1
    with session_for(strict) as session:
        model = session.scalars(select(RegisteredModel)).one()
        # The kept version is the head: the next erasure builds on it rather than undoing it.
        assert head_version(session, model).id == request.result_version_id


def test_a_leased_model_makes_the_task_retry(
    settings: Settings,
    checkpoint: Path,
    train_ids: list[str],
    sent: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.tasks import erase_task

    onboard(settings, checkpoint)
    request_id = seed_request(settings, train_ids[0])
    with session_for(settings) as session:
        model = session.scalars(select(RegisteredModel)).one()
        model.lock_owner = "another-request:0"
        model.lock_expires_at = utcnow() + timedelta(minutes=5)
        session.commit()
    monkeypatch.setattr("worker.tasks.get_settings", lambda: settings)

    with pytest.raises(Retry):
        erase_task(request_id)
    request = load_request(settings, request_id)
    assert request.status == "queued" and request.attempts == 0
    assert request.portrait_uri is not None

    # Once the lease expires the request gets its turn.
    with session_for(settings) as session:
        model = session.scalars(select(RegisteredModel)).one()
        model.lock_expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
    assert erase_task(request_id)["status"] == "completed"
    with session_for(settings) as session:
        assert session.scalars(select(RegisteredModel)).one().lock_owner is None


def test_a_running_request_seen_again_is_requeued_then_capped(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    onboard(settings, checkpoint)
    survivor = seed_request(settings, train_ids[0])
    doomed = seed_request(settings, train_ids[1])
    for request_id, attempts in ((survivor, 0), (doomed, settings.requeue_cap)):
        with session_for(settings) as session:
            request = session.get_one(DeletionRequest, request_id)
            transition(session, request, RequestStatus.running, "worker")
            request.attempts = attempts
            session.commit()

    # A worker died mid-job: the redelivered task counts an attempt and finishes the job.
    assert erase_request(settings, survivor).status == "completed"
    request = load_request(settings, survivor)
    assert request.attempts == 1
    assert statuses(request) == ["received", "queued", "running", "queued", "running", "completed"]

    uri = portrait_uri_of(settings, doomed)
    outcome = erase_request(settings, doomed)
    assert outcome.status == "failed" and outcome.detail == "requeue_cap_reached"
    request = load_request(settings, doomed)
    assert request.status == "failed" and request.error_code == "requeue_cap_reached"
    assert request.error_message and "cap" in request.error_message
    assert request.portrait_uri is None and not portrait_vault(settings).exists(uri)
    assert request.result_version_id is None


def test_a_failing_method_fails_the_request(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    onboard(settings, checkpoint)
    request_id = seed_request(settings, train_ids[0], method="no-such-method")
    uri = portrait_uri_of(settings, request_id)
    outcome = erase_request(settings, request_id)
    assert outcome.status == "failed" and outcome.detail == "method_error"
    request = load_request(settings, request_id)
    assert request.error_code == "method_error" and "no-such-method" in request.error_message
    assert statuses(request) == ["received", "queued", "running", "failed"]
    assert request.portrait_uri is None and not portrait_vault(settings).exists(uri)
    assert serving_number(settings) == 1


def test_a_superseded_task_does_nothing(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    onboard(settings, checkpoint)
    request_id = seed_request(settings, train_ids[0])
    with session_for(settings) as session:
        session.get_one(DeletionRequest, request_id).task_id = "the-current-task"
        session.commit()
    outcome = erase_request(settings, request_id, task_id="an-older-task")
    assert outcome.detail == "superseded by a re-sent task"
    assert load_request(settings, request_id).status == "queued"
    assert erase_request(settings, request_id, task_id="the-current-task").status == "completed"


def test_serving_never_moves_to_a_version_missing_a_completed_erasure(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    v1 = onboard(settings, checkpoint)
    assert erase_request(settings, seed_request(settings, train_ids[0])).status == "completed"
    with session_for(settings) as session:
        model = session.scalars(select(RegisteredModel)).one()
        with pytest.raises(AliasRefused):
            set_alias(session, model, SERVING, session.get_one(ModelVersion, v1.id))
        set_alias(session, model, "baseline", session.get_one(ModelVersion, v1.id))
        session.commit()
    assert serving_number(settings) == 2


def test_a_job_overtaken_by_another_attempt_writes_nothing(
    settings: Settings,
    checkpoint: Path,
    train_ids: list[str],
    sent: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import worker.erase.run as run

    onboard(settings, checkpoint)
    request_id = seed_request(settings, train_ids[0])
    compute = run.run_erasure

    def overtaken(*args: Any) -> Any:
        result = compute(*args)
        with session_for(settings) as session:  # the sweeper requeued it meanwhile
            session.get_one(DeletionRequest, request_id).attempts += 1
            session.commit()
        return result

    monkeypatch.setattr(run, "run_erasure", overtaken)
    outcome = erase_request(settings, request_id)
    assert outcome.detail == "taken by another attempt"
    request = load_request(settings, request_id)
    assert request.status == "running" and request.audit is None
    assert request.portrait_uri is not None and portrait_vault(settings).exists(
        request.portrait_uri
    )
    with session_for(settings) as session:
        assert len(session.scalars(select(ModelVersion)).all()) == 1
    assert serving_number(settings) == 1


def test_a_job_whose_parent_got_a_child_meanwhile_is_requeued(
    settings: Settings,
    checkpoint: Path,
    train_ids: list[str],
    sent: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import worker.erase.run as run
    from worker.erase import Busy

    v1 = onboard(settings, checkpoint)
    request_id = seed_request(settings, train_ids[0])
    compute = run.run_erasure

    def forked(*args: Any) -> Any:
        result = compute(*args)
        with session_for(settings) as session:  # a writer that ignored the lease
            rival = ModelVersion(
                model_id=v1.model_id,
                version=2,
                parent_id=v1.id,
                status="ready",
                artifact_uri=v1.artifact_uri,
                sha256=v1.sha256,
                arch=v1.arch,
            )
            session.add(rival)
            session.commit()
        return result

    monkeypatch.setattr(run, "run_erasure", forked)
    with pytest.raises(Busy):
        erase_request(settings, request_id)
    request = load_request(settings, request_id)
    assert request.status == "queued" and request.attempts == 1
    with session_for(settings) as session:
        assert len(session.scalars(select(ModelVersion)).all()) == 2  # only the rival
        assert session.scalars(select(RegisteredModel)).one().lock_owner is None


def test_lease_rules(settings: Settings, checkpoint: Path, sent: list[Any]) -> None:
    from worker import lease

    model_id = onboard(settings, checkpoint).model_id
    factory = session_factory(settings)

    def expires() -> Any:
        with factory() as session:
            return session.get_one(RegisteredModel, model_id).lock_expires_at

    with factory() as session:
        assert lease.acquire(session, model_id, "r1:0", 60)
        assert not lease.acquire(session, model_id, "r2:0", 60)
        assert lease.acquire(session, model_id, "r1:1", 60)  # a later attempt of the same request
        lease.release(session, model_id, "r1:0")  # not the holder any more: no effect
        assert session.get_one(RegisteredModel, model_id).lock_owner == "r1:1"
        lease.release(session, model_id, "r1:1")
        assert lease.acquire(session, model_id, "r2:0", 0.3)
    first = expires()
    with lease.kept_alive(factory, model_id, "r2:0", 0.3):
        time.sleep(0.5)
    assert expires() > first
