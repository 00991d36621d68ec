"""Erasure latency: median time of the erasure step alone, against one epoch of retraining.

For each method and request size N (portraits), only `method.unlearn(...)` is timed (no
evaluation, no preparation, no model copy), as the median over `--repeats` runs after one
warm-up. The baseline is one epoch of `train_model` on RETAIN with the default recipe, measured
in the same run on the same device. The acceptance bar: MetaUnlearn erases 10 portraits in
≤ 1 s (median) and ≥ 50× faster than one retraining epoch.

Run from the repository root: `.venv/bin/python bench/erase_latency.py [--json out.json]`.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from models.catalog import DEFAULT_ARCH, DEFAULT_DATASET, dataset
from models.data.base import FaceData
from models.data.registry import DatasetSpec, load_dataset
from models.data.splits import SplitIndices, make_splits, split_indices
from models.data.torch_dataset import FaceSubset
from models.data.transforms import test_transform
from models.device import default_device
from models.methods import UnlearnRequest, get_method, list_methods, resolve_config
from models.methods.base import Artifacts, UnlearningMethod
from models.nets import data_config
from models.protocol import ModelSetup, build_model, prepare_method, support_request
from models.train.config import TrainConfig
from models.train.trainer import train_model

BAR_METHOD, BAR_SIZE, BAR_MAX_SECONDS, BAR_MIN_RATIO = "metaunlearn", 10, 1.0, 50.0
PRIVILEGED_BATCH = 32
# One epoch's validation pass is cut to this many VAL rows, so that the baseline is essentially
# the training pass itself: a smaller (stricter) denominator than a full retraining epoch.
EPOCH_VAL_ROWS = 32
# Onboarding settings that bound preparation time only. MetaUnlearn's erasure is one gradient
# step of the meta-trained h_phi whatever it learned, so fewer simulated requests change its
# quality, never its cost; the timed erasure still uses the pinned config (same structure).
CHEAP_PREPARE: dict[str, dict[str, Any]] = {
    "metaunlearn": {"meta_epochs": 1, "max_requests_per_epoch": 2},
}


@dataclass(frozen=True)
class Timing:
    """The erasure times of one method at one request size."""

    method: str
    portraits: int
    seconds: list[float]

    @property
    def median(self) -> float:
        """Median erasure time in seconds."""
        return statistics.median(self.seconds)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods", default=",".join(list_methods()), help="comma-separated (default: all)"
    )
    parser.add_argument("--sizes", default="1,10", help="portraits per request, comma-separated")
    parser.add_argument("--repeats", type=int, default=5, help="timed erasures per cell")
    parser.add_argument(
        "--budget", type=float, default=60.0, help="seconds of timed runs per cell, at most"
    )
    parser.add_argument("--epoch-repeats", type=int, default=2, help="timed retraining epochs")
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--data-root", default=None, help="folder of a real data set")
    parser.add_argument("--arch", default=DEFAULT_ARCH)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--device", default=None, help="default: CUDA when present, else CPU")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.epoch_repeats < 1 or args.budget <= 0:
        parser.error("--repeats and --epoch-repeats must be at least 1, --budget positive")
    return args


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of `fn()`, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def loader(data: FaceData, rows: Sequence[int], task: str, transform: Any) -> DataLoader:
    """Test-transformed rows for privileged methods."""
    return DataLoader(FaceSubset(data, rows, task, transform), batch_size=PRIVILEGED_BATCH)


def request_for(
    full: UnlearnRequest,
    size: int,
    method: UnlearningMethod,
    data: FaceData,
    task: str,
    indices: SplitIndices,
    transform: Any,
) -> UnlearnRequest:
    """The first `size` support portraits; RETAIN and FORGET loaders for privileged methods."""
    request = UnlearnRequest(
        images=full.images[:size],
        identities=full.identities[:size],
        task=full.task,
        targets=None if full.targets is None else full.targets[:size],
    )
    if method.needs == "support":
        return request
    # With fewer portraits than the splits' forget identities, the others count as retained.
    forgotten = set(full.identities[:size])
    retain = [i for i in indices.train if data.identities[i] not in forgotten]
    forget = [i for i in indices.train if data.identities[i] in forgotten]
    request.retain = loader(data, retain, task, transform)
    request.forget = loader(data, forget, task, transform)
    return request


def time_erasures(
    name: str,
    sizes: Sequence[int],
    repeats: int,
    budget: float,
    setup: ModelSetup,
    model: nn.Module,
    data: FaceData,
    indices: SplitIndices,
    device: torch.device,
) -> list[Timing]:
    """Prepare `name` on `model`, then time its erasure at each size.

    One warm-up, then up to `repeats` timed runs, stopping early once they add up to `budget`
    seconds; a warm-up longer than `budget` is itself the one timing.
    """
    method = get_method(name)
    full = support_request(data, setup.task, indices, model, setup.image_size)
    transform = test_transform(data_config(model, setup.image_size))
    prepared: dict[str, Artifacts] = {}
    timings = []
    for size in sizes:
        cfg = resolve_config(name, setup.dataset.name, setup.arch, size)
        prepare_cfg = replace(cfg, **CHEAP_PREPARE.get(name, {}))
        key = repr(prepare_cfg)
        if key not in prepared:
            prepared[key], _ = prepare_method(
                method, prepare_cfg, model, data, setup.task, indices, setup.image_size
            )
        request = request_for(full, size, method, data, setup.task, indices, transform)

        def erase(request: UnlearnRequest = request, cfg: Any = cfg, key: str = key) -> float:
            copied, artifacts = copy.deepcopy(model), copy.deepcopy(prepared[key])
            return timed(lambda: method.unlearn(copied, request, artifacts, cfg), device)

        warmup = erase()
        if warmup > budget:
            # Minutes-long erasures (the retain-set baselines): one-off start-up costs are
            # negligible next to them, so the warm-up run is the measurement.
            timings.append(Timing(name, size, [warmup]))
            continue
        seconds = [erase()]
        while len(seconds) < repeats and sum(seconds) < budget:
            seconds.append(erase())
        timings.append(Timing(name, size, seconds))
    return timings


def time_epochs(
    setup: ModelSetup, data: FaceData, indices: SplitIndices, repeats: int, device: torch.device
) -> list[float]:
    """Seconds of one default-recipe epoch of training a fresh network on RETAIN."""
    cfg = replace(setup.train, epochs=1)
    seconds = []
    for _ in range(repeats):
        torch.manual_seed(cfg.seed)
        fresh = build_model(setup, data).to(device)
        seconds.append(
            timed(
                lambda fresh=fresh: train_model(
                    fresh,
                    data,
                    setup.task,
                    indices.retain,
                    indices.val[:EPOCH_VAL_ROWS],
                    cfg,
                    setup.image_size,
                    device,
                    progress=False,
                ),
                device,
            )
        )
    return seconds


def ratio_text(ratio: float) -> str:
    """A speed-up with one decimal, or two significant digits below 1."""
    return f"{ratio:.1f}" if ratio >= 1 else f"{ratio:.2g}"


def bar_line(timings: Sequence[Timing], epoch: float) -> tuple[str, bool | None]:
    """The acceptance bar's verdict for MetaUnlearn at 10 portraits (None: not measured)."""
    cell = next((t for t in timings if t.method == BAR_METHOD and t.portraits == BAR_SIZE), None)
    if cell is None:
        return f"bar: {BAR_METHOD}@{BAR_SIZE} was not measured in this run", None
    ratio = epoch / cell.median
    fast, far = cell.median <= BAR_MAX_SECONDS, ratio >= BAR_MIN_RATIO
    verdict = "PASS" if fast and far else "FAIL"
    return (
        f"bar {verdict}: {BAR_METHOD} erases {BAR_SIZE} portraits in {cell.median:.4f} s median "
        f"({'≤' if fast else '>'} {BAR_MAX_SECONDS:g} s), {ratio:.0f}× less than one "
        f"retraining epoch of {epoch:.2f} s ({'≥' if far else '<'} {BAR_MIN_RATIO:g}×)",
        fast and far,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table and the bar; exit 1 when the bar was measured and missed."""
    args = parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in methods:
        get_method(name)  # fail on an unknown name before any work
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    device = torch.device(args.device) if args.device else default_device()
    setup = ModelSetup(
        dataset=DatasetSpec(name=args.dataset, root=args.data_root),
        task=dataset(args.dataset).default_task,
        arch=args.arch,
        image_size=args.image_size,
        train=TrainConfig(),
    )
    data = load_dataset(setup.dataset)
    splits = make_splits(data.identities, data.keys, max(sizes), args.seed)
    indices = split_indices(data, splits)
    torch.manual_seed(args.seed)
    # Erasure cost depends on the network's shape, not on what it learned: an untrained
    # network keeps the benchmark to minutes.
    model = build_model(setup, data).to(device).eval()

    print(
        f"erase latency: {args.dataset} ({len(data.keys)} images), {args.arch} at "
        f"{args.image_size} px, UNTRAINED weights (random init), device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"RETAIN {len(indices.retain)} images, TRAIN {len(indices.train)}; erasure: median of "
        f"up to {args.repeats} runs ({args.budget:g} s budget) after 1 warm-up; epoch: median "
        f"of {args.epoch_repeats}",
        flush=True,
    )
    epochs = time_epochs(setup, data, indices, args.epoch_repeats, device)
    epoch = statistics.median(epochs)
    print(f"\none retraining epoch on RETAIN: {epoch:.3f} s median ({len(epochs)} runs)\n")
    print(
        f"{'method':<14}{'portraits':>10}{'runs':>6}{'median s':>12}{'min s':>10}"
        f"{'epoch/median':>14}"
    )
    timings: list[Timing] = []
    for name in methods:
        cells = time_erasures(
            name, sizes, args.repeats, args.budget, setup, model, data, indices, device
        )
        for t in cells:
            print(
                f"{t.method:<14}{t.portraits:>10}{len(t.seconds):>6}{t.median:>12.4f}"
                f"{min(t.seconds):>10.4f}{ratio_text(epoch / t.median):>13}×",
                flush=True,
            )
        timings += cells
    line, passed = bar_line(timings, epoch)
    print(f"\n{line}")

    if args.json is not None:
        result = {
            "config": {
                **setup.to_dict(),
                "weights": "untrained",
                "methods": methods,
                "sizes": sizes,
                "repeats": args.repeats,
                "budget_seconds": args.budget,
                "split_seed": args.seed,
                "epoch_val_rows": EPOCH_VAL_ROWS,
                "prepare_overrides": CHEAP_PREPARE,
            },
            "environment": {
                "device": str(device),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "python": platform.python_version(),
            },
            "epoch_seconds": epochs,
            "epoch_median_seconds": epoch,
            "rows": [
                {**asdict(t), "median_seconds": t.median, "epoch_ratio": epoch / t.median}
                for t in timings
            ],
            "bar": {"line": line, "passed": passed},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if passed is False else 0


if __name__ == "__main__":
    sys.exit(main())
