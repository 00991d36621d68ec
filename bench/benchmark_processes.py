"""Does `lethe benchmark --jobs 2` (passes in two one-thread processes) beat one process?

Runs the same small pretrained-preset benchmark twice in this run: in one process with this
machine's threads, then in `--jobs` processes dividing them, and prints both wall times and the
ratio. The rows of the two runs agree only to float rounding (thread counts differ); at equal
threads they are identical (tests/test_benchmark_api.py).

    .venv/bin/python bench/benchmark_processes.py                # 4 passes, jit and pgu
    .venv/bin/python bench/benchmark_processes.py --methods all --identities 400
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_run(argv: list[str], out: Path) -> float:
    """Wall seconds of one `lethe benchmark` run (a fresh process, so no warm cache)."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "worker.cli", "benchmark", *argv, "--quiet", "--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    """Time one process against `--jobs` processes on the same passes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="jit,pgu")
    parser.add_argument("--requests", default="5,10")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    argv = [
        "--preset", "pretrained", "--synth-identities", str(args.identities), "--methods",
        args.methods, "--requests", args.requests, "--seeds", args.seeds, "--no-rmia",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        one = timed_run([*argv, "--jobs", "1"], Path(folder) / "one")
        many = timed_run([*argv, "--jobs", str(args.jobs)], Path(folder) / "many")
    figures = {
        "passes": len(args.requests.split(",")) * len(args.seeds.split(",")),
        "methods": args.methods,
        "one_process_seconds": round(one, 1),
        f"{args.jobs}_processes_seconds": round(many, 1),
        "speedup": round(one / many, 2),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
