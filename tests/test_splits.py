"""1-SHUI splits: identity-disjoint, support held out everywhere, deterministic by seed."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from models.data.splits import (
    Splits,
    make_splits,
    one_identity,
    split_indices,
    without_identities,
)


def test_identity_disjoint_and_about_60_20_20_by_images(small_faces) -> None:
    splits = make_splits(small_faces.identities, small_faces.keys, 5, seed=0)
    train, val, test = set(splits.train), set(splits.val), set(splits.test)
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(small_faces.identities)
    counts = Counter(small_faces.identities)
    total = len(small_faces)
    share = {
        name: sum(counts[i] for i in ids) / total
        for name, ids in (("train", train), ("val", val), ("test", test))
    }
    assert share["train"] == pytest.approx(0.6, abs=0.08)
    assert share["val"] == pytest.approx(0.2, abs=0.08)
    assert share["test"] == pytest.approx(0.2, abs=0.08)


def test_forget_identities_and_support_images(small_faces) -> None:
    splits = make_splits(small_faces.identities, small_faces.keys, 5, seed=1)
    counts = Counter(small_faces.identities)
    assert len(splits.forget) == 5 == len(set(splits.forget)) == len(splits.support)
    assert set(splits.forget) <= set(splits.train)
    assert all(counts[i] >= 2 for i in splits.forget)
    assert set(splits.retain) == set(splits.train) - set(splits.forget)
    idx = split_indices(small_faces, splits)
    for ident, row in zip(splits.forget, idx.support, strict=True):
        assert small_faces.identities[row] == ident
    assert {small_faces.identities[i] for i in idx.forget} == set(splits.forget)
    assert len(idx.forget) == sum(counts[i] for i in splits.forget) - 5


def test_support_images_are_absent_from_every_training_set(small_faces) -> None:
    for seed in range(5):
        idx = split_indices(
            small_faces, make_splits(small_faces.identities, small_faces.keys, 5, seed)
        )
        support = set(idx.support)
        assert not support & set(idx.train)  # the original model's training set
        assert not support & set(idx.retain)  # the retrained reference's training set
        assert not support & set(idx.forget)


def test_single_identity_requests_need_six_images(small_faces) -> None:
    counts = Counter(small_faces.identities)
    for seed in range(10):
        splits = make_splits(small_faces.identities, small_faces.keys, 1, seed)
        assert counts[splits.forget[0]] >= 6


def test_pooled_single_identity_requests_need_six_images_each(small_faces) -> None:
    counts = Counter(small_faces.identities)
    splits = make_splits(small_faces.identities, small_faces.keys, 3, seed=2, min_images=6)
    assert len(splits.forget) == 3 and all(counts[i] >= 6 for i in splits.forget)


def test_one_identity_narrows_forget_and_support_to_that_identity(small_faces) -> None:
    idx = split_indices(small_faces, make_splits(small_faces.identities, small_faces.keys, 3, 4))
    parts = [one_identity(small_faces, idx, i) for i in range(3)]
    for part, support in zip(parts, idx.support, strict=True):
        person = small_faces.identities[support]
        assert part.support == [support]
        assert part.forget and {small_faces.identities[r] for r in part.forget} == {person}
        assert (part.train, part.retain, part.val, part.test) == (
            idx.train,
            idx.retain,
            idx.val,
            idx.test,
        )
    assert sorted(r for part in parts for r in part.forget) == sorted(idx.forget)


def test_deterministic_by_seed_and_serializable(small_faces) -> None:
    a = make_splits(small_faces.identities, small_faces.keys, 5, seed=3)
    b = make_splits(small_faces.identities, small_faces.keys, 5, seed=3)
    c = make_splits(small_faces.identities, small_faces.keys, 5, seed=4)
    assert a == b and a.sha256() == b.sha256()
    assert a != c and a.sha256() != c.sha256()
    assert Splits.from_dict(a.to_dict()) == a
    assert a.to_dict()["retain"] == list(a.retain)


def test_too_many_requests_is_an_error(small_faces) -> None:
    with pytest.raises(ValueError, match="cannot pick"):
        make_splits(small_faces.identities, small_faces.keys, 10_000, seed=0)


def test_without_identities_drops_each_list_and_its_support(small_faces) -> None:
    splits = make_splits(small_faces.identities, small_faces.keys, 2, seed=0).to_dict()
    gone = {splits["forget"][0], splits["retain"][0]}
    kept = without_identities(splits, lambda i: i in gone)
    for name in ("train", "retain", "forget"):
        assert not gone & set(kept[name]) and set(kept[name]) == set(splits[name]) - gone
    assert kept["support"] == splits["support"][1:] and kept["forget"] == splits["forget"][1:]
    assert kept["val"] == splits["val"] and kept["seed"] == splits["seed"]
    assert not any(i in json.dumps(kept) for i in gone)  # no trace, support keys included
    assert Splits.from_dict(kept).retain == tuple(kept["retain"])
