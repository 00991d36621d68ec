"""Keyed identity hashes, API keys and scopes; the artifact store and the portrait vault."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken
from services import make_settings

from app import blobs
from app.blobs import LocalBlobStore
from app.security import (
    KEY_PREFIX,
    SCOPES,
    check_scopes,
    generate_api_key,
    hash_api_key,
    identity_hash,
    key_prefix,
)
from app.settings import Settings
from app.storage import PORTRAITS, ArtifactStore, PortraitVault, portrait_vault, storage_key

PORTRAIT = b"\x89PNG\r\n\x1a\n" + b"a very recognisable face " * 40


def files_under(root: Path) -> list[Path]:
    """Every file below root (temporary files included)."""
    return sorted(p for p in root.rglob("*") if p.is_file())


# --- security -------------------------------------------------------------------------------


def test_identity_hash_is_keyed_and_deterministic(tmp_path: Path) -> None:
    one = make_settings(tmp_path, identity_secret="first-secret-0123456789")
    two = make_settings(tmp_path, identity_secret="second-secret-0123456789")
    assert identity_hash("celeb-0042", one) == identity_hash("celeb-0042", one)
    assert identity_hash("celeb-0042", one) != identity_hash("celeb-0042", two)
    assert identity_hash("celeb-0042", one) != identity_hash("celeb-0043", one)
    assert identity_hash("celeb-0042", one) != hashlib.sha256(b"celeb-0042").hexdigest()
    assert len(identity_hash("celeb-0042", one)) == 64


def test_api_keys_are_random_and_stored_only_as_a_hash() -> None:
    key, other = generate_api_key(), generate_api_key()
    assert key != other and key.startswith(KEY_PREFIX)
    assert len(key) > len(KEY_PREFIX) + 40
    assert hash_api_key(key) == hash_api_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert hash_api_key(key) != hash_api_key(other)
    assert key_prefix(key) == key[: len(KEY_PREFIX) + 6]
    assert key.startswith(key_prefix(key)) and len(key_prefix(key)) <= 16


def test_check_scopes_sorts_deduplicates_and_rejects_unknown() -> None:
    assert check_scopes(["requests:read", "requests:create", "requests:read"]) == [
        "requests:create",
        "requests:read",
    ]
    assert check_scopes(list(SCOPES)) == sorted(SCOPES)
    assert check_scopes([]) == []
    with pytest.raises(ValueError, match="unknown scope"):
        check_scopes(["requests:read", "models:everything"])


# --- artifact store -------------------------------------------------------------------------


def blob_path(store: ArtifactStore, kind: str, sha: str) -> Path:
    """Where the local backend keeps an artifact."""
    assert isinstance(store.blobs, LocalBlobStore)
    return store.blobs.path(store.key(kind, sha))


def vault_folder(vault: PortraitVault) -> Path:
    """Where the local backend keeps the vault's portraits."""
    assert isinstance(vault.blobs, LocalBlobStore)
    return vault.blobs.root / PORTRAITS


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    """An empty artifact store."""
    return ArtifactStore(LocalBlobStore(tmp_path / "artifacts"))


def test_put_read_exists_delete(store: ArtifactStore) -> None:
    sha = store.put_bytes("weights", b"tensor bytes")
    assert sha == hashlib.sha256(b"tensor bytes").hexdigest()
    assert store.exists("weights", sha)
    assert store.read("weights", sha) == b"tensor bytes"
    assert blob_path(store, "weights", sha) == store.blobs.root / "weights" / sha[:2] / sha
    store.delete("weights", sha)
    assert not store.exists("weights", sha)
    store.delete("weights", sha)


def test_put_is_idempotent_and_leaves_no_temporary_file(store: ArtifactStore) -> None:
    first = store.put_bytes("weights", b"same")
    second = store.put_bytes("weights", b"same")
    assert first == second
    assert files_under(store.blobs.root) == [blob_path(store, "weights", first)]


def test_put_file_copies_and_hashes(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "model.safetensors"
    source.write_bytes(os.urandom(3 << 20))
    sha = store.put_file("weights", source)
    assert sha == hashlib.sha256(source.read_bytes()).hexdigest()
    assert store.read("weights", sha) == source.read_bytes()
    assert store.put_file("weights", source) == sha
    assert files_under(store.blobs.root) == [blob_path(store, "weights", sha)]


def test_a_corrupt_artifact_is_detected(store: ArtifactStore) -> None:
    sha = store.put_bytes("weights", b"original")
    blob_path(store, "weights", sha).write_bytes(b"tampered")
    with pytest.raises(ValueError, match="corrupt"):
        store.read("weights", sha)


@pytest.mark.parametrize("name", ["", "abc", "G" * 64, "A" * 64, "../" + "a" * 61])
def test_a_malformed_hash_is_rejected(store: ArtifactStore, name: str) -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        store.key("weights", name)


def fail_replace(*_args: object) -> None:
    """Stand-in for os.replace: the process dies between writing and renaming."""
    raise OSError("simulated crash before rename")


def test_an_interrupted_put_leaves_nothing(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobs.os, "replace", fail_replace)
    with pytest.raises(OSError, match="simulated"):
        store.put_bytes("weights", b"half written")
    assert files_under(store.blobs.root) == []
    assert not store.exists("weights", hashlib.sha256(b"half written").hexdigest())


def test_an_interrupted_put_file_leaves_nothing(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(b"w" * 1000)
    monkeypatch.setattr(blobs.os, "replace", fail_replace)
    with pytest.raises(OSError, match="simulated"):
        store.put_file("weights", source)
    assert files_under(store.blobs.root) == []


# --- portrait vault -------------------------------------------------------------------------


@pytest.fixture
def vault(tmp_path: Path) -> PortraitVault:
    """A vault with a fresh key."""
    return PortraitVault(LocalBlobStore(tmp_path), Fernet.generate_key())


def test_portraits_are_encrypted_at_rest(vault: PortraitVault) -> None:
    sha, uri = vault.put(PORTRAIT)
    assert sha == hashlib.sha256(PORTRAIT).hexdigest()
    [stored] = files_under(vault_folder(vault))
    assert stored.name == uri.removeprefix("portrait:")
    assert sha not in uri
    ciphertext = stored.read_bytes()
    assert ciphertext != PORTRAIT
    assert b"recognisable face" not in ciphertext
    assert PORTRAIT[:8] not in ciphertext


def test_a_portrait_round_trips_and_is_destroyed(vault: PortraitVault) -> None:
    _, uri = vault.put(PORTRAIT)
    assert vault.exists(uri)
    assert vault.read(uri) == PORTRAIT
    vault.destroy(uri)
    assert not vault.exists(uri)
    assert files_under(vault_folder(vault)) == []
    vault.destroy(uri)
    with pytest.raises(FileNotFoundError):
        vault.read(uri)


def test_the_same_portrait_twice_gets_two_uris(vault: PortraitVault) -> None:
    (sha_a, uri_a), (sha_b, uri_b) = vault.put(PORTRAIT), vault.put(PORTRAIT)
    assert sha_a == sha_b and uri_a != uri_b
    vault.destroy(uri_a)
    assert vault.read(uri_b) == PORTRAIT


def test_another_key_cannot_read_a_portrait(vault: PortraitVault) -> None:
    _, uri = vault.put(PORTRAIT)
    with pytest.raises(InvalidToken):
        PortraitVault(vault.blobs, Fernet.generate_key()).read(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "portrait:",
        "portrait:../../etc/passwd",
        "portrait:" + "A" * 32,
        "portrait:" + "a" * 31,
        "portrait:" + "a" * 33,
        "portrait:" + "../" + "a" * 29,
        "weights:" + "a" * 32,
        "a" * 32 + "/x",
        "a" * 32,
    ],
)
def test_a_bad_portrait_uri_is_rejected(vault: PortraitVault, uri: str) -> None:
    for operation in (vault.read, vault.exists, vault.destroy):
        with pytest.raises(ValueError, match="portrait URI"):
            operation(uri)


def test_an_interrupted_portrait_write_leaves_nothing(
    vault: PortraitVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobs.os, "replace", fail_replace)
    with pytest.raises(OSError, match="simulated"):
        vault.put(PORTRAIT)
    assert files_under(vault_folder(vault)) == []


def test_storage_key_is_configured_or_derived_from_the_secret(tmp_path: Path) -> None:
    configured = Fernet.generate_key().decode()
    assert storage_key(make_settings(tmp_path, storage_key=configured)) == configured.encode()
    derived = storage_key(make_settings(tmp_path))
    assert derived == storage_key(make_settings(tmp_path))
    Fernet(derived)
    other = make_settings(tmp_path, identity_secret="another-secret-0123456789")
    assert storage_key(other) != derived


def test_portrait_vault_lives_under_the_artifact_dir(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    vault = portrait_vault(settings)
    _, uri = vault.put(PORTRAIT)
    assert vault_folder(vault) == tmp_path.resolve() / "artifacts" / "portraits"
    assert portrait_vault(settings).read(uri) == PORTRAIT


# --- blob store (the local backend of app/blobs.py) ---------------------------------------------


def test_blobs_list_complete_writes_and_clean_up_interrupted_ones(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.write("kit/aa/one", b"1")
    store.write("kit/bb/two", b"2")
    partial = tmp_path / "kit" / "aa" / ".three.x1.tmp"  # a write that crashed before its rename
    partial.write_bytes(b"half")
    assert [b.key for b in store.list("kit")] == ["kit/aa/one", "kit/bb/two"]
    assert list(store.list("nothing-here")) == []
    assert store.remove_partial_writes("kit", older_than=0.0) == 0  # too young to be abandoned
    assert store.remove_partial_writes("kit", older_than=partial.stat().st_mtime + 1) == 1
    assert not partial.exists() and store.read("kit/aa/one") == b"1"


def test_a_blob_local_copy_is_readable_and_a_missing_one_raises(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.write("models/aa/x", b"weights")
    with store.local_copy("models/aa/x") as path:
        assert path.read_bytes() == b"weights"
    with pytest.raises(FileNotFoundError), store.local_copy("models/aa/y"):
        pass


@pytest.mark.parametrize("key", ["", "/etc/passwd", "a/../b", "a/./b", "a//b", "../x", "A/b"])
def test_a_bad_blob_key_is_rejected(tmp_path: Path, key: str) -> None:
    store = LocalBlobStore(tmp_path)
    for operation in (store.read, store.exists, store.delete):
        with pytest.raises(ValueError, match="blob key"):
            operation(key)


def test_production_refuses_published_or_short_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pydantic import ValidationError

    from app.settings import DEV_IDENTITY_SECRET

    key = Fernet.generate_key().decode()
    strong = "0123456789abcdef" * 4

    def production(**overrides: object) -> Settings:
        return make_settings(tmp_path, deployment="production", **overrides)

    for secret, problem in (
        (DEV_IDENTITY_SECRET, "published"),
        ("change-me-to-a-long-random-secret", "published"),  # the old docker-compose fallback
        ("twenty-chars-secret!", "shorter than 32"),
    ):
        with pytest.raises(ValidationError, match=problem):
            production(identity_secret=secret, storage_key=key)
    with pytest.raises(ValidationError, match="LETHE_STORAGE_KEY is unset"):
        production(identity_secret=strong)
    with pytest.raises(ValidationError, match="not a Fernet key"):
        make_settings(tmp_path, storage_key="not-a-key")
    assert production(identity_secret=strong, storage_key=key).deployment == "production"

    caplog.clear()
    with caplog.at_level("WARNING", logger="app.settings"):
        embedded = make_settings(tmp_path, identity_secret=DEV_IDENTITY_SECRET)
    assert embedded.deployment == "embedded" and "published" in caplog.text
