"""What erasing an attribute with LEACE costs, against one training epoch, in the same run.

Issue 14's bar: LEACE on 20,000 fit images in at most 60 s on 2 CPU cores, feature extraction
included. This generates a synthfaces data set of at least that many images (not timed), takes
a freshly built network of the preset's architecture, and times `erase_attributes` (pre-logit
features of every fit image, the LEACE fit, the fold into the head) for Eyeglasses and for the
8-class age group jointly; then one epoch of the preset's training recipe on the same images.
Exit status 1 when the bar fails.

    .venv/bin/python bench/leace_cost.py                         # scratch preset, 20,000 images
    .venv/bin/python bench/leace_cost.py --preset pretrained --images 5000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import torch

from models.attributes.erase import erase_attributes
from models.attributes.labels import attribute_labels
from models.data.synthfaces import SynthFacesConfig, load_synthfaces
from models.device import default_device
from models.presets import preset_setup
from models.protocol import build_model
from models.train.trainer import train_model

BAR_SECONDS = 60.0
MEAN_IMAGES_PER_IDENTITY = 6.0  # synthfaces draws about 6.7; asking for fewer overshoots


def main() -> None:
    """Time LEACE and one training epoch; print both and the ratio as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="scratch")
    parser.add_argument("--images", type=int, default=20_000)
    args = parser.parse_args()
    setup = preset_setup(args.preset, dataset_name="synthfaces", task="age")
    started = time.perf_counter()
    identities = int(args.images / MEAN_IMAGES_PER_IDENTITY) + 1
    data = load_synthfaces(SynthFacesConfig(num_identities=identities, image_size=setup.image_size))
    rows = list(range(min(args.images, len(data.keys))))
    generated = time.perf_counter() - started
    device = default_device()
    torch.manual_seed(0)
    model = build_model(setup, data)
    labels = [attribute_labels(data, "Eyeglasses"), attribute_labels(data, "age")]
    started = time.perf_counter()
    record = erase_attributes(model, data, labels, rows, setup.image_size, device)
    leace = time.perf_counter() - started
    fresh = build_model(setup, data)
    started = time.perf_counter()
    one_epoch = replace(setup.train, epochs=1, warmup_epochs=0)
    train_model(
        fresh, data, setup.task, rows, rows[:256], one_epoch, setup.image_size, device, False
    )
    epoch = time.perf_counter() - started
    figures = {
        "preset": args.preset,
        "arch": setup.arch,
        "image_size": setup.image_size,
        "fit_images": len(rows),
        "threads": torch.get_num_threads(),
        "leace_seconds": round(leace, 1),
        "rank": record["rank"],
        "one_epoch_seconds": round(epoch, 1),
        "leace_per_epoch": round(leace / epoch, 3),
        "generation_seconds": round(generated, 1),
        "bar_seconds": BAR_SECONDS,
    }
    print(json.dumps(figures, indent=2))
    print(f"LEACE on {len(rows):,} images: {leace:.1f} s; one training epoch: {epoch:.1f} s")
    sys.exit(0 if leace <= BAR_SECONDS else 1)


if __name__ == "__main__":
    main()
