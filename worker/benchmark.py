"""The `lethe.benchmark` job: run a recorded run's `lethe benchmark` arguments, store results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from app.db import session_scope
from app.settings import Settings
from app.storage import artifact_store
from app.tables import BenchmarkRun, BenchmarkStatus, utcnow
from models.benchmark.runner import run_benchmark
from models.cli import benchmark_config, build_parser

log = logging.getLogger(__name__)
PLOT_KIND = "benchmarks"
TERMINAL = {BenchmarkStatus.completed.value, BenchmarkStatus.failed.value}


def run_folder(settings: Settings, run_id: str) -> Path:
    """Where a run's results.json, results.md, plot and reference checkpoints are written."""
    return settings.data_dir / "benchmarks" / run_id


def _start(settings: Settings, run_id: str, task_id: str | None) -> list[str] | None:
    """Mark the run running and return its argv; None when it is unknown or already finished."""
    with session_scope(settings) as session:
        run = session.get(BenchmarkRun, run_id)
        if run is None or run.status in TERMINAL:
            return None
        if task_id and run.task_id and run.task_id != task_id:
            return None  # the sweeper re-sent it under another task id
        run.status = BenchmarkStatus.running.value
        run.started_at = utcnow()
        run.task_id = task_id or run.task_id
        run.error = None
        return list(run.argv)


def _progress_writer(settings: Settings, run_id: str) -> Any:
    def write(progress: dict[str, Any]) -> None:
        # A failed progress write must not cost a benchmark that may have run for hours.
        try:
            with session_scope(settings) as session:
                run = session.get(BenchmarkRun, run_id)
                if run is not None:
                    run.progress = dict(progress)
        except Exception:
            log.exception("benchmark %s: could not record progress %s", run_id, progress)

    return write


def _finish(settings: Settings, run_id: str, **values: Any) -> None:
    with session_scope(settings) as session:
        run = session.get(BenchmarkRun, run_id)
        if run is None:
            return
        for name, value in values.items():
            setattr(run, name, value)
        run.finished_at = utcnow()


def run_benchmark_job(
    settings: Settings, run_id: str, task_id: str | None = None
) -> dict[str, Any]:
    """Run a queued benchmark run and store its results; idempotent on the run id."""
    argv = _start(settings, run_id, task_id)
    if argv is None:
        return {"run_id": run_id, "status": "skipped"}
    out = run_folder(settings, run_id)
    try:
        # Parsed exactly as `lethe benchmark` parses them, so the run is the CLI's run.
        args = build_parser().parse_args(["benchmark", *argv, "--out", str(out), "--quiet"])
        results = run_benchmark(
            benchmark_config(args),
            out,
            progress=False,
            on_progress=_progress_writer(settings, run_id),
        )
        plot = artifact_store(settings).put_bytes(PLOT_KIND, (out / "tow_vs_time.png").read_bytes())
        report = (out / "results.md").read_text()
    except (Exception, SystemExit) as exc:  # argparse exits on arguments it cannot parse
        log.exception("benchmark %s failed", run_id)
        error = f"{type(exc).__name__}: {exc}"
        _finish(settings, run_id, status=BenchmarkStatus.failed.value, error=error)
        return {"run_id": run_id, "status": BenchmarkStatus.failed.value, "error": error}
    _finish(
        settings,
        run_id,
        status=BenchmarkStatus.completed.value,
        results=results,
        report_md=report,
        plot_sha256=plot,
        code_version=str(results["config"]["code_version"]),
    )
    return {"run_id": run_id, "status": BenchmarkStatus.completed.value}
