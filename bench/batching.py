"""Batching: a burst of deletion requests for one model, coalesced, against one job per request.

Both runs use the real service (uvicorn, one Celery worker process, the embedded default's
SQLite database and SQL broker, each run in a folder of its own), the same small synthfaces
checkpoint and the same N portraits of N distinct training identities. The clock starts when
the first request is posted (after the model is prepared) and stops when the last one is
terminal.

- batched: `batch_max_size` B (default 10) and a `batch_window_seconds` window (default 1 s);
- one-by-one: `batch_max_size` 1, no window: N jobs.

The bar: every request of the batched run `completed`, through at most ceil(N / B) erasure
jobs, in at least 5× less wall time than the one-by-one run measured in the same invocation.
The guardrail is opened for both runs: this measures throughput, not the tiny model's utility.

Run from the repository root: `.venv/bin/python bench/batching.py [--requests 100]`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from app.cli import keys_create
from app.settings import Settings
from models.cli import main as ml_main
from models.data.synthfaces import SynthFaces, SynthFacesConfig
from models.train.checkpoint import load_checkpoint
from worker.embedded import TERMINAL, running_services, wait_for_ready_version

MODEL = "faces"
MIN_RATIO = 5.0
# Onboarding settings that bound preparation time only: MetaUnlearn's erasure is one gradient
# step of h_phi whatever it learned, so its cost per job does not depend on them.
CHEAP_PREPARE: dict[str, dict[str, Any]] = {
    "metaunlearn": {"meta_epochs": 1, "max_requests_per_epoch": 2},
}
PREPARED = ("metaunlearn", "pgu", "ssd")
# Enough distinct training identities for 100 requests, at the default model's input size.
IDENTITIES, IMAGE_SIZE = 200, 64


@dataclass(frozen=True)
class Run:
    """What one mode of the benchmark measured."""

    mode: str
    batch_max_size: int
    batch_window_seconds: float
    requests: int
    seconds: float
    submit_seconds: float  # until the last POST was answered
    statuses: dict[str, int]
    erasure_jobs: int  # distinct versions that erased the requests
    largest_batch: int


def train_checkpoint(folder: Path, epochs: int) -> Path:
    """A small test_resnet on 200 synthfaces identities at 32 px."""
    path = folder / "faces.pth"
    ml_main(
        ["train", "--synth-identities", str(IDENTITIES), "--image-size", str(IMAGE_SIZE),
         "--epochs", str(epochs), "--requests", "3", "--out", str(path)]
    )  # fmt: skip
    return path


def portraits(checkpoint: Path, count: int) -> list[tuple[str, bytes]]:
    """`count` distinct training identities of the checkpoint, each with a new PNG portrait."""
    ckpt = load_checkpoint(checkpoint)
    spec = ckpt.config["dataset"]
    faces = SynthFaces(
        SynthFacesConfig(
            num_identities=spec["num_identities"], image_size=spec["image_size"], seed=spec["seed"]
        )
    )
    identities = list(ckpt.splits["retain"])
    if len(identities) < count:
        raise SystemExit(f"the checkpoint has {len(identities)} retain identities, not {count}")
    result = []
    for identity in identities[:count]:
        buffer = io.BytesIO()
        Image.fromarray(faces.portrait(identity).permute(1, 2, 0).numpy()).save(buffer, "PNG")
        result.append((identity, buffer.getvalue()))
    return result


def wait_all(client: httpx.Client, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Poll the requests (a page at a time) until every one is terminal."""
    deadline = time.monotonic() + timeout
    pending, done = set(ids), {}
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} request(s) still unfinished after {timeout:.0f} s")
        for request_id in list(pending):
            body = client.get(f"/deletion-requests/{request_id}").raise_for_status().json()
            if body["status"] not in TERMINAL:
                break
            done[request_id] = body
            pending.discard(request_id)
        else:
            continue
        time.sleep(0.2)
    return [done[request_id] for request_id in ids]


def measure(
    base: Settings,
    mode: str,
    size: int,
    window: float,
    checkpoint: Path,
    people: list,
    timeout: float,
) -> Run:
    """Start the service with these batch settings, post every portrait at once, time it."""
    settings = base.model_copy(
        update={
            "data_dir": base.data_dir / mode,
            "batch_max_size": size,
            "batch_window_seconds": window,
            "checkpoint_dirs": [checkpoint.parent],
            "guardrail_max_score_drop": 100.0,
        }
    )
    with running_services(settings) as services:
        key = keys_create("bench", ["requests:create", "requests:read", "models:admin"], settings)
        with httpx.Client(
            base_url=services.base_url, headers={"X-API-Key": key}, timeout=60
        ) as client:
            client.post(
                "/models", json={"name": MODEL, "checkpoint_path": str(checkpoint)}
            ).raise_for_status()
            if wait_for_ready_version(client, MODEL, timeout)["status"] != "ready":
                raise SystemExit("the model could not be prepared")

            def post(person: tuple[str, bytes]) -> str:
                identity, png = person
                response = client.post(
                    "/deletion-requests",
                    data={"identity_id": identity, "model": MODEL, "method": base.default_method},
                    files={"portrait": ("p.png", png, "image/png")},
                )
                response.raise_for_status()
                return str(response.json()["id"])

            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=8) as pool:
                ids = list(pool.map(post, people))
            submitted = time.perf_counter() - start
            finals = wait_all(client, ids, timeout)
            seconds = time.perf_counter() - start
    statuses: dict[str, int] = {}
    for body in finals:
        statuses[body["status"]] = statuses.get(body["status"], 0) + 1
    versions = [b["result_version"]["version"] for b in finals if b["result_version"]]
    counts = {v: versions.count(v) for v in set(versions)}
    return Run(
        mode=mode,
        batch_max_size=size,
        batch_window_seconds=window,
        requests=len(people),
        seconds=seconds,
        submit_seconds=submitted,
        statuses=statuses,
        erasure_jobs=len(counts),
        largest_batch=max(counts.values(), default=0),
    )


def main(argv: list[str] | None = None) -> int:
    """Run both modes, print their figures and the bar; exit 1 when the bar fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--batch", type=int, default=10, help="batch_max_size of the batched run")
    parser.add_argument("--window", type=float, default=1.0, help="batch_window_seconds")
    parser.add_argument("--method", default="metaunlearn", help="erasure method of every request")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of the checkpoint")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per run, seconds")
    parser.add_argument("--poll", type=float, default=0.1, help="SQL broker polling interval, s")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="lethe-batching-") as folder:
        root = Path(folder)
        checkpoint = train_checkpoint(root / "models", args.epochs)
        people = portraits(checkpoint, args.requests)
        # The embedded default (SQLite, SQL broker), each run in its own folder.
        base = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=root,
            database_url=None,
            broker_url=None,
            result_backend=None,
            artifact_dir=None,
            broker_polling_interval=args.poll,
            default_method=args.method,
            prepare_methods=[args.method] if args.method in PREPARED else [],
            method_options={args.method: CHEAP_PREPARE.get(args.method, {})},
        )
        batched = measure(
            base, "batched", args.batch, args.window, checkpoint, people, args.timeout
        )
        single = measure(base, "one-by-one", 1, 0.0, checkpoint, people, args.timeout)

    ratio = single.seconds / batched.seconds
    print(f"method {args.method}, {args.requests} requests, synthfaces {IMAGE_SIZE} px")
    print(f"{'mode':<11} {'batch':>5} {'window s':>8} {'jobs':>5} {'largest':>7} "
          f"{'wall s':>8} {'submit s':>8}  statuses")  # fmt: skip
    for run in (batched, single):
        print(
            f"{run.mode:<11} {run.batch_max_size:>5} {run.batch_window_seconds:>8.1f} "
            f"{run.erasure_jobs:>5} {run.largest_batch:>7} {run.seconds:>8.2f} "
            f"{run.submit_seconds:>8.2f}  "
            f"{json.dumps(run.statuses, sort_keys=True)}"
        )
    print(f"ratio one-by-one / batched: {ratio:.2f}×")
    max_jobs = math.ceil(args.requests / args.batch)
    checks = {
        "all completed": batched.statuses == {"completed": args.requests},
        f"at most {max_jobs} jobs": batched.erasure_jobs <= max_jobs,
        f"at least {MIN_RATIO:.0f}× faster": ratio >= MIN_RATIO,
    }
    verdict = "PASS" if all(checks.values()) else "FAIL"
    print(f"bar {verdict}: " + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in checks.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"runs": [asdict(batched), asdict(single)], "ratio": ratio, "checks": checks}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
