"""docker-compose.yml is valid and names only modules and commands that exist."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet

from app.queue import TASKS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _command(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return command if isinstance(command, list) else command.split()


def test_services_and_health_checks() -> None:
    assert {"api", "worker", "postgres", "redis", "migrate"} <= set(SERVICES)
    for name in ("api", "postgres", "redis"):
        assert "test" in SERVICES[name]["healthcheck"], name
    gpu = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for name in ("api", "worker", "migrate"):
        assert SERVICES[name]["build"] == "."
    assert (ROOT / "Dockerfile").is_file()


def test_named_modules_and_commands_exist() -> None:
    api = _command("api")
    assert api[0] == "uvicorn"
    module, attr = api[1].split(":")
    assert importlib.util.find_spec(module) is not None
    assert hasattr(importlib.import_module(module), attr)
    worker = _command("worker")
    assert worker[:2] == ["celery", "-A"]
    celery_module = importlib.import_module(worker[2])
    assert hasattr(celery_module, "celery_app")
    # every queue a task is routed to has a worker, and erasures have one of their own
    taken = {
        name: {a.removeprefix("--queues=") for a in _command(name) if a.startswith("--queues=")}
        for name in ("worker", "worker-maintenance")
    }
    assert taken == {
        "worker": {celery_module.ERASURES_QUEUE},
        "worker-maintenance": {celery_module.MAINTENANCE_QUEUE},
    }
    routed = {celery_module.celery_app.amqp.router.route({}, t)["queue"].name for t in TASKS}
    assert routed == set().union(*taken.values())
    migrate = _command("migrate")
    assert migrate[:2] == ["alembic", "upgrade"] and (ROOT / "alembic.ini").is_file()
    for name in ("uvicorn", "celery", "alembic"):
        assert shutil.which(name) or (ROOT / ".venv" / "bin" / name).exists(), name


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="Debian's docker-compose not installed"
)
def test_docker_compose_config_accepts_the_file_only_with_secrets() -> None:
    def config(**secrets: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")} | secrets
        return subprocess.run(
            ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )

    missing = config()  # no fallback secret any more: it would be public
    assert missing.returncode != 0 and "LETHE_IDENTITY_SECRET" in missing.stderr
    given = config(
        LETHE_IDENTITY_SECRET="0123456789abcdef" * 4,
        LETHE_STORAGE_KEY=Fernet.generate_key().decode(),
    )
    assert given.returncode == 0, given.stderr


def test_compose_runs_the_production_deployment() -> None:
    env = COMPOSE["x-lethe-env"]
    assert env["LETHE_DEPLOYMENT"] == "production"
    assert ":?" in env["LETHE_IDENTITY_SECRET"] and ":?" in env["LETHE_STORAGE_KEY"]
