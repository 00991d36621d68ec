"""synthfaces: deterministic, uneven, labelled like CelebA and MUFAC, with identity quirks."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from models.data.base import AGE_GROUPS, age_group
from models.data.synthfaces import SynthFaces, SynthFacesConfig, load_synthfaces
from models.data.synthfaces_traits import ATTRIBUTES, PER_IMAGE_ATTRIBUTES
from tests.conftest import SMALL


def test_default_size_is_uneven_and_large_enough() -> None:
    faces = SynthFaces()
    assert faces.cfg.image_size == 64
    assert len(faces.identities) >= 200
    assert faces.counts.min() == 2 and faces.counts.max() == 30
    assert len(set(faces.counts.tolist())) > 10


def test_same_seed_same_data_other_seed_other_data(small_faces) -> None:
    again = load_synthfaces(SMALL)
    assert again.keys == small_faces.keys
    assert torch.equal(again.meta["images"], small_faces.meta["images"])
    for task in ("attributes", "age"):
        np.testing.assert_array_equal(again.targets[task], small_faces.targets[task])
    other = load_synthfaces(SynthFacesConfig(num_identities=60, image_size=32, seed=8))
    assert not torch.equal(other.meta["images"][:10], small_faces.meta["images"][:10])


def test_labels_follow_celeba_names_and_mufac_age_groups(small_faces) -> None:
    attrs = small_faces.task("attributes")
    assert attrs.kind == "multilabel" and attrs.labels == ATTRIBUTES and len(ATTRIBUTES) >= 12
    for name in (
        "Smiling",
        "Eyeglasses",
        "Male",
        "Young",
        "Black_Hair",
        "Blond_Hair",
        "Gray_Hair",
        "Bald",
    ):
        assert name in ATTRIBUTES
    age = small_faces.task("age")
    assert age.kind == "multiclass" and age.num_outputs == 8
    targets = small_faces.targets["attributes"]
    assert set(np.unique(targets)) <= {0.0, 1.0}
    assert 0.05 < targets.mean() < 0.6
    assert [age_group(a) for a in (0, 6, 7, 19, 20, 45, 67, 80)] == [0, 0, 1, 2, 3, 4, 7, 7]
    assert len(AGE_GROUPS) == 8


def test_identity_attributes_are_persistent_and_image_attributes_vary(small_faces) -> None:
    by_identity: dict[str, list[int]] = defaultdict(list)
    for i, ident in enumerate(small_faces.identities):
        by_identity[ident].append(i)
    targets = small_faces.targets["attributes"]
    many = [rows for rows in by_identity.values() if len(rows) >= 8]
    assert many
    agreement = {name: [] for name in ATTRIBUTES}
    for rows in many:
        block = targets[rows]
        for j, name in enumerate(ATTRIBUTES):
            agreement[name].append(max(block[:, j].mean(), 1 - block[:, j].mean()))
    fixed = [
        np.mean(agreement[n]) for n in ATTRIBUTES if n not in PER_IMAGE_ATTRIBUTES and n != "Young"
    ]
    varying = np.mean(agreement["Smiling"])
    assert min(fixed) > 0.95  # only label noise breaks an identity's own attributes
    assert varying < 0.9


def test_portrait_is_a_new_photo_of_the_person() -> None:
    faces = SynthFaces(SynthFacesConfig(num_identities=20, image_size=48))
    ident = faces.identities[3]
    first = faces.portrait(ident)
    assert first.shape == (3, 48, 48) and first.dtype == torch.uint8
    assert torch.equal(first, faces.portrait(ident))
    assert not torch.equal(first, faces.portrait(ident, index=1))
    data = faces.generate()
    trained = data.meta["images"][data.indices_of([ident])]
    assert all(not torch.equal(first, image) for image in trained)
    # a patterned backdrop never used in training: its border varies far more
    border = lambda img: torch.cat([img[:, :4].flatten(), img[:, -4:].flatten()]).float()  # noqa: E731
    assert border(first).std() > border(trained[0]).std()


def test_any_image_size_on_request() -> None:
    data = load_synthfaces(SynthFacesConfig(num_identities=5, image_size=96))
    assert data.load_image(0).shape == (3, 96, 96)
