"""Peak memory of onboarding's data path at CelebA-HQ scale: 30,000 images at 224 px.

Builds `PrepareData` over a data set whose images are generated on read (no disk, no decode),
then reads it the way preparation does: every identity's images, as MetaUnlearn's meta-epoch
does, VAL in batches, and one pass over the TRAIN loader, as SSD and PGU do. Prints the process's
peak resident memory against what stacking TRAIN and VAL in memory would take, and checks the bar
(peak ≤ 4 GiB). Exit status 1 when the bar fails.

    .venv/bin/python bench/prepare_memory.py                  # 30,000 images at 224 px
    .venv/bin/python bench/prepare_memory.py --images 5000 --size 128
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch

from models.data.base import FaceData, TaskSpec
from models.data.splits import make_splits, split_indices
from models.data.transforms import test_transform
from models.methods.prepare_data import build_prepare_data

GIB = 1024**3
BAR_BYTES = 4 * GIB


def peak_rss() -> int:
    """This process's peak resident set size in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def generated_faces(images: int, identities: int, size: int) -> FaceData:
    """`images` rows over `identities` people; each image drawn from its row's seed on read."""
    rng = np.random.default_rng(0)
    owners = np.sort(rng.integers(0, identities, images))

    def load(row: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(row)
        return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)

    labels = tuple(f"a{i}" for i in range(17))
    return FaceData(
        name="generated",
        keys=[f"{i:06d}.jpg" for i in range(images)],
        identities=[f"p{o}" for o in owners],
        tasks={"attributes": TaskSpec("attributes", "multilabel", labels)},
        targets={"attributes": rng.integers(0, 2, (images, 17)).astype(np.float32)},
        load_image=load,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30_000)
    parser.add_argument("--identities", type=int, default=6_000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = generated_faces(args.images, args.identities, args.size)
    indices = split_indices(data, make_splits(data.identities, data.keys, 10, 0))
    config = {"input_size": (3, args.size, args.size), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    baseline = peak_rss()
    start = time.perf_counter()
    prepared = build_prepare_data(data, "attributes", indices, test_transform(config))
    read = 0
    for images in prepared.train_identities.values():  # MetaUnlearn: per identity
        read += len(images[list(range(len(images)))])
    for begin in range(0, len(prepared.val_images), 64):  # VAL in batches
        read += len(
            prepared.val_images[list(range(begin, min(begin + 64, len(prepared.val_images))))]
        )
    for batch, _ in prepared.train:  # SSD, PGU: the TRAIN loader
        read += len(batch)
    seconds = time.perf_counter() - start
    stacked = (len(indices.train) + len(indices.val)) * 3 * args.size**2 * 4
    figures = {
        "images": args.images,
        "size": args.size,
        "images_read": read,
        "seconds": round(seconds, 1),
        "peak_rss_bytes": peak_rss(),
        "peak_rss_growth_bytes": peak_rss() - baseline,
        "stacked_train_val_bytes": stacked,
        "bar_bytes": BAR_BYTES,
    }
    figures["passed"] = figures["peak_rss_bytes"] <= BAR_BYTES
    print(
        f"{args.images} images at {args.size} px, {read} read in {seconds:.0f} s: peak RSS "
        f"{figures['peak_rss_bytes'] / GIB:.2f} GiB (+{figures['peak_rss_growth_bytes'] / GIB:.2f} "
        f"GiB while preparing); stacking TRAIN and VAL would take {stacked / GIB:.1f} GiB "
        f"({stacked / max(1, figures['peak_rss_bytes']):.0f}× the peak)"
    )
    print(f"bar {'PASS' if figures['passed'] else 'FAIL'}: peak ≤ {BAR_BYTES / GIB:.0f} GiB")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
