"""Worker tasks. The benchmark task runs the same code as `lethe benchmark`."""

from __future__ import annotations

from typing import Any

from worker.celery_app import celery_app


@celery_app.task(name="lethe.benchmark")
def run_benchmark_task(argv: list[str]) -> dict[str, Any]:
    """Run `lethe benchmark` with these arguments and return its results."""
    import json
    from pathlib import Path

    from models.cli import build_parser

    args = build_parser().parse_args(["benchmark", *argv])
    args.func(args)
    return json.loads((Path(args.out) / "results.json").read_text())
