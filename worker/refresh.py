"""The refresh job: recompute the serving version's audit kit and method artifacts.

Artifacts built at onboarding fit the onboarded weights; after many erasures they drift from the
serving weights. While the training data is still readable, a refresh rebuilds them on the
serving version's own weights from the training data with every identity that version erased
left out. If the data is gone, the inherited artifacts stay and the outcome says so.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from app.db import session_factory
from app.security import identity_hash
from app.services.registry import training_data_of, usable_methods
from app.settings import Settings
from app.storage import artifact_store
from app.tables import ModelVersion, RegisteredModel, VersionStatus, utcnow
from models.data.splits import SplitIndices
from models.train.checkpoint import load_checkpoint
from worker.prepare import (
    DataUnavailable,
    Inputs,
    build_artifacts,
    load_inputs,
    progress_writer,
    steps_total,
)

log = logging.getLogger(__name__)
KEY = "refresh"  # where in `ModelVersion.progress` the refresh reports


def without_erased(settings: Settings, inputs: Inputs, erased: set[str]) -> tuple[Inputs, int]:
    """`inputs` with every row of an erased identity removed; also how many identities that was."""
    hashes = {i: identity_hash(i, settings) for i in set(inputs.data.identities)}
    gone = {i for i, h in hashes.items() if h in erased}

    def keep(rows: list[int]) -> list[int]:
        return [r for r in rows if inputs.data.identities[r] not in gone]

    old = inputs.indices
    indices = SplitIndices(
        train=keep(old.train),
        retain=keep(old.retain),
        forget=keep(old.forget),
        support=keep(old.support),
        val=keep(old.val),
        test=keep(old.test),
    )
    return replace(inputs, indices=indices), len(gone)


def _finish(settings: Settings, version_id: int, outcome: dict[str, Any], **fields: Any) -> None:
    """Record the outcome (and any new artifacts); the model's erasure counter restarts."""
    with session_factory(settings)() as session:
        version = session.get_one(ModelVersion, version_id)
        progress = dict(version.progress or {})
        progress[KEY] = {
            **(progress.get(KEY) or {}),
            **outcome,
            "state": "done",
            "finished_at": utcnow().isoformat(),
        }
        if "artifacts" in fields:
            progress["methods_ready"] = usable_methods(fields["artifacts"])
        version.progress = progress
        for name, value in fields.items():
            setattr(version, name, value)
        session.get_one(RegisteredModel, version.model_id).erasures_since_refresh = 0
        session.commit()


def refresh_version(settings: Settings, version_id: int) -> dict[str, Any]:
    """Refresh a ready, un-purged version's artifacts; anything else is left as it is."""
    with session_factory(settings)() as session:
        version = session.get(ModelVersion, version_id)
        if version is None:
            return {"version_id": version_id, "status": "missing"}
        if version.status != VersionStatus.ready.value or version.purged_at is not None:
            return {"version_id": version_id, "status": "skipped", "noop": True}
        spec = training_data_of(session, version)
        sha, erased = version.sha256, set(version.erased_identity_hashes or [])
    report = progress_writer(settings, version_id, KEY)
    report("validating", 0, steps_total(settings))
    with session_factory(settings)() as session:
        version = session.get_one(ModelVersion, version_id)
        state = {**((version.progress or {}).get(KEY) or {}), "state": "running"}
        version.progress = {**(version.progress or {}), KEY: state}
        session.commit()
    try:
        store = artifact_store(settings)
        with store.local_copy("models", sha) as path:
            checkpoint = load_checkpoint(path, expected_sha256=sha)
        report("identity_index", 1, steps_total(settings))
        inputs = load_inputs(settings, checkpoint, spec)
    except DataUnavailable as exc:
        log.warning("refresh of version %s: training data unavailable: %s", version_id, exc)
        outcome = {"outcome": "data_unavailable", "detail": str(exc)[:1000]}
        _finish(settings, version_id, outcome)
        return {"version_id": version_id, **outcome}
    except Exception as exc:
        log.exception("refresh of version %s failed", version_id)
        outcome = {"outcome": "failed", "detail": f"{type(exc).__name__}: {exc}"[:1000]}
        _finish(settings, version_id, outcome)
        return {"version_id": version_id, **outcome}
    inputs, excluded = without_erased(settings, inputs, erased)
    try:
        artifacts, efficacy, _ = build_artifacts(settings, checkpoint, inputs, report)
    except Exception as exc:
        log.exception("refresh of version %s failed", version_id)
        outcome = {"outcome": "failed", "detail": f"{type(exc).__name__}: {exc}"[:1000]}
        _finish(settings, version_id, outcome)
        return {"version_id": version_id, **outcome}
    outcome = {
        "outcome": "refreshed",
        "excluded_identities": excluded,
        "train_rows": len(inputs.indices.train),
    }
    _finish(
        settings,
        version_id,
        outcome,
        artifacts=artifacts,
        efficacy=efficacy,
        artifacts_version_id=version_id,
        artifacts_prepared_at=utcnow(),
    )
    return {"version_id": version_id, **outcome}
