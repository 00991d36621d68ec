"""The HTTP API against a real, migrated database (SQLite and PostgreSQL); only enqueue is faked."""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_client import FakeQueue, KeyedClient, error_code
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

import app.services.requests as request_service
from app.api import health
from app.api.deletion_requests import FORM_OVERHEAD
from app.cli import keys_create
from app.db import session_scope
from app.main import create_app
from app.queue import ERASE
from app.security import identity_hash
from app.settings import Settings, get_settings
from app.storage import PortraitVault, portrait_vault
from app.tables import (
    Alias,
    ApiClient,
    Audit,
    DeletionRequest,
    ModelIdentity,
    ModelVersion,
    RegisteredModel,
    RequestStatus,
    VersionStatus,
    utcnow,
)
from models.catalog import METHODS

REPO = Path(__file__).resolve().parent.parent
MAX_BYTES = 100_000
MAX_PIXELS = 256 * 256
MAX_IDENTITY = 32
IDENTITIES = [f"person-{i}" for i in range(1, 7)]


class Api(KeyedClient):
    """The API client with deletion-request helpers; the writer key by default."""

    @property
    def enqueued(self) -> list[str]:
        """Requests whose erase task was sent."""
        return self.queue.ids(ERASE)

    @property
    def revoked(self) -> list[str]:
        """Task ids revoked."""
        return self.queue.revoked

    def submit(
        self,
        *,
        identity: str = "person-1",
        portrait: bytes | None = None,
        filename: str = "portrait.png",
        content_type: str = "image/png",
        model: str | None = None,
        method: str | None = None,
        idempotency_key: str | None = None,
        key: str = "writer",
    ) -> httpx.Response:
        """POST /deletion-requests as the multipart form a client sends."""
        data = {"identity_id": identity}
        if model is not None:
            data["model"] = model
        if method is not None:
            data["method"] = method
        headers = {"X-API-Key": self.keys[key]}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        files = None if portrait is None else {"portrait": (filename, portrait, content_type)}
        return self.client.post("/deletion-requests", data=data, files=files, headers=headers)

    def get(self, path: str, key: str = "writer", **params: Any) -> httpx.Response:
        """GET with an API key."""
        return super().get(path, key, **params)


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (48, 48)) -> bytes:
    """A noisy RGB image (noise keeps JPEG from compressing to nothing)."""
    image = Image.merge("RGB", [Image.effect_noise(size, 60 + 10 * c) for c in range(3)])
    out = io.BytesIO()
    # A second frame is what makes Pillow write (and read back) a multi-picture JPEG.
    extra = {"save_all": True, "append_images": [image]} if fmt == "MPO" else {}
    image.save(out, format=fmt, **extra)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width`×`height` pixels: a decompression-bomb stand-in."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


PNG = image_bytes("PNG")


def seed_models(settings: Settings) -> None:
    """`synthfaces` (ready and serving, six identities), `unready` (preparing), `unaliased`."""
    with session_scope(settings) as session:
        for name, status, alias in (
            ("synthfaces", VersionStatus.ready, True),
            ("unready", VersionStatus.preparing, True),
            ("unaliased", VersionStatus.ready, False),
        ):
            model = RegisteredModel(name=name, task="attributes")
            session.add(model)
            session.flush()
            version = ModelVersion(
                model_id=model.id,
                version=1,
                status=status.value,
                artifact_uri=f"models/{'0' * 64}",
                sha256="0" * 64,
                arch="resnet18",
            )
            session.add(version)
            session.flush()
            if alias:
                session.add(Alias(model_id=model.id, name="serving", version_id=version.id))
            session.add_all(
                ModelIdentity(model_id=model.id, identity_hash=identity_hash(i, settings))
                for i in IDENTITIES
            )


@pytest.fixture
def api_settings(backend_settings: Settings) -> Settings:
    """Migrated settings on each backend, with small limits so tests stay fast."""
    return backend_settings.model_copy(
        update={
            "max_portrait_bytes": MAX_BYTES,
            "max_portrait_pixels": MAX_PIXELS,
            "max_identity_length": MAX_IDENTITY,
        }
    )


@pytest.fixture
def api(api_settings: Settings, fake_queue: FakeQueue) -> Iterator[Api]:
    """The app with its lifespan (migrations) run, seeded models and keys for each role."""
    seed_models(api_settings)
    keys = {
        "writer": keys_create("writer", ["requests:create", "requests:read"], api_settings),
        "reader": keys_create("reader", ["requests:read"], api_settings),
        "other": keys_create("other", ["requests:create", "requests:read"], api_settings),
        "admin": keys_create("admin", ["models:admin"], api_settings),
    }
    with TestClient(create_app(api_settings)) as client:
        yield Api(client, api_settings, keys, fake_queue)


def stored_portraits(settings: Settings) -> list[Path]:
    """Files in the portrait vault."""
    folder = settings.resolved_artifact_dir / "portraits"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def request_rows(settings: Settings) -> list[DeletionRequest]:
    """Every deletion request row."""
    with session_scope(settings) as session:
        return list(session.scalars(select(DeletionRequest)))


def assert_nothing_stored(api: Api) -> None:
    """No request row, no portrait file and nothing enqueued."""
    assert request_rows(api.settings) == []
    assert stored_portraits(api.settings) == []
    assert api.enqueued == []


# --- Creating a request ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "MPO"])
def test_create_accepts_each_format(api: Api, fmt: str) -> None:
    portrait = image_bytes(fmt)
    assert Image.open(io.BytesIO(portrait)).format == fmt
    response = api.submit(portrait=portrait, content_type="application/octet-stream")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"


def test_create_records_then_enqueues(api: Api) -> None:
    response = api.submit(identity="person-1", portrait=PNG)
    assert response.status_code == 202, response.text
    request_id = response.json()["id"]
    assert response.json() == {"id": request_id, "status": "queued"}
    assert response.headers["Location"] == f"/deletion-requests/{request_id}"
    assert api.enqueued == [request_id]

    detail = api.get(response.headers["Location"])
    assert detail.status_code == 200
    body = detail.json()
    assert body["status"] == "queued" and body["model"] == "synthfaces" and body["method"] == "jit"
    assert [(e["from_status"], e["to_status"]) for e in body["events"]] == [
        (None, "received"),
        ("received", "queued"),
    ]
    assert all(e["actor"] == "writer" for e in body["events"])
    assert body["audit"] is None and body["result_version"] is None and body["error"] is None

    (row,) = request_rows(api.settings)
    # the message carries the task id committed with the row
    ((_, _, sent_id),) = api.queue.sent
    assert sent_id is not None and row.task_id == sent_id
    assert row.identity_hash == identity_hash("person-1", api.settings)
    values = [str(getattr(row, c.key)) for c in DeletionRequest.__table__.columns]
    assert not any("person-1" in value for value in values)

    # The portrait is stored encrypted, as a metadata-free PNG whose hash is recorded.
    (stored,) = stored_portraits(api.settings)
    assert row.portrait_uri is not None
    plain = portrait_vault(api.settings).read(row.portrait_uri)
    assert plain[:8] not in stored.read_bytes()
    assert Image.open(io.BytesIO(plain)).format == "PNG"
    assert body["portrait_sha256"] == row.portrait_sha256


def test_a_large_portrait_is_kept_downscaled(api: Api) -> None:
    settings = api.settings.model_copy(update={"max_stored_portrait_side": 64})
    api.client.app.state.settings = settings  # type: ignore[attr-defined]
    sent = image_bytes("JPEG", size=(160, 120))
    response = api.submit(portrait=sent)
    assert response.status_code == 202, response.text
    (row,) = request_rows(api.settings)
    assert row.portrait_uri is not None
    kept = Image.open(io.BytesIO(portrait_vault(api.settings).read(row.portrait_uri)))
    assert kept.size == (64, 48)  # the aspect ratio stays
    (stored,) = stored_portraits(api.settings)
    # before, the 160×120 JPEG became a 57 KB PNG: the vault never outgrows what was sent now
    assert stored.stat().st_size < len(sent)


def test_enqueue_failure_leaves_request_queued(api: Api) -> None:
    api.queue.down = True
    response = api.submit(portrait=PNG)
    assert response.status_code == 202
    (row,) = request_rows(api.settings)
    # its task id is in no broker and held by no worker: the sweeper takes it for lost
    assert row.status == "queued" and row.task_id is not None and row.portrait_uri is not None


BAD_INPUTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("no portrait", {"portrait": None}, 422, "portrait_missing"),
    ("empty portrait", {"portrait": b""}, 422, "portrait_missing"),
    ("not an image", {"portrait": b"definitely not an image\n" * 20}, 415, "portrait_not_an_image"),
    (
        "truncated JPEG",
        {"portrait": image_bytes("JPEG", (64, 64))[:1500], "content_type": "image/jpeg"},
        422,
        "portrait_truncated",
    ),
    ("GIF", {"portrait": image_bytes("GIF"), "content_type": "image/gif"}, 415,
     "portrait_unsupported_format"),
    ("BMP", {"portrait": image_bytes("BMP"), "content_type": "image/bmp"}, 415,
     "portrait_unsupported_format"),
    ("just over the size limit", {"portrait": b"\xff" * (MAX_BYTES + 1)}, 413,
     "portrait_too_large"),
    ("body far over the limit", {"portrait": b"\xff" * (MAX_BYTES + FORM_OVERHEAD + 1)}, 413,
     "portrait_too_large"),
    ("too many pixels", {"portrait": png_header_only(1000, 1000)}, 413,
     "portrait_too_many_pixels"),
    ("decompression bomb", {"portrait": png_header_only(20_000, 20_000)}, 413,
     "portrait_too_many_pixels"),
    ("empty identity", {"identity": ""}, 422, "identity_missing"),
    ("blank identity", {"identity": "   "}, 422, "identity_missing"),
    ("identity too long", {"identity": "x" * (MAX_IDENTITY + 1)}, 422, "identity_too_long"),
    ("unknown model", {"model": "nope"}, 404, "model_not_found"),
    ("model still preparing", {"model": "unready"}, 409, "model_not_ready"),
    ("model without serving alias", {"model": "unaliased"}, 409, "model_not_ready"),
    ("unknown method", {"method": "nope"}, 422, "method_unknown"),
    ("method not prepared", {"method": "ssd"}, 409, "method_not_prepared"),
    ("idempotency key too long", {"idempotency_key": "k" * 201}, 422, "idempotency_key_invalid"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_refused_and_leaves_nothing(
    api: Api, kwargs: dict[str, Any], status: int, code: str
) -> None:
    response = api.submit(**{"portrait": PNG, **kwargs})
    assert response.status_code == status, response.text
    assert error_code(response) == code
    assert_nothing_stored(api)


def test_a_bad_portrait_answers_alike_for_training_and_unknown_identities(api: Api) -> None:
    # the portrait is checked first: a 1-byte "portrait" must not tell who was in the training data
    known = api.submit(portrait=b"x")
    unknown = api.submit(portrait=b"x", identity="nobody")
    assert known.status_code == unknown.status_code == 415
    assert error_code(known) == error_code(unknown) == "portrait_not_an_image"
    assert_nothing_stored(api)


def test_a_name_the_model_never_saw_is_accepted_like_a_training_identity(api: Api) -> None:
    # 422 `identity_unknown` used to tell any writer who was in the training data; the job now
    # rejects the stranger's request the way it rejects a portrait that is not the person's
    known = api.submit(portrait=PNG)
    unknown = api.submit(portrait=PNG, identity="nobody")
    assert known.status_code == unknown.status_code == 202
    assert known.json().keys() == unknown.json().keys()
    assert known.json()["status"] == unknown.json()["status"] == "queued"
    assert len(api.enqueued) == 2


def test_an_api_that_dies_while_queuing_leaves_no_received_request(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `received` and `queued` commit together: a crash in between keeps neither row nor portrait
    real = request_service.transition

    def dies_when_queuing(
        session: Any, request: Any, to: RequestStatus, actor: str, reason: str | None = None
    ) -> None:
        if to is RequestStatus.queued:
            raise RuntimeError("the API process stopped here")
        real(session, request, to, actor, reason)

    monkeypatch.setattr(request_service, "transition", dies_when_queuing)
    with contextlib.suppress(RuntimeError):
        assert api.submit(portrait=PNG).status_code == 500
    assert_nothing_stored(api)


@pytest.mark.parametrize(
    ("per_minute", "per_day", "window"), [(2, 0, 60), (0, 2, 86_400)], ids=["minute", "day"]
)
def test_a_client_over_its_limit_gets_429_and_nothing_is_kept(
    api: Api, per_minute: int, per_day: int, window: int
) -> None:
    api.client.app.state.settings = api.settings.model_copy(  # type: ignore[attr-defined]
        update={"client_requests_per_minute": per_minute, "client_requests_per_day": per_day}
    )
    for person in ("person-1", "person-2"):
        assert api.submit(identity=person, portrait=PNG).status_code == 202
    refused = api.submit(identity="person-3", portrait=PNG)
    assert refused.status_code == 429 and error_code(refused) == "rate_limited"
    assert 0 < int(refused.headers["Retry-After"]) <= window
    assert len(request_rows(api.settings)) == 2 and len(stored_portraits(api.settings)) == 2
    # the limit is per client
    assert api.submit(identity="person-3", portrait=PNG, key="other").status_code == 202


def test_oversize_body_without_length_is_cut_off(api: Api) -> None:
    boundary = "lethe-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="identity_id"\r\n\r\nperson-1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="portrait"; filename="p.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    chunk = b"\xff" * 16_384

    def body() -> Iterator[bytes]:
        yield head
        for _ in range((MAX_BYTES + FORM_OVERHEAD) // len(chunk) + 2):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    response = api.client.post(
        "/deletion-requests",
        content=body(),
        headers={
            "X-API-Key": api.keys["writer"],
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413 and error_code(response) == "portrait_too_large"
    assert_nothing_stored(api)


@pytest.mark.parametrize("method", [m for m, info in METHODS.items() if not info.serves_requests])
def test_privileged_method_is_not_allowed(api: Api, method: str) -> None:
    response = api.submit(portrait=PNG, method=method)
    assert response.status_code == 422 and error_code(response) == "method_not_allowed"
    assert_nothing_stored(api)


def test_idempotent_replay_returns_the_first_answer(api: Api) -> None:
    first = api.submit(portrait=PNG, idempotency_key="abc")
    again = api.submit(portrait=PNG, idempotency_key="abc")
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert len(request_rows(api.settings)) == 1 and len(stored_portraits(api.settings)) == 1
    assert len(api.enqueued) == 1
    # The key is per client: another client's identical key is a new request.
    other = api.submit(portrait=PNG, idempotency_key="abc", key="other")
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_idempotency_key_reused_with_another_body(api: Api) -> None:
    assert api.submit(portrait=PNG, idempotency_key="abc").status_code == 202
    for changed in ({"identity": "person-2"}, {"portrait": image_bytes("JPEG")}):
        response = api.submit(**{"portrait": PNG, "idempotency_key": "abc", **changed})
        assert response.status_code == 409 and error_code(response) == "idempotency_key_reused"
    assert len(request_rows(api.settings)) == 1 and len(stored_portraits(api.settings)) == 1


def test_concurrent_replay_loses_the_insert_race(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    first = api.submit(portrait=PNG, idempotency_key="race").json()["id"]
    real_replay = request_service._replay
    calls: list[int] = []

    def late_replay(*args: Any) -> request_service.Created | None:
        calls.append(1)
        return None if len(calls) == 1 else real_replay(*args)  # first look misses the row

    monkeypatch.setattr(request_service, "_replay", late_replay)
    again = api.submit(portrait=PNG, idempotency_key="race")
    assert again.status_code == 202 and again.json()["id"] == first
    assert len(request_rows(api.settings)) == 1 and len(stored_portraits(api.settings)) == 1


def test_failed_insert_destroys_the_portrait(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(request_service, "transition", broken)
    with pytest.raises(RuntimeError, match="database went away"):
        api.submit(portrait=PNG)
    assert_nothing_stored(api)


# --- Reading, listing, cancelling ---------------------------------------------------------------


def set_status(settings: Settings, request_id: str, status: RequestStatus) -> None:
    """Force a request's status, as the worker would."""
    with session_scope(settings) as session:
        row = session.get(DeletionRequest, request_id)
        assert row is not None
        row.status = status.value


def test_get_shows_result_audit_and_error(api: Api) -> None:
    request_id = api.submit(portrait=PNG).json()["id"]
    with session_scope(api.settings) as session:
        row = session.get(DeletionRequest, request_id)
        assert row is not None
        version = session.scalar(select(ModelVersion).where(ModelVersion.version == 1))
        assert version is not None
        child = ModelVersion(
            model_id=version.model_id, version=2, parent_id=version.id, status="ready",
            artifact_uri="models/x", sha256="1" * 64, arch="resnet18", method="jit",
        )  # fmt: skip
        session.add(child)
        session.flush()
        row.result_version_id = child.id
        row.error_code, row.error_message = "guardrail", "score dropped 3 points"
        session.add(
            Audit(request_id=request_id, before={"a": 1}, after={"a": 0}, delta={"a": -1}, run={})
        )
    body = api.get(f"/deletion-requests/{request_id}").json()
    assert body["result_version"] == {"model": "synthfaces", "version": 2}
    assert body["error"] == {"code": "guardrail", "message": "score dropped 3 points"}
    assert body["audit"] == {"before": {"a": 1}, "after": {"a": 0}, "delta": {"a": -1}, "run": {}}


def test_requests_are_private_to_their_client(api: Api) -> None:
    request_id = api.submit(portrait=PNG).json()["id"]
    response = api.get(f"/deletion-requests/{request_id}", key="other")
    assert response.status_code == 404 and error_code(response) == "request_not_found"
    assert api.get("/deletion-requests", key="other").json()["items"] == []
    assert api.get("/deletion-requests/nope").status_code == 404


def test_nul_characters_are_plain_not_found(api: Api) -> None:
    # PostgreSQL refuses NUL in text; such names must read as unknown, not crash the query.
    assert error_code(api.get("/deletion-requests/a%00b")) == "request_not_found"
    assert error_code(api.get("/models/a%00b/versions")) == "model_not_found"
    assert api.get("/deletion-requests", model="a\x00b").json()["items"] == []
    response = api.submit(portrait=PNG, model="a\x00b")
    assert response.status_code == 404 and error_code(response) == "model_not_found"
    assert_nothing_stored(api)


def test_list_filters_and_paginates(api: Api) -> None:
    ids = [api.submit(identity=f"person-{i}", portrait=PNG).json()["id"] for i in range(1, 6)]
    set_status(api.settings, ids[0], RequestStatus.running)

    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/deletion-requests", **params).json()
        pages += 1
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == ids[::-1]

    running = api.get("/deletion-requests", status="running").json()["items"]
    assert [r["id"] for r in running] == [ids[0]]
    assert len(api.get("/deletion-requests", status="queued").json()["items"]) == 4
    assert len(api.get("/deletion-requests", model="synthfaces").json()["items"]) == 5
    assert api.get("/deletion-requests", model="unready").json()["items"] == []

    def forged(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    # tampered cursors: each once answered 500 (a date past year 9999 or before year 1 in UTC,
    # JSON nested past the parser's recursion limit) or must not reach the query
    for cursor in (
        "not-a-cursor",
        forged(["9999-12-31T23:59:59-14:00", ids[0]]),
        forged(["0001-01-01T00:00:00+14:00", ids[0]]),
        forged(["2026-01-01T00:00:00", ids[0]]),  # no UTC offset
        forged(["2026-01-01T00:00:00+00:00", "a\x00b"]),
        forged([1, 2]),
        base64.urlsafe_b64encode(b"[" * 5_000).decode(),
    ):
        bad_cursor = api.get("/deletion-requests", cursor=cursor)
        assert bad_cursor.status_code == 422 and error_code(bad_cursor) == "invalid_cursor"
    for params in ({"limit": 101}, {"limit": 0}, {"status": "sleeping"}):
        response = api.get("/deletion-requests", **params)
        assert response.status_code == 422 and error_code(response) == "invalid_request"


def test_cancel_while_queued(api: Api) -> None:
    request_id = api.submit(portrait=PNG).json()["id"]
    assert len(stored_portraits(api.settings)) == 1
    headers = {"X-API-Key": api.keys["writer"]}
    response = api.client.post(f"/deletion-requests/{request_id}/cancel", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "canceled" and body["finished_at"] is not None
    assert body["events"][-1]["to_status"] == "canceled" and body["events"][-1]["actor"] == "writer"
    assert stored_portraits(api.settings) == []
    (row,) = request_rows(api.settings)
    assert row.portrait_uri is None and row.portrait_sha256
    assert api.revoked == [row.task_id] == [api.queue.sent[0][2]]

    again = api.client.post(f"/deletion-requests/{request_id}/cancel", headers=headers)
    assert again.status_code == 409 and error_code(again) == "not_cancelable"


def test_a_slow_submission_does_not_hold_up_another_persons(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Submissions took turns on a lock of the whole model until their commit, so 16 clients
    # recorded 33 a second however many cores; now only one person's submissions take turns.
    entered, release = threading.Event(), threading.Event()
    calls = itertools.count()
    real_put = PortraitVault.put

    def first_put_stalls(vault: PortraitVault, data: bytes) -> tuple[str, str]:
        if next(calls) == 0:  # the first submission stalls while storing its portrait
            entered.set()
            release.wait(30)
        return real_put(vault, data)

    monkeypatch.setattr(PortraitVault, "put", first_put_stalls)
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(api.submit, portrait=PNG, identity="person-1")
        assert entered.wait(10)
        quick = pool.submit(api.submit, portrait=PNG, identity="person-2")
        try:
            assert quick.result(timeout=10).status_code == 202
        finally:
            release.set()
        assert slow.result(timeout=30).status_code == 202
    assert len(request_rows(api.settings)) == 2


# --- Duplicates -----------------------------------------------------------------------------


def test_a_duplicate_of_a_request_in_flight_is_linked_not_run(api: Api) -> None:
    first = api.submit(identity="person-2", portrait=PNG).json()["id"]
    again = api.submit(identity="person-2", portrait=image_bytes("JPEG"), key="other")
    assert again.status_code == 202, again.text
    assert again.json()["status"] == "queued"
    duplicate = again.json()["id"]
    assert api.enqueued == [first]  # no second job

    seen_by_other = api.get(f"/deletion-requests/{duplicate}", key="other")
    body = seen_by_other.json()
    # linked, but another client's request id (and so who asked) stays hidden from it
    assert body["linked_request_id"] is None and first not in seen_by_other.text
    assert body["events"][-1]["reason"].startswith("duplicate of a request in flight")
    listed = api.get("/deletion-requests", key="other")
    assert duplicate in listed.text and first not in listed.text
    # A third one follows the same request, not the duplicate; its own client sees the link.
    third = api.submit(identity="person-2", portrait=PNG).json()["id"]
    assert api.get(f"/deletion-requests/{third}").json()["linked_request_id"] == first
    auditor = keys_create("auditor", ["models:admin", "requests:read"], api.settings)
    seen_by_admin = api.client.get(
        f"/deletion-requests/{duplicate}", headers={"X-API-Key": auditor}
    )
    assert seen_by_admin.json()["linked_request_id"] == first  # an admin sees every link
    # Its portrait is kept: should the first request fail, it runs on its own.
    assert len(stored_portraits(api.settings)) == 3


def test_canceling_the_followed_request_releases_its_duplicates(api: Api) -> None:
    first = api.submit(identity="person-2", portrait=PNG).json()["id"]
    duplicate = api.submit(identity="person-2", portrait=PNG, key="other").json()["id"]
    headers = {"X-API-Key": api.keys["writer"]}
    assert api.client.post(f"/deletion-requests/{first}/cancel", headers=headers).is_success
    body = api.get(f"/deletion-requests/{duplicate}", key="other").json()
    assert body["status"] == "queued" and body["linked_request_id"] is None
    assert "was canceled" in body["events"][-1]["reason"]
    assert api.enqueued == [first, duplicate]


def _erased_by_serving(api: Api, checked: dict[str, bool]) -> None:
    """Record each person as erased from the serving version by a completed request whose audit
    says whether its portrait was checked."""
    with session_scope(api.settings) as session:
        model = session.scalars(
            select(RegisteredModel).where(RegisteredModel.name == "synthfaces")
        ).one()
        serving = session.get_one(
            ModelVersion, session.get_one(Alias, (model.id, "serving")).version_id
        )
        client = session.scalars(select(ApiClient).where(ApiClient.name == "writer")).one()
        hashes = {person: identity_hash(person, api.settings) for person in checked}
        serving.erased_identity_hashes = list(hashes.values())
        for person, was_checked in checked.items():
            request = DeletionRequest(
                client_id=client.id,
                model_id=model.id,
                identity_hash=hashes[person],
                method="jit",
                status=RequestStatus.completed.value,
                body_fingerprint="0" * 64,
                portrait_sha256="0" * 64,
                result_version_id=serving.id,
            )
            session.add(request)
            session.flush()
            verification = {"checked": was_checked}
            session.add(
                Audit(request_id=request.id, before={}, after={}, delta={},
                      run={"portrait_verification": verification})
            )  # fmt: skip


def test_an_identity_already_erased_from_serving_completes_at_once(api: Api) -> None:
    _erased_by_serving(api, {"person-3": True})
    response = api.submit(identity="person-3", portrait=PNG)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "completed"
    body = api.get(f"/deletion-requests/{response.json()['id']}").json()
    assert body["result_version"] == {"model": "synthfaces", "version": 1}
    assert [e["to_status"] for e in body["events"]] == ["received", "completed"]
    assert "already erased from serving version v1" in body["events"][-1]["reason"]
    assert body["finished_at"] is not None and body["audit"] is None
    # No job, and no portrait ever stored; only its hash.
    assert api.enqueued == [] and stored_portraits(api.settings) == []
    row = next(r for r in request_rows(api.settings) if r.id == response.json()["id"])
    assert row.portrait_uri is None and len(row.portrait_sha256) == 64
    # Another identity still makes a job.
    assert api.submit(identity="person-4", portrait=PNG).json()["status"] == "queued"
    assert len(api.enqueued) == 1


def test_an_erasure_that_checked_no_portrait_is_not_trusted_as_done(api: Api) -> None:
    # A version without a verifier erases whatever image was sent in a name: a gray image made
    # every later request for the person complete at once, and they were never forgotten.
    _erased_by_serving(api, {"person-3": False})
    response = api.submit(identity="person-3", portrait=PNG)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    assert api.enqueued == [response.json()["id"]] and len(stored_portraits(api.settings)) == 1


def test_cancel_after_start_is_refused(api: Api) -> None:
    request_id = api.submit(portrait=PNG).json()["id"]
    set_status(api.settings, request_id, RequestStatus.running)
    response = api.client.post(
        f"/deletion-requests/{request_id}/cancel", headers={"X-API-Key": api.keys["writer"]}
    )
    assert response.status_code == 409 and error_code(response) == "not_cancelable"
    assert len(stored_portraits(api.settings)) == 1
    assert api.revoked == []


# --- Authentication ------------------------------------------------------------------------------


def test_auth(api: Api) -> None:
    missing = api.client.get("/deletion-requests")
    assert missing.status_code == 401 and error_code(missing) == "missing_api_key"
    wrong = api.client.get("/deletion-requests", headers={"X-API-Key": "lethe_nope"})
    assert wrong.status_code == 401 and error_code(wrong) == "invalid_api_key"

    scope = api.submit(portrait=PNG, key="reader")
    assert scope.status_code == 403 and error_code(scope) == "insufficient_scope"
    assert_nothing_stored(api)
    admin_reads = api.get("/deletion-requests", key="admin")
    assert admin_reads.status_code == 403 and error_code(admin_reads) == "insufficient_scope"

    with session_scope(api.settings) as session:
        for client in session.scalars(select(ApiClient).where(ApiClient.name == "reader")):
            client.revoked_at = utcnow()
    revoked = api.get("/deletion-requests", key="reader")
    assert revoked.status_code == 401 and error_code(revoked) == "invalid_api_key"


def _lethe(api: Api, monkeypatch: pytest.MonkeyPatch, *argv: str) -> None:
    """Run the `lethe` command against the test's database."""
    from worker.cli import main

    monkeypatch.setenv("LETHE_DATA_DIR", str(api.settings.data_dir))
    monkeypatch.setenv("LETHE_IDENTITY_SECRET", api.settings.identity_secret)
    if api.settings.database_url:
        monkeypatch.setenv("LETHE_DATABASE_URL", api.settings.database_url)
    get_settings.cache_clear()
    try:
        main(list(argv))
    finally:
        get_settings.cache_clear()


def test_lethe_keys_create_prints_a_working_key(
    api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _lethe(api, monkeypatch, "keys", "create", "--name", "cli", "--scopes", "requests:read")
    key = capsys.readouterr().out.strip()
    assert key.startswith("lethe_")
    with session_scope(api.settings) as session:
        stored = session.scalar(select(ApiClient).where(ApiClient.name == "cli"))
        assert stored is not None and key not in (stored.key_hash, stored.key_prefix)
    response = api.client.get("/deletion-requests", headers={"X-API-Key": key})
    assert response.status_code == 200


def test_keys_create_refuses_unknown_scopes(api_settings: Settings) -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        keys_create("x", ["requests:delete"], api_settings)


def test_lethe_keys_list_and_revoke(
    api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = keys_create("to-revoke", ["requests:read"], api.settings)
    capsys.readouterr()
    _lethe(api, monkeypatch, "keys", "list")
    listed = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert {"writer", "reader", "other", "admin", "to-revoke"} <= set(listed)
    entry = listed["to-revoke"]
    assert entry["state"] == "active" and entry["scopes"] == ["requests:read"]
    assert key.startswith(entry["prefix"]) and key not in json.dumps(listed)
    with session_scope(api.settings) as session:
        hashes = set(session.scalars(select(ApiClient.key_hash)))
    assert not any(h in json.dumps(listed) for h in hashes)  # never the stored hash either

    assert api.client.get("/deletion-requests", headers={"X-API-Key": key}).status_code == 200
    _lethe(api, monkeypatch, "keys", "revoke", entry["prefix"])
    assert capsys.readouterr().out.strip() == f"revoked {entry['id']}"
    refused = api.client.get("/deletion-requests", headers={"X-API-Key": key})
    assert refused.status_code == 401 and error_code(refused) == "invalid_api_key"
    _lethe(api, monkeypatch, "keys", "list")
    states = {c["name"]: c["state"] for c in json.loads(capsys.readouterr().out)}
    assert states["to-revoke"] == "revoked" and states["writer"] == "active"
    with pytest.raises(SystemExit, match="no API client"):
        _lethe(api, monkeypatch, "keys", "revoke", "lethe_nobody")


def test_an_expired_key_is_refused(api: Api) -> None:
    with pytest.raises(ValueError, match="positive"):
        keys_create("never-valid", ["requests:read"], api.settings, expires_in_days=0)
    key = keys_create("short-lived", ["requests:read"], api.settings, expires_in_days=1)
    assert api.client.get("/deletion-requests", headers={"X-API-Key": key}).status_code == 200
    with session_scope(api.settings) as session:
        client = session.scalars(select(ApiClient).where(ApiClient.name == "short-lived")).one()
        assert client.expires_at is not None and client.expires_at > utcnow()
        client.expires_at = utcnow() - timedelta(seconds=1)
    expired = api.client.get("/deletion-requests", headers={"X-API-Key": key})
    assert expired.status_code == 401 and error_code(expired) == "invalid_api_key"


# --- Models --------------------------------------------------------------------------------------


def test_models_and_versions(api: Api) -> None:
    models = api.get("/models", key="reader").json()["items"]
    synthfaces = next(m for m in models if m["name"] == "synthfaces")
    assert synthfaces["serving_version"] == 1 and synthfaces["latest_version"] == 1
    assert next(m for m in models if m["name"] == "unaliased")["serving_version"] is None

    (version,) = api.get("/models/synthfaces/versions", key="admin").json()["items"]
    assert version["version"] == 1 and version["status"] == "ready"
    assert version["aliases"] == ["serving"] and version["parent_version"] is None
    missing = api.get("/models/nope/versions", key="reader")
    assert missing.status_code == 404 and error_code(missing) == "model_not_found"


def test_register_model(api: Api, tmp_path: Path) -> None:
    sent = api.queue.sent
    from checkpoints import write_checkpoint

    headers = {"X-API-Key": api.keys["admin"]}
    # Under the default LETHE_CHECKPOINT_DIRS (data_dir/models); tests/test_registry.py covers more.
    checkpoint = write_checkpoint(api.settings.data_dir / "models" / "model.pt")

    forbidden = api.client.post(
        "/models",
        json={"name": "new", "checkpoint_path": str(checkpoint)},
        headers={"X-API-Key": api.keys["writer"]},
    )
    assert forbidden.status_code == 403 and error_code(forbidden) == "insufficient_scope"

    bad = api.client.post(
        "/models",
        json={"name": "new", "checkpoint_path": str(checkpoint.parent / "none.pt")},
        headers=headers,
    )
    assert bad.status_code == 422 and error_code(bad) == "invalid_checkpoint"
    invalid = api.client.post("/models", json={"name": "new"}, headers=headers)
    assert invalid.status_code == 422 and error_code(invalid) == "invalid_request"

    created = api.client.post(
        "/models", json={"name": "new", "checkpoint_path": str(checkpoint)}, headers=headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["model"] == "new" and created.json()["status"] == "preparing"
    assert len(sent) == 1
    listed = api.get("/models/new/versions", key="admin").json()["items"]
    assert [v["version"] for v in listed] == [created.json()["version"]]


# --- Health, errors, documentation ---------------------------------------------------------------


def test_health_and_readiness(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    assert api.client.get("/healthz").json()["status"] == "ok"

    def ok(_: Settings) -> str:
        return "fine"

    def down(_: Settings) -> str:
        raise ConnectionError("connection refused")

    checks = {"database": health.check_database, "broker": ok, "workers": ok}
    monkeypatch.setattr(health, "CHECKS", checks)
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["checks"]["database"]["ok"]

    monkeypatch.setitem(checks, "broker", down)
    not_ready = api.client.get("/readyz")
    assert not_ready.status_code == 503
    body = not_ready.json()
    assert body["status"] == "not_ready" and not body["checks"]["broker"]["ok"]
    # the public endpoint says what is down, not the driver's text (hosts, ports, users)
    assert body["checks"]["broker"]["detail"] == "unreachable"
    assert body["checks"]["database"]["ok"] and body["checks"]["workers"]["ok"]


def test_a_database_outage_answers_503_and_shows_no_internals(
    api_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # a real outage: nothing listens on the discard port
    down = api_settings.model_copy(
        update={"database_url": "postgresql+psycopg://lethe-user@127.0.0.1:9/lethe"}
    )
    client = TestClient(create_app(down))  # no lifespan: migrating would fail first
    for path in ("/deletion-requests", "/models", "/models/faces/versions"):
        response = client.get(path, headers={"X-API-Key": "lethe_key"})
        assert response.status_code == 503 and error_code(response) == "service_unavailable"
        assert int(response.headers["Retry-After"]) > 0
        assert "127.0.0.1" not in response.text and "lethe-user" not in response.text
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == {"ok": False, "detail": "unreachable"}
    assert "127.0.0.1" not in ready.text and "lethe-user" not in ready.text
    assert "lethe-user" not in caplog.text


def test_database_errors_carry_no_bound_parameters(api_settings: Settings) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import StatementError

    from app.db import get_engine

    secret = "portrait-token-that-must-not-be-logged"
    with get_engine(api_settings).connect() as connection, pytest.raises(StatementError) as caught:
        connection.execute(text("SELECT * FROM no_such_table WHERE id = :id"), {"id": secret})
    assert "no_such_table" in str(caught.value) and secret not in str(caught.value)


def test_unknown_route_has_the_error_shape(api: Api) -> None:
    response = api.client.get("/nowhere")
    assert response.status_code == 404 and error_code(response) == "not_found"


def test_openapi_documents_every_refusal(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    post = spec["paths"]["/deletion-requests"]["post"]["responses"]
    documented = " ".join(r.get("description", "") for r in post.values())
    for _, _, status, code in BAD_INPUTS:
        assert str(status) in post and f"`{code}`" in documented
    assert "`idempotency_key_reused`" in documented and "`method_not_allowed`" in documented
    cancel = spec["paths"]["/deletion-requests/{request_id}/cancel"]["post"]["responses"]
    assert "`not_cancelable`" in cancel["409"]["description"]


def test_app_import_stays_free_of_torch(tmp_path: Path) -> None:
    code = "import app.main, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    env = {"LETHE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=120)
