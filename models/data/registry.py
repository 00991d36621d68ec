"""Load a data set by name: the built-in synthfaces, or a real one from a user-given folder."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from models.catalog import DEFAULT_DATASET, DatasetInfo, dataset
from models.data.base import FaceData
from models.data.synthfaces import SynthFacesConfig, load_synthfaces


@dataclass(frozen=True)
class DatasetSpec:
    """Enough to load the same data again: stored in checkpoints and benchmark results."""

    name: str = DEFAULT_DATASET
    root: str | None = None
    image_size: int = 64  # synthfaces render size; real images are resized by the transforms
    seed: int = 0  # synthfaces generation seed (not the split seed)
    num_identities: int | None = None  # synthfaces size (None: the default of SynthFacesConfig)

    def to_dict(self) -> dict[str, object]:
        """Plain form for JSON and checkpoints."""
        return asdict(self)


def folder_loader(info: DatasetInfo) -> Callable[[Path], FaceData]:
    """The function that reads data set `info` from its folder (its catalog `loader`)."""
    module, _, function = info.loader.partition(":")
    loader: Callable[[Path], FaceData] = getattr(importlib.import_module(module), function)
    return loader


def load_dataset(spec: DatasetSpec) -> FaceData:
    """Load the data set `spec` describes; real data sets need `root`.

    The loaded data must offer exactly the tasks, and label counts, that models/catalog.py lists.
    """
    info = dataset(spec.name)
    if info.built_in:
        size = {} if spec.num_identities is None else {"num_identities": spec.num_identities}
        data = load_synthfaces(SynthFacesConfig(image_size=spec.image_size, seed=spec.seed, **size))
    elif spec.root is None:
        raise ValueError(f"data set {spec.name!r} is read from disk: give its folder (--data-root)")
    else:
        data = folder_loader(info)(Path(spec.root))
    _check_tasks(info, data)
    return data


def _check_tasks(info: DatasetInfo, data: FaceData) -> None:
    """The loader and the catalog agree on the tasks and their label counts."""
    if set(data.tasks) != set(info.tasks):
        raise ValueError(f"{info.name}: loaded tasks {sorted(data.tasks)}, not {list(info.tasks)}")
    for name, count in info.tasks.items():
        found = len(data.tasks[name].labels)
        if count is not None and found != count:
            raise ValueError(f"{info.name}/{name}: {found} labels, the catalog says {count}")
