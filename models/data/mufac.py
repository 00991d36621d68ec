"""MUFAC (Korean family faces, age groups) read from its release layout, all splits merged.

Layout (the files may also sit in `<root>/mufac/`)::

    custom_train_dataset.csv  custom_val_dataset.csv  custom_test_dataset.csv
    train_images/  val_images/  test_images/

Each CSV has the header `family_id,person_id,age_class,image_path` and rows such as
`F0001,D,a,F0001_AGE_D_18_a1.jpg`; the image lives in `<split>_images/<image_path>`.
1-SHUI ignores the official splits and re-splits by identity, so the three are merged.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.data.base import AGE_GROUPS, DatasetError, FaceData, TaskSpec
from models.data.images import (
    check_images_exist,
    file_image_loader,
    paths_in,
    require_dir,
    require_file,
    resolve_folder,
)

SPLITS = ("train", "val", "test")
COLUMNS = ("family_id", "person_id", "age_class", "image_path")
AGE_LETTERS: tuple[str, ...] = tuple(letter for letter, _, _ in AGE_GROUPS)


def csv_name(split: str) -> str:
    """File name of a split's CSV."""
    return f"custom_{split}_dataset.csv"


def image_dir_name(split: str) -> str:
    """Folder name of a split's images."""
    return f"{split}_images"


@dataclass(frozen=True)
class Row:
    """One image of a MUFAC CSV."""

    line: int
    identity: str
    age: int
    image: str


def read_split_csv(path: Path) -> list[Row]:
    """Parse one MUFAC CSV, locating columns by header name; a DatasetError names the line."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = next((cells for cells in reader if _filled(cells)), None)
            if header is None:
                raise DatasetError(path, "empty file, expected a header line")
            columns = _column_indices(path, reader.line_num, header)
            return [
                _parse_row(path, reader.line_num, cells, len(header), columns)
                for cells in reader
                if _filled(cells)
            ]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(path, f"cannot read CSV: {error}") from error


def _filled(cells: list[str]) -> bool:
    """Whether a CSV record has any non-blank cell."""
    return any(cell.strip() for cell in cells)


def _column_indices(path: Path, line: int, header: list[str]) -> list[int]:
    """Positions of COLUMNS in `header`."""
    names = [cell.strip() for cell in header]
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        raise DatasetError(
            path, f"line {line}: header {','.join(names)!r} lacks column(s) {', '.join(missing)}"
        )
    return [names.index(column) for column in COLUMNS]


def _parse_row(path: Path, line: int, cells: list[str], width: int, columns: list[int]) -> Row:
    """One data row."""
    if len(cells) != width:
        raise DatasetError(path, f"line {line}: expected {width} columns, found {len(cells)}")
    family, person, age, image = (cells[i].strip() for i in columns)
    if not (family and person and image):
        raise DatasetError(path, f"line {line}: empty family_id, person_id or image_path")
    if age not in AGE_LETTERS:
        raise DatasetError(
            path, f"line {line}: unknown age class {age!r}, expected one of {''.join(AGE_LETTERS)}"
        )
    return Row(line, f"{family}_{person}", AGE_LETTERS.index(age), image)


def _check_unique(path: Path, rows: list[Row]) -> None:
    """Raise a DatasetError at the second row that lists an image already listed."""
    seen: set[str] = set()
    for row in rows:
        if row.image in seen:
            raise DatasetError(path, f"line {row.line}: image {row.image!r} is listed twice")
        seen.add(row.image)


def load_mufac(root: Path | str) -> FaceData:
    """MUFAC from `root` (or `root/mufac`): the three official splits merged, task `age`."""
    folder = resolve_folder(root, "mufac", csv_name("train"))
    keys: list[str] = []
    rows: list[Row] = []
    paths: list[str] = []
    splits: list[str] = []
    for split in SPLITS:
        csv_path = require_file(folder / csv_name(split))
        split_rows = read_split_csv(csv_path)
        _check_unique(csv_path, split_rows)
        image_dir = require_dir(folder / image_dir_name(split))
        images = [row.image for row in split_rows]
        check_images_exist(image_dir, images, csv_path, [row.line for row in split_rows])
        rows += split_rows
        keys += [f"{image_dir_name(split)}/{image}" for image in images]
        paths += paths_in(image_dir, images)
        splits += [split] * len(split_rows)
    return FaceData(
        name="mufac",
        keys=keys,
        identities=[row.identity for row in rows],
        tasks={"age": TaskSpec(name="age", kind="multiclass", labels=AGE_LETTERS)},
        targets={"age": np.array([row.age for row in rows], dtype=np.int64)},
        load_image=file_image_loader(paths),
        meta={"root": str(folder), "official_split": splits},
    )
