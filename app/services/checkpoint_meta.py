"""Read a checkpoint's metadata (arch, task, config, head shape) without importing torch.

A `torch.save` file is a zip archive whose `data.pkl` describes every object; tensors appear as
calls to a few torch rebuild functions and their bytes as persistent ids. A restricted unpickler
maps exactly those to stubs that record shapes, so nothing else can be constructed or run.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.catalog import ARCHITECTURES

# data.pkl holds metadata and tensor records, not weights: a synthfaces checkpoint's is 40 KB and
# the splits of 10,000 identities add about 0.2 MB. Both caps stop a small zip whose pickle
# repeats memo lookups from costing gigabytes before any check (242 MiB of them held 3.4 GB).
MAX_PICKLE_BYTES = 16 * 1024 * 1024
MAX_PICKLE_OPCODES = 1_000_000


class CheckpointUnreadable(ValueError):
    """The file is not a checkpoint written by `lethe train` (or `torch.save` of one)."""


@dataclass(frozen=True)
class TensorStub:
    """A tensor of the pickle, by shape only."""

    shape: tuple[int, ...]


class _StorageStub:
    """Stands in for a torch storage type; never instantiated."""


def _rebuild_tensor(storage: Any, offset: Any, size: Any, *_: Any) -> TensorStub:
    return TensorStub(tuple(int(s) for s in size))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds plain containers and tensor stubs; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageStub
        raise pickle.UnpicklingError(f"the checkpoint refers to {module}.{name}, not allowed")

    def persistent_load(self, pid: Any) -> Any:
        return None  # tensor bytes live in other archive members; shapes are enough here


@dataclass(frozen=True)
class CheckpointMeta:
    """What onboarding checks before anything is stored."""

    arch: str
    task: dict[str, Any]
    config: dict[str, Any]
    splits: dict[str, Any]
    head_rows: int | None  # output width of the classifier weight, if found

    @property
    def labels(self) -> list[str]:
        """The task's label names as the checkpoint records them."""
        return [str(label) for label in self.task.get("labels", [])]


def _data_pickle(archive: zipfile.ZipFile) -> bytes:
    names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(names) != 1:
        raise CheckpointUnreadable("the archive has no single data.pkl: not a torch checkpoint")
    info = archive.getinfo(names[0])
    if info.file_size > MAX_PICKLE_BYTES:
        raise CheckpointUnreadable("the checkpoint's data.pkl is implausibly large")
    return archive.read(info)


def _count_opcodes(raw: bytes) -> None:
    """Walk the pickle's opcodes without building anything; refuse one with too many."""
    try:
        for count, _ in enumerate(pickletools.genops(raw), start=1):
            if count > MAX_PICKLE_OPCODES:
                raise CheckpointUnreadable(
                    f"the checkpoint's data.pkl has over {MAX_PICKLE_OPCODES:,} opcodes: "
                    "not the metadata of a model"
                )
    except CheckpointUnreadable:
        raise
    except ValueError as exc:  # a truncated or malformed opcode stream
        raise CheckpointUnreadable(f"the checkpoint's data.pkl cannot be read: {exc}") from None


def _head_rows(state_dict: dict[str, Any], arch: str) -> int | None:
    info = ARCHITECTURES.get(arch)
    head = info.head if info is not None else None
    weight = state_dict.get(f"{head}.weight") if head else None
    return weight.shape[0] if isinstance(weight, TensorStub) and weight.shape else None


def read_checkpoint_meta(path: Path) -> CheckpointMeta:
    """The checkpoint's metadata, or CheckpointUnreadable saying what is wrong."""
    try:
        with zipfile.ZipFile(path) as archive:
            raw = _data_pickle(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointUnreadable(f"not a torch checkpoint (zip archive): {exc}") from None
    _count_opcodes(raw)
    try:
        payload = _MetadataUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:
        raise CheckpointUnreadable(f"the checkpoint's data.pkl cannot be read: {exc}") from None
    if not isinstance(payload, dict):
        raise CheckpointUnreadable("the checkpoint is not a dictionary")
    missing = {"arch", "task", "config", "splits", "state_dict"} - set(payload)
    if missing:
        raise CheckpointUnreadable(f"the checkpoint lacks {sorted(missing)}")
    arch, task, config, splits, state = (
        payload[k] for k in ("arch", "task", "config", "splits", "state_dict")
    )
    if not (
        isinstance(arch, str)
        and isinstance(task, dict)
        and isinstance(config, dict)
        and isinstance(splits, dict)
        and isinstance(state, dict)
    ):
        raise CheckpointUnreadable("the checkpoint's fields have unexpected types")
    return CheckpointMeta(
        arch=arch, task=task, config=config, splits=splits, head_rows=_head_rows(state, arch)
    )
