"""CelebA (aligned crops) read from the layout torchvision downloads, plus its text-file parsers.

Layout (the files may also sit in `<root>/celeba/`, where torchvision puts them)::

    img_align_celeba/000001.jpg ...
    list_attr_celeba.txt     line 1: image count; line 2: 40 attribute names;
                             then `000001.jpg -1  1 ...` (values -1/1, runs of spaces)
    identity_CelebA.txt      `000001.jpg 2880`
    list_eval_partition.txt  `000001.jpg 0` (0 train, 1 valid, 2 test)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeVar

import numpy as np

from models.data.base import DatasetError, FaceData, TaskSpec
from models.data.images import (
    check_images_exist,
    file_image_loader,
    paths_in,
    require_dir,
    require_file,
    resolve_folder,
)

IMAGE_DIR = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
IDENTITY_FILE = "identity_CelebA.txt"
PARTITION_FILE = "list_eval_partition.txt"
NUM_ATTRIBUTES = 40
# The 40 published attribute names, in the attribute file's order.
ATTRIBUTE_NAMES: tuple[str, ...] = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)

NumberedLine = tuple[int, str]
T = TypeVar("T")


@dataclass(frozen=True)
class AttributeTable:
    """A parsed CelebA-style attribute file: one row of 40 integer values per image."""

    path: Path
    labels: tuple[str, ...]
    names: list[str]
    lines: list[int]
    values: np.ndarray  # int8, shape (n, 40)

    def row_of(self) -> dict[str, int]:
        """Map from image name to row index."""
        return {name: row for row, name in enumerate(self.names)}


def numbered_lines(path: Path) -> list[NumberedLine]:
    """The non-blank lines of a text file with their 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(path, f"not a text file: {error}") from error
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_attribute_table(path: Path) -> AttributeTable:
    """Parse an attribute file: count line, 40 names, then `<image> <40 integers>` rows."""
    lines = numbered_lines(path)
    if len(lines) < 2:
        raise DatasetError(path, "expected an image count line and an attribute name line")
    count = _parse_count(path, lines[0])
    labels = _parse_labels(path, lines[1])
    rows = lines[2:]
    names, rests = _split_names(rows)
    values = _parse_values(path, rows, rests)
    numbers = [number for number, _ in rows]
    _check_unique(path, names, numbers)
    if count != len(names):
        raise DatasetError(
            path, f"line {lines[0][0]}: says {count} images, but {len(names)} are listed"
        )
    return AttributeTable(path, labels, names, numbers, values)


def _parse_count(path: Path, line: NumberedLine) -> int:
    """The image count on the first line."""
    number, text = line
    if not (text.strip().isascii() and text.strip().isdigit()):
        raise DatasetError(path, f"line {number}: expected the image count, found {text.strip()!r}")
    return int(text)


def _parse_labels(path: Path, line: NumberedLine) -> tuple[str, ...]:
    """The 40 attribute names on the second line."""
    number, text = line
    labels = tuple(text.split())
    if len(labels) != NUM_ATTRIBUTES:
        raise DatasetError(
            path, f"line {number}: expected {NUM_ATTRIBUTES} attribute names, found {len(labels)}"
        )
    return labels


def _split_names(rows: list[NumberedLine]) -> tuple[list[str], list[str]]:
    """Image names and the rest of each row."""
    names: list[str] = []
    rests: list[str] = []
    for _, text in rows:
        parts = text.split(None, 1)
        names.append(parts[0])
        rests.append(parts[1] if len(parts) == 2 else "")
    return names, rests


def _parse_values(path: Path, rows: list[NumberedLine], rests: list[str]) -> np.ndarray:
    """The (n, 40) int8 value matrix; on any problem, the line at fault."""
    # numpy's C parser is ~10x faster than splitting 8M tokens in Python; the slow
    # row-by-row scan runs only to name the line once something is wrong.
    if not rows:
        return np.zeros((0, NUM_ATTRIBUTES), dtype=np.int8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            values = np.loadtxt(rests, dtype=np.int8, comments=None, ndmin=2)
    except (ValueError, Warning):
        _raise_bad_row(path, rows)
    if values.shape != (len(rows), NUM_ATTRIBUTES):
        _raise_bad_row(path, rows)
    return values


def _raise_bad_row(path: Path, rows: list[NumberedLine]) -> NoReturn:
    """Raise a DatasetError for the first row that is not `<image> <40 small integers>`."""
    for number, text in rows:
        parts = text.split()
        if len(parts) != NUM_ATTRIBUTES + 1:
            raise DatasetError(
                path,
                f"line {number}: expected an image name and {NUM_ATTRIBUTES} values, "
                f"found {len(parts)} fields",
            )
        for token in parts[1:]:
            if not _is_small_int(token):
                raise DatasetError(path, f"line {number}: value {token!r} is not an integer")
    raise DatasetError(path, "cannot parse the attribute values")


def _is_small_int(token: str) -> bool:
    """Whether `token` is a plain decimal integer that fits in int8."""
    digits = token[1:] if token[:1] in ("-", "+") else token
    return digits.isascii() and digits.isdigit() and -128 <= int(token) <= 127


def _check_unique(path: Path, names: list[str], lines: list[int]) -> None:
    """Raise a DatasetError at the second line that lists an image already listed."""
    if len(set(names)) == len(names):
        return
    seen: set[str] = set()
    for name, number in zip(names, lines, strict=True):
        if name in seen:
            raise DatasetError(path, f"line {number}: image {name!r} is listed twice")
        seen.add(name)


def check_values(table: AttributeTable, allowed: tuple[int, ...]) -> None:
    """Raise a DatasetError at the first row holding a value outside `allowed`."""
    bad = ~np.isin(table.values, allowed)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DatasetError(
            table.path,
            f"line {table.lines[row]}: attribute {table.labels[col]} is "
            f"{int(table.values[row, col])}, expected one of {list(allowed)}",
        )


def parse_identity(token: str) -> str:
    """A CelebA identity number as a string; ValueError when it is not one."""
    if not (token.isascii() and token.isdigit()):
        raise ValueError(f"identity {token!r} is not a number")
    return str(int(token))


def _parse_partition(token: str) -> int:
    """A partition code 0, 1 or 2; ValueError otherwise."""
    if token not in ("0", "1", "2"):
        raise ValueError(f"partition {token!r} is not 0, 1 or 2")
    return int(token)


def read_image_column(
    path: Path, rows: dict[str, int], parse: Callable[[str], T], listed_in: str
) -> dict[int, T]:
    """Parse `<image> <value>` lines into {row of the image in `rows`: value}."""
    found: dict[int, T] = {}
    for number, text in numbered_lines(path):
        parts = text.split()
        if len(parts) != 2:
            raise DatasetError(
                path,
                f"line {number}: expected an image name and a value, found {len(parts)} fields",
            )
        name, token = parts
        if name not in rows:
            raise DatasetError(path, f"line {number}: image {name!r} is not in {listed_in}")
        if rows[name] in found:
            raise DatasetError(path, f"line {number}: image {name!r} is listed twice")
        try:
            found[rows[name]] = parse(token)
        except ValueError as error:
            raise DatasetError(path, f"line {number}: {error}") from error
    return found


def require_every_row(path: Path, found: dict[int, T], table: AttributeTable) -> list[T]:
    """Values in table row order, or a DatasetError naming an image that `path` leaves out."""
    if len(found) == len(table.names):
        return [found[row] for row in range(len(table.names))]
    row = next(r for r in range(len(table.names)) if r not in found)
    raise DatasetError(
        path,
        f"missing a row for image {table.names[row]!r}; "
        f"{len(table.names) - len(found)} of the {len(table.names)} images in "
        f"{table.path.name} have none",
    )


def attribute_task(table: AttributeTable) -> TaskSpec:
    """The multi-label `attributes` task with the file's attribute names."""
    return TaskSpec(name="attributes", kind="multilabel", labels=table.labels)


def load_celeba(root: Path | str) -> FaceData:
    """CelebA from `root` (or `root/celeba`): 40 attributes, identities as strings."""
    folder = resolve_folder(root, "celeba", ATTRIBUTE_FILE)
    table = read_attribute_table(require_file(folder / ATTRIBUTE_FILE))
    check_values(table, (-1, 1))
    rows = table.row_of()
    identity_path = require_file(folder / IDENTITY_FILE)
    identities = read_image_column(identity_path, rows, parse_identity, ATTRIBUTE_FILE)
    partition_path = require_file(folder / PARTITION_FILE)
    partition = read_image_column(partition_path, rows, _parse_partition, ATTRIBUTE_FILE)
    image_dir = require_dir(folder / IMAGE_DIR)
    check_images_exist(image_dir, table.names, table.path, table.lines)
    split_codes = require_every_row(partition_path, partition, table)
    return FaceData(
        name="celeba",
        keys=table.names,
        identities=require_every_row(identity_path, identities, table),
        tasks={"attributes": attribute_task(table)},
        targets={"attributes": (table.values == 1).astype(np.float32)},
        load_image=file_image_loader(paths_in(image_dir, table.names)),
        meta={"root": str(folder), "partition": split_codes},
    )
