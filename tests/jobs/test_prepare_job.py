"""The preparation job (worker/prepare.py): identity index, audit kit, recorded failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from job_helpers import (
    MODEL,
    onboard,
    serving_number,
    session_for,
)
from sqlalchemy import select

from app.security import identity_hash
from app.services.lookup import serving_version
from app.services.registry import RegistryError, register_checkpoint
from app.settings import Settings
from app.storage import artifact_store
from app.tables import (
    ModelIdentity,
    ModelVersion,
    RegisteredModel,
)
from worker.audit_kit import AUDIT_SET_SIZE, AuditSet, MembershipModel
from worker.prepare import prepare_version

# --- onboarding ---------------------------------------------------------------------------------


def test_prepare_builds_identity_index_and_audit_kit(
    settings: Settings, checkpoint: Path, train_ids: list[str], sent: list[Any]
) -> None:
    version = onboard(settings, checkpoint)
    assert sent == [("lethe.prepare", (version.id,), None)]
    assert version.status == "ready" and version.arch == "test_resnet"
    assert version.version == 1 and version.parent_id is None
    with session_for(settings) as session:
        model = session.get_one(RegisteredModel, version.model_id)
        assert model.task == "attributes"
        hashes = set(
            session.scalars(
                select(ModelIdentity.identity_hash).where(ModelIdentity.model_id == model.id)
            )
        )
    assert hashes == {identity_hash(i, settings) for i in train_ids}
    assert not hashes & set(train_ids)  # no plain identity ID is stored
    assert serving_number(settings) == 1

    store = artifact_store(settings)
    audit_set = AuditSet.from_bytes(store.read("audit", version.artifacts["audit_set"]))
    assert audit_set.images.dtype == torch.uint8
    assert audit_set.images.shape[1:] == (3, 32, 32)
    assert 0 < len(audit_set.images) <= AUDIT_SET_SIZE == 256
    assert audit_set.targets.shape == (len(audit_set.images), 17)
    raw = store.read("audit", version.artifacts["membership"])
    assert set(json.loads(raw)) >= {"coef", "intercept"}
    membership = MembershipModel.from_json(raw)
    assert 0.0 <= membership.score(0.1) <= 1.0

    again = prepare_version(settings, version.id)
    assert again.get("noop") and again["status"] == "ready"


def test_register_validates_path_and_reuses_the_same_file(
    settings: Settings, checkpoint: Path, tmp_path: Path, sent: list[Any]
) -> None:
    with session_for(settings) as session:
        with pytest.raises(RegistryError, match="does not exist"):
            register_checkpoint(session, settings, MODEL, str(tmp_path / "missing.pt"))
        with pytest.raises(RegistryError, match="not a file"):
            register_checkpoint(session, settings, MODEL, str(tmp_path))
        first = register_checkpoint(session, settings, MODEL, str(checkpoint))
        second = register_checkpoint(session, settings, MODEL, str(checkpoint))
    assert first.id == second.id and first.status == "preparing" and first.arch == "pending"
    assert len(sent) == 1
    assert artifact_store(settings).exists("models", first.sha256)


def test_prepare_failure_is_recorded(settings: Settings, tmp_path: Path, sent: list[Any]) -> None:
    bogus = tmp_path / "not-a-checkpoint.pt"
    bogus.write_bytes(b"definitely not torch")
    with session_for(settings) as session:
        version = register_checkpoint(session, settings, MODEL, str(bogus))
    result = prepare_version(settings, version.id)
    assert result["status"] == "failed"
    with session_for(settings) as session:
        failed = session.get_one(ModelVersion, version.id)
        assert failed.status == "failed" and failed.prepare_error
        model = session.get_one(RegisteredModel, failed.model_id)
        assert serving_version(session, model) is None
