"""The one check for a server path a client names: it lies under a folder the operator allows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class PathRefused(ValueError):
    """The path is not under any allowed folder (or cannot be a path at all)."""


def resolve_under(raw: str, roots: Sequence[Path]) -> Path:
    """`raw` resolved (`~` expanded, links followed) if it lies under one of `roots`.

    Resolving first is what stops `..` and symbolic links from leaving the allowed folders.
    """
    if "\x00" in raw:
        raise PathRefused("the path contains a NUL character")
    try:
        path = Path(raw).expanduser().resolve()
    except (RuntimeError, KeyError, OSError, ValueError):  # `~nobody`, a loop of links, ...
        raise PathRefused(f"{raw} cannot be resolved to a path on this server") from None
    folders = [root.expanduser().resolve() for root in roots]
    if not any(path.is_relative_to(folder) for folder in folders):
        allowed = ", ".join(str(folder) for folder in folders) or "nothing (none are configured)"
        raise PathRefused(f"{raw} is not under {allowed}")
    return path
