"""Alembic migrations on SQLite and PostgreSQL, schema constraints and the request lifecycle."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from services import libpq_url, make_settings
from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from app.db import MIGRATIONS, migrate, session_scope
from app.services.lifecycle import TransitionError, transition
from app.settings import Settings
from app.tables import (
    ApiClient,
    Base,
    DeletionRequest,
    ModelVersion,
    RegisteredModel,
    RequestEvent,
    RequestStatus,
    utcnow,
)

REPO = Path(__file__).resolve().parent.parent
APP_TABLES = set(Base.metadata.tables)
HEAD = "0005"


def alembic_config(url: str) -> Config:
    """An Alembic config for `url`, built like `app.db.migrate` builds it."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def inspect_database(url: str) -> tuple[set[str], str | None, list[object]]:
    """(table names, current revision, differences between the schema and app.tables)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            revision = context.get_current_revision()
            diff = compare_metadata(context, Base.metadata) if revision else []
        return tables, revision, diff
    finally:
        engine.dispose()


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'lethe.db'}"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
def migrated(backend_settings: Settings) -> Settings:
    """Settings of a database migrated to head, on each backend."""
    return backend_settings


# --- migrations -----------------------------------------------------------------------------


def test_upgrade_creates_every_table_matching_the_models(database_url: str, tmp_path: Path) -> None:
    migrate(make_settings(tmp_path, database_url=database_url))
    tables, revision, diff = inspect_database(database_url)
    assert tables == APP_TABLES | {"alembic_version"}
    assert revision == HEAD
    assert diff == [], "migrations and app/tables.py disagree: add a revision"


def test_downgrade_to_base_drops_everything_and_upgrades_again(database_url: str) -> None:
    config = alembic_config(database_url)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    tables, revision, _ = inspect_database(database_url)
    assert tables == {"alembic_version"}
    assert revision is None
    command.upgrade(config, "head")
    assert inspect_database(database_url)[1] == HEAD


def test_upgrade_twice_is_a_no_op(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=database_url)
    migrate(settings)
    migrate(settings)
    assert inspect_database(database_url)[1] == HEAD


def test_upgrade_keeps_rows_written_before_0002(database_url: str) -> None:
    config = alembic_config(database_url)
    command.upgrade(config, "0001")
    engine = create_engine(database_url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO registered_models (name, task, created_at) "
            "VALUES ('faces', 'attributes', CURRENT_TIMESTAMP)"
        )
        connection.exec_driver_sql(
            "INSERT INTO model_versions (model_id, version, status, artifact_uri, sha256, arch, "
            "resolved_config, erased_identity_hashes, artifacts, created_at) VALUES "
            "(1, 1, 'ready', 'models/x', 'x', 'cnn', '{}', '[]', '{}', CURRENT_TIMESTAMP)"
        )
    command.upgrade(config, "head")
    with Session(engine) as session:
        model = session.scalars(select(RegisteredModel)).one()
        version = session.scalars(select(ModelVersion)).one()
        assert model.erasures_since_refresh == 0
        assert version.training_data == {} and version.progress == {}
        assert version.purged_at is None and version.artifacts_version_id is None
        assert version.efficacy == {}  # 0003: a version prepared before it has no efficacy
    engine.dispose()


def test_migrate_accepts_a_percent_encoded_password(pg_database: str, tmp_path: Path) -> None:
    # Trust auth ignores the password; what matters is that ConfigParser does not choke on `%`.
    url = make_url(pg_database).set(password="p@ss%word").render_as_string(hide_password=False)
    assert "%40" in url
    migrate(make_settings(tmp_path, database_url=url))
    assert inspect_database(pg_database)[1] == HEAD


def run_python(code: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start `python -c code` in the repository root."""
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_concurrent_migrations_on_postgres_serialize(pg_database: str) -> None:
    code = "from app.db import migrate; migrate()"
    processes = [run_python(code, {"LETHE_DATABASE_URL": pg_database}) for _ in range(3)]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert inspect_database(pg_database)[1] == HEAD


def alembic_cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """Run the `alembic` CLI from the repository root against `database_url`."""
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO,
        env={**os.environ, "LETHE_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_alembic_cli_works_from_the_repository_root(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli' / 'lethe.db'}"
    upgrade = alembic_cli("upgrade", "head", database_url=url)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "Running upgrade  -> 0001" in upgrade.stderr
    current = alembic_cli("current", database_url=url)
    assert f"{HEAD} (head)" in current.stdout
    downgrade = alembic_cli("downgrade", "base", database_url=url)
    assert downgrade.returncode == 0, downgrade.stderr
    assert inspect_database(url)[0] == {"alembic_version"}


def test_alembic_offline_sql_for_postgres_needs_no_server() -> None:
    url = "postgresql+psycopg://nobody@unreachable.invalid:5432/lethe"
    result = alembic_cli("upgrade", "head", "--sql", database_url=url)
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE deletion_requests" in result.stdout
    assert "uq_model_versions_one_child" in result.stdout


def test_libpq_url_drops_the_driver() -> None:
    assert libpq_url("postgresql+psycopg://u@h:5432/a", "b") == "postgresql://u@h:5432/b"


# --- constraints ----------------------------------------------------------------------------


def add_client(session: Session, name: str = "compliance") -> ApiClient:
    """An API client row."""
    client = ApiClient(name=name, key_prefix="lethe_abcdef", key_hash=name.ljust(64, "0"))
    client.scopes = ["requests:create"]
    session.add(client)
    session.flush()
    return client


def add_model(session: Session) -> RegisteredModel:
    """A registered model with a root version 1."""
    model = RegisteredModel(name="faces", task="attributes")
    session.add(model)
    session.flush()
    add_version(session, model, 1, parent=None)
    return model


def add_version(
    session: Session, model: RegisteredModel, number: int, parent: ModelVersion | None
) -> ModelVersion:
    """A version of `model` derived from `parent`."""
    version = ModelVersion(
        model_id=model.id,
        version=number,
        parent_id=parent.id if parent else None,
        artifact_uri=f"artifact:{number}",
        sha256="0" * 64,
        arch="cnn",
    )
    session.add(version)
    session.flush()
    return version


def new_request(
    client: ApiClient, model: RegisteredModel, key: str | None = None
) -> DeletionRequest:
    """An unsaved deletion request (status unset until its first transition)."""
    return DeletionRequest(
        client_id=client.id,
        model_id=model.id,
        identity_hash="a" * 64,
        method="jit",
        idempotency_key=key,
        body_fingerprint="b" * 64,
        portrait_sha256="c" * 64,
    )


def add_request(
    session: Session, client: ApiClient, model: RegisteredModel, key: str | None = None
) -> DeletionRequest:
    """A received deletion request, flushed."""
    request = new_request(client, model, key)
    session.add(request)
    transition(session, request, RequestStatus.received, actor="test")
    session.flush()
    return request


def test_a_version_has_at_most_one_child(migrated: Settings) -> None:
    with session_scope(migrated) as session:
        model = add_model(session)
        root = model.versions[0]
        add_version(session, model, 2, parent=root)
        # Postgres names the constraint; SQLite names its columns.
        one_child = (
            r"uq_model_versions_one_child|model_versions\.model_id, model_versions\.parent_id"
        )
        with pytest.raises(IntegrityError, match=one_child):
            add_version(session, model, 3, parent=root)
        session.rollback()


def test_idempotency_key_is_unique_per_client(migrated: Settings) -> None:
    with session_scope(migrated) as session:
        model = add_model(session)
        alice, bob = add_client(session, "alice"), add_client(session, "bob")
        add_request(session, alice, model, key="k1")
        add_request(session, bob, model, key="k1")
        add_request(session, alice, model, key=None)
        add_request(session, alice, model, key=None)
    with session_scope(migrated) as session:
        alice = session.scalars(select(ApiClient).where(ApiClient.name == "alice")).one()
        model = session.scalars(select(RegisteredModel)).one()
        with pytest.raises(IntegrityError):
            add_request(session, alice, model, key="k1")
        session.rollback()


# --- lifecycle ------------------------------------------------------------------------------


def test_transitions_are_recorded_as_events(migrated: Settings) -> None:
    with session_scope(migrated) as session:
        request = add_request(session, add_client(session), add_model(session))
        for status in (RequestStatus.queued, RequestStatus.running, RequestStatus.completed):
            transition(session, request, status, actor="worker", reason=f"to {status}")
        request_id = request.id
    with session_scope(migrated) as session:
        stored = session.get_one(DeletionRequest, request_id)
        steps = [(e.from_status, e.to_status, e.actor) for e in stored.events]
        assert steps == [
            (None, "received", "test"),
            ("received", "queued", "worker"),
            ("queued", "running", "worker"),
            ("running", "completed", "worker"),
        ]
        assert stored.status == RequestStatus.completed
        assert stored.started_at is not None and stored.finished_at is not None
        assert stored.started_at <= stored.finished_at <= utcnow()


def test_timestamps_come_back_timezone_aware_in_utc(migrated: Settings) -> None:
    with session_scope(migrated) as session:
        model = add_model(session)
        model.lock_expires_at = utcnow() + timedelta(seconds=60)
        model_id = model.id
    with session_scope(migrated) as session:
        expires = session.get_one(RegisteredModel, model_id).lock_expires_at
        assert expires is not None
        assert expires.tzinfo is UTC
        assert expires > utcnow()
        # The comparison also works in SQL, where the lock lease is checked.
        query = select(func.count()).where(RegisteredModel.lock_expires_at > utcnow())
        assert session.scalar(query) == 1


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ((RequestStatus.queued, RequestStatus.running), RequestStatus.canceled),
        ((RequestStatus.queued, RequestStatus.running), RequestStatus.received),
        ((RequestStatus.rejected,), RequestStatus.queued),
        ((RequestStatus.queued, RequestStatus.canceled), RequestStatus.running),
    ],
)
def test_an_illegal_transition_is_refused_and_leaves_no_trace(
    migrated: Settings, path: tuple[RequestStatus, ...], illegal: RequestStatus
) -> None:
    with session_scope(migrated) as session:
        request = add_request(session, add_client(session), add_model(session))
        for status in path:
            transition(session, request, status, actor="worker")
        request_id = request.id
    with session_scope(migrated) as session:
        request = session.get_one(DeletionRequest, request_id)
        with pytest.raises(TransitionError):
            transition(session, request, illegal, actor="client")
        assert request.status == path[-1]
    with session_scope(migrated) as session:
        events = session.scalars(select(RequestEvent).where(RequestEvent.request_id == request_id))
        assert [e.to_status for e in events] == ["received", *path]
        assert session.get_one(DeletionRequest, request_id).status == path[-1]


def test_service_settings_isolate_files_database_and_redis(
    service_settings: Settings, tmp_path: Path
) -> None:
    assert service_settings.resolved_artifact_dir == (tmp_path / "artifacts").resolve()
    assert make_url(service_settings.resolved_database_url).database.startswith("lethe_test_")
    broker = service_settings.resolved_broker_url
    assert broker == service_settings.resolved_result_backend
    assert broker.startswith("redis://") and int(broker.rsplit("/", 1)[1]) >= 2
