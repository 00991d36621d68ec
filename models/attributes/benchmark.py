"""The attribute-unlearning benchmark: train a model, erase each attribute, audit with fresh probes.

Per seed it trains one model (the setup's preset, task and data), then for every attribute and
method erases it from a copy, fitting on a fresh synthfaces generation of the training
distribution (people the model never saw), and audits before and after with probes fitted and
scored on a second fresh generation split by identity. Rows hold every audit figure and the cost.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from models import __version__
from models.attributes.audit import audit_attribute
from models.attributes.erase import METHODS, erase_attributes
from models.attributes.labels import attribute_labels
from models.attributes.leace import eraser_from_dict
from models.attributes.mi_detach import MIDetachConfig, mi_detach
from models.attributes.report import plot_leakage, write_report
from models.attributes.run import (
    PROBE_SEED_OFFSET,
    check_erasable,
    identity_halves,
    task_score,
)
from models.data.registry import load_dataset
from models.data.splits import make_splits, split_indices
from models.device import default_device
from models.protocol import ModelSetup, train_reference

FIT_SEED_OFFSET = 2000


@dataclass(frozen=True)
class AttributeBenchmarkConfig:
    """One attribute benchmark: the model setup, attributes, methods, seeds and data sizes."""

    setup: ModelSetup
    attributes: Sequence[str] = ("Eyeglasses", "Smiling", "Male", "Black_Hair")
    methods: Sequence[str] = ("leace",)
    seeds: Sequence[int] = (1, 2, 3)
    fit_identities: int = 2000
    probe_identities: int = 2000
    mlp: bool = True
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain form for results.json."""
        return {
            **self.setup.to_dict(),
            "attributes": list(self.attributes),
            "methods": list(self.methods),
            "seeds": list(self.seeds),
            "fit_identities": self.fit_identities,
            "probe_identities": self.probe_identities,
            "mlp": self.mlp,
            "method_options": self.method_options,
        }


def _generation(setup: ModelSetup, offset: int, seed: int, identities: int) -> Any:
    spec = replace(
        setup.dataset, seed=setup.dataset.seed + offset + seed, num_identities=identities
    )
    return load_dataset(spec)


def _seed_rows(
    cfg: AttributeBenchmarkConfig, seed: int, device: torch.device
) -> list[dict[str, Any]]:
    """Train the seed's model and erase each attribute from a copy with each method."""
    setup = replace(cfg.setup, train=replace(cfg.setup.train, seed=seed))
    data = load_dataset(setup.dataset)
    spec = data.task(setup.task)
    for name in cfg.attributes:
        check_erasable(name, setup.task, spec.labels)
    splits = make_splits(data.identities, data.keys, 1, seed)
    indices = split_indices(data, splits)
    model, _, train_seconds = train_reference(
        setup, data, splits, indices, "retrain", device, progress=False
    )
    fit = _generation(setup, FIT_SEED_OFFSET, seed, cfg.fit_identities)
    probe = _generation(setup, PROBE_SEED_OFFSET, seed, cfg.probe_identities)
    probe_train, probe_test = identity_halves(probe)
    size = setup.image_size

    score = task_score(model, data, setup.task, indices.test, size, device)
    rows = []
    for name in cfg.attributes:
        labels = attribute_labels(probe, name)
        before = audit_attribute(
            model, probe, labels, probe_train, probe_test, size, device, cfg.mlp
        )
        for method in cfg.methods:
            erased = copy.deepcopy(model)
            fit_labels, fit_rows = attribute_labels(fit, name), range(len(fit.keys))
            start = time.perf_counter()
            if method == "mi_detach":
                options = cfg.method_options.get(method, {})
                record = mi_detach(
                    erased, fit, setup.task, fit_rows, fit_labels, size, device,
                    MIDetachConfig(**options),
                )  # fmt: skip
                erasers = []
            else:
                record = erase_attributes(erased, fit, [fit_labels], fit_rows, size, device)
                erasers = [eraser_from_dict(record["eraser"])]
            seconds = time.perf_counter() - start
            after = audit_attribute(
                erased, probe, labels, probe_train, probe_test, size, device, cfg.mlp, erasers
            )
            score_after = task_score(erased, data, setup.task, indices.test, size, device)
            rows.append(
                {
                    "seed": seed,
                    "attribute": name,
                    "method": method,
                    "chance": after.chance,
                    "floor": after.floor,
                    "encoded_before": before.encoded,
                    "before": before.to_dict(),
                    "after": after.to_dict(),
                    "linear_leakage": after.linear.balanced_accuracy - after.floor,
                    "mlp_leakage": None
                    if after.mlp is None
                    else after.mlp.balanced_accuracy - after.floor,
                    "task_before": score,
                    "task_after": score_after,
                    "task_drop": score - score_after,
                    "fit_images": record["fit_images"],
                    "rank": record.get("rank"),
                    "seconds": seconds,
                    "train_seconds": train_seconds,
                }
            )
            del erased
    return rows


def run_attribute_benchmark(cfg: AttributeBenchmarkConfig, out: Path) -> dict[str, Any]:
    """Run every seed; write results.json, results.md and leakage_vs_task.png to `out`."""
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown attribute methods {unknown}; known: {', '.join(METHODS)}")
    for method, options in cfg.method_options.items():
        known = {f.name for f in fields(MIDetachConfig)} if method == "mi_detach" else set()
        extra = sorted(set(options) - known)
        if method not in cfg.methods or extra:
            raise ValueError(f"unknown {method} options {extra or sorted(options)}")
    out.mkdir(parents=True, exist_ok=True)
    device = default_device()
    rows: list[dict[str, Any]] = []
    results = {
        "config": {**cfg.to_dict(), "code_version": __version__, "torch": torch.__version__},
        "rows": rows,
    }
    for seed in cfg.seeds:
        rows += _seed_rows(cfg, seed, device)
        # after every seed, so that a long run that stops keeps what it measured
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        write_report(results, out / "results.md")
    plot_leakage(results, out / "leakage_vs_task.png")
    return results
