"""Is the pretrained regime's tail faster in channels-last memory format on this CPU?

The unfrozen stages of EfficientNet-Lite0 (`models/nets/trunk.py`, `tail_features`) take about
41 % of a `lethe benchmark --preset pretrained` pass (py-spy, issue 12). This times one training
step (forward and backward) and one eval forward of that tail on cached trunk outputs, in the
default (contiguous) format and in channels-last, in the same run, and prints the ratio. It
changes nothing in Lethe: it says whether converting the tail is worth doing.

    .venv/bin/python bench/tail_channels_last.py                 # batch 64 at 112 px, depths 3, 4
    .venv/bin/python bench/tail_channels_last.py --depths 2,3,4,5 --repeats 16
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import timm
import torch
from torch import nn

from models.nets.trunk import tail_features


def trunk(model: nn.Module, images: torch.Tensor, depth: int) -> torch.Tensor:
    """The frozen trunk's outputs: stem and the first `depth` stages."""
    x = model.bn1(model.conv_stem(images))  # type: ignore[operator]
    for block in list(model.blocks)[:depth]:  # type: ignore[arg-type]
        x = block(x)
    return x


def seconds(step: Callable[[], object], repeats: int) -> float:
    """Mean wall time of `step` after two warm-up calls."""
    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats


def timed(
    model: nn.Module, cached: torch.Tensor, depth: int, fmt: torch.memory_format, repeats: int
) -> tuple[float, float]:
    """Seconds of one training step and one eval forward of the tail in memory format `fmt`."""
    net = model.to(memory_format=fmt)
    features = cached.contiguous(memory_format=fmt)

    def train_step() -> None:
        net.forward_head(tail_features(net, depth, features)).sum().backward()

    def eval_step() -> None:
        with torch.no_grad():
            net.forward_head(tail_features(net, depth, features))

    net.train()
    train = seconds(train_step, repeats)
    net.eval()
    return train, seconds(eval_step, repeats)


def main() -> None:
    """Time both formats at each depth and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--depths", default="3,4")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=40)
    images = torch.randn(args.batch, 3, args.size, args.size)
    for depth in (int(d) for d in args.depths.split(",")):
        with torch.no_grad():
            cached = trunk(model.eval(), images, depth)
        times = [
            timed(model, cached, depth, fmt, args.repeats)
            for fmt in (torch.contiguous_format, torch.channels_last)
        ]
        (train_c, eval_c), (train_l, eval_l) = times
        print(
            f"depth {depth}: train step {train_c * 1e3:.0f} ms contiguous, {train_l * 1e3:.0f} ms "
            f"channels-last ({train_c / train_l:.2f}×); eval {eval_c * 1e3:.0f} ms, "
            f"{eval_l * 1e3:.0f} ms ({eval_c / eval_l:.2f}×)"
        )


if __name__ == "__main__":
    main()
