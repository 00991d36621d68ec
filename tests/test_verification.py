"""The portrait verifier (models/verification.py): threshold, storage round trip, and a small
trained one telling people apart."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from models.data.base import FaceData
from models.verification import (
    VerifierConfig,
    calibrate,
    load_embedder,
    reference_bytes,
    reference_from_bytes,
    save_embedder,
    train_verifier,
)

# about 270 steps on 20 people: enough to leave the collapsed start, seconds on two cores
SMALL_VERIFIER = VerifierConfig(
    image_size=64, depth=5, views=1, epochs=30, batch_size=16, embed_dim=32
)
PEOPLE = 20


def test_the_threshold_lets_through_the_asked_share_of_impostors() -> None:
    # three people on the axes of a plane; photo 3 (person a) is held out
    e = F.normalize(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0.8, 0.6]]), dim=1)
    identities = ["a", "b", "c", "a"]
    cal = calibrate(e, identities, held_out={3}, far=0.5)
    # held-out photo 3 against references b (0,1) and c (-1,0): impostor scores 0.6 and -0.8
    expected = float(torch.quantile(torch.tensor([0.6, -0.8], dtype=torch.float64), 0.5))
    assert cal.threshold == pytest.approx(expected)
    assert (cal.genuine, cal.impostor) == (1, 2)
    assert cal.false_reject_rate == 0.0  # its own reference (1, 0) scores 0.8
    with pytest.raises(ValueError, match="three photos"):
        calibrate(e, identities, held_out=set(), far=0.01)


def test_a_reference_round_trips_as_bytes() -> None:
    reference = F.normalize(torch.randn(32), dim=0)
    assert torch.equal(reference_from_bytes(reference_bytes(reference)), reference)
    assert len(reference_bytes(reference)) == 32 * 4


@pytest.fixture(scope="module")
def trained(small_faces: FaceData):  # type: ignore[no-untyped-def]
    people = sorted(set(small_faces.identities))[:PEOPLE]
    rows = [r for r, i in enumerate(small_faces.identities) if i in people]
    identities = [small_faces.identities[r] for r in rows]
    return train_verifier(small_faces.load_image, rows, identities, SMALL_VERIFIER)


def test_a_trained_verifier_tells_people_apart_and_refuses_blank_images(
    trained, small_faces: FaceData
) -> None:  # type: ignore[no-untyped-def]
    cal = trained.calibration
    assert cal.genuine >= 10 and cal.impostor == cal.genuine * (PEOPLE - 1)
    assert cal.false_reject_rate < 0.5  # better than chance on unseen photos of trained people
    people = sorted(trained.references)
    assert len(people) == PEOPLE
    # each person's own photos score above their scores against the others
    first = {i: small_faces.identities.index(i) for i in people}
    images = [small_faces.load_image(first[i]) for i in people]
    scores = (
        trained.embedder.embed_images(images)
        @ torch.stack([trained.references[i] for i in people]).T
    )
    assert float(scores.diagonal().mean()) > float(scores.mean()) + 0.3
    # a blank or noise image matches nobody
    blank = [
        torch.full((3, 32, 32), 128, dtype=torch.uint8),
        torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8),
    ]
    for identity in people:
        assert not any(trained.matches(s) for s in trained.scores(blank, [identity] * 2))
    assert trained.scores(images[:1], ["nobody"]) == [-1.0]


def test_the_stored_embedder_embeds_as_the_trained_one(trained, small_faces: FaceData) -> None:  # type: ignore[no-untyped-def]
    embedder, calibration = load_embedder(save_embedder(trained))
    images = [small_faces.load_image(r) for r in range(4)]
    assert torch.allclose(
        embedder.embed_images(images), trained.embedder.embed_images(images), atol=1e-5
    )
    assert calibration == trained.calibration
    with pytest.raises(ValueError, match="kind"):
        buffer = io.BytesIO()
        torch.save({"kind": "other"}, buffer)
        load_embedder(buffer.getvalue())
