"""`/admin/benchmarks`: queue a 1-SHUI benchmark re-run, follow it, read its report and plot."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from app.api.deps import SessionDep, SettingsDep, require_scope
from app.errors import AUTH_ERRORS, ApiError, responses
from app.schemas import BenchmarkCreate, BenchmarkRunOut
from app.services import benchmarks as service
from app.storage import artifact_store
from app.tables import ApiClient, BenchmarkRun, BenchmarkStatus

PREFIX = "/admin/benchmarks"
PLOT_NAME = "tow_vs_time.png"
PLOT_KIND = "benchmarks"

router = APIRouter(prefix=PREFIX, tags=["benchmarks"])
Admin = Annotated[ApiClient, Depends(require_scope("benchmarks:admin"))]


def _run_out(run: BenchmarkRun) -> BenchmarkRunOut:
    done = run.status == BenchmarkStatus.completed.value and run.results is not None
    results = run.results or {}
    return BenchmarkRunOut(
        id=run.id,
        status=run.status,
        params=run.params,
        argv=run.argv,
        progress=run.progress or {},
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        code_version=run.code_version,
        error=run.error,
        rows=results.get("rows") if done else None,
        config=results.get("config") if done else None,
        report_url=f"{PREFIX}/{run.id}/report" if done else None,
        plot_url=f"{PREFIX}/{run.id}/report/{PLOT_NAME}" if done and run.plot_sha256 else None,
    )


@router.post(
    "",
    status_code=202,
    summary="Queue a benchmark run",
    responses={
        200: {"model": BenchmarkRunOut, "description": "An identical run, queued or running"},
        **responses(*AUTH_ERRORS, "method_unknown", "data_root_refused", "benchmark_queue_full"),
    },
)
def create_benchmark(
    body: BenchmarkCreate,
    response: Response,
    settings: SettingsDep,
    session: SessionDep,
    client: Admin,
) -> BenchmarkRunOut:
    """Record the run with its `lethe benchmark` arguments, then queue it on a worker; a run
    with the same arguments already queued or running is answered instead (200)."""
    run, created = service.create_run(session, settings, client, body)
    response.headers["Location"] = f"{PREFIX}/{run.id}"
    if not created:
        response.status_code = 200
    return _run_out(run)


@router.get(
    "/{run_id}",
    summary="A benchmark run",
    responses=responses(*AUTH_ERRORS, "benchmark_not_found"),
)
def get_benchmark(run_id: str, session: SessionDep, _: Admin) -> BenchmarkRunOut:
    """Status and progress; once completed, the rows and the stored config."""
    return _run_out(service.get_run(session, run_id))


@router.get(
    "/{run_id}/report",
    summary="A benchmark run's Markdown report",
    response_class=Response,
    responses={
        200: {"content": {"text/markdown": {}}, "description": "results.md"},
        **responses(*AUTH_ERRORS, "benchmark_not_found", "benchmark_not_finished"),
    },
)
def get_report(run_id: str, session: SessionDep, _: Admin) -> Response:
    """results.md of a completed run: summary with intervals, forgetting, paired differences,
    then every run."""
    run = service.completed_run(session, run_id)
    return Response(run.report_md or "", media_type="text/markdown; charset=utf-8")


@router.get(
    f"/{{run_id}}/report/{PLOT_NAME}",
    summary="A benchmark run's Tug-of-War vs time plot",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": PLOT_NAME},
        **responses(*AUTH_ERRORS, "benchmark_not_found", "benchmark_not_finished"),
    },
)
def get_plot(run_id: str, settings: SettingsDep, session: SessionDep, _: Admin) -> Response:
    """tow_vs_time.png of a completed run."""
    run = service.completed_run(session, run_id)
    if run.plot_sha256 is None:
        raise ApiError.of("benchmark_not_finished", f"run {run_id} stored no plot")
    data = artifact_store(settings).read(PLOT_KIND, run.plot_sha256)
    return Response(data, media_type="image/png")
