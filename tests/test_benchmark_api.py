"""`/admin/benchmarks`: validation on real Postgres, the job, and a re-run equal to the CLI's."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_client import FakeQueue, KeyedClient, error_code
from fastapi.testclient import TestClient
from sqlalchemy import func, select

import app.services.benchmarks as benchmark_service
from app.cli import keys_create
from app.db import session_scope
from app.main import create_app
from app.queue import BENCHMARK
from app.schemas import BenchmarkCreate
from app.settings import Settings
from app.tables import ApiClient, BenchmarkRun, BenchmarkStatus, new_id
from models.cli import benchmark_config, build_parser
from models.cli import main as ml_main
from worker.embedded import running_services

URL = "/admin/benchmarks"
WALL_TIME = {"unlearn_seconds", "prepare_seconds"}
TINY = {
    "synth_identities": 40,
    "image_size": 32,
    "epochs": 1,
    "requests": [3],
    "seeds": [0, 1],
    "methods": ["jit"],
    "rmia": False,
}


class Api(KeyedClient):
    """The API client with benchmark helpers; the benchmark admin key by default."""

    @property
    def enqueued(self) -> list[str]:
        """Benchmark runs whose task was sent."""
        return self.queue.ids(BENCHMARK)

    def post(self, body: dict[str, Any], key: str = "admin") -> httpx.Response:
        """POST /admin/benchmarks."""
        return self.call("POST", URL, key, json=body)

    def get(self, path: str, key: str = "admin", **params: Any) -> httpx.Response:
        """GET with an API key."""
        return super().get(path, key, **params)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """The one allowed data root, with an (empty) CelebA folder in it."""
    root = tmp_path / "datasets"
    (root / "celeba").mkdir(parents=True)
    return root


@pytest.fixture
def api(migrated_settings: Settings, data_root: Path, fake_queue: FakeQueue) -> Iterator[Api]:
    """The app on migrated Postgres, a benchmark admin key, a models admin key, faked enqueue."""
    settings = migrated_settings.model_copy(update={"data_roots": [data_root]})
    keys = {
        "admin": keys_create("bench", ["benchmarks:admin"], settings),
        "models": keys_create("models", ["models:admin", "requests:read"], settings),
    }
    with TestClient(create_app(settings)) as client:
        yield Api(client, settings, keys, fake_queue)


def run_count(settings: Settings) -> int:
    """How many benchmark runs are stored."""
    with session_scope(settings) as session:
        return int(session.scalar(select(func.count()).select_from(BenchmarkRun)) or 0)


def timeless(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without their wall-time columns."""
    return [{k: v for k, v in row.items() if k not in WALL_TIME} for row in rows]


# --- Validation (in-process API, real Postgres, enqueue faked) ----------------------------------


def test_needs_the_benchmarks_admin_scope(api: Api) -> None:
    assert error_code(api.client.post(URL, json=TINY)) == "missing_api_key"
    refused = api.post(TINY, key="models")
    assert refused.status_code == 403 and error_code(refused) == "insufficient_scope"
    assert error_code(api.get(f"{URL}/x", key="models")) == "insufficient_scope"
    assert run_count(api.settings) == 0 and api.enqueued == []


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"dataset": "imagenet"}, "invalid_request"),
        ({"methods": ["jit", "forgetme"]}, "method_unknown"),
        ({"methods": "some"}, "invalid_request"),
        ({"methods": []}, "invalid_request"),
        ({"methods": ["jit", "jit"]}, "invalid_request"),
        ({"epoch": 1}, "invalid_request"),
        ({"requests": []}, "invalid_request"),
        ({"requests": [0]}, "invalid_request"),
        ({"seeds": [1, 1]}, "invalid_request"),
        ({"image_size": 4}, "invalid_request"),
        ({"task": "age", "dataset": "celeba"}, "invalid_request"),
        ({"dataset": "synthfaces", "data_root": "/tmp"}, "invalid_request"),
        ({"method_options": {"ssd": {"alpha": 1}}}, "invalid_request"),
        ({"method_options": {"jit": {"lr=1 --x": 1}}}, "invalid_request"),
        ({"arch": "--evil"}, "invalid_request"),
    ],
)
def test_bad_bodies_are_refused_before_anything_is_written(
    api: Api, change: dict[str, Any], code: str
) -> None:
    body = {**TINY, **change}
    if body.get("dataset", "synthfaces") != "synthfaces":
        body.pop("synth_identities")
    response = api.post(body)
    assert response.status_code == 422 and error_code(response) == code, response.text
    assert run_count(api.settings) == 0 and api.enqueued == []


def test_data_set_folder_must_be_under_a_data_root(
    api: Api, tmp_path: Path, data_root: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (data_root / "escape").symlink_to(outside)
    base = {"dataset": "celeba", "requests": [3], "methods": ["jit"]}
    for root in (None, str(outside), str(data_root / "escape"), str(data_root / ".." / "elsewhere"),
                 str(data_root / "missing")):  # fmt: skip
        response = api.post({**base, "data_root": root} if root else base)
        assert response.status_code == 422, (root, response.text)
        assert error_code(response) == "data_root_refused"
    assert run_count(api.settings) == 0 and api.enqueued == []

    accepted = api.post({**base, "data_root": str(data_root / "celeba")})
    assert accepted.status_code == 202, accepted.text
    argv = accepted.json()["argv"]
    assert argv[argv.index("--data-root") + 1] == str((data_root / "celeba").resolve())


def test_unknown_run_is_404(api: Api) -> None:
    for path in (f"{URL}/nope", f"{URL}/nope/report", f"{URL}/nope/report/tow_vs_time.png"):
        response = api.get(path)
        assert response.status_code == 404 and error_code(response) == "benchmark_not_found"


def test_create_records_then_enqueues_and_report_waits(api: Api) -> None:
    response = api.post(TINY)
    assert response.status_code == 202, response.text
    body = response.json()
    run_id = body["id"]
    assert response.headers["Location"] == f"{URL}/{run_id}"
    assert api.enqueued == [run_id]
    assert body["status"] == "queued" and body["params"] == TINY
    assert body["rows"] is None and body["config"] is None and body["report_url"] is None
    assert body["argv"] == [
        "--dataset", "synthfaces", "--task", "attributes", "--preset", "scratch",
        "--image-size", "32",
        "--synth-identities", "40", "--epochs", "1", "--requests", "3", "--seeds", "0,1",
        "--methods", "jit", "--single-identities", "5", "--no-rmia", "--jobs", "1",
    ]  # fmt: skip
    with session_scope(api.settings) as session:
        row = session.get(BenchmarkRun, run_id)
        assert row.task_id == "task-1"
        assert session.get(ApiClient, row.client_id).name == "bench"

    assert api.get(f"{URL}/{run_id}").json() == body
    for path in (f"{URL}/{run_id}/report", f"{URL}/{run_id}/report/tow_vs_time.png"):
        waiting = api.get(path)
        assert waiting.status_code == 409 and error_code(waiting) == "benchmark_not_finished"


def test_identical_runs_are_one_and_active_runs_are_capped(api: Api) -> None:
    first = api.post(TINY)
    assert first.status_code == 202
    again = api.post(TINY)  # before: a second run, and 736 of them in 10 minutes
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert api.enqueued == [first.json()["id"]]

    second = api.post({**TINY, "seeds": [2]})
    assert second.status_code == 202  # other arguments: another run, up to the cap (2)
    full = api.post({**TINY, "seeds": [3]})
    assert full.status_code == 429 and error_code(full) == "benchmark_queue_full"
    assert int(full.headers["Retry-After"]) > 0
    assert run_count(api.settings) == 2 and len(api.enqueued) == 2

    with session_scope(api.settings) as session:
        session.get_one(BenchmarkRun, first.json()["id"]).status = "completed"
    assert api.post({**TINY, "seeds": [3]}).status_code == 202  # a finished run frees a place
    with session_scope(api.settings) as session:
        session.get_one(BenchmarkRun, second.json()["id"]).status = "failed"
    rerun = api.post(TINY)  # only an active run stands in for a new one
    assert rerun.status_code == 202 and rerun.json()["id"] != first.json()["id"]


def test_a_lost_run_is_re_sent_by_a_starting_worker_and_runs_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.benchmark import run_benchmark_job
    from worker.sweeper import sweep

    api.queue.down = True
    body = api.post(TINY).json()
    assert body["status"] == "queued" and body["error"] is None  # recorded; the task is not

    api.queue.down = False
    sent = api.queue.sent
    now = api.settings.model_copy(update={"sweep_after_seconds": 0.0})
    monkeypatch.setattr("worker.sweeper.held_tasks", lambda: None)
    assert sweep(now).benchmarks == []  # nobody answered: it may still be in the broker
    assert sweep(now, inspect=False).benchmarks == []  # a periodic sweep: it may be running
    assert sweep(now, inspect=False, starting=True).benchmarks == [body["id"]]
    ((name, args, task_id),) = sent
    assert (name, args) == ("lethe.benchmark", (body["id"],))
    with session_scope(api.settings) as session:
        assert session.get_one(BenchmarkRun, body["id"]).task_id == task_id
    # A message under any other task id (the original, had it survived) does nothing.
    assert (
        run_benchmark_job(api.settings, body["id"], task_id="the-lost-one")["status"] == "skipped"
    )
    assert api.get(f"{URL}/{body['id']}").json()["status"] == "queued"


# --- The body → argv → config mapping, and the static tables ------------------------------------


def test_argv_parses_to_the_config_the_body_describes(tmp_path: Path) -> None:
    body = BenchmarkCreate(
        arch="test_resnet",
        image_size=48,
        synth_identities=50,
        epochs=2,
        lr=0.05,
        requests=[3, 5],
        seeds=[0, 2],
        methods=["jit", "ssd"],
        method_options={"jit": {"lr": 0.01, "eval_mode": False}, "ssd": {"alpha": 10}},
        rmia_augmentations=3,
        rmia_population=100,
        single_identities=3,
    )
    argv = benchmark_service.benchmark_argv(body, Settings(_env_file=None))
    args = build_parser().parse_args(["benchmark", *argv, "--out", str(tmp_path)])
    cfg = benchmark_config(args)
    assert cfg.setup.dataset.name == "synthfaces" and cfg.setup.dataset.num_identities == 50
    assert cfg.setup.arch == "test_resnet" and cfg.setup.image_size == 48
    assert cfg.setup.task == "attributes"
    assert cfg.setup.train.epochs == 2 and cfg.setup.train.lr == 0.05
    assert list(cfg.requests) == [3, 5] and list(cfg.seeds) == [0, 2]
    assert list(cfg.methods) == ["jit", "ssd"]
    assert cfg.method_overrides == {"jit": {"lr": 0.01, "eval_mode": False}, "ssd": {"alpha": 10}}
    assert cfg.rmia and cfg.rmia_augmentations == 3 and cfg.rmia_population == 100
    assert cfg.single_identities == 3

    pretrained = benchmark_service.benchmark_argv(
        BenchmarkCreate(preset="pretrained"), Settings(_env_file=None)
    )
    args = build_parser().parse_args(["benchmark", *pretrained, "--out", str(tmp_path)])
    setup = benchmark_config(args).setup
    assert (setup.arch, setup.image_size, setup.pretrained) == (
        "tf_efficientnet_lite0",
        112,
        "imagenet",
    )
    assert "blocks.4" in setup.train.frozen and setup.train.epochs == 6

    every = benchmark_service.benchmark_argv(
        BenchmarkCreate(methods="all"), Settings(_env_file=None)
    )
    from models.methods import list_methods

    assert list(
        benchmark_config(build_parser().parse_args(["benchmark", *every, "--out", "x"])).methods
    ) == list(list_methods())


def test_runner_reports_each_step(tmp_path: Path) -> None:
    from models.benchmark.runner import run_benchmark

    body = BenchmarkCreate(**{**TINY, "methods": ["jit", "neggrad"], "seeds": [0]})
    argv = benchmark_service.benchmark_argv(body, Settings(_env_file=None))
    args = build_parser().parse_args(["benchmark", *argv, "--out", str(tmp_path)])
    seen: list[dict[str, Any]] = []
    run_benchmark(benchmark_config(args), tmp_path, progress=False, on_progress=seen.append)
    steps = [(p["done"], p["current"] and p["current"]["step"]) for p in seen]
    assert steps == [(0, "references"), (1, "jit"), (2, "neggrad"), (3, None)]
    assert all(p["total"] == 3 for p in seen)
    assert seen[0]["current"] == {"requests": 3, "seed": 0, "step": "references"}


# --- The job, without a worker process ------------------------------------------------------------


def _queued(settings: Settings, argv: list[str], status: str = "queued") -> str:
    with session_scope(settings) as session:
        client = ApiClient(name="job", key_prefix="lethe_x", key_hash=new_id(), scopes=[])
        session.add(client)
        session.flush()
        run = BenchmarkRun(client_id=client.id, status=status, params={}, argv=argv, progress={})
        session.add(run)
        session.flush()
        return run.id


def test_passes_in_two_processes_give_the_rows_of_one(tmp_path: Path) -> None:
    import torch

    from models.benchmark.runner import run_benchmark

    body = BenchmarkCreate(**{**TINY, "requests": [2, 3], "methods": ["jit", "neggrad"]})
    argv = benchmark_service.benchmark_argv(body, Settings(_env_file=None))
    cfg = benchmark_config(build_parser().parse_args(["benchmark", *argv, "--out", "x"]))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # each of the two pass processes then gets one thread too
    try:
        one = run_benchmark(cfg, tmp_path / "one", progress=False)
        seen: list[dict[str, Any]] = []
        two = run_benchmark(cfg, tmp_path / "two", progress=False, on_progress=seen.append, jobs=2)
    finally:
        torch.set_num_threads(before)

    def measured(results: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if k not in WALL_TIME} for row in results["rows"]]

    assert measured(two) == measured(one) and len(one["rows"]) == 4 * 4
    assert [(r["requests"], r["seed"]) for r in two["config"]["runs"]] == [
        (2, 0),
        (2, 1),
        (3, 0),
        (3, 1),
    ]
    assert two["config"]["processes"] == 2 and one["config"]["processes"] == 1
    assert json.loads((tmp_path / "two" / "results.json").read_text())["rows"] == two["rows"]
    assert [p["done"] for p in seen] == [3, 6, 9, 12, 12] and seen[-1]["current"] is None


def test_a_pass_that_fails_in_a_process_fails_the_run(tmp_path: Path) -> None:
    from dataclasses import replace

    from models.benchmark.runner import run_benchmark

    body = BenchmarkCreate(**{**TINY, "requests": [2, 3]})
    argv = benchmark_service.benchmark_argv(body, Settings(_env_file=None))
    cfg = benchmark_config(build_parser().parse_args(["benchmark", *argv, "--out", "x"]))
    broken = replace(cfg, method_overrides={"jit": {"no_such_option": 1}})
    with pytest.raises(ValueError, match="no_such_option"):
        run_benchmark(broken, tmp_path, progress=False, jobs=2)
    assert not (tmp_path / "results.json").exists()


def test_job_failure_is_recorded(migrated_settings: Settings) -> None:
    from worker.benchmark import run_benchmark_job

    run_id = _queued(migrated_settings, ["--methods", "forgetme", "--no-rmia"])
    outcome = run_benchmark_job(migrated_settings, run_id, task_id="t-1")
    assert outcome["status"] == "failed"
    with session_scope(migrated_settings) as session:
        run = session.get(BenchmarkRun, run_id)
        assert run.status == BenchmarkStatus.failed.value and "forgetme" in run.error
        assert run.task_id == "t-1" and run.started_at and run.finished_at and run.results is None

    done = _queued(migrated_settings, ["--no-rmia"], status="completed")
    assert run_benchmark_job(migrated_settings, done)["status"] == "skipped"
    assert run_benchmark_job(migrated_settings, "unknown")["status"] == "skipped"


# --- End to end: uvicorn, a real Celery worker, Postgres and Redis -------------------------------


def _wait(client: httpx.Client, run_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"{URL}/{run_id}").raise_for_status().json()
        if body["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


@pytest.mark.integration
def test_rerun_through_the_api_equals_the_cli(service_settings: Settings, tmp_path: Path) -> None:
    # the worker computes with the cores this process has, so the rows match to the bit
    service_settings = service_settings.model_copy(update={"compute_processes": 1})
    with running_services(service_settings) as services:
        key = keys_create("admin", ["benchmarks:admin"], service_settings)
        with httpx.Client(
            base_url=services.base_url, headers={"X-API-Key": key}, timeout=30
        ) as client:
            created = client.post(URL, json=TINY)
            assert created.status_code == 202, created.text
            body = _wait(client, created.json()["id"], 180)
            assert body["status"] == "completed", body
            report = client.get(body["report_url"])
            plot = client.get(body["plot_url"])

    assert body["progress"] == {"done": 4, "total": 4, "current": None}
    assert body["started_at"] and body["finished_at"] and body["error"] is None
    out = tmp_path / "cli"
    ml_main(["benchmark", *body["argv"], "--out", str(out), "--quiet"])
    cli = json.loads((out / "results.json").read_text())

    assert len(body["rows"]) == 6  # original, retrain, jit for each of two seeds
    assert timeless(body["rows"]) == timeless(cli["rows"])
    config, cli_config = body["config"], cli["config"]
    assert body["code_version"] == config["code_version"] == cli_config["code_version"]
    for run, cli_run in zip(config["runs"], cli_config["runs"], strict=True):
        assert run["splits_sha256"] == cli_run["splits_sha256"]
        assert run["method_configs"] == cli_run["method_configs"]
    volatile = {"runs", "device", "torch", "python"}
    assert {k: v for k, v in config.items() if k not in volatile} == {
        k: v for k, v in cli_config.items() if k not in volatile
    }

    assert report.status_code == 200 and report.headers["content-type"].startswith("text/markdown")
    assert report.text.startswith("# 1-SHUI benchmark") and "| jit | 3 | 0 |" in report.text
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    assert plot.content.startswith(b"\x89PNG")
    assert (
        plot.content
        == (service_settings.data_dir / "benchmarks" / body["id"] / "tow_vs_time.png").read_bytes()
    )
