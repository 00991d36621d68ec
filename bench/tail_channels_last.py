"""Is the pretrained regime's tail faster with channels-last weights on this CPU?

The unfrozen stages of EfficientNet-Lite0 take most of a `lethe benchmark --preset pretrained`
pass (py-spy, issue 12), and `models.nets.factory.create_model` gives every network
channels-last weights, which makes its convolutions run channels-last. This times one training
step (forward and backward) and one eval forward of that tail on cached (contiguous) trunk
outputs, with contiguous and with channels-last weights, in the same run, at the preset's
training batch (32) and evaluation batch (256), and prints the ratios; then the same for whole
networks on images (`--whole`: the scratch preset's network at 64 px by default).

    .venv/bin/python bench/tail_channels_last.py                 # depth 5 (the preset's), 112 px
    .venv/bin/python bench/tail_channels_last.py --depths 3,4,5 --threads 1
    .venv/bin/python bench/tail_channels_last.py --whole test_resnet@64,tf_efficientnet_lite0@112
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import timm
import torch
from torch import nn

from models.nets.trunk import run_trunk


def tail(model: nn.Module, depth: int, features: torch.Tensor) -> torch.Tensor:
    """The tail's logits on trunk outputs `features`."""
    x = features
    for block in list(model.blocks)[depth:]:  # type: ignore[arg-type]
        x = block(x)
    return model.forward_head(model.bn2(model.conv_head(x)))  # type: ignore[operator]


def seconds(step: Callable[[], object], repeats: int) -> float:
    """Mean wall time of `step` after two warm-up calls."""
    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats


def timed(
    model: nn.Module,
    train_batch: torch.Tensor,
    eval_batch: torch.Tensor,
    depth: int,
    fmt: torch.memory_format,
    repeats: int,
    forward: Callable[[nn.Module, int, torch.Tensor], torch.Tensor] = tail,
) -> tuple[float, float]:
    """Seconds of one training step and one eval forward of the tail, weights in format `fmt`."""
    model = model.to(memory_format=fmt)
    train_features, eval_features = train_batch, eval_batch

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        forward(model, depth, train_features).sum().backward()

    def eval_step() -> None:
        with torch.inference_mode():
            forward(model, depth, eval_features)

    model.train()
    train = seconds(train_step, repeats)
    model.eval()
    return train, seconds(eval_step, repeats)


def whole(model: nn.Module, depth: int, images: torch.Tensor) -> torch.Tensor:
    """The whole network's logits on `images` (`depth` unused)."""
    return model(images)  # type: ignore[no-any-return]


def report(label: str, times: list[tuple[float, float]]) -> None:
    """Print both formats' times and their ratios."""
    (train_c, eval_c), (train_l, eval_l) = times
    print(
        f"{label}: train step {train_c * 1e3:.0f} ms contiguous weights, {train_l * 1e3:.0f} ms "
        f"channels-last ({train_c / train_l:.2f}×); eval {eval_c * 1e3:.0f} ms, "
        f"{eval_l * 1e3:.0f} ms ({eval_c / eval_l:.2f}×)"
    )


def main() -> None:
    """Time both formats at each depth and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--eval-batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--depths", default="5")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--whole", default="test_resnet@64", help="ARCH@SIZE,... ('' for none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=40)
    images = torch.randn(args.eval_batch, 3, args.size, args.size)
    print(f"{args.threads} threads, train batch {args.train_batch}, eval batch {args.eval_batch}")
    for depth in (int(d) for d in args.depths.split(",")):
        with torch.no_grad():
            cached = run_trunk(model.eval(), depth, images)
        train_batch = cached[: args.train_batch].clone()
        times = [
            timed(model, train_batch, cached, depth, fmt, args.repeats)
            for fmt in (torch.contiguous_format, torch.channels_last)
        ]
        report(f"tail after depth {depth}", times)
    for spec in filter(None, args.whole.split(",")):
        arch, size = spec.split("@")
        net = timm.create_model(arch, num_classes=40)
        batch = torch.randn(args.eval_batch, 3, int(size), int(size))
        times = [
            timed(net, batch[: args.train_batch].clone(), batch, 0, fmt, args.repeats, whole)
            for fmt in (torch.contiguous_format, torch.channels_last)
        ]
        report(f"{arch} at {size} px, whole", times)


if __name__ == "__main__":
    main()
