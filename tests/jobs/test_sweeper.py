"""The sweeper (worker/sweeper.py) and the Celery app the worker runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from job_helpers import (
    MODEL,
    load_request,
    onboard,
    portrait_uri_of,
    seed_request,
    session_for,
    statuses,
)
from services import flush_redis_db, redis_db_url
from sqlalchemy import select

from app import queue
from app.services.lifecycle import transition
from app.services.registry import register_checkpoint
from app.settings import Settings
from app.storage import portrait_vault
from app.tables import (
    DeletionRequest,
    RegisteredModel,
    RequestStatus,
    utcnow,
)
from worker.erase import erase_request
from worker.sweeper import sweep

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


def test_sweep_recovers_requests_stranded_as_received(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    now_settings = settings.model_copy(update={"sweep_after_seconds": 0.0})
    onboard(now_settings, checkpoint)
    stranded = seed_request(now_settings, train_ids[0], queued=False)
    lost = seed_request(now_settings, train_ids[1], queued=False)
    vault = portrait_vault(now_settings)
    vault.destroy(portrait_uri_of(now_settings, lost))
    sent.clear()
    time.sleep(0.05)

    report = sweep(now_settings, inspect=False)
    assert report.recovered == [stranded] and report.failed == [lost]
    assert [(name, args) for name, args, _ in sent] == [("lethe.erase", (stranded,))]
    recovered = load_request(now_settings, stranded)
    assert recovered.status == "queued" and recovered.task_id == sent[0][2]
    failed = load_request(now_settings, lost)
    assert statuses(failed) == ["received", "failed"] and failed.portrait_uri is None

    outcome = erase_request(now_settings, stranded, task_id=sent[0][2])
    assert outcome.status == "completed", outcome
    assert not vault.exists(recovered.portrait_uri or "")
    assert sweep(now_settings, inspect=False).recovered == []  # once


@pytest.mark.parametrize("broker", ["redis", "sql"])
def test_a_busy_workers_backlog_stays_and_a_lost_message_is_re_sent_once(
    settings: Settings,
    checkpoint: Path,
    train_ids: list[str],
    broker: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a real broker, no worker: what waits there is a busy worker's backlog, not lost
    url = redis_db_url() if broker == "redis" else f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    now = settings.model_copy(update={"sweep_after_seconds": 0.0, "broker_url": url})
    app = Celery("lethe-sweeper-test")
    queue.configure(app, now)
    monkeypatch.setattr(queue, "celery_app", app)
    if broker == "redis":
        flush_redis_db(url)
    try:
        with session_for(now) as session:
            register_checkpoint(session, now, MODEL, str(checkpoint))
        backlog = [seed_request(now, identity) for identity in train_ids[:3]]
        lost = seed_request(now, train_ids[3])
        with session_for(now) as session:
            for request_id in backlog:
                session.get_one(DeletionRequest, request_id).task_id = queue.send(
                    queue.ERASE, request_id
                )
            session.get_one(DeletionRequest, lost).task_id = "a-message-the-broker-lost"
            session.commit()
        time.sleep(0.05)

        first = sweep(now, inspect=False)
        assert first.resent == [lost]  # before: every queued request, on every sweep
        assert sweep(now, inspect=False).resent == []  # its new message now waits: once
        waiting = queue.waiting_tasks(now.sweep_after_seconds) or {}
        for request_id in [*backlog, lost]:
            task_id = load_request(now, request_id).task_id or ""
            assert waiting[task_id] == queue.Waiting(queue.ERASE, request_id)
        # the preparation registration sent waits too, and is not sent again
        assert [w.task for w in waiting.values()].count(queue.PREPARE) == 1
        assert first.preparations == []
    finally:
        if broker == "redis":
            flush_redis_db(url)


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
    # a worker's periodic sweep leaves it alone: the preparation may be running in that worker
    # (every 30 s it used to send another, 14 during one long job)
    assert sweep(now_settings, inspect=False).preparations == []
    assert sweep(now_settings, inspect=False, starting=True).preparations == [version.id]
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
    for path in (now_settings.resolved_artifact_dir / "portraits").iterdir():
        os.utime(path, (past, past))

    report = sweep(now_settings, inspect=False)
    assert report.portraits_destroyed == 1
    assert not vault.exists(orphan)
    assert vault.exists(portrait_uri_of(now_settings, kept))


# --- Celery app -----------------------------------------------------------------------------


def test_celery_app_is_configured_and_torch_free(tmp_path: Path) -> None:
    code = (
        "import sys, kombu.transport.sqlalchemy as t\n"
        "from app.queue import celery_app\n"
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
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "lethe"
    assert (tmp_path / "data").is_dir()
