"""Artifact storage: a local folder, content-addressed by SHA-256, written atomically.

Portraits are encrypted at rest (Fernet) and destroyed when their request ends; only the SHA-256 of
the plain image is kept.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet

from app.settings import Settings, get_settings


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ArtifactStore:
    """Blobs under `root/<kind>/<sha[:2]>/<sha>`; the name is the content's SHA-256."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, kind: str, sha256: str) -> Path:
        """Where the blob with this hash lives (whether or not it exists)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / kind / sha256[:2] / sha256

    def put_bytes(self, kind: str, data: bytes) -> str:
        """Store `data` (idempotent) and return its SHA-256."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(kind, sha)
        if not target.exists():
            _atomic_write(target, data)
        return sha

    def put_file(self, kind: str, source: Path) -> str:
        """Copy a file into the store atomically and return its SHA-256."""
        sha = file_sha256(source)
        target = self.path(kind, sha)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
            os.close(fd)
            try:
                shutil.copyfile(source, tmp)
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return sha

    def read(self, kind: str, sha256: str) -> bytes:
        """The blob's bytes, verified against its name."""
        data = self.path(kind, sha256).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"artifact {kind}/{sha256} is corrupt")
        return data

    def exists(self, kind: str, sha256: str) -> bool:
        """Whether the blob is present."""
        return self.path(kind, sha256).is_file()

    def delete(self, kind: str, sha256: str) -> None:
        """Remove the blob if present."""
        self.path(kind, sha256).unlink(missing_ok=True)


class PortraitVault:
    """Encrypted portraits, addressed by a random token (not their hash, which is public)."""

    def __init__(self, root: Path, key: bytes) -> None:
        self.root = root
        self.fernet = Fernet(key)

    def put(self, data: bytes) -> tuple[str, str]:
        """Encrypt and store a portrait; return (SHA-256 of the plain bytes, storage URI)."""
        token = os.urandom(16).hex()
        _atomic_write(self.root / token, self.fernet.encrypt(data))
        return hashlib.sha256(data).hexdigest(), f"portrait:{token}"

    def _path(self, uri: str) -> Path:
        scheme, _, token = uri.partition(":")
        if (
            scheme != "portrait"
            or len(token) != 32
            or any(c not in "0123456789abcdef" for c in token)
        ):
            raise ValueError(f"not a portrait URI: {uri!r}")
        return self.root / token

    def read(self, uri: str) -> bytes:
        """Decrypt a stored portrait."""
        return self.fernet.decrypt(self._path(uri).read_bytes())

    def exists(self, uri: str) -> bool:
        """Whether the portrait is still stored."""
        return self._path(uri).is_file()

    def destroy(self, uri: str) -> None:
        """Delete the portrait (idempotent)."""
        self._path(uri).unlink(missing_ok=True)


def storage_key(settings: Settings) -> bytes:
    """The Fernet key: configured, or derived from the identity secret for the embedded default."""
    if settings.storage_key:
        return settings.storage_key.encode()
    digest = hashlib.sha256(b"lethe-portraits:" + settings.identity_secret.encode()).digest()
    return base64.urlsafe_b64encode(digest)


def artifact_store(settings: Settings | None = None) -> ArtifactStore:
    """The configured artifact store."""
    return ArtifactStore((settings or get_settings()).resolved_artifact_dir)


def portrait_vault(settings: Settings | None = None) -> PortraitVault:
    """The configured portrait vault."""
    settings = settings or get_settings()
    return PortraitVault(settings.resolved_artifact_dir / "portraits", storage_key(settings))
