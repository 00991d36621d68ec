"""Load a data set by name: the built-in synthfaces, or a real one from a user-given folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from models.data.base import FaceData
from models.data.celeba import load_celeba
from models.data.celebahq import load_celebahq
from models.data.mufac import load_mufac
from models.data.synthfaces import SynthFacesConfig, load_synthfaces

DATASETS = ("synthfaces", "celeba", "celebahq", "mufac")
DEFAULT_TASK = {
    "synthfaces": "attributes",
    "celeba": "attributes",
    "celebahq": "attributes",
    "mufac": "age",
}


@dataclass(frozen=True)
class DatasetSpec:
    """Enough to load the same data again: stored in checkpoints and benchmark results."""

    name: str = "synthfaces"
    root: str | None = None
    image_size: int = 64  # synthfaces render size; real images are resized by the transforms
    seed: int = 0  # synthfaces generation seed (not the split seed)
    num_identities: int | None = None  # synthfaces size (None: the default of SynthFacesConfig)

    def to_dict(self) -> dict[str, object]:
        """Plain form for JSON and checkpoints."""
        return asdict(self)


def load_dataset(spec: DatasetSpec) -> FaceData:
    """Load the data set `spec` describes; real data sets need `root`."""
    if spec.name == "synthfaces":
        size = {} if spec.num_identities is None else {"num_identities": spec.num_identities}
        return load_synthfaces(SynthFacesConfig(image_size=spec.image_size, seed=spec.seed, **size))
    loaders = {"celeba": load_celeba, "celebahq": load_celebahq, "mufac": load_mufac}
    if spec.name not in loaders:
        raise ValueError(f"unknown data set {spec.name!r}; known: {', '.join(DATASETS)}")
    if spec.root is None:
        raise ValueError(f"data set {spec.name!r} is read from disk: give its folder (--data-root)")
    return loaders[spec.name](Path(spec.root))
