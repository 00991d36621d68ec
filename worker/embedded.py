"""The embedded deployment: SQLite, a local artifact folder, the API and a Celery worker process.

`serve` starts the API + worker pair and keeps it up; `demo` (what `make run` runs) trains or
reuses a small synthfaces model, registers it, submits a deletion request over HTTP, prints the
finished request and stops everything it started.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app import queue
from app.settings import Settings

TERMINAL = {"completed", "failed", "needs_review", "rejected", "canceled"}


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(settings: Settings) -> dict[str, str]:
    """Environment that gives child processes exactly these settings.

    Two worker processes compute here (erasures, maintenance): unless the operator said
    otherwise, each gets half the cores, since two torch processes that each take them all
    slow each other about tenfold.
    """
    if "compute_processes" not in settings.model_fields_set:
        settings = settings.model_copy(update={"compute_processes": 2})
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    computed = set(type(settings).model_computed_fields)
    for name, value in settings.model_dump(exclude=computed).items():
        key = f"LETHE_{name.upper()}"
        if value is None:
            env.pop(key, None)
        elif isinstance(value, list):
            env[key] = json.dumps([str(v.resolve()) if isinstance(v, Path) else v for v in value])
        elif isinstance(value, dict):
            env[key] = json.dumps(value)
        elif isinstance(value, Path):
            env[key] = str(value.resolve())
        else:
            env[key] = str(value)
    return env


# Each worker process: the queue it takes and the name of its log (logs/NAME.log).
ERASURE_WORKER = (queue.ERASURES_QUEUE, "worker")
MAINTENANCE_WORKER = (queue.MAINTENANCE_QUEUE, "maintenance")


def start_worker(
    env: dict[str, str], logs: Path, role: tuple[str, str] = ERASURE_WORKER
) -> subprocess.Popen[bytes]:
    """Start one Celery worker process (solo pool: one job at a time) on the queue of `role`,
    logging to logs/NAME.log."""
    queue_name, name = role
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "app.queue", "worker", "--pool=solo",
         "--concurrency=1", f"--queues={queue_name}", f"--hostname={name}@%h",
         "--loglevel=INFO", f"--logfile={logs / f'{name}.log'}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(logs / f"{name}.err").open("ab"),
    )  # fmt: skip


def worker_ready_count(logs: Path, role: tuple[str, str] = ERASURE_WORKER) -> int:
    """How many times the worker of `role` logging to `logs` has reported ready."""
    path = logs / f"{role[1]}.log"
    return path.read_text(errors="replace").count("ready.") if path.exists() else 0


@dataclass
class Services:
    """The running API and worker processes (`worker` erases; `maintenance` does the rest)."""

    api: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    maintenance: subprocess.Popen[bytes]
    base_url: str
    logs: Path
    env: dict[str, str]
    started: list[subprocess.Popen[bytes]]

    def restart_worker(self, timeout: float = 120) -> None:
        """Start a new worker process (after the old one died) and wait until it is ready."""
        before = worker_ready_count(self.logs)
        self.worker = start_worker(self.env, self.logs)
        self.started.append(self.worker)
        _wait_until(
            lambda: worker_ready_count(self.logs) > before, timeout, "worker restart", [self.worker]
        )


def _wait_until(
    check: Any, timeout: float, what: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: a process exited early with code {proc.returncode}")
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")


def _api_up(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_services(settings: Settings, port: int | None = None) -> Iterator[Services]:
    """Start uvicorn and a Celery worker for `settings`; stop both on exit."""
    from app.db import migrate

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings)  # once, before two processes race to create the schema
    logs = settings.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    env = service_env(settings)
    port = port or free_port()
    worker = start_worker(env, logs, ERASURE_WORKER)
    maintenance = start_worker(env, logs, MAINTENANCE_WORKER)
    started = [worker, maintenance]
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=(logs / "api.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    started.append(api)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _api_up(base_url), 60, "API start", started)
        for role in (ERASURE_WORKER, MAINTENANCE_WORKER):
            _wait_until(
                lambda role=role: worker_ready_count(logs, role) > 0,
                120,
                f"{role[1]} worker start",
                started,
            )
        yield Services(api, worker, maintenance, base_url, logs, env, started)
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def ensure_demo_checkpoint(settings: Settings, epochs: int | None = None) -> Path:
    """Train the default synthfaces model once (reused afterwards) and return its path: the
    pretrained preset, the regime where the default method's erasure was measured."""
    path = settings.data_dir / "models" / "synthfaces-pretrained-original.pth"
    if path.is_file():
        return path
    from models.cli import main as ml_main

    argv = [
        "train",
        "--preset",
        "pretrained",
        "--dataset",
        "synthfaces",
        "--requests",
        "5",
        "--seed",
        "0",
        "--out",
        str(path),
    ]
    if epochs is not None:
        argv += ["--epochs", str(epochs)]
    ml_main(argv)
    return path


def demo_portrait(checkpoint: Path, person: int = 0) -> tuple[str, bytes]:
    """A training identity of the checkpoint (the `person`-th retained one) and a new PNG
    portrait of that person."""
    from PIL import Image

    from models.data.synthfaces import SynthFaces, SynthFacesConfig
    from models.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    spec = ckpt.config["dataset"]
    size = {} if spec.get("num_identities") is None else {"num_identities": spec["num_identities"]}
    faces = SynthFaces(SynthFacesConfig(image_size=spec["image_size"], seed=spec["seed"], **size))
    identity = ckpt.splits["retain"][person]
    pixels = faces.portrait(identity).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return identity, buffer.getvalue()


def wait_for_request(client: httpx.Client, request_id: str, timeout: float) -> dict[str, Any]:
    """Poll a deletion request until it reaches a terminal state."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/deletion-requests/{request_id}").raise_for_status().json()
        if body["status"] in TERMINAL or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def wait_for_ready_version(client: httpx.Client, model: str, timeout: float) -> dict[str, Any]:
    """Poll a model's versions until the newest one is prepared."""
    deadline = time.monotonic() + timeout
    while True:
        versions = client.get(f"/models/{model}/versions").raise_for_status().json()
        items = versions["items"] if isinstance(versions, dict) else versions
        latest = max(items, key=lambda v: v["version"])
        if latest["status"] in ("ready", "failed") or time.monotonic() > deadline:
            return latest
        time.sleep(0.5)


def demo(settings: Settings, epochs: int | None = None, timeout: float = 1800) -> dict[str, Any]:
    """The whole flow on one machine; returns the finished request's JSON."""
    from app.cli import keys_create

    checkpoint = ensure_demo_checkpoint(settings, epochs)
    identity, portrait = demo_portrait(checkpoint)
    if "compute_processes" not in settings.model_fields_set:
        # the demo waits for the preparation before it erases: its two workers never compute
        # at once, so each may take every core
        settings = settings.model_copy(update={"compute_processes": 1})
    with running_services(settings) as services:
        key = keys_create("demo", ["requests:create", "requests:read", "models:admin"], settings)
        headers = {"X-API-Key": key}
        with httpx.Client(base_url=services.base_url, headers=headers, timeout=30) as client:
            name = settings.default_model
            existing = client.get("/models").raise_for_status().json()
            names = [
                m["name"] for m in (existing["items"] if isinstance(existing, dict) else existing)
            ]
            if name not in names:
                client.post(
                    "/models", json={"name": name, "checkpoint_path": str(checkpoint.resolve())}
                ).raise_for_status()
            version = wait_for_ready_version(client, name, timeout)
            if version["status"] != "ready":
                raise RuntimeError(f"model preparation failed: {json.dumps(version)}")
            if (version.get("efficacy") or {}).get("portrait_verification"):
                # someone else's face sent in the person's name: the verifier refuses it
                _, stranger = demo_portrait(checkpoint, person=1)
                refused = submit(client, name, identity, stranger, timeout)
                error = (refused.get("error") or {}).get("code")
                print(f"lethe demo: another person's portrait sent for {identity}: "
                      f"{refused['status']} ({error})", file=sys.stderr)  # fmt: skip
            result = submit(client, name, identity, portrait, timeout)
            if result["status"] == "needs_review":
                result = approve(client, name, result, timeout)
            return result


def submit(
    client: httpx.Client, model: str, identity: str, portrait: bytes, timeout: float
) -> dict[str, Any]:
    """Post a deletion request and wait until it ends; its JSON."""
    response = client.post(
        "/deletion-requests",
        data={"identity_id": identity, "model": model},
        files={"portrait": ("portrait.png", portrait, "image/png")},
    )
    response.raise_for_status()
    return wait_for_request(client, response.json()["id"], timeout)


def efficacy_summary(request: dict[str, Any]) -> str:
    """One line on what the request's method forgets, from its audit's calibrated efficacy."""
    run = ((request.get("audit") or {}).get("run")) or {}
    efficacy = run.get("calibrated_efficacy")
    method = run.get("method", request.get("method"))
    if not efficacy:
        return f"{method}: no calibrated efficacy on record for this version"
    gap = efficacy["membership_gap_closed"]
    drop = efficacy["audit_score_drop"]

    def interval(entry: dict[str, Any]) -> str:
        if entry.get("mean") is None:
            return "unmeasured"
        if entry.get("low") is None:
            return f"{entry['mean']:.2f}"
        return f"{entry['mean']:.2f} [95% {entry['low']:.2f}, {entry['high']:.2f}]"

    def number(key: str, digits: int) -> str:
        value = efficacy.get(key)
        return "–" if value is None else f"{value:.{digits}f}"

    return (
        f"{method} on v{efficacy['measured_on_version']}, over {efficacy['trials']} simulated "
        f"single-portrait erasures: membership score of the person's other photos "
        f"{number('membership_before', 3)} -> {number('membership_after', 3)} "
        f"(non-members {number('non_member_membership', 3)}), gap closed {interval(gap)}; "
        f"their {efficacy['identity_score_name']} {number('identity_score_before', 1)} -> "
        f"{number('identity_score_after', 1)}; audit-set drop {interval(drop)} points"
    )


def approve(
    client: httpx.Client, model: str, request: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Act as the reviewing admin: move `serving` to the held version; the request completes."""
    held = request["result_version"]["version"]
    print(
        f"lethe demo: the guardrail held v{held} for review ({request['events'][-1]['reason']}); "
        f"as the admin, the demo promotes it (PUT /models/{model}/aliases/serving)",
        file=sys.stderr,
    )
    client.put(f"/models/{model}/aliases/serving", json={"version": held}).raise_for_status()
    return wait_for_request(client, request["id"], timeout)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through running_services, which stops the children


def serve(settings: Settings, port: int) -> None:
    """Run the API + worker pair until interrupted (Ctrl-C or SIGTERM)."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with running_services(settings, port) as services:
        print(
            f"Lethe API on {services.base_url} (logs in {services.logs}); Ctrl-C to stop",
            flush=True,
        )
        try:
            while services.api.poll() is None and services.worker.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
