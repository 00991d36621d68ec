"""Shared fixtures: small synthfaces data, so the suite stays fast on 2 CPU cores; real services."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from api_client import FakeQueue
from services import (
    create_postgres_database,
    drop_postgres_database,
    flush_redis_db,
    make_settings,
    redis_db_url,
)

from app.settings import Settings
from models.data.base import FaceData
from models.data.synthfaces import SynthFacesConfig, load_synthfaces

SMALL = SynthFacesConfig(num_identities=60, image_size=32, seed=7)


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def small_faces() -> FaceData:
    """60 synthfaces identities at 32×32."""
    return load_synthfaces(SMALL)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test_resnet trained for 2 epochs on 40 synthfaces identities at 32 px."""
    from models.cli import main as ml_main

    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pth"
    ml_main(
        ["train", "--synth-identities", "40", "--image-size", "32", "--epochs", "2",
         "--requests", "3", "--out", str(path)]
    )  # fmt: skip
    return path


# --- Real services: PostgreSQL and Redis (see tests/services.py) -------------------------------


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped (WITH FORCE) afterwards."""
    from app.db import get_engine

    url = create_postgres_database()
    try:
        yield url
    finally:
        get_engine(Settings(_env_file=None, database_url=url)).dispose()
        drop_postgres_database(url)


@pytest.fixture
def service_settings(tmp_path: Path, pg_database: str) -> Iterator[Settings]:
    """Settings of the real deployment: Postgres, Redis broker/backend, files in tmp_path."""
    redis = redis_db_url()
    yield make_settings(tmp_path, database_url=pg_database, broker_url=redis, result_backend=redis)
    flush_redis_db(redis)


@pytest.fixture
def migrated_settings(service_settings: Settings) -> Settings:
    """`service_settings` with the schema migrated to head."""
    from app.db import migrate

    migrate(service_settings)
    return service_settings


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """Settings of the embedded default: SQLite database and SQL broker under tmp_path."""
    return make_settings(tmp_path)


# --- The queue: tasks captured where app/queue.py would send them -------------------------------


@pytest.fixture
def fake_queue(monkeypatch: pytest.MonkeyPatch) -> FakeQueue:
    """Tasks sent through app/queue.py, captured instead of reaching a broker."""
    queue = FakeQueue()
    monkeypatch.setattr("app.queue.send", queue.send)
    monkeypatch.setattr("app.queue.revoke", queue.revoked.append)
    # no broker to read: the sweeper goes by its delays alone
    monkeypatch.setattr("app.queue.waiting_tasks", lambda fetched_within: None)
    return queue


# --- One fixture for "on each database backend" ------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend a test runs on: the embedded SQLite default, and real PostgreSQL."""
    return str(request.param)


@pytest.fixture
def backend_settings(backend: str, request: pytest.FixtureRequest) -> Settings:
    """Settings of a database migrated to head, on each backend, with files under tmp_path."""
    if backend == "postgres":
        return request.getfixturevalue("migrated_settings")
    from app.db import migrate

    settings: Settings = request.getfixturevalue("sqlite_settings")
    migrate(settings)
    return settings
