"""Networks: a timm factory with task-sized heads."""

from models.nets.factory import (
    DEFAULT_ARCH,
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
