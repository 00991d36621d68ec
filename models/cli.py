"""`lethe` command line: train, unlearn, evaluate and benchmark face models."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

# No hub downloads, ever: fail fast if some code path asks for pretrained weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _value(text: str) -> Any:
    """Parse an override value as JSON where possible (numbers, booleans), else keep the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _overrides(items: Sequence[str], *, scoped: bool) -> dict[str, Any]:
    """`key=value` (or `method.key=value` when scoped) pairs as a (nested) dict."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        if scoped:
            method, dot, option = key.partition(".")
            if not dot:
                raise SystemExit(f"--set expects method.option=value, got {item!r}")
            result.setdefault(method, {})[option] = _value(value)
        else:
            result[key] = _value(value)
    return result


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    from models.catalog import DATASETS, DEFAULT_DATASET, DEFAULT_PRESET, PRESETS

    parser.add_argument("--dataset", default=DEFAULT_DATASET, help=", ".join(DATASETS))
    parser.add_argument("--data-root", help="folder of a real data set, in its published layout")
    parser.add_argument("--task", help="attributes or age (default: the data set's own task)")
    parser.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        choices=list(PRESETS),
        help="network, weights, resolution and training recipe; "
        + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()),
    )
    parser.add_argument("--arch", help="any timm architecture name (default: the preset's)")
    parser.add_argument("--image-size", type=int, help="default: the preset's")
    parser.add_argument("--synth-identities", type=int, help="synthfaces: number of identities")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the CPU recipe's)")
    parser.add_argument("--lr", type=float, help="training learning rate")


def _setup(args: argparse.Namespace) -> Any:
    from models.presets import preset_setup

    return preset_setup(
        args.preset,
        dataset_name=args.dataset,
        data_root=args.data_root,
        task=args.task,
        arch=args.arch,
        image_size=args.image_size,
        synth_identities=args.synth_identities,
        epochs=args.epochs,
        lr=args.lr,
    )


def _print(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, indent=2))


def cmd_train(args: argparse.Namespace) -> None:
    """Train an original (or retrained-reference) model on the protocol's splits."""
    from models.data.registry import load_dataset
    from models.data.splits import make_splits, split_indices
    from models.device import default_device
    from models.protocol import train_reference, trunk_cache

    setup = _setup(args)
    data = load_dataset(setup.dataset)
    splits = make_splits(data.identities, data.keys, args.requests, args.seed)
    indices = split_indices(data, splits)
    setup = replace(setup, train=replace(setup.train, seed=args.seed))
    out, device = Path(args.out), default_device()
    _, checkpoint, seconds = train_reference(
        setup, data, splits, indices, args.role, device, out, cache=trunk_cache(setup, data, device)
    )
    _print(
        {
            "checkpoint": str(out),
            "sha256": checkpoint.sha256,
            "role": args.role,
            "train_seconds": round(seconds, 2),
            "splits_sha256": splits.sha256(),
            "forget_identities": list(splits.forget),
        }
    )


def _load(path: str) -> tuple[Any, Any, Any, Any]:
    """A checkpoint, its network, its data set and the split indices it was trained with."""
    from models.data.registry import DatasetSpec, load_dataset
    from models.data.splits import Splits, split_indices
    from models.protocol import model_from_checkpoint
    from models.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    data = load_dataset(DatasetSpec(**checkpoint.config["dataset"]))
    indices = split_indices(data, Splits.from_dict(checkpoint.splits))
    return checkpoint, model_from_checkpoint(checkpoint), data, indices


def cmd_unlearn(args: argparse.Namespace) -> None:
    """Make a checkpoint forget its request's identities from their support images."""
    from models.device import default_device
    from models.methods import get_method, resolve_config
    from models.protocol import prepare_method, support_request
    from models.train.checkpoint import Checkpoint, save_checkpoint

    checkpoint, model, data, indices = _load(args.checkpoint)
    config = checkpoint.config
    method = get_method(args.method)
    if method.needs != "support":
        raise SystemExit(
            f"method {args.method!r} needs retain data; use it through `lethe benchmark`"
        )
    method_cfg = resolve_config(
        args.method,
        config["dataset"]["name"],
        checkpoint.arch,
        len(indices.support),
        **_overrides(args.set, scoped=False),
    )
    device = default_device()
    request = support_request(data, config["task"], indices, model, int(config["image_size"]))
    artifacts, _ = prepare_method(
        method, method_cfg, model, data, config["task"], indices, int(config["image_size"])
    )
    start = time.perf_counter()
    model = method.unlearn(model.to(device), request, artifacts, method_cfg)
    seconds = time.perf_counter() - start
    lineage = {
        "parent_sha256": checkpoint.sha256,
        "method": args.method,
        "method_config": asdict(method_cfg),
        "identities": request.identities,
        "seconds": seconds,
    }
    new = Checkpoint(
        arch=checkpoint.arch,
        task=checkpoint.task,
        config={**config, "unlearning": [*config.get("unlearning", []), lineage]},
        splits=checkpoint.splits,
        state_dict=model.state_dict(),
    )
    sha = save_checkpoint(args.out, new)
    _print({"checkpoint": args.out, "sha256": sha, **lineage})


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Scores on retain/forget/test, the loss MIA and, against a reference, Tug-of-War."""
    from models.device import default_device
    from models.protocol import evaluate_protocol

    checkpoint, model, data, indices = _load(args.checkpoint)
    device = default_device()
    task, size = checkpoint.config["task"], int(checkpoint.config["image_size"])
    evaluation = evaluate_protocol(model, data, task, indices, size, device)
    payload: dict[str, Any] = {
        "checkpoint": args.checkpoint,
        "sha256": checkpoint.sha256,
        **asdict(evaluation),
    }
    if args.reference:
        ref_checkpoint, ref_model, _, _ = _load(args.reference)
        if ref_checkpoint.splits != checkpoint.splits:
            raise SystemExit(
                "the reference was trained on other splits; Tug-of-War would be meaningless"
            )
        reference = evaluate_protocol(ref_model, data, task, indices, size, device)
        payload["reference"] = asdict(reference)
        payload["tow"] = evaluation.tow(reference)
    _print(payload)


def cmd_erase_attribute(args: argparse.Namespace) -> None:
    """Erase attributes from a checkpoint's features (LEACE in its head), audited by probes."""
    from models.attributes.run import erase_and_audit
    from models.device import default_device
    from models.train.checkpoint import Checkpoint, save_checkpoint

    checkpoint, model, data, indices = _load(args.checkpoint)
    attributes = [a for a in args.attribute.split(",") if a]
    try:
        report = erase_and_audit(
            model,
            checkpoint.config,
            checkpoint.task["labels"],
            data,
            indices,
            attributes,
            default_device(),
            probe_identities=args.probe_identities,
            mlp=not args.no_mlp,
        )
    except ValueError as error:
        raise SystemExit(f"lethe erase-attribute: {error}") from None
    erased = [*checkpoint.config.get("erased_attributes", []), report["erasure"]]
    new = Checkpoint(
        arch=checkpoint.arch,
        task=checkpoint.task,
        config={**checkpoint.config, "erased_attributes": erased},
        splits=checkpoint.splits,
        state_dict=model.state_dict(),
    )
    sha = save_checkpoint(args.out, new)
    shown = {**report, "erasure": {k: v for k, v in report["erasure"].items() if k != "eraser"}}
    _print({"checkpoint": args.out, "sha256": sha, "parent_sha256": checkpoint.sha256, **shown})


def cmd_attribute_benchmark(args: argparse.Namespace) -> None:
    """Train a model per seed, erase each attribute, audit it with fresh probes; write a report."""
    from models.attributes.benchmark import AttributeBenchmarkConfig, run_attribute_benchmark

    if args.dataset != "synthfaces":
        raise SystemExit("the attribute benchmark fits and probes on fresh synthfaces generations")
    args.task = args.task or "age"
    cfg = AttributeBenchmarkConfig(
        setup=_setup(args),
        attributes=[a for a in args.attributes.split(",") if a],
        methods=[m for m in args.methods.split(",") if m],
        seeds=args.seeds,
        fit_identities=args.fit_identities,
        probe_identities=args.probe_identities,
        mlp=not args.no_mlp,
        method_options=_overrides(args.set, scoped=True),
    )
    out = Path(args.out)
    start = time.perf_counter()
    try:
        run_attribute_benchmark(cfg, out)
    except ValueError as error:
        raise SystemExit(f"lethe attribute-benchmark: {error}") from None
    print((out / "results.md").read_text())
    print(
        f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'leakage_vs_task.png'} "
        f"in {time.perf_counter() - start:.0f} s"
    )


def benchmark_config(args: argparse.Namespace) -> Any:
    """The BenchmarkConfig of parsed `lethe benchmark` arguments (shared with the worker's job)."""
    from models.benchmark.config import BenchmarkConfig
    from models.methods import list_methods

    methods = list_methods() if args.methods == "all" else [m for m in args.methods.split(",") if m]
    return BenchmarkConfig(
        setup=_setup(args),
        requests=args.requests,
        seeds=args.seeds,
        methods=methods,
        method_overrides=_overrides(args.set, scoped=True),
        rmia=not args.no_rmia,
        rmia_augmentations=args.rmia_augs,
        rmia_population=args.rmia_population,
        single_identities=args.single_identities,
    )


def benchmark_jobs(jobs: int | None) -> int:
    """Processes for a benchmark's passes: `jobs`, or by default one per torch thread this
    command was given (LETHE_TORCH_THREADS or its share of the cores); the runner caps it at
    one per pass."""
    import torch

    return jobs if jobs is not None else torch.get_num_threads()


def cmd_benchmark(args: argparse.Namespace) -> None:
    """Run the 1-SHUI protocol and write results.json, results.md and tow_vs_time.png."""
    from models.benchmark.runner import run_benchmark

    cfg = benchmark_config(args)
    out = Path(args.out)
    start = time.perf_counter()
    run_benchmark(cfg, out, progress=not args.quiet, jobs=benchmark_jobs(args.jobs))
    print((out / "results.md").read_text())
    print(
        f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'tow_vs_time.png'} "
        f"in {time.perf_counter() - start:.0f} s"
    )


def build_parser() -> argparse.ArgumentParser:
    """The `lethe` argument parser."""
    parser = argparse.ArgumentParser(prog="lethe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help=cmd_train.__doc__)
    _add_model_args(train)
    train.add_argument(
        "--requests", type=int, default=5, help="forget identities whose support image is held out"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--role", choices=("original", "retrain"), default="original")
    train.add_argument("--out", required=True, help="checkpoint file to write")
    train.set_defaults(func=cmd_train)

    unlearn = commands.add_parser("unlearn", help=cmd_unlearn.__doc__)
    unlearn.add_argument("--checkpoint", required=True)
    unlearn.add_argument("--method", default="jit")
    unlearn.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a method option"
    )
    unlearn.add_argument("--out", required=True, help="checkpoint file to write")
    unlearn.set_defaults(func=cmd_unlearn)

    evaluate = commands.add_parser("evaluate", help=cmd_evaluate.__doc__)
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--reference", help="retrained reference checkpoint, for Tug-of-War")
    evaluate.set_defaults(func=cmd_evaluate)

    erase = commands.add_parser("erase-attribute", help=cmd_erase_attribute.__doc__)
    erase.add_argument("--checkpoint", required=True)
    erase.add_argument("--attribute", required=True, help="one or more, comma-separated")
    erase.add_argument("--method", choices=("leace",), default="leace")
    erase.add_argument(
        "--probe-identities",
        type=_positive,
        default=400,
        help="synthfaces: people of the fresh generation the probes read (default 400)",
    )
    erase.add_argument("--no-mlp", action="store_true", help="audit with the linear probe only")
    erase.add_argument("--out", required=True, help="checkpoint file to write")
    erase.set_defaults(func=cmd_erase_attribute)

    attr = commands.add_parser("attribute-benchmark", help=cmd_attribute_benchmark.__doc__)
    _add_model_args(attr)
    attr.add_argument("--attributes", default="Eyeglasses,Smiling,Male,Black_Hair")
    attr.add_argument("--methods", default="leace", help="comma-separated: leace, mi_detach")
    attr.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="a method option, e.g. mi_detach.lambda_z=3",
    )
    attr.add_argument("--seeds", type=_ints, default=[1, 2, 3])
    attr.add_argument("--fit-identities", type=_positive, default=2000)
    attr.add_argument("--probe-identities", type=_positive, default=2000)
    attr.add_argument("--no-mlp", action="store_true", help="audit with the linear probe only")
    attr.add_argument("--out", required=True, help="output folder")
    attr.set_defaults(func=cmd_attribute_benchmark)

    bench = commands.add_parser("benchmark", help=cmd_benchmark.__doc__)
    _add_model_args(bench)
    bench.add_argument("--requests", type=_ints, default=[5], help="request sizes, e.g. 5,10")
    bench.add_argument("--seeds", type=_ints, default=[0], help="seeds, e.g. 0,1,2")
    bench.add_argument("--methods", default="jit", help="comma-separated method names, or all")
    bench.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="override a method option",
    )
    bench.add_argument(
        "--rmia-augs",
        type=int,
        default=2,  # BenchmarkConfig's defaults; the parser must not import torch
        help="RMIA: augmented views per sample (default 2)",
    )
    bench.add_argument(
        "--rmia-population",
        type=int,
        default=500,
        help="RMIA: at most this many population rows (default 500)",
    )
    bench.add_argument("--no-rmia", action="store_true", help="skip RMIA (its columns stay empty)")
    bench.add_argument(
        "--single-identities",
        type=int,
        default=5,
        help="N = 1: one-identity requests per seed, scored together against one reference pair "
        "(default 5; 1 is the paper's single draw)",
    )
    bench.add_argument(
        "--jobs",
        type=_positive,
        help="processes that run (request size, seed) passes at once, this command's torch threads "
        "divided among them (default: one per thread, at most one per pass; CPU only)",
    )
    bench.add_argument("--out", required=True, help="output folder")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(func=cmd_benchmark)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> None:
    """Parse `argv` and run the chosen command; input errors exit with status 2 and a message."""
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lethe: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: Sequence[str] | None = None) -> None:
    """The ML commands alone (the `lethe` console script adds the service's, see worker/cli.py)."""
    run(build_parser(), argv)


if __name__ == "__main__":
    main()
