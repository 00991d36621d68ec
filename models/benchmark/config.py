"""What one benchmark run measures: the model setup, request sizes, seeds, methods, RMIA."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from models.metrics.mia import LOSS_MIA_NAME, RMIA_MAX_FPR, RMIA_NAME
from models.protocol import ModelSetup


@dataclass(frozen=True)
class BenchmarkConfig:
    """One benchmark run: the model setup, the request sizes, seeds, methods and RMIA settings."""

    setup: ModelSetup
    requests: Sequence[int] = (5,)
    seeds: Sequence[int] = (0,)
    methods: Sequence[str] = ("jit",)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    rmia: bool = True
    # Reference: 8 views and the whole population. Two views and 500 rows keep the 3-seed
    # synthfaces run within an hour on two CPU cores; VAL and FORGET are always all candidates.
    rmia_augmentations: int = 2
    rmia_population: int = 500
    # N = 1 runs this many one-identity requests per seed against one reference pair trained
    # without all of them, FORGET scored on their outputs together: one identity's photos share
    # most attributes, so a lone identity leaves macro mAP a handful of attributes to read.
    single_identities: int = 5

    def __post_init__(self) -> None:
        if self.rmia_augmentations < 1 or self.rmia_population < 1:
            raise ValueError("RMIA needs at least one augmentation and one population row")
        if self.single_identities < 1:
            raise ValueError("N = 1 needs at least one single-identity request per seed")

    def to_dict(self) -> dict[str, Any]:
        """Plain form for results.json."""
        return {
            **self.setup.to_dict(),
            "requests": list(self.requests),
            "seeds": list(self.seeds),
            "methods": list(self.methods),
            "method_overrides": self.method_overrides,
            "single_identities": self.single_identities,
            "mia": {
                "loss": LOSS_MIA_NAME,
                "rmia": RMIA_NAME if self.rmia else None,
                "rmia_augmentations": self.rmia_augmentations,
                "rmia_population": self.rmia_population,
                "rmia_max_fpr": RMIA_MAX_FPR,
            },
        }
