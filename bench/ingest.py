"""Ingest: how many deletion requests a second the API records, with no worker running.

The real service minus the worker: uvicorn (`--api-processes`, each count measured in the same
invocation), PostgreSQL, Redis as the broker, real HTTP. Each measurement gets a fresh database
seeded as onboarding leaves one (a ready, serving version and the keyed hashes of its training
identities), so only the API computes. `--concurrency` clients (16) post `--requests` requests
(2,000), each for a distinct identity, with one of two portraits: a 64×64 PNG and a 512×512
JPEG. Per-client limits are off. Each line reads `N POST/s, p99 X ms`; the last lines give each
process count's throughput as a ratio of one process's, measured in the same run.

The bar (issue 13): ≥ 300 POST/s with p99 ≤ 150 ms for the PNGs and ≥ 100 POST/s for the
JPEGs on 2 cores.

Run from the repository root: `.venv/bin/python bench/ingest.py [--requests 2000]
[--concurrency 16] [--api-processes 1,2]`. Needs PostgreSQL on 127.0.0.1:5432 (trust auth) and
Redis on 127.0.0.1:6379, as `make test` does.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psycopg
import redis
from PIL import Image
from sqlalchemy.engine import make_url

from app.cli import keys_create
from app.db import migrate, session_scope
from app.security import identity_hash
from app.settings import Settings
from app.tables import Alias, ModelIdentity, ModelVersion, RegisteredModel, VersionStatus
from worker.embedded import free_port, service_env

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379/15"
MODEL = "faces"
WARMUP = 32  # requests before the clock starts: connections, imports, caches


@dataclass(frozen=True)
class Figure:
    """One measurement."""

    portrait: str
    processes: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    refused: int

    @property
    def rate(self) -> float:
        """Accepted requests a second."""
        return (self.requests - self.refused) / self.seconds


def portraits() -> dict[str, tuple[bytes, str]]:
    """The two portraits: noise, so that neither compresses to nothing."""
    rng = np.random.default_rng(0)
    out: dict[str, tuple[bytes, str]] = {}
    for name, size, fmt, mime in (
        ("png 64×64", 64, "PNG", "image/png"),
        ("jpeg 512×512", 512, "JPEG", "image/jpeg"),
    ):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        out[name] = (buffer.getvalue(), mime)
    return out


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new Postgres database for one measurement, dropped afterwards."""
    name = f"lethe_ingest_{secrets.token_hex(4)}"
    admin = make_url(POSTGRES).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES).set(database=name).render_as_string(False)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(settings: Settings, identities: list[str]) -> str:
    """A ready, serving model that knows `identities`, and a writer key; returns the key."""
    migrate(settings)
    with session_scope(settings) as session:
        model = RegisteredModel(name=MODEL, task="attributes")
        session.add(model)
        session.flush()
        version = ModelVersion(
            model_id=model.id,
            version=1,
            status=VersionStatus.ready.value,
            artifact_uri=f"models/{'0' * 64}",
            sha256="0" * 64,
            arch="resnet18",
        )
        session.add(version)
        session.flush()
        session.add(Alias(model_id=model.id, name="serving", version_id=version.id))
        session.add_all(
            ModelIdentity(model_id=model.id, identity_hash=identity_hash(i, settings))
            for i in identities
        )
    return keys_create("ingest", ["requests:create"], settings)


@contextmanager
def api(settings: Settings, processes: int) -> Iterator[str]:
    """uvicorn with `processes` worker processes for `settings`; its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(processes), "--log-level", "warning"],
        env=service_env(settings),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the API did not start")
            time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def encoded(key: str, identity: str, portrait: tuple[bytes, str], port: int) -> bytes:
    """One complete `POST /deletion-requests` (headers and multipart body), ready to send."""
    data, mime = portrait
    boundary = secrets.token_hex(16)
    fields = {"identity_id": identity, "model": MODEL, "method": "jit"}
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="portrait"; filename="p"\r\n'
        f"Content-Type: {mime}\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    body = b"".join(parts)
    head = (
        f"POST /deletion-requests HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def answer(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response off a kept-alive connection; its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def post_all(base: str, bodies: list[bytes], concurrency: int) -> tuple[list[float], int]:
    """Send the prepared requests over `concurrency` kept-alive connections; latencies (s) and
    refusals. Raw HTTP/1.1 with bodies built beforehand: on two shared cores, a full HTTP
    client would spend as much CPU as the API it measures."""
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    refused = 0
    pending = iter(bodies)

    async def connection() -> None:
        nonlocal refused
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for request in pending:
                started = time.perf_counter()
                writer.write(request)
                status = await answer(reader)
                latencies.append(time.perf_counter() - started)
                refused += status != 202
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return latencies, refused


def measure(
    name: str, portrait: tuple[bytes, str], processes: int, args: argparse.Namespace
) -> Figure:
    """One fresh service, warmed up, then `args.requests` timed posts."""
    identities = [f"person-{i}" for i in range(WARMUP + args.requests)]
    with fresh_database() as url, tempfile.TemporaryDirectory(prefix="lethe-ingest-") as folder:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=Path(folder),
            database_url=url,
            broker_url=REDIS,
            result_backend=REDIS,
            identity_secret="ingest-bench-identity-secret-0123456789",
            client_requests_per_minute=0,
            client_requests_per_day=0,
        )
        key = seed(settings, identities)
        with api(settings, processes) as base:
            port = int(base.rsplit(":", 1)[1])
            bodies = [encoded(key, i, portrait, port) for i in identities]
            asyncio.run(post_all(base, bodies[:WARMUP], args.concurrency))
            started = time.perf_counter()
            latencies, refused = asyncio.run(post_all(base, bodies[WARMUP:], args.concurrency))
            seconds = time.perf_counter() - started
        redis.Redis.from_url(REDIS).flushdb()
    cuts = statistics.quantiles(latencies, n=100)
    return Figure(name, processes, args.requests, seconds, cuts[49] * 1e3, cuts[98] * 1e3, refused)


def main() -> None:
    """Measure every (portrait, process count) pair and print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--api-processes", default="1,2")
    args = parser.parse_args()
    counts = [int(c) for c in args.api_processes.split(",")]
    figures = [
        measure(name, portrait, processes, args)
        for name, portrait in portraits().items()
        for processes in counts
    ]
    for f in figures:
        note = f" ({f.refused} refused)" if f.refused else ""
        print(
            f"{f.portrait}, {f.processes} API process(es): {f.rate:.0f} POST/s, "
            f"p99 {f.p99_ms:.0f} ms (p50 {f.p50_ms:.0f} ms){note}"
        )
    for f in figures:
        base = next(b for b in figures if b.portrait == f.portrait and b.processes == counts[0])
        if f is not base:
            ratio = f.rate / base.rate
            print(f"{f.portrait}: {f.processes} processes / {base.processes}: {ratio:.2f}×")


if __name__ == "__main__":
    main()
