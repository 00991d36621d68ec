"""Erasure batches and duplicates in the worker: coalescing, the window, linked followers."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from job_helpers import (
    batching,
    link,
    load_request,
    onboard,
    portrait_uri_of,
    seed_request,
    serving_number,
    session_for,
    statuses,
)
from sqlalchemy import select

from app.services.lifecycle import transition
from app.settings import Settings
from app.storage import portrait_vault
from app.tables import (
    DeletionRequest,
    ModelVersion,
    RegisteredModel,
    RequestStatus,
    utcnow,
)
from worker.erase import batch_wait, erase_request
from worker.sweeper import sweep

# --- batching and duplicates ---------------------------------------------------------------




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
    assert request.events[-1].reason == "the outcome of the request it followed"
    assert not portrait_vault(batched).exists(uri)
    with session_for(batched) as session:
        version = session.get_one(ModelVersion, outcome.version_id)
        assert version.erased_identity_hashes == [request.identity_hash]




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
