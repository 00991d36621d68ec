"""The running service over real HTTP, for the integration and fault tests: a key with every
scope they use, registering the tiny model, posting portraits, reading versions."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image

from app.cli import keys_create
from app.settings import Settings
from models.data.synthfaces import SynthFaces, SynthFacesConfig
from models.train.checkpoint import load_checkpoint
from worker.embedded import Services, running_services, wait_for_ready_version

MODEL = "faces"


def portraits(checkpoint: Path, count: int) -> list[tuple[str, bytes]]:
    """`count` training identities of the checkpoint, each with a fresh PNG portrait."""
    ckpt = load_checkpoint(checkpoint)
    faces = SynthFaces(SynthFacesConfig(num_identities=40, image_size=32, seed=0))
    result = []
    for identity in ckpt.splits["retain"][:count]:
        buffer = io.BytesIO()
        Image.fromarray(faces.portrait(identity).permute(1, 2, 0).numpy()).save(buffer, "PNG")
        result.append((identity, buffer.getvalue()))
    return result


def post(client: httpx.Client, identity: str, png: bytes, method: str | None = None) -> str:
    """Submit a deletion request; its id (asserts the 202)."""
    form = {"identity_id": identity, "model": MODEL} | ({"method": method} if method else {})
    response = client.post(
        "/deletion-requests", data=form, files={"portrait": ("p.png", png, "image/png")}
    )
    assert response.status_code == 202, response.text
    assert response.headers["location"].endswith(response.json()["id"])
    return str(response.json()["id"])


def versions(client: httpx.Client) -> dict[int, dict]:
    """The model's versions by number."""
    items = client.get(f"/models/{MODEL}/versions").raise_for_status().json()["items"]
    return {v["version"]: v for v in items}


@contextmanager
def service(settings: Settings) -> Iterator[tuple[Services, httpx.Client]]:
    """The API and the workers, and a client holding a key with every scope these tests use."""
    with running_services(settings) as services:
        key = keys_create("it", ["requests:create", "requests:read", "models:admin"], settings)
        with httpx.Client(
            base_url=services.base_url, headers={"X-API-Key": key}, timeout=30
        ) as client:
            yield services, client


def register(client: httpx.Client, checkpoint: Path) -> dict:
    """Register the checkpoint as the model and wait until its first version is ready."""
    response = client.post("/models", json={"name": MODEL, "checkpoint_path": str(checkpoint)})
    assert response.status_code in (201, 202), response.text
    version = wait_for_ready_version(client, MODEL, 180)
    assert version["status"] == "ready", version
    return version
