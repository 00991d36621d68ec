"""Private PostgreSQL and Redis servers a fault test may stop and start without touching the
shared ones: a throw-away cluster (initdb) and a Redis that keeps nothing on disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import psycopg
import redis
from services import START_WAIT_SECONDS, wait_until_up

POSTGRES_USER = "postgres"  # initdb refuses to run as root: as root, the cluster runs as this user


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(probe: Callable[[], None], what: str) -> None:
    problem = wait_until_up(probe, START_WAIT_SECONDS)
    if problem is not None:
        raise RuntimeError(f"{what} did not come up: {problem}")


def _postgres_bin(name: str) -> str | None:
    """`initdb` or `pg_ctl`: on PATH, else in the newest Debian server package."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def private_servers_problem() -> str | None:
    """Why the private servers cannot run here, or None."""
    missing = [n for n in ("initdb", "pg_ctl") if _postgres_bin(n) is None]
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    if missing:
        return f"not installed: {', '.join(missing)}"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to start PostgreSQL as another user"
    return None


class PrivatePostgres:
    """A PostgreSQL cluster in a new temporary folder (one the server's user can reach, which
    pytest's per-user folders are not), on its own port, with trust auth on loopback."""

    def __init__(self) -> None:
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="lethe-pg-")), free_port()
        self.data = self.folder / "data"
        self.url = f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{self.port}/postgres"
        self._as_owner = os.geteuid() == 0
        if self._as_owner:
            shutil.chown(self.folder, POSTGRES_USER)
        self._run(_postgres_bin("initdb"), "-D", str(self.data), "-U", POSTGRES_USER,
                  "-A", "trust", "--no-sync")  # fmt: skip

    def _run(self, *argv: str | None) -> None:
        command = [str(a) for a in argv]
        if self._as_owner:
            command = ["runuser", "-u", POSTGRES_USER, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        """Start the server and wait until it answers."""
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.folder / "server.log"), "-w", "start")  # fmt: skip
        _wait(self.probe, "the private PostgreSQL")

    def stop(self) -> None:
        """Stop the server at once (`immediate`: as a crash or an outage would)."""
        self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs and delete its folder."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def probe(self) -> None:
        """Connect and run `SELECT 1`."""
        with psycopg.connect(
            f"postgresql://{POSTGRES_USER}@127.0.0.1:{self.port}/postgres", connect_timeout=2
        ) as connection:
            connection.execute("SELECT 1")


class PrivateRedis:
    """A loopback Redis on its own port that keeps nothing on disk: a restart loses every
    message it held, as a broker that lost its data would."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers."""
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(self.probe, "the private Redis")

    def stop(self) -> None:
        """Kill the server (no shutdown save)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def probe(self) -> None:
        """PING the server."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
