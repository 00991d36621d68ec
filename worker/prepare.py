"""The onboarding job: read a registered checkpoint, build its identity index and audit kit.

Runs while the training data still exists (docs/architecture.md, "Two phases"). The
computation touches no database; its results are written in one transaction, so a version is
`ready` only with its identity index, artifacts and (for a model's first version) the `serving`
alias.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import session_factory
from app.security import identity_hash
from app.services.lookup import PENDING, serving_version
from app.services.paths import PathRefused, resolve_under
from app.services.registry import set_alias, usable_methods
from app.settings import Settings
from app.storage import ArtifactStore, artifact_store
from app.tables import SERVING, ModelIdentity, ModelVersion, RegisteredModel, VersionStatus, utcnow
from models import catalog
from models.catalog import ARCHITECTURES
from models.data.base import DatasetError, FaceData
from models.data.registry import DatasetSpec, load_dataset
from models.data.splits import KEYED, SplitIndices, Splits, keyed, split_indices
from models.data.transforms import test_transform, train_transform
from models.device import default_device
from models.methods import get_method, resolve_config
from models.methods.prepare_data import build_prepare_data
from models.nets import data_config
from models.protocol import model_from_checkpoint
from models.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from worker.audit_kit import AuditKit, build_audit_kit, store_audit_kit
from worker.efficacy import EFFICACY_KIND, Calibration, pick_trials
from worker.verify import VERIFIER_KEY, build_verifier
from worker.versions import METHOD_KIND, task_spec

log = logging.getLogger(__name__)


Report = Callable[[str, int, int], None]  # (stage, steps done, steps total)


def _silent(stage: str, done: int, total: int) -> None:
    """A progress report nobody reads."""


@dataclass(frozen=True)
class Prepared:
    """What preparation computed for a version, ready to be written to the database."""

    sha256: str  # of the checkpoint kept (its splits keyed)
    arch: str
    task: str
    identity_hashes: list[str]
    artifacts: dict[str, str]
    efficacy: dict[str, Any]
    training_data: dict[str, Any]
    total: int


@dataclass(frozen=True)
class Inputs:
    """The training data of a checkpoint, loaded and split as it was trained."""

    data: FaceData
    splits: Splits
    indices: SplitIndices
    task: str
    image_size: int
    training_data: dict[str, Any]


class DataUnavailable(RuntimeError):
    """The training data the spec names can no longer be read."""


def check_head(checkpoint: Checkpoint) -> None:
    """The classifier has one output per label of the checkpoint's task."""
    info = ARCHITECTURES.get(checkpoint.arch)
    head = info.head if info is not None else None
    weight = checkpoint.state_dict.get(f"{head}.weight") if head else None
    labels = len(checkpoint.task["labels"])
    if weight is not None and int(weight.shape[0]) != labels:
        raise ValueError(f"the classifier has {int(weight.shape[0])} outputs for {labels} labels")


def _under_data_roots(settings: Settings, root: str) -> bool:
    try:
        resolve_under(root, settings.data_roots)
    except PathRefused:
        return False
    return True


def load_inputs(
    settings: Settings, checkpoint: Checkpoint, training_data: dict[str, Any] | None
) -> Inputs:
    """Load the checkpoint's data set as `training_data` (default: its config) says.

    A spec that contradicts the checkpoint is a ValueError; data that cannot be read is
    DataUnavailable.
    """
    config = checkpoint.config
    spec = dict(config.get("dataset") or {})
    wanted = dict(training_data or {})
    splits = Splits.from_dict(checkpoint.splits)
    if wanted:
        if spec.get("name", wanted["dataset"]) != wanted["dataset"]:
            raise ValueError(f"the checkpoint was trained on {spec.get('name')!r}")
        if wanted.get("split_seed") not in (None, splits.seed):
            raise ValueError(f"the checkpoint's splits use seed {splits.seed}")
        root = wanted.get("root")
        if root is not None and not _under_data_roots(settings, root):
            raise DataUnavailable(f"{root} is not under LETHE_DATA_ROOTS")
        spec |= {"name": wanted["dataset"], "root": root}
    task = str(wanted.get("task") or config["task"])
    key = _identity_key(settings) if checkpoint.splits.get(KEYED) else None
    try:
        data = load_dataset(DatasetSpec(**spec))
        indices = split_indices(data, splits, key)
    except (OSError, DatasetError) as exc:
        raise DataUnavailable(f"{type(exc).__name__}: {exc}") from exc
    if task not in data.tasks or task_spec(checkpoint) != data.task(task):
        raise ValueError(f"the checkpoint's task {task!r} differs from its data set's")
    used = {"dataset": data.name, "root": spec.get("root"), "task": task, "split_seed": splits.seed}
    return Inputs(data, splits, indices, task, int(config["image_size"]), used)


def preparable_methods(settings: Settings) -> list[str]:
    """Methods of settings.prepare_methods that compute something at onboarding."""
    return [name for name in settings.prepare_methods if catalog.method(name).prepares]


def _prepare_methods(
    settings: Settings,
    store: ArtifactStore,
    model: torch.nn.Module,
    inputs: Inputs,
    arch: str,
    report: Report,
    done: int,
    total: int,
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Run `prepare` of each preparable method; store results as tensors. Returns the stored
    names and hashes, and what each method computed (for the efficacy calibration).

    A method whose preparation fails is logged and left out: the version still serves the
    methods that need nothing, and requests for the missing one are refused by the API.
    """
    artifacts, prepared = {}, {}
    data, task = inputs.data, inputs.task
    config = data_config(model, inputs.image_size)
    prepare_data = None
    for step, name in enumerate(preparable_methods(settings), start=done):
        report(catalog.method(name).artifact_key, step, total)
        method = get_method(name)
        try:
            if prepare_data is None:
                # The identity index is keyed like the service's stored identities.
                prepare_data = build_prepare_data(
                    data,
                    task,
                    inputs.indices,
                    test_transform(config),
                    lambda i: identity_hash(i, settings),
                    train_augment=train_transform(config),
                )
            cfg = resolve_config(name, data.name, arch, 1, **settings.method_options.get(name, {}))
            computed: dict[str, Any] = method.prepare(model, prepare_data, cfg)
        except Exception:
            log.exception("preparation of method %s failed; it will not be selectable", name)
            continue
        if computed:
            buffer = io.BytesIO()
            torch.save(computed, buffer)
            key = catalog.method(name).artifact_key
            artifacts[key] = store.put_bytes(METHOD_KIND, buffer.getvalue())
            prepared[name] = computed
    return artifacts, prepared


def calibrate_efficacy(
    settings: Settings,
    model: torch.nn.Module,
    inputs: Inputs,
    kit: AuditKit,
    arch: str,
    methods: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Simulated single-portrait erasures (worker/efficacy.py) for each method in `methods`,
    keyed by name to what it prepared; a method whose calibration fails is logged and left out."""
    if settings.efficacy_trials == 0:
        return {}
    data, task, size = inputs.data, inputs.task, inputs.image_size
    trials = pick_trials(data, inputs.indices, settings.efficacy_trials, inputs.splits.seed)
    summary: dict[str, Any] = {
        "kind": EFFICACY_KIND,
        "trials": len(trials),
        "measured_at": utcnow().isoformat(),
        "methods": {},
    }
    if not trials:
        summary["note"] = "no training identity has enough photos for a simulated erasure"
        return summary
    calibration = Calibration(
        model,
        data,
        task,
        inputs.indices,
        kit,
        test_transform(data_config(model, size)),
        default_device(),
        trials,
        identity_key=lambda i: identity_hash(i, settings),
    )
    for name, computed in methods.items():
        options = settings.method_options.get(name, {})
        try:
            cfg = resolve_config(name, data.name, arch, 1, **options)
            summary["methods"][name] = calibration.calibrate(name, cfg, computed)
        except Exception:
            log.exception("efficacy calibration of method %s failed; it has none", name)
    return summary


def build_artifacts(
    settings: Settings, checkpoint: Checkpoint, inputs: Inputs, report: Report
) -> tuple[dict[str, str], dict[str, Any], int]:
    """Audit kit, method artifacts and calibrated efficacy on the checkpoint's weights; returns
    the artifacts, the efficacy and the number of steps."""
    store = artifact_store(settings)
    total = steps_total(settings)
    report("audit_kit", 2, total)
    device = default_device()
    model = model_from_checkpoint(checkpoint).to(device)
    data, task, indices, size = inputs.data, inputs.task, inputs.indices, inputs.image_size
    kit = build_audit_kit(model, data, task, indices, size, device, seed=inputs.splits.seed)
    artifacts = store_audit_kit(store, kit)
    stored, prepared = _prepare_methods(
        settings, store, model, inputs, checkpoint.arch, report, 3, total
    )
    artifacts |= stored
    report("efficacy", total - 1 - settings.verify_portraits, total)
    usable = {name: prepared.get(name, {}) for name in usable_methods(artifacts)}
    efficacy = calibrate_efficacy(settings, model, inputs, kit, checkpoint.arch, usable)
    if settings.verify_portraits:
        report("verifier", total - 1, total)
        artifacts[VERIFIER_KEY], efficacy["portrait_verification"] = build_verifier(
            settings, store, data, indices.train
        )
    return artifacts, efficacy, total


def steps_total(settings: Settings) -> int:
    """Preparation's steps: validating, identity index, audit kit, each method, efficacy and
    the portrait verifier."""
    return 4 + len(preparable_methods(settings)) + settings.verify_portraits


def _identity_key(settings: Settings) -> Callable[[str], str]:
    """The keyed hash the service names identities (and images) by."""
    return lambda text: identity_hash(text, settings)


def keep_keyed(settings: Settings, store: ArtifactStore, checkpoint: Checkpoint) -> str:
    """The SHA-256 of the checkpoint as the service keeps it, stored: its splits keyed, so the
    stored file names nobody in plain (the same file if they already are)."""
    if checkpoint.splits.get(KEYED):
        return checkpoint.sha256
    kept = replace(checkpoint, splits=keyed(checkpoint.splits, _identity_key(settings)))
    with tempfile.TemporaryDirectory(prefix="lethe-keyed-") as folder:
        path = Path(folder) / "model.pt"
        save_checkpoint(path, kept)
        return store.put_file("models", path)


def compute(
    settings: Settings,
    sha256: str,
    training_data: dict[str, Any] | None = None,
    report: Report = _silent,
) -> Prepared:
    """Everything a version needs before it can serve erasures (no database access)."""
    total = steps_total(settings)
    report("validating", 0, total)
    store = artifact_store(settings)
    with store.local_copy("models", sha256) as path:
        checkpoint = load_checkpoint(path, expected_sha256=sha256)
    check_head(checkpoint)
    report("identity_index", 1, total)
    inputs = load_inputs(settings, checkpoint, training_data)
    train = inputs.splits.train
    keyed_already = bool(checkpoint.splits.get(KEYED))
    identities = sorted(
        set(train) if keyed_already else {identity_hash(i, settings) for i in train}
    )
    artifacts, efficacy, total = build_artifacts(settings, checkpoint, inputs, report)
    return Prepared(
        sha256=keep_keyed(settings, store, checkpoint),
        arch=checkpoint.arch,
        task=inputs.task,
        identity_hashes=identities,
        artifacts=artifacts,
        efficacy=efficacy,
        training_data=inputs.training_data,
        total=total,
    )


def progress_writer(settings: Settings, version_id: int, key: str | None = None) -> Report:
    """A Report that commits each stage to the version's `progress` (under `key` if given)."""
    factory = session_factory(settings)

    def report(stage: str, done: int, total: int) -> None:
        entry = {"stage": stage, "done": done, "total": total, "updated_at": utcnow().isoformat()}
        try:
            with factory() as session:
                version = session.get(ModelVersion, version_id)
                if version is None:
                    return
                current = dict(version.progress or {})
                if key is None:
                    if version.status != VersionStatus.preparing.value:
                        return
                    current |= entry
                else:
                    current[key] = {**(current.get(key) or {}), **entry}
                version.progress = current
                session.commit()
        except Exception:
            log.exception("could not record progress of version %s", version_id)

    return report


def _mark_failed(session: Session, version: ModelVersion, message: str) -> dict[str, Any]:
    version.status = VersionStatus.failed.value
    version.prepare_error = message[:4000]
    version.progress = {**(version.progress or {}), "stage": "failed"}
    session.commit()
    return {"version_id": version.id, "status": version.status, "error": version.prepare_error}


def _apply(session: Session, version: ModelVersion, prepared: Prepared) -> dict[str, Any]:
    """Write the results and mark the version ready (the caller's session, one commit)."""
    model = session.get_one(RegisteredModel, version.model_id)
    if model.task not in (PENDING, prepared.task):
        return _mark_failed(
            session,
            version,
            f"checkpoint task {prepared.task!r} differs from model {model.name!r}'s {model.task!r}",
        )
    model.task = prepared.task
    if prepared.sha256 != version.sha256:
        version.upload_sha256 = version.sha256
        version.sha256 = prepared.sha256
        version.artifact_uri = f"models/{prepared.sha256}"
    version.arch = prepared.arch
    version.artifacts = prepared.artifacts
    version.efficacy = prepared.efficacy
    version.training_data = prepared.training_data
    version.artifacts_version_id = version.id
    version.artifacts_prepared_at = utcnow()
    version.progress = {
        **(version.progress or {}),
        "stage": "done",
        "done": prepared.total,
        "total": prepared.total,
        "methods_ready": usable_methods(prepared.artifacts),
    }
    known = set(
        session.scalars(
            select(ModelIdentity.identity_hash).where(ModelIdentity.model_id == model.id)
        )
    )
    session.add_all(
        ModelIdentity(model_id=model.id, identity_hash=h)
        for h in prepared.identity_hashes
        if h not in known
    )
    version.status = VersionStatus.ready.value
    version.prepare_error = None
    if serving_version(session, model) is None:
        set_alias(session, model, SERVING, version, "worker", "first version to be prepared")
    session.commit()
    return {"version_id": version.id, "status": version.status}


def prepare_version(settings: Settings, version_id: int) -> dict[str, Any]:
    """Prepare a `preparing` version; anything else is left as it is (the job is idempotent)."""
    factory = session_factory(settings)
    with factory() as session:
        version = session.get(ModelVersion, version_id)
        if version is None:
            return {"version_id": version_id, "status": "missing"}
        if version.status != VersionStatus.preparing.value:
            return {"version_id": version_id, "status": version.status, "noop": True}
        sha, training_data = version.sha256, dict(version.training_data or {})
    try:
        prepared = compute(settings, sha, training_data, progress_writer(settings, version_id))
    except Exception as exc:
        log.exception("preparing model version %s failed", version_id)
        with factory() as session:
            version = session.get_one(ModelVersion, version_id)
            if version.status != VersionStatus.preparing.value:
                return {"version_id": version_id, "status": version.status, "noop": True}
            return _mark_failed(session, version, f"{type(exc).__name__}: {exc}")
    # Two versions of one model prepared at once may insert the same identity rows; the loser
    # of that race re-reads the index once and inserts what is still missing.
    for retry in (False, True):
        with factory() as session:
            version = session.get_one(ModelVersion, version_id)
            if version.status != VersionStatus.preparing.value:
                return {"version_id": version_id, "status": version.status, "noop": True}
            upload = version.sha256
            try:
                result = _apply(session, version, prepared)
            except IntegrityError:
                session.rollback()
                if retry:
                    raise
                continue
            if upload != prepared.sha256:
                _drop_upload(settings, session, upload)
            return result
    raise AssertionError("unreachable")


def _drop_upload(settings: Settings, session: Session, sha: str) -> None:
    """Delete a registered file once its keyed copy is kept, unless a version still uses it (a
    failed one, or another model's still preparing)."""
    if session.scalar(select(ModelVersion.id).where(ModelVersion.sha256 == sha).limit(1)) is None:
        artifact_store(settings).delete("models", sha)
