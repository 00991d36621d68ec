"""The model registry's lifecycle over HTTP: onboarding, progress, aliases, refresh, retention.

In-process API (TestClient) against a real, migrated database (SQLite and PostgreSQL); only the
broker is faked. Preparation and refresh jobs run in-process on small untrained checkpoints.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_client import FakeQueue, KeyedClient
from checkpoints import write_checkpoint
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.cli import keys_create
from app.db import session_scope
from app.main import create_app
from app.security import identity_hash
from app.services import checkpoint_meta
from app.services.lifecycle import transition
from app.services.lookup import head_version
from app.services.registry import refresh_if_due, register_checkpoint
from app.settings import Settings
from app.storage import artifact_store, reference_vault
from app.tables import (
    Alias,
    ApiClient,
    DeletionRequest,
    ModelVersion,
    RegisteredModel,
    RequestStatus,
    VersionStatus,
)
from models.train.checkpoint import load_checkpoint
from worker.prepare import prepare_version
from worker.refresh import refresh_version

MODEL = "faces"


class Api(KeyedClient):
    """The API client with the admin key by default; `sent` lists (task, args) pairs."""

    @property
    def sent(self) -> list[tuple[str, tuple[Any, ...]]]:
        """Tasks sent, without their task ids."""
        return [(name, args) for name, args, _ in self.queue.sent]

    def call(self, method: str, path: str, key: str = "admin", **kwargs: Any) -> httpx.Response:
        """A request with the key of `key`."""
        return super().call(method, path, key, **kwargs)


@pytest.fixture
def settings(backend_settings: Settings, tmp_path: Path) -> Settings:
    """Migrated settings with a checkpoint folder and a data root under tmp_path."""
    base = backend_settings
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "data").mkdir()
    return base.model_copy(
        update={"checkpoint_dirs": [tmp_path / "ckpts"], "data_roots": [tmp_path / "data"]}
    )


@pytest.fixture
def api(settings: Settings, fake_queue: FakeQueue) -> Iterator[Api]:
    """The app on `settings` with an admin and a reader key; tasks are captured."""
    keys = {
        "admin": keys_create("admin", ["models:admin"], settings),
        "reader": keys_create("reader", ["requests:read"], settings),
    }
    with TestClient(create_app(settings)) as client:
        yield Api(client, settings, keys, fake_queue)


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained test_resnet checkpoint for synthfaces attributes (40 identities, 32 px)."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "original.pt")


def error(response: httpx.Response) -> str:
    """The stable error code of an error response."""
    return str(response.json()["error"]["code"])


def stored_files(settings: Settings) -> list[Path]:
    """Every file in the artifact store (uploads in progress included)."""
    root = settings.resolved_artifact_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def version_count(settings: Settings) -> int:
    with session_scope(settings) as session:
        return int(session.scalar(select(func.count()).select_from(ModelVersion)) or 0)


def upload(api: Api, content: bytes, **fields: Any) -> httpx.Response:
    """POST /models as multipart with a `checkpoint` file."""
    data = {"name": MODEL, **{k: str(v) for k, v in fields.items()}}
    files = {"checkpoint": ("model.pt", content, "application/octet-stream")}
    return api.call("POST", "/models", data=data, files=files)


def test_checkpoint_metadata_is_read_without_torch_objects(checkpoint_file: Path) -> None:
    meta = checkpoint_meta.read_checkpoint_meta(checkpoint_file)
    assert meta.arch == "test_resnet" and meta.head_rows == 17 and len(meta.labels) == 17
    assert meta.config["dataset"]["name"] == "synthfaces" and meta.splits["seed"] == 0


def _memo_bomb(path: Path, lookups: int) -> Path:
    """A torch-style zip whose data.pkl appends one list to itself `lookups` times (memo gets)."""
    body = b"\x80\x02]q\x00(" + b"h\x00" * lookups + b"e."  # PROTO 2, [], PUT, MARK, GETs, APPENDS
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", body)
    return path


@pytest.mark.parametrize("lookups", [1_100_000, 20 * 1024 * 1024])
def test_a_memo_bomb_is_refused_before_it_is_built(tmp_path: Path, lookups: int) -> None:
    bomb = _memo_bomb(tmp_path / "bomb.pt", lookups)
    assert bomb.stat().st_size < 100_000  # a small upload
    tracemalloc.start()
    try:
        with pytest.raises(checkpoint_meta.CheckpointUnreadable, match=r"data\.pkl"):
            checkpoint_meta.read_checkpoint_meta(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # built, the list would hold `lookups` references (8 bytes each): 8.8 MB and 168 MB
    assert peak < 8 * 1024 * 1024


# --- Onboarding -------------------------------------------------------------------------------


def test_upload_onboards_and_progress_is_visible(api: Api, checkpoint_file: Path) -> None:
    content = checkpoint_file.read_bytes()
    sha = hashlib.sha256(content).hexdigest()
    created = upload(api, content, sha256=sha, dataset="synthfaces", task="attributes")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "preparing" and body["sha256"] == sha and body["arch"] == "test_resnet"
    assert body["training_data"] == {
        "dataset": "synthfaces",
        "root": None,
        "task": "attributes",
        "split_seed": 0,
    }
    assert body["progress"]["stage"] == "queued" and body["methods_ready"] == []
    (name, (version_id,)), *_ = api.sent
    assert name == "lethe.prepare"
    store = artifact_store(api.settings)
    assert store.read("models", sha) == content
    assert not any(api.settings.resolved_staging_dir.iterdir())

    seen: list[dict[str, Any]] = []

    def spy(settings: Settings, vid: int, key: str | None = None) -> Any:
        real = original(settings, vid, key)

        def report(stage: str, done: int, total: int) -> None:
            real(stage, done, total)
            got = api.call("GET", f"/models/{MODEL}/versions/1", key="reader").json()
            seen.append(got["progress"])

        return report

    import worker.prepare as prepare_module

    original = prepare_module.progress_writer
    prepare_module.progress_writer = spy  # type: ignore[assignment]
    try:
        assert prepare_version(api.settings, version_id)["status"] == "ready"
    finally:
        prepare_module.progress_writer = original  # type: ignore[assignment]
    assert [p["stage"] for p in seen] == ["validating", "identity_index", "audit_kit", "efficacy"]
    assert [p["done"] for p in seen] == [0, 1, 2, 3] and {p["total"] for p in seen} == {4}

    ready = api.call("GET", f"/models/{MODEL}/versions/1", key="reader").json()
    assert ready["status"] == "ready" and ready["aliases"] == ["serving"]
    assert ready["progress"]["stage"] == "done" and ready["progress"]["done"] == 4
    efficacy = ready["efficacy"]
    assert efficacy["trials"] == 2 and set(efficacy["methods"]) == set(ready["methods_ready"])
    assert efficacy["methods"]["jit"]["membership_gap_closed"]["n"] <= 2
    assert "jit" in ready["methods_ready"] and "metaunlearn" not in ready["methods_ready"]
    assert "scrub" not in ready["methods_ready"]  # privileged: never on a production request
    assert ready["artifacts_version"] == 1 and ready["artifacts_prepared_at"]
    assert ready["purged_at"] is None
    missing = api.call("GET", f"/models/{MODEL}/versions/9", key="reader")
    assert missing.status_code == 404 and error(missing) == "version_not_found"


def test_path_variants_and_the_json_body(api: Api, checkpoint_file: Path) -> None:
    allowed = api.settings.checkpoint_dirs[0] / "original.pt"
    allowed.write_bytes(checkpoint_file.read_bytes())
    by_json = api.call("POST", "/models", json={"name": MODEL, "checkpoint_path": str(allowed)})
    assert by_json.status_code == 201, by_json.text
    by_form = api.call(
        "POST", "/models", data={"name": MODEL, "checkpoint_path": str(allowed), "split_seed": "0"}
    )
    assert by_form.status_code == 201, by_form.text
    assert by_form.json()["version"] == by_json.json()["version"] == 1  # same file, same version
    assert by_json.json()["training_data"]["dataset"] == "synthfaces"  # from its own config
    assert allowed.exists()  # a server-side file is copied, never moved
    forbidden = api.call(
        "POST", "/models", key="reader", json={"name": MODEL, "checkpoint_path": str(allowed)}
    )
    assert forbidden.status_code == 403


def test_onboarding_refusals_leave_nothing_behind(
    api: Api, checkpoint_file: Path, tmp_path: Path
) -> None:
    good = checkpoint_file.read_bytes()
    folder = api.settings.checkpoint_dirs[0]
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(good)
    (folder / "link.pt").symlink_to(outside)
    cases = {
        "invalid_checkpoint": [
            upload(api, b"weights"),
            upload(api, b"PK\x03\x04 truncated zip"),
            api.call("POST", "/models", json={"name": MODEL, "checkpoint_path": str(folder)}),
            api.call(
                "POST", "/models", json={"name": MODEL, "checkpoint_path": str(folder / "no.pt")}
            ),
        ],
        "checkpoint_path_refused": [
            api.call("POST", "/models", json={"name": MODEL, "checkpoint_path": str(outside)}),
            api.call(
                "POST", "/models", json={"name": MODEL, "checkpoint_path": str(folder / "link.pt")}
            ),
            api.call(
                "POST",
                "/models",
                json={"name": MODEL, "checkpoint_path": f"{folder}/../elsewhere.pt"},
            ),
        ],
        "checkpoint_sha256_mismatch": [upload(api, good, sha256="0" * 64)],
        "checkpoint_arch_unknown": [
            upload(api, write_checkpoint(tmp_path / "vit.pt", arch="test_vit").read_bytes())
        ],
        "checkpoint_head_mismatch": [
            upload(api, write_checkpoint(tmp_path / "head.pt", outputs=5).read_bytes())
        ],
        "invalid_training_data": [
            upload(api, good, task="age"),
            upload(api, good, dataset="celeba"),
            upload(api, good, split_seed=3),
            upload(api, write_checkpoint(tmp_path / "nocfg.pt", config={}).read_bytes()),
        ],
        "invalid_request": [
            upload(api, good, dataset="imagenet"),
            api.call("POST", "/models", json={"name": MODEL}),
            api.call("POST", "/models", data={"name": "bad name!", "checkpoint_path": "x"}),
        ],
    }
    for code, responses in cases.items():
        for response in responses:
            assert response.status_code in (413, 422), (code, response.text)
            assert error(response) == code, (code, response.text)
    mufac_config = {"dataset": {"name": "mufac", "root": None}, "task": "age", "image_size": 32}
    mufac = write_checkpoint(tmp_path / "m.pt", task="age", config=mufac_config).read_bytes()
    refused_roots = [
        upload(api, mufac, data_root=str(tmp_path)),
        upload(api, mufac, data_root=str(api.settings.data_roots[0] / "none")),
    ]
    assert [error(r) for r in refused_roots] == ["data_root_refused"] * 2
    assert error(upload(api, mufac)) == "invalid_training_data"  # a real data set needs a folder
    trained_on = upload(api, good, dataset="mufac", data_root=str(api.settings.data_roots[0]))
    assert error(trained_on) == "invalid_training_data"  # it was trained on synthfaces

    small = api.settings.model_copy(update={"max_checkpoint_bytes": 1000})
    with TestClient(create_app(small)) as client:
        headers = {"X-API-Key": api.keys["admin"]}
        files = {"checkpoint": ("model.pt", good, "application/octet-stream")}
        too_large = client.post("/models", data={"name": MODEL}, files=files, headers=headers)
        assert too_large.status_code == 413 and error(too_large) == "checkpoint_too_large"
        allowed = folder / "big.pt"
        allowed.write_bytes(good)
        by_path = client.post(
            "/models", json={"name": MODEL, "checkpoint_path": str(allowed)}, headers=headers
        )
        assert by_path.status_code == 413 and error(by_path) == "checkpoint_too_large"

    assert version_count(api.settings) == 0 and api.sent == []
    assert stored_files(api.settings) == []
    with session_scope(api.settings) as session:
        assert session.scalar(select(func.count()).select_from(RegisteredModel)) == 0


def test_preparation_fails_clearly_on_a_head_the_api_could_not_check(
    api: Api, tmp_path: Path
) -> None:
    # The registry function (used directly by operators and tests) skips the API's checks;
    # preparation's first stage still refuses the mismatched head.
    bad = write_checkpoint(tmp_path / "head.pt", outputs=5)
    with session_scope(api.settings) as session:
        version_id = register_checkpoint(session, api.settings, MODEL, str(bad)).id
    result = prepare_version(api.settings, version_id)
    assert result["status"] == "failed" and "5 outputs for 17 labels" in result["error"]
    got = api.call("GET", f"/models/{MODEL}/versions/1").json()
    assert got["progress"]["stage"] == "failed" and got["methods_ready"] == []


# --- Aliases -----------------------------------------------------------------------------------


@dataclass
class Chain:
    """v1 → v2 (erased A, completed) → v3 (erased B, needs_review) → v4 (B again, completed)."""

    model_id: int
    version_ids: dict[int, int]
    request_a: str
    request_b_review: str
    request_b_done: str


def _request(
    session: Any, client_id: str, model_id: int, identity: str, settings: Settings, to: str
) -> str:
    request = DeletionRequest(
        client_id=client_id,
        model_id=model_id,
        identity_hash=identity_hash(identity, settings),
        method="jit",
        body_fingerprint="0" * 64,
        portrait_sha256="0" * 64,
        attempts=1,
    )
    session.add(request)
    for status in ("received", "queued", "running", to):
        transition(session, request, RequestStatus(status), "test")
    session.flush()
    return request.id


def build_chain(settings: Settings, with_blobs: bool = False) -> Chain:
    """The chain above, `serving` on v4, with weights (and shared artifacts) in the store."""
    store = artifact_store(settings)
    a, b = identity_hash("person-a", settings), identity_hash("person-b", settings)
    shared = {
        "audit_set": store.put_bytes("audit", b"audit set v1"),
        "membership": store.put_bytes("audit", b"membership v1"),
        "method:ssd": store.put_bytes("method", b"ssd v1"),
    }
    erased = {1: [], 2: [a], 3: [a, b], 4: [a, b]}
    with session_scope(settings) as session:
        client = ApiClient(name="c", key_prefix="x", key_hash=os.urandom(16).hex(), scopes=[])
        model = RegisteredModel(name=MODEL, task="attributes")
        session.add_all([client, model])
        session.flush()
        ids: dict[int, int] = {}
        for number in (1, 2, 3, 4):
            weights = f"weights v{number}".encode()
            sha = store.put_bytes("models", weights) if with_blobs else f"{number}" * 64
            version = ModelVersion(
                model_id=model.id,
                version=number,
                parent_id=ids.get(number - 1),
                status=VersionStatus.ready.value,
                artifact_uri=f"models/{sha}",
                sha256=sha,
                arch="test_resnet",
                erased_identity_hashes=erased[number],
                artifacts=dict(shared),
                training_data={"dataset": "synthfaces"} if number == 1 else {},
            )
            session.add(version)
            session.flush()
            ids[number] = version.id
        session.get_one(ModelVersion, ids[1]).artifacts_version_id = ids[1]
        session.add(Alias(model_id=model.id, name="serving", version_id=ids[4]))

        def request(identity: str, status: str) -> str:
            return _request(session, client.id, model.id, identity, settings, status)

        chain = Chain(
            model_id=model.id,
            version_ids=ids,
            request_a=request("person-a", "completed"),
            request_b_review=request("person-b", "needs_review"),
            request_b_done=request("person-b", "completed"),
        )
    return chain


def move(api: Api, alias: str, version: int, key: str = "admin") -> httpx.Response:
    return api.call("PUT", f"/models/{MODEL}/aliases/{alias}", key=key, json={"version": version})


def test_rollback_is_refused_with_the_missing_requests(api: Api) -> None:
    chain = build_chain(api.settings)
    to_v2 = move(api, "serving", 2)
    assert to_v2.status_code == 409 and error(to_v2) == "alias_refused"
    assert to_v2.json()["error"]["details"] == {"missing_request_ids": [chain.request_b_done]}
    to_v1 = move(api, "serving", 1)
    assert to_v1.status_code == 409
    missing = to_v1.json()["error"]["details"]["missing_request_ids"]
    assert missing == [chain.request_a, chain.request_b_done]
    versions = api.call("GET", f"/models/{MODEL}/versions", key="reader").json()["items"]
    assert next(v for v in versions if "serving" in v["aliases"])["version"] == 4


def test_rollback_to_a_version_with_every_erasure_is_accepted_and_completes_reviews(
    api: Api,
) -> None:
    chain = build_chain(api.settings)
    accepted = move(api, "serving", 3)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["completed_request_ids"] == [chain.request_b_review]
    with session_scope(api.settings) as session:
        held = session.get_one(DeletionRequest, chain.request_b_review)
        last = held.events[-1]
        assert held.status == "completed"
        assert (last.from_status, last.to_status) == ("needs_review", "completed")
        assert last.actor == "admin:admin" and "moved serving to v3" in (last.reason or "")
        model = session.get_one(RegisteredModel, chain.model_id)
        assert head_version(session, model).version == 4  # the chain still ends at v4
    # Now that request is completed too, v2 lacks both of B's.
    to_v2 = move(api, "serving", 2)
    assert to_v2.json()["error"]["details"]["missing_request_ids"] == [
        chain.request_b_review,
        chain.request_b_done,
    ]
    assert move(api, "serving", 4).json()["completed_request_ids"] == []
    # Every accepted move is in the alias history, newest first; refused ones are not.
    history = api.call("GET", f"/models/{MODEL}/aliases", key="reader").json()
    assert history["aliases"] == {"serving": 4}
    moves = [(e["alias"], e["from_version"], e["to_version"]) for e in history["events"]]
    assert moves == [("serving", 3, 4), ("serving", 4, 3)]
    assert {e["actor"] for e in history["events"]} == {"admin:admin"}


def test_alias_rules(api: Api) -> None:
    build_chain(api.settings)
    baseline = move(api, "baseline", 1)  # named aliases may point anywhere ready
    assert baseline.status_code == 200 and baseline.json()["version"] == 1
    assert api.call("GET", f"/models/{MODEL}/versions/1").json()["aliases"] == ["baseline"]
    assert error(move(api, "Not-A-Slug", 1)) == "invalid_alias"
    assert error(move(api, "baseline", 9)) == "version_not_found"
    assert error(move(api, "baseline", 1, key="reader")) == "insufficient_scope"
    missing = api.call("PUT", "/models/nope/aliases/serving", json={"version": 1})
    assert error(missing) == "model_not_found"
    with session_scope(api.settings) as session:
        version = session.scalars(select(ModelVersion).where(ModelVersion.version == 2)).one()
        version.status = VersionStatus.failed.value
    failed = move(api, "baseline", 2)
    assert failed.status_code == 409 and error(failed) == "version_not_ready"


# --- Retention ---------------------------------------------------------------------------------


def purge(api: Api, versions: list[int] | None = None) -> httpx.Response:
    body = None if versions is None else {"versions": versions}
    return api.call("POST", f"/models/{MODEL}/purge", json=body)


def test_purge_refuses_serving_aliased_and_head_versions(api: Api) -> None:
    build_chain(api.settings, with_blobs=True)
    assert move(api, "baseline", 1).status_code == 200
    before = stored_files(api.settings)
    for asked in ([1], [4], [2, 1]):
        refused = purge(api, asked)
        assert refused.status_code == 409 and error(refused) == "purge_refused", asked
    assert refused.json()["error"]["details"] == {"versions": [1]}
    assert error(purge(api, [7])) == "version_not_found"
    assert stored_files(api.settings) == before
    items = api.call("GET", f"/models/{MODEL}/versions").json()["items"]
    assert all(v["purged_at"] is None for v in items)
    assert purge(api, [2]).status_code == 200  # not aliased: allowed when asked for


def test_purge_removes_unshared_blobs_and_keeps_metadata(api: Api) -> None:
    chain = build_chain(api.settings, with_blobs=True)
    store = artifact_store(api.settings)
    own = store.put_bytes("audit", b"audit set refreshed on v2")
    with session_scope(api.settings) as session:
        v2 = session.get_one(ModelVersion, chain.version_ids[2])
        v2.artifacts = {**v2.artifacts, "audit_set": own}
    assert move(api, "baseline", 1).status_code == 200
    weights = {n: hashlib.sha256(f"weights v{n}".encode()).hexdigest() for n in (1, 2, 3, 4)}

    done = purge(api)
    assert done.status_code == 200, done.text
    assert done.json()["purged_versions"] == [2, 3]
    assert done.json()["deleted_blobs"] == 3  # v2 and v3 weights, v2's own audit set
    assert not store.exists("models", weights[2]) and not store.exists("models", weights[3])
    assert not store.exists("audit", own)
    assert store.exists("models", weights[1]) and store.exists("models", weights[4])
    for sha in {**v2.artifacts, "audit_set": store.put_bytes("audit", b"audit set v1")}.values():
        kind = "method" if sha == hashlib.sha256(b"ssd v1").hexdigest() else "audit"
        if sha != own:
            assert store.exists(kind, sha)  # shared with v1 and v4
    purged = api.call("GET", f"/models/{MODEL}/versions/2").json()
    assert purged["purged_at"] and purged["sha256"] == weights[2]
    assert purged["erased_identities"] == 1 and purged["parent_version"] == 1
    assert purged["methods_ready"] == []
    assert error(move(api, "baseline", 2)) == "version_not_ready"
    with session_scope(api.settings) as session:
        model = session.get_one(RegisteredModel, chain.model_id)
        assert head_version(session, model).version == 4
    assert purge(api).json()["purged_versions"] == []  # idempotent

    assert move(api, "baseline", 4).status_code == 200
    last = purge(api, [1]).json()
    assert last["purged_versions"] == [1] and last["deleted_blobs"] == 1
    assert store.exists("audit", hashlib.sha256(b"audit set v1").hexdigest())  # v4 still uses it


def test_purge_deletes_a_verifier_no_live_version_uses_with_its_references(api: Api) -> None:
    # before, a purge never listed the verifier among a version's blobs: the embedder and every
    # person's reference (a biometric template) outlived every version that used them
    chain = build_chain(api.settings, with_blobs=True)
    store = artifact_store(api.settings)
    own = store.put_bytes("verifier", b"verifier of v2")
    shared = store.put_bytes("verifier", b"verifier of v3 and v4")
    person = identity_hash("person-a", api.settings)
    for sha in (own, shared):
        reference_vault(sha, api.settings).put(person, b"a reference")
    with session_scope(api.settings) as session:
        for number, sha in ((2, own), (3, shared), (4, shared)):
            version = session.get_one(ModelVersion, chain.version_ids[number])
            version.artifacts = {**version.artifacts, "verifier": sha}
    assert move(api, "baseline", 1).status_code == 200

    assert purge(api).json()["purged_versions"] == [2, 3]
    assert not store.exists("verifier", own)
    assert reference_vault(own, api.settings).read(person) is None
    assert store.exists("verifier", shared)  # v4 still uses it
    assert reference_vault(shared, api.settings).read(person) == b"a reference"


# --- Refresh -----------------------------------------------------------------------------------


def onboarded_child(api: Api, checkpoint: Path, erased: list[str]) -> tuple[int, int]:
    """Onboard `checkpoint`, then add a child with `erased` (same weights) serving; ids."""
    allowed = api.settings.checkpoint_dirs[0] / checkpoint.name
    allowed.write_bytes(checkpoint.read_bytes())
    created = api.call("POST", "/models", json={"name": MODEL, "checkpoint_path": str(allowed)})
    assert created.status_code == 201, created.text
    with session_scope(api.settings) as session:
        root = session.scalars(select(ModelVersion)).one()
    assert prepare_version(api.settings, root.id)["status"] == "ready"
    with session_scope(api.settings) as session:
        root = session.get_one(ModelVersion, root.id)
        child = ModelVersion(
            model_id=root.model_id,
            version=2,
            parent_id=root.id,
            status=VersionStatus.ready.value,
            artifact_uri=root.artifact_uri,
            sha256=root.sha256,
            arch=root.arch,
            method="jit",
            erased_identity_hashes=[identity_hash(i, api.settings) for i in erased],
            artifacts=dict(root.artifacts),
        )
        session.add(child)
        session.flush()
        session.get_one(Alias, (root.model_id, "serving")).version_id = child.id
        session.get_one(RegisteredModel, root.model_id).erasures_since_refresh = 3
        return root.id, child.id


def test_refresh_rebuilds_artifacts_without_erased_identities(
    api: Api, checkpoint_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = load_checkpoint(checkpoint_file).splits
    erased = list(splits["retain"][:2])
    root_id, child_id = onboarded_child(api, checkpoint_file, erased)
    before = api.call("GET", f"/models/{MODEL}/versions/2").json()
    assert before["artifacts_version"] == 1 and before["training_data"]["dataset"] == "synthfaces"

    queued = api.call("POST", f"/models/{MODEL}/refresh")
    assert queued.status_code == 202 and queued.json() == {
        "model": MODEL,
        "version": 2,
        "status": "queued",
    }
    assert api.sent[-1] == ("lethe.refresh", (child_id,))
    assert api.call("GET", f"/models/{MODEL}/versions/2").json()["progress"]["refresh"]["state"]
    sent = len(api.sent)
    for _ in range(3):  # asking again while it is queued queues nothing (it was ~3 a second)
        again = api.call("POST", f"/models/{MODEL}/refresh")
        assert again.status_code == 202 and again.json()["status"] == "already_queued"
    assert len(api.sent) == sent

    import worker.refresh as refresh_module

    used: list[Any] = []
    real = refresh_module.build_artifacts

    def spy(settings: Settings, checkpoint: Any, inputs: Any, report: Any) -> Any:
        used.append(inputs)
        return real(settings, checkpoint, inputs, report)

    monkeypatch.setattr(refresh_module, "build_artifacts", spy)
    result = refresh_version(api.settings, child_id)
    assert result["outcome"] == "refreshed" and result["excluded_identities"] == 2
    (inputs,) = used
    identities = {inputs.data.identities[i] for i in inputs.indices.train}
    assert identities and not identities & set(erased)
    assert {inputs.data.identities[i] for i in inputs.indices.retain}.isdisjoint(erased)
    assert set(splits["train"]) - set(erased) == identities

    after = api.call("GET", f"/models/{MODEL}/versions/2").json()
    assert after["artifacts_version"] == 2 and after["progress"]["refresh"]["state"] == "done"
    assert after["progress"]["refresh"]["outcome"] == "refreshed"
    with session_scope(api.settings) as session:
        child = session.get_one(ModelVersion, child_id)
        root = session.get_one(ModelVersion, root_id)
        assert child.artifacts_version_id == child_id and child.artifacts_prepared_at
        assert child.artifacts["membership"] != root.artifacts["membership"]
        assert root.artifacts_version_id == root_id  # the onboarded version keeps its own
        assert session.get_one(RegisteredModel, child.model_id).erasures_since_refresh == 0
    store = artifact_store(api.settings)
    assert store.exists("audit", child.artifacts["audit_set"])


def test_refresh_keeps_inherited_artifacts_when_the_data_is_gone(
    api: Api, checkpoint_file: Path
) -> None:
    root_id, child_id = onboarded_child(api, checkpoint_file, [])
    with session_scope(api.settings) as session:
        root = session.get_one(ModelVersion, root_id)
        root.training_data = {**root.training_data, "root": "/gone/synthfaces"}
        inherited = dict(root.artifacts)
    result = refresh_version(api.settings, child_id)
    assert result["outcome"] == "data_unavailable"
    with session_scope(api.settings) as session:
        child = session.get_one(ModelVersion, child_id)
        assert child.artifacts == inherited and child.artifacts_version_id is None
        assert child.progress["refresh"]["outcome"] == "data_unavailable"
        assert session.get_one(RegisteredModel, child.model_id).erasures_since_refresh == 0
    got = api.call("GET", f"/models/{MODEL}/versions/2").json()
    assert got["artifacts_version"] == 1


def test_refresh_is_due_after_the_configured_erasures(api: Api) -> None:
    chain = build_chain(api.settings)
    assert not refresh_if_due(api.settings, chain.model_id)  # 0: on demand only
    every = api.settings.model_copy(update={"refresh_after_erasures": 2})
    with session_scope(api.settings) as session:
        session.get_one(RegisteredModel, chain.model_id).erasures_since_refresh = 1
    assert not refresh_if_due(every, chain.model_id)
    with session_scope(api.settings) as session:
        session.get_one(RegisteredModel, chain.model_id).erasures_since_refresh = 2
    assert refresh_if_due(every, chain.model_id)
    assert api.sent == [("lethe.refresh", (chain.version_ids[4],))]
    assert not refresh_if_due(every, chain.model_id)  # already queued
    assert len(api.sent) == 1


def test_refresh_needs_a_serving_version(api: Api) -> None:
    with session_scope(api.settings) as session:
        session.add(RegisteredModel(name=MODEL, task="attributes"))
    refused = api.call("POST", f"/models/{MODEL}/refresh")
    assert refused.status_code == 409 and error(refused) == "refresh_unavailable"
    assert error(api.call("POST", "/models/nope/refresh")) == "model_not_found"


@pytest.mark.parametrize(
    "field", ["checkpoint_path", "name", "dataset_root"], ids=["path", "name", "data-root"]
)
@pytest.mark.parametrize("value", ["~no-such-user-here/model.pt", "model\x00.pt"])
def test_odd_paths_and_names_are_refused_not_500(api: Api, field: str, value: str) -> None:
    allowed = str(api.settings.checkpoint_dirs[0] / "original.pt")
    body: dict[str, Any] = {"name": MODEL, "checkpoint_path": allowed}
    if field == "dataset_root":
        body["training_data"] = {"dataset": "celeba", "root": value}
    else:
        body[field] = value
    response = api.call("POST", "/models", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert version_count(api.settings) == 0
