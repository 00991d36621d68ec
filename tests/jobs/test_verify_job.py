"""Portrait verification in the erasure job: a portrait that does not show the person named is
rejected and keeps nothing; a matching one erases, and the person's reference goes with them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from job_helpers import (
    MODEL,
    SPEC,
    load_request,
    onboard,
    portrait_png,
    portrait_uri_of,
    seed_request,
    session_for,
    statuses,
)
from PIL import Image
from sqlalchemy import select

from app.cli import keys_create
from app.main import create_app
from app.security import identity_hash
from app.settings import Settings
from app.storage import portrait_vault, reference_vault
from app.tables import ModelVersion
from models.data.registry import load_dataset
from worker.erase import erase_request
from worker.verify import MISMATCH, UNKNOWN, VERIFIER_KEY

SMALL_VERIFIER = {
    "image_size": 64,
    "depth": 5,
    "views": 1,
    "epochs": 30,
    "batch_size": 16,
    "embed_dim": 32,
}


@pytest.fixture
def verified(settings: Settings) -> Settings:
    """Settings that train a (small) verifier at onboarding."""
    return settings.model_copy(
        update={"verify_portraits": True, "verifier_options": SMALL_VERIFIER}
    )


def _png(pixels: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _training_photo(identity: str) -> bytes:
    """One of the person's own training photos: a portrait the verifier must accept."""
    data = load_dataset(SPEC)
    row = data.identities.index(identity)
    return _png(data.load_image(row).permute(1, 2, 0).numpy())


def _versions(settings: Settings) -> list[ModelVersion]:
    with session_for(settings) as session:
        return list(session.scalars(select(ModelVersion).order_by(ModelVersion.version)))


def test_a_gray_portrait_is_rejected_and_the_person_stays_verifiable(
    verified: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    v1 = onboard(verified, checkpoint)
    sha = v1.artifacts[VERIFIER_KEY]
    assert v1.efficacy["portrait_verification"]["threshold"] > -1
    person = identity_hash(train_ids[0], verified)
    assert reference_vault(sha, verified).read(person) is not None
    gray = _png(np.full((32, 32, 3), 128, dtype=np.uint8))
    request_id = seed_request(verified, train_ids[0], portrait=gray)
    # a real training photo, in the name of someone the model never saw: refused alike, so the
    # outcome tells nobody whether a name was in the training data
    stranger_id = seed_request(verified, "never-trained", portrait=_training_photo(train_ids[1]))
    uris = [portrait_uri_of(verified, r) for r in (request_id, stranger_id)]

    outcomes = [erase_request(verified, r) for r in (request_id, stranger_id)]

    assert all(o.status == "rejected" and o.detail == MISMATCH for o in outcomes)
    for rid, uri in zip((request_id, stranger_id), uris, strict=True):
        request = load_request(verified, rid)
        assert statuses(request) == ["received", "queued", "running", "rejected"]
        assert request.error_code == MISMATCH and "score" not in (request.error_message or "")
        assert request.portrait_uri is None and not portrait_vault(verified).exists(uri)
        assert request.result_version_id is None
    assert load_request(verified, request_id).error_message == (
        load_request(verified, stranger_id).error_message
    )
    assert len(_versions(verified)) == 1
    assert reference_vault(sha, verified).read(person) is not None  # nobody was erased


def test_the_persons_own_photo_erases_and_deletes_their_reference(
    verified: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    v1 = onboard(verified, checkpoint)
    sha = v1.artifacts[VERIFIER_KEY]
    person, other = (identity_hash(i, verified) for i in train_ids[:2])
    request_id = seed_request(verified, train_ids[0], portrait=_training_photo(train_ids[0]))

    outcome = erase_request(verified, request_id)

    assert outcome.status == "completed", outcome
    request = load_request(verified, request_id)
    check = request.audit.run["portrait_verification"]
    assert check == {"checked": True, "matched": True, "verifier": sha}
    vault = reference_vault(sha, verified)
    assert vault.read(person) is None and vault.read(other) is not None


def test_an_erasure_an_admin_promotes_later_deletes_the_reference(
    verified: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    # held for review by any score drop at all: the job itself does not promote it
    held = verified.model_copy(update={"guardrail_max_score_drop": -100.0})
    v1 = onboard(held, checkpoint)
    vault = reference_vault(v1.artifacts[VERIFIER_KEY], held)
    person = identity_hash(train_ids[0], held)
    request_id = seed_request(held, train_ids[0], portrait=_training_photo(train_ids[0]))
    assert erase_request(held, request_id).status == "needs_review"
    assert vault.read(person) is not None  # not forgotten by serving yet

    admin = keys_create("admin", ["models:admin"], held)
    with TestClient(create_app(held)) as client:
        moved = client.put(
            f"/models/{MODEL}/aliases/serving", json={"version": 2}, headers={"X-API-Key": admin}
        )
    assert moved.status_code == 200, moved.text
    assert moved.json()["completed_request_ids"] == [request_id]
    assert vault.read(person) is None
    assert vault.read(identity_hash(train_ids[1], held)) is not None


def test_a_version_without_a_verifier_says_so_in_the_audit(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    onboard(settings, checkpoint)  # verify_portraits off
    request_id = seed_request(settings, train_ids[0])
    # without a verifier the job itself refuses a person the model never saw (the API cannot:
    # its answer would tell who was in the training data)
    stranger_id = seed_request(settings, "never-trained", portrait=portrait_png(train_ids[1]))
    uri = portrait_uri_of(settings, stranger_id)
    assert erase_request(settings, request_id).status == "completed"
    assert erase_request(settings, stranger_id).detail == UNKNOWN
    check = load_request(settings, request_id).audit.run["portrait_verification"]
    assert check["checked"] is False
    stranger = load_request(settings, stranger_id)
    assert stranger.status == "rejected" and stranger.error_code == UNKNOWN
    assert stranger.portrait_uri is None and not portrait_vault(settings).exists(uri)
    assert stranger.result_version_id is None
