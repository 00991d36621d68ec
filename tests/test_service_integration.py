"""The service end to end: uvicorn, a real Celery worker process, Postgres, Redis and real HTTP."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from http_service import portraits, post, register, service, versions
from sqlalchemy import select

from app.cli import keys_create
from app.db import session_scope
from app.settings import Settings
from app.storage import artifact_store
from app.tables import DeletionRequest, ModelVersion
from worker.embedded import efficacy_summary, wait_for_request

pytestmark = pytest.mark.integration


def _erase_and_check(
    client: httpx.Client,
    settings: Settings,
    serving: dict,
    identity: str,
    png: bytes,
    method: str | None = None,
) -> dict:
    """Request an erasure and check it completed from `serving`, audited, portrait destroyed."""
    request_id = post(client, identity, png, method)
    body = wait_for_request(client, request_id, 180)

    assert body["status"] == "completed", body
    statuses = [e["to_status"] for e in body["events"]]
    assert statuses == ["received", "queued", "running", "completed"]
    assert body["audit"]["before"] and body["audit"]["after"] and body["audit"]["delta"]
    cited = body["audit"]["run"]["calibrated_efficacy"]
    assert cited["trials"] == settings.efficacy_trials and cited["config"]
    assert "simulated single-portrait erasures" in efficacy_summary(body)
    known = versions(client)
    new = known[body["result_version"]["version"]]
    assert new["parent_version"] == serving["version"]
    assert "serving" in new["aliases"] and "serving" not in known[serving["version"]]["aliases"]

    with session_scope(settings) as session:
        row = session.get(DeletionRequest, request_id)
        assert row.portrait_uri is None
        assert identity not in str(vars(row))
    vault = settings.resolved_artifact_dir / "portraits"
    assert not any(vault.iterdir())  # the portrait is destroyed; only its hash remains
    assert len(row.portrait_sha256) == 64
    return body


def test_erasure_over_http_with_a_real_worker(service_settings, tiny_checkpoint: Path) -> None:
    settings = service_settings.model_copy(
        update={"guardrail_max_score_drop": 100.0, "checkpoint_dirs": [tiny_checkpoint.parent]}
    )
    (identity, png), *others = portraits(tiny_checkpoint, 3)
    with service(settings) as (_, client):
        first = register(client, tiny_checkpoint)
        _erase_and_check(client, settings, first, identity, png)

        # Two requests at once: coalesced into one job or not, the chain stays linear.
        ids: list[str] = []
        threads = [
            threading.Thread(target=lambda i=i, p=p: ids.append(post(client, i, p)))
            for i, p in others
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        finals = [wait_for_request(client, rid, 180) for rid in ids]
        assert [f["status"] for f in finals] == ["completed", "completed"]
        known = versions(client)
        parents = [v["parent_version"] for v in known.values()]
        assert len(parents) == len(set(parents)) and len(known) in (3, 4)
        if len(known) == 3:  # one job: both requests name it and its version
            assert finals[0]["batch_id"] == finals[1]["batch_id"]
            assert finals[0]["result_version"] == finals[1]["result_version"]
            assert finals[0]["audit"]["run"]["batch_size"] == 2


def test_a_burst_of_requests_is_erased_in_batches(service_settings, tiny_checkpoint: Path) -> None:
    # A window longer than the burst takes to post, so every request is queued before a job runs.
    settings = service_settings.model_copy(
        update={
            "guardrail_max_score_drop": 100.0,
            "batch_max_size": 3,
            "batch_window_seconds": 3.0,
            "checkpoint_dirs": [tiny_checkpoint.parent],
        }
    )
    people = portraits(tiny_checkpoint, 6)
    with service(settings) as (_, client):
        register(client, tiny_checkpoint)
        ids = [post(client, identity, png) for identity, png in people]
        duplicate = post(client, *people[0])  # the first person again, still in flight
        finals = [wait_for_request(client, request_id, 180) for request_id in ids]
        assert [f["status"] for f in finals] == ["completed"] * 6
        jobs = {f["batch_id"] for f in finals}
        assert len(jobs) == 2, finals
        by_job = {
            job: {f["result_version"]["version"] for f in finals if f["batch_id"] == job}
            for job in jobs
        }
        assert all(len(versions) == 1 for versions in by_job.values())
        assert sorted(f["audit"]["run"]["batch_size"] for f in finals) == [3] * 6
        follower = wait_for_request(client, duplicate, 60)
        assert follower["status"] == "completed" and follower["linked_request_id"] == ids[0]
        assert follower["result_version"] == finals[0]["result_version"]
        known = versions(client)
        assert len(known) == 3 and known[3]["erased_identities"] == 6
        assert "serving" in known[3]["aliases"]


def test_metaunlearn_erasure_with_prepared_artifacts(
    service_settings: Settings, tiny_checkpoint: Path
) -> None:
    settings = service_settings.model_copy(
        update={
            "guardrail_max_score_drop": 100.0,
            "checkpoint_dirs": [tiny_checkpoint.parent],
            "prepare_methods": ["metaunlearn"],
            # Two simulated requests keep meta-training at onboarding to seconds; the erasure
            # step is the same one gradient step whatever h_phi learned.
            "method_options": {"metaunlearn": {"meta_epochs": 1, "max_requests_per_epoch": 2}},
        }
    )
    (identity, png), *_ = portraits(tiny_checkpoint, 1)
    with service(settings) as (_, client):
        first = register(client, tiny_checkpoint)
        body = _erase_and_check(client, settings, first, identity, png, "metaunlearn")

        assert body["method"] == "metaunlearn"
        assert body["audit"]["run"]["method"] == "metaunlearn"
        assert body["audit"]["run"]["config"]["max_requests_per_epoch"] == 2
        new = versions(client)[body["result_version"]["version"]]
        assert new["method"] == "metaunlearn"


def test_the_shipped_default_method_erases_with_its_prepared_probe(
    service_settings: Settings, tiny_checkpoint: Path
) -> None:
    shipped = Settings.model_fields
    settings = service_settings.model_copy(
        update={
            "guardrail_max_score_drop": 100.0,
            "checkpoint_dirs": [tiny_checkpoint.parent],
            "default_method": shipped["default_method"].default,
            "prepare_methods": shipped["prepare_methods"].default_factory(),  # type: ignore[misc]
        }
    )
    assert settings.default_method == "stranger" and settings.prepare_methods == ["stranger"]
    (identity, png), *_ = portraits(tiny_checkpoint, 1)
    with service(settings) as (_, client):
        first = register(client, tiny_checkpoint)
        assert "stranger" in first["efficacy"]["methods"]
        body = _erase_and_check(client, settings, first, identity, png)  # no method named

        run = body["audit"]["run"]
        assert body["method"] == run["method"] == "stranger"
        assert run["calibrated_efficacy"]["config"]["steps"] == run["config"]["steps"]
        assert run["param_change_l2"] > 0


def test_a_running_benchmark_does_not_delay_an_erasure(
    service_settings: Settings, tiny_checkpoint: Path
) -> None:
    settings = service_settings.model_copy(
        update={"guardrail_max_score_drop": 100.0, "checkpoint_dirs": [tiny_checkpoint.parent]}
    )
    (identity, png), *_ = portraits(tiny_checkpoint, 1)
    # minutes of work on the maintenance worker (it used to hold the only worker for all of it)
    long_run = {"synth_identities": 40, "image_size": 32, "epochs": 30, "requests": [3],
                "seeds": list(range(10)), "methods": ["jit"], "rmia": False}  # fmt: skip
    with service(settings) as (_, client):
        register(client, tiny_checkpoint)
        admin = {"X-API-Key": keys_create("bench", ["benchmarks:admin"], settings)}
        created = client.post("/admin/benchmarks", json=long_run, headers=admin)
        assert created.status_code == 202, created.text
        run = f"/admin/benchmarks/{created.json()['id']}"
        deadline = time.monotonic() + 60
        while client.get(run, headers=admin).json()["status"] != "running":
            assert time.monotonic() < deadline, "the benchmark never started"
            time.sleep(0.2)

        body = wait_for_request(client, post(client, identity, png), 120)
        assert body["status"] == "completed", body
        assert client.get(run, headers=admin).json()["status"] == "running"  # it did not wait


def test_worker_killed_mid_job_is_recovered(service_settings, tiny_checkpoint: Path) -> None:
    # A slow method configuration keeps the job running long enough to kill the worker in it.
    settings = service_settings.model_copy(
        update={
            "guardrail_max_score_drop": 100.0,
            "checkpoint_dirs": [tiny_checkpoint.parent],
            "method_options": {"jit": {"n_samples": 4000}},
            "sweep_after_seconds": 1.0,
            "sweep_interval_seconds": 1.0,
            "model_lock_seconds": 6.0,
        }
    )
    (identity, png), *_ = portraits(tiny_checkpoint, 1)
    with service(settings) as (services, client):
        register(client, tiny_checkpoint)
        request_id = post(client, identity, png)
        deadline = time.monotonic() + 120
        while client.get(f"/deletion-requests/{request_id}").json()["status"] != "running":
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.2)
        time.sleep(1.0)
        os.kill(services.worker.pid, signal.SIGKILL)
        services.worker.wait(timeout=10)
        services.restart_worker()

        body = wait_for_request(client, request_id, 300)
        assert body["status"] in ("completed", "failed"), body
        if body["status"] == "failed":
            assert body["error"]["code"] == "requeue_cap_reached"
        assert body["attempts"] >= 1  # requeues after the first run
        statuses = [e["to_status"] for e in body["events"]]
        assert statuses.count("running") >= 2 and statuses.count("queued") >= 2
        requeue = next(
            e
            for e in body["events"]
            if e["from_status"] == "running" and e["to_status"] == "queued"
        )
        assert requeue["reason"]
        with session_scope(settings) as session:
            versions = session.scalars(select(ModelVersion)).all()
        store = artifact_store(settings)
        for version in versions:  # every referenced model file exists and is complete
            kind, _, sha = version.artifact_uri.partition("/")
            assert store.read(kind, sha)
