"""Real PostgreSQL and Redis for tests: checked, started if down, else skipped (a failure in CI)."""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from app.settings import Settings

POSTGRES_URL = os.environ.get(
    "LETHE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("LETHE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
START_WAIT_SECONDS = 15.0
TEST_IDENTITY_SECRET = "test-identity-secret-not-for-production"

Probe = Callable[[], None]


def in_ci() -> bool:
    """Whether this run is CI, where a missing service is a failure rather than a skip."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def libpq_url(url: str, database: str | None = None) -> str:
    """A SQLAlchemy Postgres URL as a libpq URI, optionally for another database."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def probe_postgres() -> None:
    """Connect and run `SELECT 1`; raises when the server is not usable."""
    with psycopg.connect(libpq_url(POSTGRES_URL), connect_timeout=2) as connection:
        connection.execute("SELECT 1")


def probe_redis() -> None:
    """PING the server; raises when it does not answer."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    finally:
        client.close()


def postgres_start_commands() -> list[list[str]]:
    """`pg_ctlcluster` for every installed PostgreSQL version's `main` cluster."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return []
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir() if p.is_dir())
    return [["pg_ctlcluster", "--skip-systemctl-redirect", v, "main", "start"] for v in versions]


def redis_start_commands() -> list[list[str]]:
    """A loopback-only Redis daemon that keeps nothing on disk."""
    if shutil.which("redis-server") is None:
        return []
    port = str(urlsplit(REDIS_URL).port or 6379)
    daemon = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1"]
    return [[*daemon, "--port", port, "--save", "", "--appendonly", "no"]]


def error_text(error: BaseException) -> str:
    """A one-line description of an exception."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def wait_until_up(probe: Probe, seconds: float) -> str | None:
    """Probe until it succeeds or `seconds` pass; the last error, or None when up."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            probe()
            return None
        except Exception as error:
            if time.monotonic() >= deadline:
                return error_text(error)
        time.sleep(0.25)


def start_and_wait(probe: Probe, commands: list[list[str]]) -> str | None:
    """Run the start commands, then wait for the probe; why it is still down, or None."""
    if not commands:
        return "it is down and no start command is installed here"
    for command in commands:
        try:
            subprocess.run(command, capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"`{' '.join(command)}` failed ({error_text(error)})"
    problem = wait_until_up(probe, START_WAIT_SECONDS)
    return None if problem is None else f"still down after `{' '.join(commands[0])}`: {problem}"


def ensure(url: str, probe: Probe, commands: Callable[[], list[list[str]]]) -> str | None:
    """None when the service answers (starting a local one if needed), else why not."""
    try:
        probe()
        return None
    except Exception as error:
        first = error_text(error)
    if urlsplit(url).hostname not in LOCAL_HOSTS:
        return f"{first} (not local, so not started)"
    return start_and_wait(probe, commands())


@functools.cache
def postgres_problem() -> str | None:
    """Checked once per run: why PostgreSQL is unusable, or None."""
    return ensure(POSTGRES_URL, probe_postgres, postgres_start_commands)


@functools.cache
def redis_problem() -> str | None:
    """Checked once per run: why Redis is unusable, or None."""
    return ensure(REDIS_URL, probe_redis, redis_start_commands)


def unavailable(service: str, url: str, problem: str) -> NoReturn:
    """Skip the test, or fail it under CI, where the services are part of the machine."""
    where = urlsplit(url)
    message = f"{service} at {where.hostname}:{where.port} is not available: {problem}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: services are required)", pytrace=False)
    pytest.skip(message)


def postgres_url() -> str:
    """The admin URL of a running PostgreSQL server (skips or fails when there is none)."""
    problem = postgres_problem()
    if problem is not None:
        unavailable("PostgreSQL", POSTGRES_URL, problem)
    return POSTGRES_URL


def redis_url() -> str:
    """The URL (no database index) of a running Redis server (skips or fails when none)."""
    problem = redis_problem()
    if problem is not None:
        unavailable("Redis", REDIS_URL, problem)
    return REDIS_URL


def create_postgres_database() -> str:
    """Create a fresh `lethe_test_<random>` database; its SQLAlchemy URL."""
    admin = postgres_url()
    name = f"lethe_test_{secrets.token_hex(6)}"
    with psycopg.connect(libpq_url(admin), autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    """Drop a test database, closing any connection still open on it."""
    name = make_url(url).database
    if not name or not name.startswith("lethe_test_"):
        raise ValueError(f"refusing to drop {name!r}: not a test database")
    with psycopg.connect(libpq_url(POSTGRES_URL), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@functools.cache
def redis_test_db() -> int:
    """A Redis database index for this test run (2-15: 0 and 1 are the usual defaults)."""
    return 2 + os.getpid() % 14


def redis_db_url(db: int | None = None) -> str:
    """The Redis URL of this run's database (or of `db`)."""
    index = redis_test_db() if db is None else db
    return urlsplit(redis_url())._replace(path=f"/{index}").geturl()


def flush_redis_db(url: str) -> None:
    """Empty the one Redis database named by `url` (never the whole server)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for a test: files under data_dir, no `.env`, a fixed test secret."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": None,
        "broker_url": None,
        "result_backend": None,
        "artifact_dir": None,
        "storage_key": None,
        "identity_secret": TEST_IDENTITY_SECRET,
        # two simulated erasures per method keep each onboarding fast; tests of the
        # calibration itself ask for more
        "efficacy_trials": 2,
        # the machinery under test, on tiny models: JiT needs no preparation; the shipped
        # default (Stranger, prepared) has its own tests (test_service_integration.py)
        "default_method": "jit",
        "prepare_methods": [],
        # the portrait verifier trains an embedder at each onboarding; its tests turn it on
        # (tests/test_verification.py, tests/jobs/test_verify_job.py)
        "verify_portraits": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]
