"""Registry of unlearning methods by name, and their pinned per-setting configs."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar

from models.catalog import METHODS
from models.methods.base import UnlearningMethod

_METHODS: dict[str, type[UnlearningMethod]] = {}
M = TypeVar("M", bound=type[UnlearningMethod])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator that makes a method available as `name`, as models.catalog lists it.

    The catalog says what the method needs and whether it prepares; the class must agree (a
    `prepare` of its own exactly when the catalog says it prepares).
    """

    def wrap(cls: M) -> M:
        if name in _METHODS:
            raise ValueError(f"unlearning method {name!r} is already registered")
        info = METHODS.get(name)
        if info is None:
            raise ValueError(f"unlearning method {name!r} is not in models/catalog.py")
        if (cls.prepare is not UnlearningMethod.prepare) != info.prepares:
            raise ValueError(f"{name}: its prepare() disagrees with the catalog ({info.prepares})")
        cls.name = name
        cls.needs = info.needs
        _METHODS[name] = cls
        return cls

    return wrap


def list_methods() -> list[str]:
    """Names of every registered method."""
    return sorted(_METHODS)


def get_method(name: str) -> UnlearningMethod:
    """A new instance of the method called `name`."""
    try:
        return _METHODS[name]()
    except KeyError:
        raise ValueError(f"unknown unlearning method {name!r}; known: {list_methods()}") from None


def _matches(section: str, dataset: str, arch: str, requests: int) -> int | None:
    """Specificity of a `dataset/arch/requests` section (with `*` wildcards), or None."""
    parts = section.split("/")
    if len(parts) != 3:
        raise ValueError(f"config section {section!r} is not of the form dataset/arch/requests")
    wanted = (dataset, arch, str(requests))
    if any(p != "*" and p != w for p, w in zip(parts, wanted, strict=True)):
        return None
    return sum(p != "*" for p in parts)


def resolve_config(method: str, dataset: str, arch: str, requests: int, **overrides: Any) -> Any:
    """The method's config for a setting: defaults, then matching pinned sections, then overrides.

    Sections of `configs/<method>.toml` are named `dataset/arch/requests`; `*` matches anything
    and more specific sections win.
    """
    cls = type(get_method(method))
    values: dict[str, Any] = {}
    source = resources.files("models.methods") / "configs" / f"{method}.toml"
    if source.is_file():
        sections = tomllib.loads(source.read_text())
        ranked = []
        for section, table in sections.items():
            rank = _matches(section, dataset, arch, requests)
            if rank is not None:
                ranked.append((rank, table))
        for _, table in sorted(ranked, key=lambda item: item[0]):
            values.update(table)
    values.update(overrides)
    names = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {method} option(s) {sorted(unknown)}; known: {sorted(names)}")
    return cls.Config(**values)
