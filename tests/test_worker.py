"""Worker jobs run in-process: onboarding, erasure lifecycle, leases, requeue cap, sweeper."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from celery.exceptions import Retry
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import migrate, session_factory
from app.security import identity_hash
from app.services.lifecycle import transition
from app.services.registry import (
    SERVING,
    AliasRefused,
    RegistryError,
    head_version,
    register_checkpoint,
    serving_version,
    set_alias,
)
from app.settings import Settings
from app.storage import artifact_store, portrait_vault
from app.tables import (
    ApiClient,
    Audit,
    DeletionRequest,
    ModelIdentity,
    ModelVersion,
    RegisteredModel,
    RequestStatus,
    utcnow,
)
from models.data.registry import DatasetSpec, load_dataset
from models.data.splits import make_splits, split_indices
from models.data.synthfaces import SynthFaces, SynthFacesConfig
from models.protocol import ModelSetup, train_reference
from models.train.checkpoint import load_checkpoint
from models.train.config import TrainConfig
from worker.audit_kit import AUDIT_SET_SIZE, AuditSet, MembershipModel
from worker.erase import batch_wait, erase_request
from worker.prepare import prepare_version
from worker.sweeper import sweep
from worker.versions import clear_cache

SPEC = DatasetSpec(num_identities=40, image_size=32)
MODEL = "faces"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test_resnet trained for two epochs on 40 synthfaces identities."""
    data = load_dataset(SPEC)
    splits = make_splits(data.identities, data.keys, 1, 0)
    setup = ModelSetup(SPEC, "attributes", "test_resnet", 32, TrainConfig(epochs=2))
    path = tmp_path_factory.mktemp("checkpoint") / "original.pt"
    indices = split_indices(data, splits)
    train_reference(setup, data, splits, indices, "original", torch.device("cpu"), path, False)
    return path


@pytest.fixture
def train_ids(checkpoint: Path) -> list[str]:
    """Training identities of the checkpoint (what can be asked to be forgotten)."""
    return list(load_checkpoint(checkpoint).splits["train"])


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Migrated settings: the embedded SQLite default, and real Postgres where available."""
    clear_cache()
    if request.param == "postgres":
        base: Settings = request.getfixturevalue("migrated_settings")
    else:
        base = request.getfixturevalue("sqlite_settings")
        migrate(base)
    # Guardrail wide open by default: these tests are about the lifecycle, not the tiny model.
    # One request per job and no waiting, unless a test is about batching.
    return base.model_copy(
        update={"guardrail_max_score_drop": 100.0, "batch_max_size": 1, "batch_window_seconds": 0}
    )


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...], str | None]]:
    """Tasks sent by name, captured instead of reaching a broker."""
    calls: list[tuple[str, tuple[Any, ...], str | None]] = []

    def fake_enqueue(name: str, *args: Any, task_id: str | None = None) -> str:
        calls.append((name, args, task_id))
        return task_id or f"task-{len(calls)}"

    monkeypatch.setattr("app.services.registry.enqueue", fake_enqueue)
    monkeypatch.setattr("worker.sweeper.enqueue", fake_enqueue)
    return calls


def session_for(settings: Settings) -> Session:
    return session_factory(settings)()


def onboard(settings: Settings, checkpoint: Path) -> ModelVersion:
    """Register and prepare the checkpoint; returns the ready version."""
    with session_for(settings) as session:
        version = register_checkpoint(session, settings, MODEL, str(checkpoint))
    result = prepare_version(settings, version.id)
    assert result["status"] == "ready", result
    with session_for(settings) as session:
        return session.get_one(ModelVersion, version.id)


def portrait_png(identity: str) -> bytes:
    """A new synthfaces photo of `identity`, PNG-encoded as a client would send it."""
    faces = SynthFaces(SynthFacesConfig(num_identities=40, image_size=32))
    pixels = faces.portrait(identity).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def seed_request(settings: Settings, identity: str, method: str = "jit") -> str:
    """A queued deletion request with an encrypted portrait, as the API would record it."""
    with session_for(settings) as session:
        model = session.scalars(select(RegisteredModel).where(RegisteredModel.name == MODEL)).one()
        client = ApiClient(
            name="compliance",
            key_prefix="lethe_test",
            key_hash=hashlib.sha256(os.urandom(16)).hexdigest(),
            scopes=["requests:create", "requests:read"],
        )
        session.add(client)
        session.flush()
        digest, uri = portrait_vault(settings).put(portrait_png(identity))
        request = DeletionRequest(
            client_id=client.id,
            model_id=model.id,
            identity_hash=identity_hash(identity, settings),
            method=method,
            body_fingerprint="0" * 64,
            portrait_sha256=digest,
            portrait_uri=uri,
            attempts=0,
        )
        session.add(request)
        transition(session, request, RequestStatus.received, "api")
        transition(session, request, RequestStatus.queued, "api")
        session.commit()
        return request.id


def load_request(settings: Settings, request_id: str) -> DeletionRequest:
    with session_for(settings) as session:
        request = session.get_one(DeletionRequest, request_id)
        _ = request.events, request.audit
        return request


def statuses(request: DeletionRequest) -> list[str]:
    return [event.to_status for event in request.events]


def serving_number(settings: Settings) -> int:
    with session_for(settings) as session:
        model = session.scalars(select(RegisteredModel).where(RegisteredModel.name == MODEL)).one()
        version = serving_version(session, model)
        assert version is not None
        return version.version


def portrait_uri_of(settings: Settings, request_id: str) -> str:
    uri = load_request(settings, request_id).portrait_uri
    assert uri is not None
    return uri


# --- onboarding ---------------------------------------------------------------------------------


def test_prepare_builds_identity_index_and_audit_kit(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    version = onboard(settings, checkpoint)
    assert sent == [("lethe.prepare", (version.id,), None)]
    assert version.status == "ready" and version.arch == "test_resnet"
    assert version.version == 1 and version.parent_id is None
    with session_for(settings) as session:
        model = session.get_one(RegisteredModel, version.model_id)
        assert model.task == "attributes"
        hashes = set(
            session.scalars(
                select(ModelIdentity.identity_hash).where(ModelIdentity.model_id == model.id)
            )
        )
    assert hashes == {identity_hash(i, settings) for i in train_ids}
    assert not hashes & set(train_ids)  # no plain identity ID is stored
    assert serving_number(settings) == 1

    store = artifact_store(settings)
    audit_set = AuditSet.from_bytes(store.read("audit", version.artifacts["audit_set"]))
    assert audit_set.images.dtype == torch.uint8
    assert audit_set.images.shape[1:] == (3, 32, 32)
    assert 0 < len(audit_set.images) <= AUDIT_SET_SIZE == 256
    assert audit_set.targets.shape == (len(audit_set.images), 17)
    raw = store.read("audit", version.artifacts["membership"])
    assert set(json.loads(raw)) >= {"coef", "intercept"}
    membership = MembershipModel.from_json(raw)
    assert 0.0 <= membership.score(0.1) <= 1.0

    again = prepare_version(settings, version.id)
    assert again.get("noop") and again["status"] == "ready"


def test_register_validates_path_and_reuses_the_same_file(
    settings: Settings, checkpoint: Path, tmp_path: Path, sent: list[Any]
) -> None:
    with session_for(settings) as session:
        with pytest.raises(RegistryError, match="does not exist"):
            register_checkpoint(session, settings, MODEL, str(tmp_path / "missing.pt"))
        with pytest.raises(RegistryError, match="not a file"):
            register_checkpoint(session, settings, MODEL, str(tmp_path))
        first = register_checkpoint(session, settings, MODEL, str(checkpoint))
        second = register_checkpoint(session, settings, MODEL, str(checkpoint))
    assert first.id == second.id and first.status == "preparing" and first.arch == "pending"
    assert len(sent) == 1
    assert artifact_store(settings).exists("models", first.sha256)


def test_prepare_failure_is_recorded(settings: Settings, tmp_path: Path, sent: list[Any]) -> None:
    bogus = tmp_path / "not-a-checkpoint.pt"
    bogus.write_bytes(b"definitely not torch")
    with session_for(settings) as session:
        version = register_checkpoint(session, settings, MODEL, str(bogus))
    result = prepare_version(settings, version.id)
    assert result["status"] == "failed"
    with session_for(settings) as session:
        failed = session.get_one(ModelVersion, version.id)
        assert failed.status == "failed" and failed.prepare_error
        model = session.get_one(RegisteredModel, failed.model_id)
        assert serving_version(session, model) is None


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
    import worker.erase as erase

    onboard(settings, checkpoint)
    request_id = seed_request(settings, train_ids[0])
    compute = erase._compute

    def overtaken(*args: Any) -> Any:
        result = compute(*args)
        with session_for(settings) as session:  # the sweeper requeued it meanwhile
            session.get_one(DeletionRequest, request_id).attempts += 1
            session.commit()
        return result

    monkeypatch.setattr(erase, "_compute", overtaken)
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
    import worker.erase as erase

    v1 = onboard(settings, checkpoint)
    request_id = seed_request(settings, train_ids[0])
    compute = erase._compute

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

    monkeypatch.setattr(erase, "_compute", forked)
    with pytest.raises(erase.Busy):
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


# --- batching and duplicates ---------------------------------------------------------------


def batching(settings: Settings, size: int, window: float = 0.0) -> Settings:
    """`settings` with batches of at most `size` and the given waiting window."""
    return settings.model_copy(update={"batch_max_size": size, "batch_window_seconds": window})


def test_queued_requests_coalesce_into_batches_of_at_most_the_limit(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    batched = batching(settings, 3)
    v1 = onboard(batched, checkpoint)
    ids = [seed_request(batched, identity) for identity in train_ids[:5]]
    uris = [portrait_uri_of(batched, request_id) for request_id in ids]

    first = erase_request(batched, ids[0])
    assert first.status == "completed", first
    rows = [load_request(batched, request_id) for request_id in ids]
    assert [r.status for r in rows] == ["completed"] * 3 + ["queued"] * 2
    assert {r.result_version_id for r in rows[:3]} == {first.version_id}
    assert {r.batch_id for r in rows[:3]} == {ids[0]}
    with session_for(batched) as session:
        v2 = session.get_one(ModelVersion, first.version_id)
        assert v2.parent_id == v1.id and v2.created_by_request_id == ids[0]
        assert v2.erased_identity_hashes == [r.identity_hash for r in rows[:3]]
    # Each request keeps its own audit of its own portrait; the batch shares one audit-set score.
    audits = [r.audit for r in rows[:3]]
    assert all(a is not None for a in audits)
    assert [a.run["batch_index"] for a in audits] == [0, 1, 2]
    assert {a.run["batch_size"] for a in audits} == {3}
    assert len({a.before["portrait_loss"] for a in audits}) == 3
    assert len({a.after["audit_score"] for a in audits}) == 1
    for audit in audits:
        assert audit.delta["portrait_loss"] == pytest.approx(
            audit.after["portrait_loss"] - audit.before["portrait_loss"]
        )
    assert not any(portrait_vault(batched).exists(uri) for uri in uris[:3])
    assert all(portrait_vault(batched).exists(uri) for uri in uris[3:])

    # The members' own tasks find their request finished; the next job takes the rest.
    assert erase_request(batched, ids[1]).detail == "already finished"
    second = erase_request(batched, ids[3])
    assert second.status == "completed"
    assert load_request(batched, ids[4]).result_version_id == second.version_id
    assert serving_number(batched) == 3
    with session_for(batched) as session:
        assert len(session.scalars(select(ModelVersion)).all()) == 3
        assert session.scalars(select(RegisteredModel)).one().erasures_since_refresh == 2


def test_erasures_queue_a_refresh_once_enough_have_happened(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    every_two = settings.model_copy(update={"refresh_after_erasures": 2})
    onboard(every_two, checkpoint)
    sent.clear()
    assert erase_request(every_two, seed_request(every_two, train_ids[0])).status == "completed"
    assert [name for name, *_ in sent] == []
    second = erase_request(every_two, seed_request(every_two, train_ids[1]))
    assert [(name, args) for name, args, _ in sent] == [("lethe.refresh", (second.version_id,))]


def test_a_batch_waits_for_its_window_unless_full(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    onboard(settings, checkpoint)
    first = seed_request(settings, train_ids[0])
    with session_for(settings) as session:
        request = session.get_one(DeletionRequest, first)
        assert batch_wait(session, batching(settings, 1, 5.0), request) == 0.0  # no batching
        assert batch_wait(session, batching(settings, 4, 0.0), request) == 0.0  # no window
        wait = batch_wait(session, batching(settings, 4, 5.0), request)
        assert 4.0 < wait <= 5.0
    seed_request(settings, train_ids[1])
    with session_for(settings) as session:
        request = session.get_one(DeletionRequest, first)
        assert batch_wait(session, batching(settings, 2, 5.0), request) == 0.0  # full
        request.created_at = utcnow() - timedelta(seconds=10)  # the oldest has waited enough
        session.commit()
        assert batch_wait(session, batching(settings, 4, 5.0), request) == 0.0
    # The oldest request has waited long enough: the job runs with both at once.
    outcome = erase_request(batching(settings, 4, 0.5), first)
    assert outcome.status == "completed"
    assert load_request(settings, first).batch_id == first
    with session_for(settings) as session:
        assert len(session.get_one(ModelVersion, outcome.version_id).erased_identity_hashes) == 2


def test_a_waiting_job_starts_as_soon_as_its_batch_is_full(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    patient = batching(settings, 2, 60.0)  # far longer than this test may take
    onboard(patient, checkpoint)
    first = seed_request(patient, train_ids[0])
    outcomes: list[Any] = []
    job = threading.Thread(target=lambda: outcomes.append(erase_request(patient, first)))
    job.start()
    time.sleep(0.3)
    assert job.is_alive()  # waiting for company
    second = seed_request(patient, train_ids[1])
    job.join(timeout=45)
    assert not job.is_alive() and outcomes[0].status == "completed"
    assert load_request(patient, second).batch_id == first


def test_only_requests_of_the_same_method_share_a_batch(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    batched = batching(settings, 5)
    onboard(batched, checkpoint)
    jit = seed_request(batched, train_ids[0])
    other = seed_request(batched, train_ids[1], method="neggrad")
    assert erase_request(batched, jit).status == "completed"
    assert load_request(batched, other).status == "queued"


def test_a_same_identity_request_in_the_batch_follows_the_first(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    batched = batching(settings, 4)
    onboard(batched, checkpoint)
    first = seed_request(batched, train_ids[0])
    twin = seed_request(batched, train_ids[0])  # raced past the API's in-flight check
    uri = portrait_uri_of(batched, twin)
    outcome = erase_request(batched, first)
    assert outcome.status == "completed"
    request = load_request(batched, twin)
    assert request.status == "completed" and request.linked_request_id == first
    assert request.result_version_id == outcome.version_id and request.audit is None
    assert statuses(request) == ["received", "queued", "completed"]
    assert request.events[-1].reason == f"linked to request {first}"
    assert not portrait_vault(batched).exists(uri)
    with session_for(batched) as session:
        version = session.get_one(ModelVersion, outcome.version_id)
        assert version.erased_identity_hashes == [request.identity_hash]


def link(settings: Settings, follower: str, primary: str) -> None:
    """Make `follower` a duplicate of `primary`, as the API records one."""
    with session_for(settings) as session:
        session.get_one(DeletionRequest, follower).linked_request_id = primary
        session.commit()


def test_a_linked_duplicate_takes_its_requests_outcome(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    onboard(settings, checkpoint)
    primary = seed_request(settings, train_ids[0])
    follower = seed_request(settings, train_ids[0])
    link(settings, follower, primary)
    assert "linked to request" in (erase_request(settings, follower).detail or "")
    assert load_request(settings, follower).status == "queued"  # its own task never runs it

    outcome = erase_request(settings, primary)
    request = load_request(settings, follower)
    assert request.status == outcome.status == "completed"
    assert request.result_version_id == outcome.version_id and request.portrait_uri is None


def test_a_failed_request_releases_its_duplicates_to_run_alone(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    now_settings = settings.model_copy(update={"sweep_after_seconds": 0.0})
    onboard(now_settings, checkpoint)
    primary = seed_request(now_settings, train_ids[0], method="no-such-method")
    follower = seed_request(now_settings, train_ids[0])
    link(now_settings, follower, primary)
    assert erase_request(now_settings, primary).status == "failed"
    request = load_request(now_settings, follower)
    assert request.status == "queued" and request.linked_request_id is None
    assert "it will run on its own" in (request.events[-1].reason or "")
    assert portrait_vault(now_settings).exists(str(request.portrait_uri))
    sent.clear()
    assert sweep(now_settings, inspect=False).resent == [follower]
    assert erase_request(now_settings, follower, task_id=sent[0][2]).status == "completed"


def test_the_sweeper_settles_duplicates_left_behind(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    onboard(settings, checkpoint)
    primary = seed_request(settings, train_ids[0])
    assert erase_request(settings, primary).status == "completed"
    follower = seed_request(settings, train_ids[0])
    link(settings, follower, primary)  # as if the worker crashed before settling it
    assert sweep(settings, inspect=False).settled == [primary]
    request = load_request(settings, follower)
    assert request.status == "completed"
    assert request.result_version_id == load_request(settings, primary).result_version_id


def test_the_sweeper_leaves_a_live_batch_alone_and_requeues_a_dead_one(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    now_settings = batching(settings, 3).model_copy(update={"sweep_after_seconds": 0.0})
    onboard(now_settings, checkpoint)
    ids = [seed_request(now_settings, identity) for identity in train_ids[:3]]
    with session_for(now_settings) as session:
        for request_id in ids:
            request = session.get_one(DeletionRequest, request_id)
            transition(session, request, RequestStatus.running, "worker")
            request.batch_id = ids[0]
        model = session.scalars(select(RegisteredModel)).one()
        model.lock_owner = f"{ids[0]}:0"  # the leader's job holds the lease for all three
        model.lock_expires_at = utcnow() + timedelta(minutes=5)
        session.commit()
    time.sleep(0.05)
    assert sweep(now_settings, inspect=False).requeued == []
    with session_for(now_settings) as session:
        session.scalars(select(RegisteredModel)).one().lock_expires_at = utcnow()
        session.commit()
    time.sleep(0.05)
    assert sorted(sweep(now_settings, inspect=False).requeued) == sorted(ids)


def test_a_redelivered_leader_requeues_its_whole_batch(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    batched = batching(settings, 3)
    onboard(batched, checkpoint)
    ids = [seed_request(batched, identity) for identity in train_ids[:3]]
    with session_for(batched) as session:
        for request_id in ids:
            request = session.get_one(DeletionRequest, request_id)
            transition(session, request, RequestStatus.running, "worker")
            request.batch_id, request.task_id = ids[0], "leader-task"
        session.commit()
    outcome = erase_request(batched, ids[0], task_id="leader-task")
    assert outcome.status == "completed"
    rows = [load_request(batched, request_id) for request_id in ids]
    assert {r.result_version_id for r in rows} == {outcome.version_id}
    assert all(
        r.attempts == 1 and statuses(r)[-3:] == ["queued", "running", "completed"] for r in rows
    )


# --- sweeper --------------------------------------------------------------------------------


def test_sweep_resends_lost_tasks_and_requeues_dead_jobs(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    now_settings = settings.model_copy(update={"sweep_after_seconds": 0.0})
    onboard(now_settings, checkpoint)
    lost = seed_request(now_settings, train_ids[0])
    dead = seed_request(now_settings, train_ids[1])
    with session_for(now_settings) as session:
        request = session.get_one(DeletionRequest, dead)
        transition(session, request, RequestStatus.running, "worker")
        model = session.get_one(RegisteredModel, request.model_id)
        model.lock_owner = f"{dead}:0"  # its job is alive: it holds the model's lease
        model.lock_expires_at = utcnow() + timedelta(minutes=5)
        session.commit()
    sent.clear()
    time.sleep(0.05)

    report = sweep(now_settings, inspect=False)
    assert report.resent == [lost] and report.requeued == [] and report.preparations == []
    assert load_request(now_settings, dead).status == "running"

    with session_for(now_settings) as session:
        session.scalars(select(RegisteredModel)).one().lock_owner = "another-request:0"
        session.commit()
    report = sweep(now_settings, inspect=False)
    assert report.requeued == [dead]
    by_request = {args[0]: task_id for name, args, task_id in sent if name == "lethe.erase"}
    assert set(by_request) == {lost, dead}
    for request_id, task_id in by_request.items():
        request = load_request(now_settings, request_id)
        assert request.status == "queued" and request.task_id == task_id
    dead_request = load_request(now_settings, dead)
    assert dead_request.attempts == 1 and statuses(dead_request)[-2:] == ["running", "queued"]

    # The re-sent task runs; the original message, if it ever arrives, is a no-op.
    with session_for(now_settings) as session:
        session.scalars(select(RegisteredModel)).one().lock_owner = None
        session.commit()
    assert erase_request(now_settings, lost, task_id=by_request[lost]).status == "completed"
    assert erase_request(now_settings, lost, task_id="the-lost-one").detail == "already finished"


def test_sweep_resends_stuck_preparations_at_worker_start(
    settings: Settings, checkpoint: Path, sent: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    now_settings = settings.model_copy(update={"sweep_after_seconds": 0.0})
    with session_for(now_settings) as session:
        version = register_checkpoint(session, now_settings, MODEL, str(checkpoint))
    sent.clear()
    time.sleep(0.05)
    monkeypatch.setattr("worker.sweeper.held_tasks", lambda: None)
    assert sweep(now_settings).preparations == []  # nobody answered: it may still be queued
    assert sweep(now_settings, inspect=False).preparations == [version.id]
    assert sent == [("lethe.prepare", (version.id,), None)]


def test_sweep_removes_stray_portraits(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    now_settings = settings.model_copy(update={"sweep_after_seconds": 0.0})
    onboard(now_settings, checkpoint)
    kept = seed_request(now_settings, train_ids[0])
    vault = portrait_vault(now_settings)
    _, orphan = vault.put(b"a portrait whose request was never committed")
    past = time.time() - 10
    for path in vault.root.iterdir():
        os.utime(path, (past, past))

    report = sweep(now_settings, inspect=False)
    assert report.portraits_destroyed == 1
    assert not vault.exists(orphan)
    assert vault.exists(portrait_uri_of(now_settings, kept))


# --- Celery app -----------------------------------------------------------------------------


def test_celery_app_is_configured_and_torch_free(tmp_path: Path) -> None:
    code = (
        "import sys, kombu.transport.sqlalchemy as t\n"
        "from worker.celery_app import celery_app\n"
        "import app.services.registry\n"
        "assert 'torch' not in sys.modules\n"
        "c = celery_app.conf\n"
        "assert c.task_acks_late and c.task_reject_on_worker_lost and c.task_track_started\n"
        "assert c.worker_prefetch_multiplier == 1 and c.broker_connection_retry_on_startup\n"
        "assert c.broker_url.startswith('sqla+sqlite:///'), c.broker_url\n"
        "assert t.Transport.polling_interval == 0.05\n"
        "print(celery_app.main)\n"
    )
    env = {
        **os.environ,
        "LETHE_DATA_DIR": str(tmp_path / "data"),
        "LETHE_BROKER_POLLING_INTERVAL": "0.05",
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "lethe"
    assert (tmp_path / "data").is_dir()
