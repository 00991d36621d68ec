"""Portrait verification in the erasure job: a portrait that does not show the person named is
rejected and keeps nothing; a matching one erases, and the person's reference goes with them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from job_helpers import (
    SPEC,
    load_request,
    onboard,
    portrait_uri_of,
    seed_request,
    session_for,
    statuses,
)
from PIL import Image
from sqlalchemy import select

from app.security import identity_hash
from app.settings import Settings
from app.storage import portrait_vault, reference_vault
from app.tables import ModelVersion
from models.data.registry import load_dataset
from worker.erase import erase_request
from worker.verify import MISMATCH, VERIFIER_KEY

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
    uri = portrait_uri_of(verified, request_id)

    outcome = erase_request(verified, request_id)

    assert outcome.status == "rejected" and outcome.detail == MISMATCH
    request = load_request(verified, request_id)
    assert statuses(request) == ["received", "queued", "running", "rejected"]
    assert request.error_code == MISMATCH and "score" not in (request.error_message or "")
    assert request.portrait_uri is None and not portrait_vault(verified).exists(uri)
    assert request.result_version_id is None and len(_versions(verified)) == 1
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


def test_a_version_without_a_verifier_says_so_in_the_audit(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    onboard(settings, checkpoint)  # verify_portraits off
    request_id = seed_request(settings, train_ids[0])
    assert erase_request(settings, request_id).status == "completed"
    check = load_request(settings, request_id).audit.run["portrait_verification"]
    assert check["checked"] is False
