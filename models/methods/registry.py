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


def _in_band(part: str, requests: int, section: str) -> tuple[bool, bool]:
    """Whether the requests part (`*`, `N` or a band `A-B`) admits `requests`, and is exact."""
    if part == "*":
        return True, False
    low, dash, high = part.partition("-")
    if not (low.isdigit() and (not dash or high.isdigit())):
        raise ValueError(f"config section {section!r}: requests must be *, N or A-B")
    if not dash:
        return int(low) == requests, True
    return int(low) <= requests <= int(high), False


def _matches(section: str, dataset: str, arch: str, requests: int) -> tuple[int, bool] | None:
    """Specificity of a `dataset/arch/requests` section (`*` wildcards, `A-B` request bands),
    or None: the count of named parts, then an exact request size before a band."""
    parts = section.split("/")
    if len(parts) != 3:
        raise ValueError(f"config section {section!r} is not of the form dataset/arch/requests")
    if any(p != "*" and p != w for p, w in zip(parts[:2], (dataset, arch), strict=True)):
        return None
    admitted, exact = _in_band(parts[2], requests, section)
    if not admitted:
        return None
    return sum(p != "*" for p in parts), exact


FALLBACK = "fallback"  # the TOML table applied where no section was tuned for the architecture


def _sections(method: str) -> dict[str, dict[str, Any]]:
    source = resources.files("models.methods") / "configs" / f"{method}.toml"
    return tomllib.loads(source.read_text()) if source.is_file() else {}


def _ranked(
    sections: dict[str, dict[str, Any]], dataset: str, arch: str, requests: int
) -> list[tuple[tuple[int, bool], str, dict[str, Any]]]:
    """The matching `dataset/arch/requests` sections, least specific first."""
    ranked = []
    for section, table in sections.items():
        if section == FALLBACK:
            continue
        rank = _matches(section, dataset, arch, requests)
        if rank is not None:
            ranked.append((rank, section, table))
    return sorted(ranked, key=lambda item: item[0])


def is_calibrated(method: str, dataset: str, arch: str, requests: int) -> bool:
    """Whether a pinned section was tuned for this architecture (it names `arch` explicitly).

    Values tuned for one network rarely suit another (a ViT-B/16 step size wrecks a small ResNet),
    so a setting without one runs on the method's conservative `[fallback]` table, and benchmark
    rows and erasure audits record `config_calibrated: false`.
    """
    ranked = _ranked(_sections(method), dataset, arch, requests)
    return any(section.split("/")[1] == arch for _, section, _ in ranked)


def resolve_config(method: str, dataset: str, arch: str, requests: int, **overrides: Any) -> Any:
    """The method's config for a setting: defaults, pinned sections, then overrides.

    Sections of `configs/<method>.toml` are named `dataset/arch/requests`; `*` matches anything,
    a request part `A-B` matches a band of sizes, and more specific sections win (an exact size
    over a band). Where no matching section names the architecture, the
    `[fallback]` table comes first (after the defaults), so dataset-wide sections still apply.
    """
    cls = type(get_method(method))
    values: dict[str, Any] = {}
    sections = _sections(method)
    if not is_calibrated(method, dataset, arch, requests):
        values.update(sections.get(FALLBACK, {}))
    for _, _, table in _ranked(sections, dataset, arch, requests):
        values.update(table)
    values.update(overrides)
    names = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {method} option(s) {sorted(unknown)}; known: {sorted(names)}")
    return cls.Config(**values)
