"""Faults of the real deployment: the broker loses its messages, the database goes away.

Each test runs the API and both workers against a private server it may stop and start
(tests/private_servers.py): every request must end terminal, no version may be written twice,
the API must answer 503 (never 500) while the database is down, and a lost message must be
re-sent within two sweep intervals.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_service import portraits, post, register, service, versions
from private_servers import PrivatePostgres, PrivateRedis, private_servers_problem
from services import in_ci

from app.settings import Settings
from worker.embedded import wait_for_request

pytestmark = pytest.mark.integration
SWEEP_SECONDS = 4.0
TERMINAL = {"completed", "failed", "needs_review", "rejected", "canceled"}


@pytest.fixture(autouse=True)
def _servers_available() -> None:
    problem = private_servers_problem()
    if problem is not None:
        if in_ci():
            pytest.fail(f"the fault tests need private servers: {problem}")
        pytest.skip(f"the fault tests need private servers: {problem}")


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis of this test's own, stopped afterwards."""
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this test's own, removed afterwards."""
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


def _fast_sweeps(settings: Settings, checkpoint: Path, **changes: object) -> Settings:
    return settings.model_copy(
        update={
            "guardrail_max_score_drop": 100.0,
            "checkpoint_dirs": [checkpoint.parent],
            "sweep_after_seconds": SWEEP_SECONDS,
            "sweep_interval_seconds": SWEEP_SECONDS,
            **changes,
        }
    )


def _status(client: httpx.Client, request_id: str) -> str:
    return str(client.get(f"/deletion-requests/{request_id}").json()["status"])


def _one_version_per_parent(client: httpx.Client) -> dict[int, dict]:
    known = versions(client)
    parents = [v["parent_version"] for v in known.values()]
    assert len(parents) == len(set(parents)), known  # no version written twice
    return known


def test_a_broker_that_loses_its_messages_loses_no_request(
    service_settings: Settings, private_redis: PrivateRedis, tiny_checkpoint: Path
) -> None:
    settings = _fast_sweeps(
        service_settings,
        tiny_checkpoint,
        broker_url=private_redis.url,
        result_backend=private_redis.url,
    )
    (first, first_png), (second, second_png) = portraits(tiny_checkpoint, 2)
    with service(settings) as (services, client):
        register(client, tiny_checkpoint)
        # the erasure worker is away: the message waits in Redis, which then loses it
        services.worker.send_signal(signal.SIGTERM)
        services.worker.wait(timeout=30)
        queued = post(client, first, first_png)
        private_redis.stop()
        # the broker is down: the API still records the request, the send fails
        started = time.monotonic()
        unsent = post(client, second, second_png)
        assert time.monotonic() - started < 30
        assert {_status(client, queued), _status(client, unsent)} == {"queued"}
        private_redis.start()  # empty: both messages are gone

        services.restart_worker()
        restarted = time.monotonic()
        deadline = restarted + 2 * SWEEP_SECONDS
        while {_status(client, queued), _status(client, unsent)} & {"queued"}:
            assert time.monotonic() < deadline, "a lost message was not re-sent in two sweeps"
            time.sleep(0.2)

        bodies = [wait_for_request(client, rid, 180) for rid in (queued, unsent)]
        assert [b["status"] for b in bodies] == ["completed", "completed"], bodies
        known = _one_version_per_parent(client)
        assert sum(v["erased_identities"] for v in known.values() if v["version"] > 1) >= 2


def test_a_database_outage_answers_503_and_every_request_ends(
    service_settings: Settings, private_postgres: PrivatePostgres, tiny_checkpoint: Path
) -> None:
    settings = _fast_sweeps(service_settings, tiny_checkpoint, database_url=private_postgres.url)
    people = portraits(tiny_checkpoint, 3)
    with service(settings) as (_, client):
        register(client, tiny_checkpoint)
        ids = [post(client, identity, png) for identity, png in people[:2]]
        private_postgres.stop()
        try:
            answers = [
                client.get(f"/deletion-requests/{ids[0]}"),
                client.get("/deletion-requests"),
                client.get("/models"),
                client.post(
                    "/deletion-requests",
                    data={"identity_id": people[2][0], "model": "faces"},
                    files={"portrait": ("p.png", people[2][1], "image/png")},
                ),
            ]
            for answer in answers:
                assert answer.status_code == 503, (answer.request.url, answer.text)
                assert int(answer.headers["retry-after"]) > 0
            ready = httpx.get(f"{client.base_url}/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["checks"]["database"]["ok"] is False
            for answer in [*answers, ready]:  # what is down, not where it runs
                assert str(private_postgres.port) not in answer.text, answer.text
            time.sleep(SWEEP_SECONDS)  # the workers' sweeps and jobs meet the outage too
        finally:
            private_postgres.start()

        ids.append(post(client, *people[2]))
        bodies = [wait_for_request(client, rid, 240) for rid in ids]
        assert all(b["status"] in TERMINAL for b in bodies), bodies
        assert [b["status"] for b in bodies].count("completed") >= 1, bodies
        for body in bodies:
            if body["status"] != "completed":
                assert body["error"]["code"], body
        _one_version_per_parent(client)
