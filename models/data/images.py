"""Image files on disk: lazy loading, and checks that a data set folder holds what it lists."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from models.data.base import DatasetError, ImageLoader


@dataclass(frozen=True)
class FileImageLoader:
    """Reads image `i` from `paths[i]` as a uint8 RGB tensor of shape (3, H, W)."""

    # A class rather than a closure so that DataLoader workers can pickle it.
    paths: tuple[str | Path, ...]

    def __call__(self, index: int) -> torch.Tensor:
        """Image `index` as a uint8 tensor of shape (3, H, W)."""
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DatasetError(path, f"cannot read image: {error}") from error
        return pil_to_tensor(rgb)


def file_image_loader(paths: Sequence[str | Path]) -> ImageLoader:
    """A loader that reads image `i` from `paths[i]` when asked, not before."""
    return FileImageLoader(tuple(paths))


def paths_in(folder: Path, names: Sequence[str]) -> list[str]:
    """`folder/name` for each name, as strings."""
    # Building 200k Path objects takes over a second; string joins take milliseconds.
    prefix = str(folder) + os.sep
    return [prefix + name for name in names]


def resolve_folder(root: Path | str, subfolder: str, marker: str) -> Path:
    """`root`, or `root/subfolder` when only that one holds the file `marker`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "missing data set folder")
    if not (root / marker).exists() and (root / subfolder).is_dir():
        return root / subfolder
    return root


def require_file(path: Path) -> Path:
    """`path`, or a DatasetError when it is not a file."""
    if not path.is_file():
        raise DatasetError(path, "missing file")
    return path


def require_dir(path: Path) -> Path:
    """`path`, or a DatasetError when it is not a folder."""
    if not path.is_dir():
        raise DatasetError(path, "missing image folder")
    return path


def check_images_exist(
    folder: Path, names: Sequence[str], listing: Path, lines: Sequence[int]
) -> None:
    """Raise a DatasetError naming `listing` and the line of the first name absent from `folder`."""
    # One directory scan instead of a stat per image: 200k stats are slow on network drives.
    present = {entry.name for entry in os.scandir(folder)}
    for name, line in zip(names, lines, strict=True):
        found = (folder / name).is_file() if ("/" in name or os.sep in name) else name in present
        if not found:
            raise DatasetError(listing, f"line {line}: image {name!r} is not in {folder}")
