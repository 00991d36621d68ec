"""Portrait verification in the service: the verifier built at onboarding and checked before an
erasure (models/verification.py does the math).

The embedder is an artifact (`artifacts["verifier"]`, content-addressed, read with
`weights_only`); each training identity's reference is encrypted under its keyed identity hash
(app/storage.py, ReferenceVault, whose `forget_references` deletes those of erased people). A
version without a verifier (onboarded with `verify_portraits` off) erases without a check,
rejects only names the model never saw, and its audit says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from app.security import identity_hash
from app.settings import Settings
from app.storage import (
    VERIFIER_ARTIFACT,
    VERIFIER_KIND,
    ArtifactStore,
    artifact_store,
    reference_vault,
)
from models.data.base import FaceData
from models.verification import (
    Calibration,
    IdentityEmbedder,
    VerifierConfig,
    load_embedder,
    reference_bytes,
    reference_from_bytes,
    save_embedder,
    train_verifier,
)

VERIFIER_KEY = VERIFIER_ARTIFACT
VERIFIER_FOLDER = VERIFIER_KIND  # artifact-store folder
MISMATCH = "portrait_mismatch"
MISMATCH_MESSAGE = (
    "the portrait does not match the person this request names closely enough to erase them"
)
# only where a version has no verifier: with one, a person the model never saw has no
# reference, and their request is rejected as a mismatch like any wrong portrait
UNKNOWN = "identity_unknown"
UNKNOWN_MESSAGE = "the model was not trained on the person this request names"


def build_verifier(
    settings: Settings,
    store: ArtifactStore,
    data: FaceData,
    rows: Sequence[int],
    report: Callable[[int, int], None] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Train the verifier on the training photos `rows`, store it and every identity's
    encrypted reference; its artifact SHA-256 and its calibration (for the version's record)."""
    cfg = VerifierConfig(**settings.verifier_options)
    identities = [data.identities[r] for r in rows]
    verifier = train_verifier(data.load_image, list(rows), identities, cfg, report)
    sha = store.put_bytes(VERIFIER_FOLDER, save_embedder(verifier))
    vault = reference_vault(sha, settings)
    for identity, reference in verifier.references.items():
        vault.put(identity_hash(identity, settings), reference_bytes(reference))
    return sha, {
        "kind": "portrait-verification",
        **asdict(verifier.calibration),
        "config": asdict(cfg),
    }


_loaded: dict[tuple[str, str], tuple[IdentityEmbedder, Calibration]] = {}


def _embedder(settings: Settings, sha: str) -> tuple[IdentityEmbedder, Calibration]:
    """The stored embedder and its calibration, loaded once per worker process."""
    key = (str(settings.resolved_artifact_dir), sha)
    if key not in _loaded:
        if len(_loaded) >= 4:
            _loaded.clear()
        _loaded[key] = load_embedder(artifact_store(settings).read(VERIFIER_FOLDER, sha))
    return _loaded[key]


@dataclass(frozen=True)
class Check:
    """A portrait checked against the reference of the identity its request names."""

    request_id: str
    matched: bool


def check_portraits(
    settings: Settings,
    artifacts: dict[str, str],
    members: Sequence[tuple[str, str]],
    images: Sequence[torch.Tensor],
) -> list[Check] | None:
    """Each (request id, identity hash) member's portrait against its identity's reference,
    or None when the version has no verifier. An identity without a reference (erased, or
    never trained on) does not match."""
    sha = artifacts.get(VERIFIER_KEY)
    if sha is None:
        return None
    embedder, calibration = _embedder(settings, sha)
    vault = reference_vault(sha, settings)
    embedded = embedder.embed_images(list(images))
    checks = []
    for (request_id, identity), vector in zip(members, embedded, strict=True):
        stored = vault.read(identity)
        score = float(vector @ reference_from_bytes(stored)) if stored is not None else -1.0
        checks.append(Check(request_id, score >= calibration.threshold))
    return checks
