"""Helpers of the worker-job tests: onboard a model, seed requests as the API records them."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import session_factory
from app.security import identity_hash
from app.services.lifecycle import transition
from app.services.lookup import serving_version
from app.services.registry import register_checkpoint
from app.settings import Settings
from app.storage import portrait_vault
from app.tables import (
    ApiClient,
    DeletionRequest,
    ModelVersion,
    RegisteredModel,
    RequestStatus,
)
from models.data.registry import DatasetSpec
from models.data.synthfaces import SynthFaces, SynthFacesConfig
from worker.prepare import prepare_version

SPEC = DatasetSpec(num_identities=40, image_size=32)
MODEL = "faces"


def session_for(settings: Settings) -> Session:
    return session_factory(settings)()


def onboard(settings: Settings, checkpoint: Path) -> ModelVersion:
    """Register and prepare the checkpoint; returns the ready version."""
    with session_for(settings) as session:
        version = register_checkpoint(session, settings, MODEL, str(checkpoint))
    result = prepare_version(settings, version.id)
    assert result["status"] == "ready", result
    with session_for(settings) as session:
        return session.get_one(ModelVersion, version.id)


def portrait_png(identity: str) -> bytes:
    """A new synthfaces photo of `identity`, PNG-encoded as a client would send it."""
    faces = SynthFaces(SynthFacesConfig(num_identities=40, image_size=32))
    pixels = faces.portrait(identity).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def seed_request(
    settings: Settings,
    identity: str,
    method: str = "jit",
    *,
    queued: bool = True,
    portrait: bytes | None = None,
) -> str:
    """A queued deletion request with an encrypted portrait (default: a new photo of
    `identity`), as the API would record it.

    `queued=False` leaves it `received`, as an API that died before queuing it would.
    """
    with session_for(settings) as session:
        model = session.scalars(select(RegisteredModel).where(RegisteredModel.name == MODEL)).one()
        client = ApiClient(
            name="compliance",
            key_prefix="lethe_test",
            key_hash=hashlib.sha256(os.urandom(16)).hexdigest(),
            scopes=["requests:create", "requests:read"],
        )
        session.add(client)
        session.flush()
        digest, uri = portrait_vault(settings).put(portrait or portrait_png(identity))
        request = DeletionRequest(
            client_id=client.id,
            model_id=model.id,
            identity_hash=identity_hash(identity, settings),
            method=method,
            body_fingerprint="0" * 64,
            portrait_sha256=digest,
            portrait_uri=uri,
            attempts=0,
        )
        session.add(request)
        transition(session, request, RequestStatus.received, "api")
        if queued:
            transition(session, request, RequestStatus.queued, "api")
        session.commit()
        return request.id


def load_request(settings: Settings, request_id: str) -> DeletionRequest:
    with session_for(settings) as session:
        request = session.get_one(DeletionRequest, request_id)
        _ = request.events, request.audit
        return request


def statuses(request: DeletionRequest) -> list[str]:
    return [event.to_status for event in request.events]


def serving_number(settings: Settings) -> int:
    with session_for(settings) as session:
        model = session.scalars(select(RegisteredModel).where(RegisteredModel.name == MODEL)).one()
        version = serving_version(session, model)
        assert version is not None
        return version.version


def portrait_uri_of(settings: Settings, request_id: str) -> str:
    uri = load_request(settings, request_id).portrait_uri
    assert uri is not None
    return uri


def batching(settings: Settings, size: int, window: float = 0.0) -> Settings:
    """`settings` with batches of at most `size` and the given waiting window."""
    return settings.model_copy(update={"batch_max_size": size, "batch_window_seconds": window})


def link(settings: Settings, follower: str, primary: str) -> None:
    """Make `follower` a duplicate of `primary`, as the API records one."""
    with session_for(settings) as session:
        session.get_one(DeletionRequest, follower).linked_request_id = primary
        session.commit()
