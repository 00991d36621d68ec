"""Presets as model setups: the catalog's recipe, with explicit options taking precedence."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from models.catalog import dataset, preset
from models.data.registry import DatasetSpec
from models.protocol import ModelSetup
from models.train.config import TrainConfig


def preset_train_config(name: str) -> TrainConfig:
    """The training recipe of preset `name`."""
    changes = dict(preset(name).train or {})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"preset {name!r} sets unknown training options {unknown}")
    return replace(TrainConfig(), **changes)


def preset_setup(
    name: str,
    *,
    dataset_name: str,
    data_root: str | None = None,
    task: str | None = None,
    arch: str | None = None,
    image_size: int | None = None,
    synth_identities: int | None = None,
    **train: Any,
) -> ModelSetup:
    """The ModelSetup of preset `name`; any option given (not None) replaces the preset's."""
    info = preset(name)
    size = image_size if image_size is not None else info.image_size
    recipe = replace(preset_train_config(name), **{k: v for k, v in train.items() if v is not None})
    if arch is not None and arch != info.arch and info.pretrained is not None:
        raise ValueError(
            f"preset {name!r} is {info.arch} with {info.pretrained} weights, not {arch}"
        )
    return ModelSetup(
        dataset=DatasetSpec(
            name=dataset_name, root=data_root, image_size=size, num_identities=synth_identities
        ),
        task=task or dataset(dataset_name).default_task,
        arch=arch or info.arch,
        image_size=size,
        train=recipe,
        pretrained=info.pretrained,
    )
