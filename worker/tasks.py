"""Worker tasks: the bodies of the tasks app/queue.py names (prepare, refresh, erase, sweep,
benchmark).

Task bodies import their torch-using modules lazily, so importing this module (as the worker
does at start-up) stays light.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

from celery.signals import worker_process_init, worker_ready

from app import queue
from app.queue import celery_app
from app.settings import get_settings

log = logging.getLogger(__name__)


@celery_app.task(name=queue.PREPARE)
def prepare_task(version_id: int) -> dict[str, Any]:
    """Build a registered version's identity index and audit kit, then mark it ready."""
    from worker.prepare import prepare_version

    return prepare_version(get_settings(), version_id)


@celery_app.task(name=queue.REFRESH)
def refresh_task(version_id: int) -> dict[str, Any]:
    """Recompute a serving version's artifacts from its training data minus erased identities."""
    from worker.refresh import refresh_version

    return refresh_version(get_settings(), version_id)


@celery_app.task(name=queue.ERASE, bind=True, max_retries=None)
def erase_task(self: Any, request_id: str) -> dict[str, Any]:
    """Run the erasure job this request leads (with any batch it gathers); waits its turn
    (retrying) while its model is leased."""
    from worker.erase import Busy, erase_request

    try:
        outcome = erase_request(get_settings(), request_id, task_id=self.request.id)
    except Busy as exc:
        if exc.patience is not None and self.request.retries >= exc.patience:
            log.warning("request %s: gave up waiting: %s", request_id, exc)
            return {"request_id": request_id, "status": "gave_up", "detail": str(exc)}
        # Jittered, so that jobs waiting for one model do not poll it in lockstep.
        raise self.retry(countdown=random.uniform(1.0, 2.0)) from exc
    return outcome.to_dict()


@celery_app.task(name=queue.SWEEP)
def sweep_task() -> dict[str, Any]:
    """Re-send lost erasure tasks and remove stray portraits."""
    from dataclasses import asdict

    from worker.sweeper import sweep

    return asdict(sweep(get_settings()))


@worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    """A forked pool process gets its own database connections and its share of the cores."""
    from app.db import get_engine
    from worker.threads import configure_threads

    get_engine(get_settings()).dispose(close=False)
    configure_threads(get_settings())


def _sweep_forever(interval: float) -> None:
    """Sweep at start-up, then every `interval` seconds, for as long as the worker lives."""
    # No broker inspection: a worker cannot answer its own inspect call while it sweeps.
    from worker.sweeper import sweep

    starting = True
    while True:
        try:
            sweep(get_settings(), inspect=False, starting=starting)
            starting = False
        except Exception:
            log.exception("sweep failed")
        time.sleep(interval)


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    """A starting worker re-sends what a previous one lost, and keeps doing so periodically."""
    interval = get_settings().sweep_interval_seconds
    threading.Thread(target=_sweep_forever, args=(interval,), name="sweeper", daemon=True).start()


@celery_app.task(name=queue.BENCHMARK, bind=True)
def benchmark_task(self: Any, run_id: str) -> dict[str, Any]:
    """Run a recorded benchmark run (its `lethe benchmark` arguments) and store its results."""
    from worker.benchmark import run_benchmark_job

    return run_benchmark_job(get_settings(), run_id, task_id=self.request.id)
