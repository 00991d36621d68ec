"""Artifacts and portraits over the blob store (app/blobs.py).

Artifacts are content-addressed: a blob's name is its SHA-256, checked on every read. Portraits
are encrypted at rest (Fernet), addressed by a random token, and destroyed when their request
ends; only the SHA-256 of the plain image is kept.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography.fernet import Fernet

from app.blobs import BlobStore, LocalBlobStore
from app.settings import Settings, get_settings

PORTRAITS = "portraits"
REFERENCES = "references"
VERIFIER_ARTIFACT = "verifier"  # the key of a version's portrait verifier in its artifacts
VERIFIER_KIND = "verifier"  # the artifact-store folder verifiers are kept in


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return sha256


class ArtifactStore:
    """Blobs under `<kind>/<sha[:2]>/<sha>`; the name is the content's SHA-256."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    @staticmethod
    def key(kind: str, sha256: str) -> str:
        """The blob key of an artifact (whether or not it exists)."""
        return f"{kind}/{sha256[:2]}/{_check_sha(sha256)}"

    def put_bytes(self, kind: str, data: bytes) -> str:
        """Store `data` (idempotent) and return its SHA-256."""
        sha = hashlib.sha256(data).hexdigest()
        key = self.key(kind, sha)
        if not self.blobs.exists(key):
            self.blobs.write(key, data)
        return sha

    def put_file(self, kind: str, source: Path) -> str:
        """Copy a file into the store atomically and return its SHA-256."""
        sha = file_sha256(source)
        key = self.key(kind, sha)
        if not self.blobs.exists(key):
            self.blobs.write_file(key, source)
        return sha

    def read(self, kind: str, sha256: str) -> bytes:
        """The blob's bytes, verified against its name."""
        data = self.blobs.read(self.key(kind, sha256))
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"artifact {kind}/{sha256} is corrupt")
        return data

    @contextlib.contextmanager
    def local_copy(self, kind: str, sha256: str) -> Iterator[Path]:
        """A local file with the artifact's bytes (the reader checks them against the name)."""
        with self.blobs.local_copy(self.key(kind, sha256)) as path:
            yield path

    def exists(self, kind: str, sha256: str) -> bool:
        """Whether the blob is present."""
        return self.blobs.exists(self.key(kind, sha256))

    def delete(self, kind: str, sha256: str) -> None:
        """Remove the blob if present."""
        self.blobs.delete(self.key(kind, sha256))


class PortraitVault:
    """Encrypted portraits, addressed by a random token (not their hash, which is public)."""

    def __init__(self, blobs: BlobStore, key: bytes) -> None:
        self.blobs = blobs
        self.fernet = Fernet(key)

    def put(self, data: bytes) -> tuple[str, str]:
        """Encrypt and store a portrait; return (SHA-256 of the plain bytes, storage URI)."""
        token = os.urandom(16).hex()
        self.blobs.write(f"{PORTRAITS}/{token}", self.fernet.encrypt(data))
        return hashlib.sha256(data).hexdigest(), f"portrait:{token}"

    @staticmethod
    def _key(uri: str) -> str:
        scheme, _, token = uri.partition(":")
        if (
            scheme != "portrait"
            or len(token) != 32
            or any(c not in "0123456789abcdef" for c in token)
        ):
            raise ValueError(f"not a portrait URI: {uri!r}")
        return f"{PORTRAITS}/{token}"

    def read(self, uri: str) -> bytes:
        """Decrypt a stored portrait."""
        return self.fernet.decrypt(self.blobs.read(self._key(uri)))

    def exists(self, uri: str) -> bool:
        """Whether the portrait is still stored."""
        return self.blobs.exists(self._key(uri))

    def destroy(self, uri: str) -> None:
        """Delete the portrait (idempotent)."""
        self.blobs.delete(self._key(uri))

    def stored(self) -> Iterator[tuple[str, float]]:
        """Every stored portrait's URI and when it was written."""
        for blob in self.blobs.list(PORTRAITS):
            yield f"portrait:{blob.key.rpartition('/')[2]}", blob.modified

    def remove_partial_writes(self, older_than: float) -> int:
        """Delete portrait writes a crash interrupted before `older_than`; how many."""
        return self.blobs.remove_partial_writes(PORTRAITS, older_than)


class ReferenceVault:
    """Encrypted per-identity reference embeddings of one verifier, named by the keyed identity
    hash: a reference is a biometric template, so it is kept like a portrait and deleted with
    the person's erasure."""

    def __init__(self, blobs: BlobStore, key: bytes, verifier_sha256: str) -> None:
        self.blobs = blobs
        self.fernet = Fernet(key)
        self.prefix = f"{REFERENCES}/{_check_sha(verifier_sha256)}"

    def _key(self, identity_hash: str) -> str:
        return f"{self.prefix}/{_check_sha(identity_hash)}"

    def put(self, identity_hash: str, data: bytes) -> None:
        """Encrypt and store one identity's reference."""
        self.blobs.write(self._key(identity_hash), self.fernet.encrypt(data))

    def read(self, identity_hash: str) -> bytes | None:
        """One identity's reference, or None when it has none (never had, or erased)."""
        key = self._key(identity_hash)
        if not self.blobs.exists(key):
            return None
        return self.fernet.decrypt(self.blobs.read(key))

    def delete(self, identity_hash: str) -> None:
        """Delete one identity's reference (idempotent)."""
        self.blobs.delete(self._key(identity_hash))

    def delete_all(self) -> int:
        """Delete every reference of this verifier (when the verifier itself goes); count."""
        keys = [info.key for info in self.blobs.list(self.prefix)]
        for key in keys:
            self.blobs.delete(key)
        return len(keys)


def storage_key(settings: Settings) -> bytes:
    """The Fernet key: configured, or derived from the identity secret for the embedded default."""
    if settings.storage_key:
        return settings.storage_key.encode()
    digest = hashlib.sha256(b"lethe-portraits:" + settings.identity_secret.encode()).digest()
    return base64.urlsafe_b64encode(digest)


def blob_store(settings: Settings | None = None) -> BlobStore:
    """The configured blob store (the local folder `resolved_artifact_dir`)."""
    return LocalBlobStore((settings or get_settings()).resolved_artifact_dir)


def artifact_store(settings: Settings | None = None) -> ArtifactStore:
    """The configured artifact store."""
    return ArtifactStore(blob_store(settings))


def reference_vault(verifier_sha256: str, settings: Settings | None = None) -> ReferenceVault:
    """The references of the verifier stored as `verifier_sha256`."""
    settings = settings or get_settings()
    return ReferenceVault(blob_store(settings), storage_key(settings), verifier_sha256)


def forget_references(
    settings: Settings, artifacts: dict[str, str], identities: Iterable[str]
) -> None:
    """Delete the verifier references of `identities` (keyed hashes) once a serving version has
    forgotten them; nothing for a version without a verifier. Idempotent."""
    sha = artifacts.get(VERIFIER_ARTIFACT)
    if sha is None:
        return
    vault = reference_vault(sha, settings)
    for identity in identities:
        vault.delete(identity)


def portrait_vault(settings: Settings | None = None) -> PortraitVault:
    """The configured portrait vault."""
    settings = settings or get_settings()
    return PortraitVault(blob_store(settings), storage_key(settings))
