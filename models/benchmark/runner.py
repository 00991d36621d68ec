"""The 1-SHUI benchmark: original, retrained reference and each method, per size and seed."""

from __future__ import annotations

import copy
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from models import __version__
from models.benchmark.config import BenchmarkConfig
from models.benchmark.parallel import PassResult, run_parallel
from models.benchmark.plot import plot_tow_vs_time
from models.benchmark.report import write_markdown
from models.data.base import FaceData
from models.data.registry import load_dataset
from models.data.splits import SplitIndices, make_splits, one_identity, split_indices
from models.device import default_device
from models.methods import UnlearningMethod, UnlearnRequest, get_method, resolve_config
from models.methods.base import Artifacts
from models.methods.registry import is_calibrated
from models.metrics.mia import rmia
from models.nets.trunk import Tail, TrunkCache
from models.protocol import (
    Evaluation,
    ModelSetup,
    RmiaSets,
    evaluate_protocol,
    finite_or_none,
    pool_single_requests,
    prepare_method,
    privileged_request,
    protocol_results,
    rmia_sets,
    rmia_signals,
    support_request,
    train_reference,
    trunk_cache,
)

RMIA_COLUMNS = ("rmia_auc", "rmia_tpr_at_0.01pct_fpr")
Signals = tuple[np.ndarray, np.ndarray]
ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class _Pass:
    """What one (request size, seed) pass shares across its methods."""

    cfg: BenchmarkConfig
    data: FaceData
    indices: SplitIndices
    # the requests each method serves from the original, one by one: `indices` itself, or one
    # request per forget identity where N = 1 pools single-identity requests
    parts: list[SplitIndices]
    device: torch.device
    requests: int
    seed: int
    rmia_sets: RmiaSets | None
    rmia_seed: int
    cache: TrunkCache | None = None

    @property
    def setup(self) -> ModelSetup:
        """The model setup of the benchmark."""
        return self.cfg.setup

    def evaluate(self, model: nn.Module) -> Evaluation:
        """The protocol's scores and loss MIA for `model`."""
        setup = self.setup
        return evaluate_protocol(
            model, self.data, setup.task, self.indices, setup.image_size, self.device, self.cache
        )

    def tail_depth(self, method: UnlearningMethod, model: nn.Module) -> int | None:
        """The cached trunk's depth where `method` runs on `model`'s tail over the trunk's
        outputs (it runs `on_tail` and `model` holds the cached trunk frozen), else None: a
        frozen trunk gives the same outputs at every epoch, step and simulated request."""
        cache = self.cache
        if not method.on_tail or cache is None or not cache.frozen_in(model):
            return None
        return cache.depth

    def request_for(
        self, method: UnlearningMethod, model: nn.Module, part: SplitIndices
    ) -> UnlearnRequest:
        """The support request of `part`, with RETAIN and FORGET loaders for privileged methods,
        of trunk outputs where `tail_depth` is set."""
        setup = self.setup
        request = support_request(self.data, setup.task, part, model, setup.image_size)
        cache = self.cache if self.tail_depth(method, model) is not None else None
        if method.needs != "support+retain":
            if cache is None:
                return request
            return replace(request, images=cache.features(model, part.support))
        return privileged_request(
            request, self.data, setup.task, part, model, setup.image_size, self.seed, cache=cache
        )

    def signals(self, model: nn.Module) -> Signals | None:
        """RMIA loss signals of `model` on the candidates and population (None without RMIA)."""
        if self.rmia_sets is None:
            return None
        setup = self.setup
        return rmia_signals(
            model,
            self.data,
            setup.task,
            self.rmia_sets,
            setup.image_size,
            self.device,
            self.cfg.rmia_augmentations,
            self.rmia_seed,
            setup.train.crop_scale,
            self.cache,
        )


@dataclass
class _Steps:
    """Counts the benchmark's steps and tells a callback which one starts, and when all are done."""

    total: int
    callback: ProgressCallback | None
    done: int = 0

    def begin(self, requests: int, seed: int, step: str) -> None:
        """Step `step` ("references" or a method name) of pass (requests, seed) starts."""
        self.report({"requests": requests, "seed": seed, "step": step})
        self.done += 1

    def finish(self) -> None:
        """Every step is done."""
        self.done = self.total
        self.report(None)

    def report(self, current: dict[str, Any] | None) -> None:
        if self.callback is not None:
            # `done` counts finished steps: the one starting now is not finished yet
            self.callback({"done": self.done, "total": self.total, "current": current})


def _rmia_columns(
    target: Signals | None, reference: Signals | None, labels: np.ndarray | None
) -> dict[str, float | None]:
    """RMIA AUC and TPR at 0.01% FPR of a target against its reference; None without RMIA."""
    if target is None or reference is None or labels is None:
        return dict.fromkeys(RMIA_COLUMNS)
    # a diverged target or reference has no meaningful likelihood ratio: report no score
    if not all(np.isfinite(signal).all() for signal in (*target, *reference)):
        return dict.fromkeys(RMIA_COLUMNS)
    result = rmia(target[0], reference[0], target[1], reference[1], labels)
    return {
        "rmia_auc": finite_or_none(result.auc),
        "rmia_tpr_at_0.01pct_fpr": finite_or_none(result.tpr_at_0_01pct_fpr),
    }


def _row(
    method: str, seed: int, requests: int, ev: Evaluation, ref: Evaluation, seconds: float | None
) -> dict[str, Any]:
    return {
        "method": method,
        "seed": seed,
        "requests": requests,
        "retain": ev.retain,
        "forget": ev.forget,
        "test": ev.test,
        "mia_auc": finite_or_none(ev.mia_auc),
        "mia_acc": ev.mia_acc,
        "tow": ev.tow(ref),
        "unlearn_seconds": seconds,
    }


def _unlearn(
    run: _Pass,
    method: UnlearningMethod,
    method_cfg: Any,
    start_model: nn.Module,
    artifacts: Artifacts,
    part: SplitIndices,
) -> tuple[nn.Module, float]:
    """Run `method` on a copy of `start_model` for `part`'s request; the model and its seconds."""
    request = run.request_for(method, start_model, part)
    model = copy.deepcopy(start_model).to(run.device)
    depth = run.tail_depth(method, model)
    if depth is not None:
        model = Tail(model, depth)
    start = time.perf_counter()
    model = method.unlearn(model, request, artifacts, method_cfg)
    if isinstance(model, Tail):
        model = model.network
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    return model, time.perf_counter() - start


def _reference_signals(
    run: _Pass, method: UnlearningMethod, method_cfg: Any, retrain: nn.Module
) -> Signals | None:
    """RMIA signals of the method's reference: the retrained model run through the method."""
    if run.rmia_sets is None:
        return None
    setup = run.setup
    artifacts, _ = prepare_method(
        method, method_cfg, retrain, run.data, setup.task, run.indices, setup.image_size, run.cache
    )
    reference, _ = _unlearn(run, method, method_cfg, retrain, artifacts, run.indices)
    return run.signals(reference)


def _method_row(
    run: _Pass, name: str, models: dict[str, nn.Module], reference: Evaluation
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Prepare and run one method on the original model; its row and resolved config."""
    setup = run.setup
    method = get_method(name)
    method_cfg = resolve_config(
        name,
        setup.dataset.name,
        setup.arch,
        run.requests,
        **run.cfg.method_overrides.get(name, {}),
    )
    artifacts, prepare_seconds = prepare_method(
        method,
        method_cfg,
        models["original"],
        run.data,
        setup.task,
        run.indices,
        setup.image_size,
        run.cache,
    )
    results, seconds, target = [], [], None
    for part in run.parts:
        model, took = _unlearn(run, method, method_cfg, models["original"], artifacts, part)
        seconds.append(took)
        results.append(
            protocol_results(
                model, run.data, setup.task, part, setup.image_size, run.device, run.cache
            )
        )
        target = run.signals(model)  # None unless RMIA runs, which needs a single part
        del model
    del artifacts
    ev = pool_single_requests(results, run.data.task(setup.task).kind)
    ref_signals = _reference_signals(run, method, method_cfg, models["retrain"])
    labels = run.rmia_sets.labels if run.rmia_sets is not None else None
    row = {
        **_row(name, run.seed, run.requests, ev, reference, float(np.mean(seconds))),
        **_rmia_columns(target, ref_signals, labels),
        "prepare_seconds": prepare_seconds,
        "config_calibrated": is_calibrated(name, setup.dataset.name, setup.arch, run.requests),
    }
    return row, asdict(method_cfg)


def _rmia_seed(requests: int, seed: int) -> int:
    """One augmentation and population seed per (request size, seed)."""
    return int(np.random.SeedSequence([seed, requests]).generate_state(1)[0])


def _run_pass(
    cfg: BenchmarkConfig,
    data: FaceData,
    requests: int,
    seed: int,
    device: torch.device,
    out: Path,
    progress: bool,
    steps: _Steps,
    cache: TrunkCache | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train both references, then evaluate them and every method; the rows and the run record."""
    setup = cfg.setup
    steps.begin(requests, seed, "references")
    pooled = requests == 1 and cfg.single_identities > 1
    if pooled:
        splits = make_splits(data.identities, data.keys, cfg.single_identities, seed, min_images=6)
        name = f"1x{cfg.single_identities}_{seed}"
    else:
        splits = make_splits(data.identities, data.keys, requests, seed)
        name = f"{requests}_{seed}"
    indices = split_indices(data, splits)
    seeded = replace(setup, train=replace(setup.train, seed=seed))
    trained = {}
    for role in ("original", "retrain"):
        path = out / "checkpoints" / f"{role}_{name}.pth"
        trained[role] = train_reference(
            seeded, data, splits, indices, role, device, path, progress, cache
        )
    models = {role: model for role, (model, _, _) in trained.items()}
    rmia_seed = _rmia_seed(requests, seed)
    run = _Pass(
        cfg=cfg,
        data=data,
        indices=indices,
        parts=[one_identity(data, indices, i) for i in range(len(indices.support))]
        if pooled
        else [indices],
        device=device,
        requests=requests,
        seed=seed,
        # RMIA scores one target model: pooled single-identity requests have several
        rmia_sets=rmia_sets(indices, cfg.rmia_population, rmia_seed)
        if cfg.rmia and not pooled
        else None,
        rmia_seed=rmia_seed,
        cache=cache,
    )
    evals = {role: run.evaluate(model) for role, model in models.items()}
    reference = evals["retrain"]
    labels = run.rmia_sets.labels if run.rmia_sets is not None else None
    retrain_signals = run.signals(models["retrain"])
    rows = [
        {
            **_row("original", seed, requests, evals["original"], reference, None),
            **_rmia_columns(run.signals(models["original"]), retrain_signals, labels),
        },
        {
            **_row("retrain", seed, requests, reference, reference, trained["retrain"][2] or None),
            **dict.fromkeys(RMIA_COLUMNS),
        },
    ]
    method_configs = {}
    for name in tqdm(
        cfg.methods, desc=f"methods N={requests} seed={seed}", disable=not progress, leave=False
    ):
        steps.begin(requests, seed, name)
        row, method_configs[name] = _method_row(run, name, models, reference)
        rows.append(row)
    record = {
        "requests": requests,
        "seed": seed,
        "splits_sha256": splits.sha256(),
        "checkpoints": {role: ckpt.sha256 for role, (_, ckpt, _) in trained.items()},
        "method_configs": method_configs,
    }
    return rows, record


def _passes(cfg: BenchmarkConfig) -> list[tuple[int, int]]:
    """The (request size, seed) passes in the order their rows are reported."""
    return [(requests, seed) for requests in cfg.requests for seed in cfg.seeds]


def _quiet_pass(
    cfg: BenchmarkConfig,
    data: FaceData,
    requests: int,
    seed: int,
    device: torch.device,
    out: Path,
    cache: TrunkCache | None,
) -> PassResult:
    """One pass without progress output, as a pass process runs it."""
    return _run_pass(cfg, data, requests, seed, device, out, False, _Steps(0, None), cache)


def run_benchmark(
    cfg: BenchmarkConfig,
    out: Path,
    progress: bool = True,
    on_progress: ProgressCallback | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run the protocol; write results.json, results.md and tow_vs_time.png to `out`.

    `on_progress` gets `{"done", "total", "current": {"requests", "seed", "step"}}` as each step
    (a pass's references, then each method) starts, and `current` None once everything is done.
    With `jobs` > 1 (CPU only) the passes run in that many processes, this process's torch
    threads divided among them, and `on_progress` hears of each pass as it ends (step
    "finished"); the rows are the same passes, in the same order, as one process gives.
    """
    methods = {name: get_method(name) for name in cfg.methods}  # fail before any training
    out.mkdir(parents=True, exist_ok=True)
    device = default_device()
    passes = _passes(cfg)
    jobs = max(1, min(jobs, len(passes))) if device.type == "cpu" else 1
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    steps = _Steps(len(passes) * (1 + len(cfg.methods)), on_progress)
    config = {
        **cfg.to_dict(),
        "method_needs": {name: method.needs for name, method in methods.items()},
        "code_version": __version__,
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processes": jobs,
        "runs": runs,
    }
    results: dict[str, Any] = {"config": config, "rows": rows}

    def write(done: dict[tuple[int, int], PassResult]) -> None:
        # after every pass, so that a long run that stops keeps what it measured
        rows[:] = [row for key in passes if key in done for row in done[key][0]]
        runs[:] = [done[key][1] for key in passes if key in done]
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(results, out / "results.md")

    if jobs > 1:
        threads = max(1, torch.get_num_threads() // jobs)
        per_pass = 1 + len(cfg.methods)

        def finished(key: tuple[int, int], done: dict[tuple[int, int], PassResult]) -> None:
            steps.done += per_pass
            steps.report({"requests": key[0], "seed": key[1], "step": "finished"})
            write(done)

        run_parallel(_quiet_pass, cfg, passes, out, jobs, threads, progress, finished)
    else:
        data = load_dataset(cfg.setup.dataset)
        cache = trunk_cache(cfg.setup, data, device)  # one for every pass: the trunk never changes
        done = {}
        for requests, seed in passes:
            done[(requests, seed)] = _run_pass(
                cfg, data, requests, seed, device, out, progress, steps, cache
            )
            write(done)
    plot_tow_vs_time(results, out / "tow_vs_time.png")
    steps.finish()
    return results
