"""Admin benchmark re-runs: validate a body, map it to `lethe benchmark` arguments, record, read."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import queue
from app.errors import ApiError
from app.schemas import BenchmarkCreate
from app.services.paths import PathRefused, resolve_under
from app.settings import Settings
from app.tables import ApiClient, BenchmarkRun, BenchmarkStatus, new_id
from models.catalog import DATASETS, METHODS

log = logging.getLogger(__name__)

OPTION_KEY = re.compile(r"^[a-z_][a-z0-9_]*$")
KNOWN_METHODS = tuple(METHODS)
ADVISORY_LOCK = 0x1E7E_BE7C  # the Postgres advisory lock key of benchmark submissions


def _refuse(message: str) -> ApiError:
    return ApiError.of("invalid_request", message)


def _data_root(body: BenchmarkCreate, settings: Settings) -> Path | None:
    """The resolved data-set folder, which must lie under one of the settings' data roots."""
    if DATASETS[body.dataset].built_in:
        if body.data_root is not None:
            raise _refuse(f"{body.dataset} is generated: it takes no data_root")
        return None
    if body.data_root is None:
        raise ApiError.of("data_root_refused", f"data set {body.dataset!r} needs a data_root")
    try:
        folder = resolve_under(body.data_root, settings.data_roots)
    except PathRefused as exc:
        raise ApiError.of("data_root_refused", str(exc)) from None
    if not folder.is_dir():
        raise ApiError.of("data_root_refused", f"{body.data_root} is not a folder")
    return folder


def _methods(body: BenchmarkCreate) -> str:
    """The `--methods` value: "all" or known, distinct method names."""
    if body.methods == "all":
        return "all"
    if not body.methods:
        raise _refuse('methods needs at least one method name, or "all"')
    unknown = [m for m in body.methods if m not in KNOWN_METHODS]
    if unknown:
        raise ApiError.of(
            "method_unknown",
            f"unknown method(s) {', '.join(map(repr, unknown))}; known: {', '.join(KNOWN_METHODS)}",
        )
    if len(set(body.methods)) != len(body.methods):
        raise _refuse("methods lists a method twice")
    return ",".join(body.methods)


def _sets(body: BenchmarkCreate) -> list[str]:
    """`--set METHOD.KEY=VALUE` pairs; values as JSON, which the CLI parses back unchanged."""
    running = KNOWN_METHODS if body.methods == "all" else body.methods
    argv: list[str] = []
    for method, options in body.method_options.items():
        if method not in running:
            raise _refuse(f"method_options names {method!r}, which this run does not include")
        for key, value in options.items():
            if not OPTION_KEY.match(key):
                raise _refuse(f"method option {method}.{key} is not an option name")
            argv += ["--set", f"{method}.{key}={json.dumps(value)}"]
    return argv


def _ints(name: str, values: list[int], minimum: int) -> str:
    if any(v < minimum for v in values) or len(set(values)) != len(values):
        raise _refuse(f"{name} must be distinct integers of at least {minimum}")
    return ",".join(str(v) for v in values)


def benchmark_argv(body: BenchmarkCreate, settings: Settings) -> list[str]:
    """The `lethe benchmark` arguments (without `--out`) of a validated body."""
    task = body.task or DATASETS[body.dataset].default_task
    if task not in DATASETS[body.dataset].tasks:
        raise _refuse(f"data set {body.dataset!r} has no task {task!r}")
    if body.synth_identities is not None and not DATASETS[body.dataset].built_in:
        raise _refuse("synth_identities applies to synthfaces only")
    argv = ["--dataset", body.dataset]
    root = _data_root(body, settings)
    if root is not None:
        argv += ["--data-root", str(root)]
    argv += ["--task", task, "--preset", body.preset]
    for flag, value in (
        ("--arch", body.arch),
        ("--image-size", body.image_size),
        ("--synth-identities", body.synth_identities),
        ("--epochs", body.epochs),
        ("--lr", body.lr),
    ):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--requests", _ints("requests", body.requests, 1)]
    argv += ["--seeds", _ints("seeds", body.seeds, 0)]
    argv += ["--methods", _methods(body), *_sets(body)]
    argv += ["--single-identities", str(body.single_identities)]
    if body.rmia:
        argv += ["--rmia-augs", str(body.rmia_augmentations)]
        argv += ["--rmia-population", str(body.rmia_population)]
    else:
        argv.append("--no-rmia")
    # the worker runs every pass in its own process; `lethe benchmark` given this argv does too,
    # so its rows equal the service's to the bit
    return [*argv, "--jobs", "1"]


ACTIVE = (BenchmarkStatus.queued.value, BenchmarkStatus.running.value)
# a benchmark holds a worker for minutes to hours; a client waits at least this long to retry
QUEUE_FULL_RETRY_SECONDS = 60


def _take_turns(session: Session) -> None:
    """Serialize the active-run check and the insert across API processes (Postgres)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK)))


def create_run(
    session: Session, settings: Settings, client: ApiClient, body: BenchmarkCreate
) -> tuple[BenchmarkRun, bool]:
    """Validate, commit the run as queued, then send its task (record first, then enqueue).

    A run with the same arguments already queued or running is returned instead (False: not
    created); past `max_active_benchmarks` active runs the answer is 429 `benchmark_queue_full`.
    """
    argv = benchmark_argv(body, settings)
    _take_turns(session)
    active = session.scalars(select(BenchmarkRun).where(BenchmarkRun.status.in_(ACTIVE))).all()
    for earlier in active:
        if earlier.argv == argv:
            session.commit()
            return earlier, False
    if len(active) >= settings.max_active_benchmarks:
        session.rollback()
        raise ApiError.of(
            "benchmark_queue_full",
            f"{len(active)} benchmark runs are queued or running; the limit is "
            f"{settings.max_active_benchmarks}",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_SECONDS)},
        )
    run = BenchmarkRun(
        id=new_id(),
        client_id=client.id,
        status=BenchmarkStatus.queued.value,
        params=body.model_dump(mode="json", exclude_unset=True),
        argv=argv,
        progress={},
    )
    session.add(run)
    queue.send_after_commit(session, queue.BENCHMARK, run.id, holder=run)
    return run, True


def get_run(session: Session, run_id: str) -> BenchmarkRun:
    """The run with this id, or a 404."""
    run = session.get(BenchmarkRun, run_id)
    if run is None:
        raise ApiError.of("benchmark_not_found", f"no benchmark run has id {run_id!r}")
    return run


def completed_run(session: Session, run_id: str) -> BenchmarkRun:
    """The run with this id if it completed, else a 404 or 409."""
    run = get_run(session, run_id)
    if run.status != BenchmarkStatus.completed.value:
        raise ApiError.of(
            "benchmark_not_finished", f"benchmark run {run_id} is {run.status}; no report yet"
        )
    return run
