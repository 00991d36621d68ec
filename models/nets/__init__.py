"""Networks: a timm factory with task-sized heads."""

from models.catalog import DEFAULT_ARCH
from models.nets.factory import (
    KNOWN_ARCHS,
    create_model,
    data_config,
    features_and_logits,
    freeze_modules,
)

__all__ = [
    "DEFAULT_ARCH",
    "KNOWN_ARCHS",
    "create_model",
    "data_config",
    "features_and_logits",
    "freeze_modules",
]
