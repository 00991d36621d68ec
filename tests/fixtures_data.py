"""Tiny data set folders in the published CelebA, CelebA-HQ and MUFAC layouts, for tests.

Images are small random-noise JPEGs; text and CSV files follow the real formats, so the real
loaders read them unchanged. Each writer returns the folder it filled.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from models.data import celeba, celebahq, mufac
from models.data.base import age_group

CELEBA_ATTRIBUTES = celeba.ATTRIBUTE_NAMES
CELEBA_SIZE = (20, 24)  # (width, height): CelebA's 178x218 crops, scaled down
CELEBAHQ_SIZE = (24, 24)
MUFAC_SIZE = (16, 16)
MUFAC_ROLES = ("D", "M", "F", "S", "GM", "GF")


def write_jpeg(path: Path, size: tuple[int, int], rng: np.random.Generator) -> None:
    """A random-noise RGB JPEG of `size` (width, height)."""
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def attribute_line(name: str, values: np.ndarray) -> str:
    """A row as in list_attr_celeba.txt: values right-aligned in width 2, so `1` gets two spaces."""
    return name + " " + " ".join(f"{int(v):2d}" for v in values)


def write_attribute_file(path: Path, names: list[str], values: np.ndarray) -> None:
    """Count line, attribute-name line (with CelebA's trailing space), one row per image."""
    lines = [str(len(names)), " ".join(CELEBA_ATTRIBUTES) + " "]
    lines += [attribute_line(name, row) for name, row in zip(names, values, strict=True)]
    write_lines(path, lines)


def write_lines(path: Path, lines: list[str]) -> None:
    """Write `lines`, newline-terminated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def shuffled_owners(num_identities: int, per_identity: int, rng: np.random.Generator) -> list[int]:
    """Identity index of each image, images of one identity scattered as in the real files."""
    return [int(i) for i in rng.permutation(np.repeat(np.arange(num_identities), per_identity))]


def celeba_identity_numbers(count: int, rng: np.random.Generator) -> list[int]:
    """Distinct CelebA-style identity numbers (1..10177)."""
    return [int(n) for n in rng.choice(np.arange(1, 10178), size=count, replace=False)]


def write_celeba_fixture(
    root: Path | str, num_identities: int = 6, images_per_identity: int = 3, seed: int = 0
) -> Path:
    """A CelebA folder in torchvision's layout, written directly into `root`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    count = num_identities * images_per_identity
    names = [f"{i:06d}.jpg" for i in range(1, count + 1)]
    numbers = celeba_identity_numbers(num_identities, rng)
    owners = shuffled_owners(num_identities, images_per_identity, rng)
    values = rng.choice(np.array([-1, 1]), size=(count, len(CELEBA_ATTRIBUTES)))
    # Sequential partition like the real file: train first, then valid, then test.
    partition = [0 if i < 0.8 * count else 1 if i < 0.9 * count else 2 for i in range(count)]
    for name in names:
        write_jpeg(root / celeba.IMAGE_DIR / name, CELEBA_SIZE, rng)
    write_attribute_file(root / celeba.ATTRIBUTE_FILE, names, values)
    write_lines(
        root / celeba.IDENTITY_FILE,
        [f"{name} {numbers[owner]}" for name, owner in zip(names, owners, strict=True)],
    )
    write_lines(
        root / celeba.PARTITION_FILE,
        [f"{name} {code}" for name, code in zip(names, partition, strict=True)],
    )
    return root


def write_celebahq_fixture(
    root: Path | str,
    num_identities: int = 6,
    images_per_identity: int = 3,
    seed: int = 0,
    num_unidentified: int = 2,
) -> Path:
    """A CelebAMask-HQ folder; the last `num_unidentified` images have no identity row."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    identified = num_identities * images_per_identity
    names = [f"{i}.jpg" for i in range(identified + num_unidentified)]
    numbers = celeba_identity_numbers(num_identities, rng)
    owners = shuffled_owners(num_identities, images_per_identity, rng)
    values = rng.choice(np.array([-1, 1]), size=(len(names), len(CELEBA_ATTRIBUTES)))
    for name in names:
        write_jpeg(root / celebahq.IMAGE_DIR / name, CELEBAHQ_SIZE, rng)
    write_attribute_file(root / celebahq.ATTRIBUTE_FILE, names, values)
    write_lines(
        root / celebahq.IDENTITY_FILE,
        [
            f"{name} {numbers[owner]}"
            for name, owner in zip(names[:identified], owners, strict=True)
        ],
    )
    return root


def mufac_person_rows(
    family: str, role: str, per_person: int, rng: np.random.Generator
) -> list[list[str]]:
    """CSV rows of one person photographed at several ages, named like `F0001_AGE_D_18_a1.jpg`."""
    age_now = int(rng.integers(20, 81))
    reachable = mufac.AGE_LETTERS[: age_group(age_now) + 1]
    letters = sorted(str(rng.choice(reachable)) for _ in range(per_person))
    counts: dict[str, int] = {}
    rows = []
    for letter in letters:
        counts[letter] = counts.get(letter, 0) + 1
        image = f"{family}_AGE_{role}_{age_now}_{letter}{counts[letter]}.jpg"
        rows.append([family, role, letter, image])
    return rows


def write_mufac_fixture(
    root: Path | str, num_identities: int = 6, images_per_identity: int = 3, seed: int = 0
) -> Path:
    """A MUFAC folder: families of two people, dealt to train, val and test in turn."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    split_rows: dict[str, list[list[str]]] = {split: [] for split in mufac.SPLITS}
    for person in range(num_identities):
        family_index, member = divmod(person, 2)
        split = mufac.SPLITS[family_index % len(mufac.SPLITS)]
        family = f"F{family_index + 1:04d}"
        rows = mufac_person_rows(family, MUFAC_ROLES[member], images_per_identity, rng)
        split_rows[split] += rows
    for split, rows in split_rows.items():
        for row in rows:
            write_jpeg(root / mufac.image_dir_name(split) / row[-1], MUFAC_SIZE, rng)
        (root / mufac.image_dir_name(split)).mkdir(parents=True, exist_ok=True)
        with (root / mufac.csv_name(split)).open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(mufac.COLUMNS)
            writer.writerows(rows)
    return root
