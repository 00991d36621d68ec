"""What the API knows of the data sets without importing torch: names, tasks, label counts.

A copy of what `models/data`'s loaders define; tests/test_registry.py checks it against them.
"""

from __future__ import annotations

# Tasks of each data set (the first is its default) and their label counts (None: read from the
# data set's own files).
DATASET_TASKS: dict[str, dict[str, int | None]] = {
    "synthfaces": {"attributes": 17, "age": 8},
    "celeba": {"attributes": None},
    "celebahq": {"attributes": None},
    "mufac": {"age": 8},
}
BUILT_IN = frozenset({"synthfaces"})  # generated from a seed: no folder to read


def default_task(dataset: str) -> str:
    """The task a data set is used for when none is named."""
    return next(iter(DATASET_TASKS[dataset]))
