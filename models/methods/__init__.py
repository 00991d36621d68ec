"""Unlearning methods behind one registry (`register_method`, `get_method`)."""

from models.methods import (
    bad_teacher,  # noqa: F401  (registers "bad_teacher")
    jit,  # noqa: F401  (registers "jit")
    metaunlearn,  # noqa: F401  (registers "metaunlearn")
    neggrad,  # noqa: F401  (registers "neggrad")
    pgu,  # noqa: F401  (registers "pgu")
    scrub,  # noqa: F401  (registers "scrub")
    ssd,  # noqa: F401  (registers "ssd")
    stranger,  # noqa: F401  (registers "stranger")
)
from models.methods.base import PrepareData, UnlearningMethod, UnlearnRequest
from models.methods.registry import get_method, list_methods, register_method, resolve_config

__all__ = [
    "PrepareData",
    "UnlearnRequest",
    "UnlearningMethod",
    "get_method",
    "list_methods",
    "register_method",
    "resolve_config",
]
