"""Write a CelebA subset at real size, in the official layout, from synthfaces people.

A rehearsal for `lethe benchmark --dataset celeba --data-root DIR --preset pretrained` on a real
subset (about 6,000 aligned 178×218 crops of about 300 identities): the same files, formats and
quirks a real subset brings, with faces a model can memorize.

- `img_align_celeba/NNNNNN.jpg`: 178×218 JPEGs (a synthfaces face scaled into the crop), some
  grayscale, some progressive, a few with an EXIF orientation tag;
- `list_attr_celeba.txt`: count line, the 40 names (with CelebA's trailing space), `-1`/`1`
  values in runs of spaces; the synthfaces attributes (CelebA names) come from their labels,
  the other 23 are per-identity traits with unbalanced rates (1 % to 60 % positive) and 5 %
  per-photo flips;
- `identity_CelebA.txt` and `list_eval_partition.txt`, listing exactly the images present;
- identity counts long-tailed from 2 to 35 photos, as in CelebA.

    .venv/bin/python bench/celeba_subset.py --out runs/celeba-subset
    .venv/bin/lethe benchmark --dataset celeba --data-root runs/celeba-subset \\
        --preset pretrained --requests 5 --seeds 0 --methods all --out runs/celeba-bench
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from models.data import celeba
from models.data.synthfaces import SynthFaces, SynthFacesConfig
from models.data.synthfaces_traits import ATTRIBUTES as SYNTH_ATTRIBUTES

WIDTH, HEIGHT = 178, 218
FACE = 160  # the synthfaces render size, scaled into the crop


def _counts(rng: np.random.Generator, identities: int, images: int) -> np.ndarray:
    """Long-tailed photo counts in [2, 35] summing to about `images`."""
    raw = np.clip(
        np.round(rng.lognormal(np.log(images / identities) - 0.18, 0.6, identities)), 2, 35
    )
    raw[0], raw[-1] = 2, 35
    return raw.astype(int)


def _crop(face: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The face on a 178×218 canvas, as CelebA's aligned crops hold theirs."""
    canvas = Image.new("RGB", (WIDTH, HEIGHT), tuple(int(c) for c in rng.integers(0, 255, 3)))
    canvas.paste(Image.fromarray(face).resize((WIDTH, WIDTH), Image.BICUBIC), (0, 20))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write (the data root)")
    parser.add_argument("--identities", type=int, default=300)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    counts = _counts(rng, args.identities, args.images)
    faces = SynthFaces(
        SynthFacesConfig(num_identities=args.identities, image_size=FACE, seed=args.seed)
    )
    names_all = celeba.ATTRIBUTE_NAMES
    synth_columns = {name: names_all.index(name) for name in SYNTH_ATTRIBUTES}
    others = [k for k, name in enumerate(names_all) if name not in synth_columns]
    rates = rng.uniform(0.01, 0.6, len(others))

    root = Path(args.out)
    images = root / celeba.IMAGE_DIR
    images.mkdir(parents=True, exist_ok=True)
    data = faces.generate()  # labels of each synthfaces photo; photos re-rendered per count
    by_identity: dict[str, list[int]] = {}
    for row, identity in enumerate(data.identities):
        by_identity.setdefault(identity, []).append(row)

    rows, number = [], 0
    for person, (identity, count) in enumerate(zip(faces.identities, counts, strict=True)):
        trait = rng.random(len(others)) < rates
        for k in range(count):
            number += 1
            name = f"{number:06d}.jpg"
            if k < len(by_identity[identity]):
                source = by_identity[identity][k]
                face = data.load_image(source).permute(1, 2, 0).numpy()
                labels = data.targets["attributes"][source]
            else:  # more photos than synthfaces drew: new portraits, labels of its first photo
                face = faces.portrait(identity, k).permute(1, 2, 0).numpy()
                labels = data.targets["attributes"][by_identity[identity][0]]
            values = np.full(len(names_all), -1, dtype=int)
            for attribute, column in synth_columns.items():
                values[column] = 1 if labels[SYNTH_ATTRIBUTES.index(attribute)] else -1
            flips = rng.random(len(others)) < 0.05
            values[others] = np.where(trait ^ flips, 1, -1)
            image = _crop(face, rng)
            options: dict[str, object] = {"quality": int(rng.integers(70, 96))}
            kind = rng.random()
            if kind < 0.03:
                image = image.convert("L")  # grayscale JPEGs exist in CelebA
            elif kind < 0.06:
                options["progressive"] = True
            elif kind < 0.07:
                exif = Image.Exif()
                exif[0x0112] = 1  # orientation tag present, upright
                options["exif"] = exif
            image.save(images / name, format="JPEG", **options)
            partition = (
                0 if person < 0.8 * args.identities else 1 if person < 0.9 * args.identities else 2
            )
            rows.append((name, 10_000 + person, partition, values))

    attr = [str(len(rows)), " ".join(names_all) + " "]
    attr += [f"{n} " + " ".join(f"{v:2d}" for v in values) for n, _, _, values in rows]
    (root / celeba.ATTRIBUTE_FILE).write_text("\n".join(attr) + "\n")
    (root / celeba.IDENTITY_FILE).write_text("".join(f"{n} {i}\n" for n, i, _, _ in rows))
    (root / celeba.PARTITION_FILE).write_text("".join(f"{n} {p}\n" for n, _, p, _ in rows))
    print(
        f"wrote {len(rows)} images of {args.identities} identities to {root} "
        f"in {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
