"""The 1-SHUI benchmark: original, retrained reference and each method, per size and seed."""

from __future__ import annotations

import copy
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from models import __version__
from models.benchmark.report import write_markdown
from models.data.registry import load_dataset
from models.data.splits import make_splits, split_indices
from models.device import default_device
from models.methods import get_method, resolve_config
from models.protocol import (
    Evaluation,
    ModelSetup,
    evaluate_protocol,
    finite_or_none,
    prepare_method,
    support_request,
    train_reference,
)


@dataclass(frozen=True)
class BenchmarkConfig:
    """One benchmark run: the model setup, the request sizes, seeds and methods."""

    setup: ModelSetup
    requests: Sequence[int] = (5,)
    seeds: Sequence[int] = (0,)
    methods: Sequence[str] = ("jit",)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain form for results.json."""
        return {
            **self.setup.to_dict(),
            "requests": list(self.requests),
            "seeds": list(self.seeds),
            "methods": list(self.methods),
            "method_overrides": self.method_overrides,
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


def run_benchmark(cfg: BenchmarkConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Run the protocol and write `out/results.json` and `out/results.md`; return the results."""
    for method in cfg.methods:
        get_method(method)  # fail before any training on an unknown name
    out.mkdir(parents=True, exist_ok=True)
    device = default_device()
    setup = cfg.setup
    data = load_dataset(setup.dataset)
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for requests in cfg.requests:
        for seed in cfg.seeds:
            splits = make_splits(data.identities, data.keys, requests, seed)
            indices = split_indices(data, splits)
            seeded = replace(setup, train=replace(setup.train, seed=seed))
            models = {}
            for role in ("original", "retrain"):
                path = out / "checkpoints" / f"{role}_{requests}_{seed}.pth"
                model, checkpoint, seconds = train_reference(
                    seeded, data, splits, indices, role, device, path, progress
                )
                models[role] = (model, checkpoint, seconds)
            evals = {
                role: evaluate_protocol(m, data, setup.task, indices, setup.image_size, device)
                for role, (m, _, _) in models.items()
            }
            reference = evals["retrain"]
            rows.append(_row("original", seed, requests, evals["original"], reference, None))
            rows.append(
                _row("retrain", seed, requests, reference, reference, models["retrain"][2] or None)
            )
            original = models["original"][0]
            request = support_request(data, setup.task, indices, original, setup.image_size)
            method_configs = {}
            for name in tqdm(
                cfg.methods,
                desc=f"methods N={requests} seed={seed}",
                disable=not progress,
                leave=False,
            ):
                method = get_method(name)
                method_cfg = resolve_config(
                    name,
                    setup.dataset.name,
                    setup.arch,
                    requests,
                    **cfg.method_overrides.get(name, {}),
                )
                method_configs[name] = asdict(method_cfg)
                artifacts, prepare_seconds = prepare_method(
                    method, method_cfg, original, data, setup.task, indices, setup.image_size
                )
                model = copy.deepcopy(original).to(device)
                start = time.perf_counter()
                model = method.unlearn(model, request, artifacts, method_cfg)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                ev = evaluate_protocol(model, data, setup.task, indices, setup.image_size, device)
                rows.append(
                    {
                        **_row(name, seed, requests, ev, reference, seconds),
                        "prepare_seconds": prepare_seconds,
                    }
                )
            runs.append(
                {
                    "requests": requests,
                    "seed": seed,
                    "splits_sha256": splits.sha256(),
                    "checkpoints": {role: ckpt.sha256 for role, (_, ckpt, _) in models.items()},
                    "method_configs": method_configs,
                }
            )
    results = {
        "config": {
            **cfg.to_dict(),
            "code_version": __version__,
            "device": str(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "runs": runs,
        },
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, out / "results.md")
    return results
