"""1-SHUI splits: identity-disjoint train/val/test, forget identities and one support image each."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from models.data.base import FaceData


@dataclass(frozen=True)
class Splits:
    """Which identities fall where, and which image of each forget identity is its support image.

    `support[k]` is the image key of the support image of `forget[k]`. Support images are held
    out of every training set (original and retrained); FORGET is the rest of the forget
    identities' images, RETAIN every image of the other train identities.
    """

    seed: int
    num_requests: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    forget: tuple[str, ...]
    support: tuple[str, ...]

    @property
    def retain(self) -> tuple[str, ...]:
        """Train identities that are not forgotten."""
        forget = set(self.forget)
        return tuple(i for i in self.train if i not in forget)

    def to_dict(self) -> dict[str, object]:
        """A JSON-serializable form (stored inside every checkpoint)."""
        data = asdict(self)
        data["retain"] = list(self.retain)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Splits:
        """Inverse of `to_dict`."""
        fields = ("train", "val", "test", "forget", "support")
        return cls(
            seed=int(data["seed"]),  # type: ignore[arg-type]
            num_requests=int(data["num_requests"]),  # type: ignore[arg-type]
            **{name: tuple(data[name]) for name in fields},  # type: ignore[arg-type]
        )

    def sha256(self) -> str:
        """A stable fingerprint of the splits."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class SplitIndices:
    """Row indices into a FaceData for each set the protocol uses."""

    train: list[int]  # TRAIN minus support: what the original model trains on
    retain: list[int]  # what the retrained reference trains on
    forget: list[int]  # forget identities' images minus support
    support: list[int]
    val: list[int]
    test: list[int]


def _take_by_images(ids: list[str], counts: Counter[str], fraction: float) -> int:
    """Number of leading identities whose images first reach `fraction` of the images in `ids`."""
    total = sum(counts[i] for i in ids)
    running = 0
    for n, ident in enumerate(ids, start=1):
        running += counts[ident]
        if running >= fraction * total:
            return n
    return len(ids)


def make_splits(
    identities: Sequence[str],
    keys: Sequence[str],
    num_requests: int,
    seed: int,
    holdout_fraction: float = 0.4,
    min_images: int | None = None,
) -> Splits:
    """Split identities ~60/20/20 by images and pick `num_requests` forget identities from train.

    Forget identities need at least `min_images` images (default 2, or 6 when a request names a
    single identity), so that removing the support image leaves a forget set to measure.
    """
    counts = Counter(identities)
    rng = random.Random(seed)
    shuffled = sorted(counts)
    rng.shuffle(shuffled)
    n_pool = _take_by_images(shuffled, counts, holdout_fraction)
    pool, train = shuffled[:n_pool], shuffled[n_pool:]
    n_val = _take_by_images(pool, counts, 0.5)
    val, test = pool[:n_val], pool[n_val:]

    if min_images is None:
        min_images = 6 if num_requests == 1 else 2
    candidates = list(train)
    rng.shuffle(candidates)
    forget = [i for i in candidates if counts[i] >= min_images][:num_requests]
    if len(forget) < num_requests:
        raise ValueError(
            f"only {len(forget)} train identities have >= {min_images} images; "
            f"cannot pick {num_requests} forget identities"
        )
    by_identity: dict[str, list[str]] = {}
    for ident, key in zip(identities, keys, strict=True):
        by_identity.setdefault(ident, []).append(key)
    support = [rng.choice(by_identity[ident]) for ident in forget]
    return Splits(
        seed=seed,
        num_requests=num_requests,
        train=tuple(train),
        val=tuple(val),
        test=tuple(test),
        forget=tuple(forget),
        support=tuple(support),
    )


def without_identities(splits: dict[str, Any], drop: Callable[[str], bool]) -> dict[str, Any]:
    """Stored `splits` (Splits.to_dict) minus every identity `drop` picks, and its support image.

    An erased person's plain ID must not travel into the checkpoints that forgot them; their
    images then fall in no split, which is what a refresh of such a checkpoint needs anyway.
    """
    kept = dict(splits)
    for name in ("train", "val", "test", "retain"):
        if name in kept:
            kept[name] = [i for i in kept[name] if not drop(str(i))]
    pairs = [
        (identity, image)
        # an uploaded checkpoint may pair them badly; an erasure must not fail on that
        for identity, image in zip(kept.get("forget", []), kept.get("support", []), strict=False)
        if not drop(str(identity))
    ]
    kept["forget"], kept["support"] = [p[0] for p in pairs], [p[1] for p in pairs]
    return kept


KEYED = "keyed"  # in stored splits: identities and image keys are keyed hashes, not names


def keyed(splits: dict[str, Any], key: Callable[[str], str]) -> dict[str, Any]:
    """Stored `splits` (Splits.to_dict) with every identity and support image key replaced by
    `key` of it, marked so: the form a service keeps, naming nobody in plain."""
    out = dict(splits)
    for name in ("train", "val", "test", "forget", "retain", "support"):
        if name in out:
            out[name] = [key(str(v)) for v in out[name]]
    out[KEYED] = True
    return out


def split_indices(
    data: FaceData, splits: Splits, key: Callable[[str], str] | None = None
) -> SplitIndices:
    """Resolve `splits` to row indices of `data` (support images excluded from train/retain).

    With `key`, the splits name identities and images by `key` of their names (`keyed`)."""
    name = key or (lambda text: text)
    key_index = {name(k): i for i, k in enumerate(data.keys)}
    try:
        support = [key_index[k] for k in splits.support]
    except KeyError as exc:
        raise ValueError(
            f"support image {exc.args[0]!r} is not in data set {data.name!r}"
        ) from None
    held_out = set(support)
    named = [name(i) for i in data.identities] if key else data.identities

    def rows(ids: Sequence[str], *, drop_support: bool) -> list[int]:
        wanted = set(ids)
        found = [r for r, ident in enumerate(named) if ident in wanted]
        return [i for i in found if i not in held_out] if drop_support else found

    return SplitIndices(
        train=rows(splits.train, drop_support=True),
        retain=rows(splits.retain, drop_support=True),
        forget=rows(splits.forget, drop_support=True),
        support=support,
        val=rows(splits.val, drop_support=False),
        test=rows(splits.test, drop_support=False),
    )


def one_identity(data: FaceData, indices: SplitIndices, position: int) -> SplitIndices:
    """`indices` as a request for the forget identity of support image `position` alone.

    TRAIN, RETAIN, VAL and TEST stay as they are, so every such request shares one pair of
    reference models; FORGET keeps that identity's images and SUPPORT its one image.
    """
    support = indices.support[position]
    identity = data.identities[support]
    return replace(
        indices,
        forget=[row for row in indices.forget if data.identities[row] == identity],
        support=[support],
    )
