"""The blob-store contract every artifact and portrait goes through, and its local-folder backend.

Callers name blobs by key ("models/ab/ab12…", "portraits/<token>") and never by path: a backend
decides where the bytes live. `local_copy` hands a file to libraries that need one (torch.load);
`partial_writes` finds interrupted writes to clean up. An object-store backend implements the
same methods (docs/extending.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

KEY = re.compile(r"^[a-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")
PARTIAL_PREFIX = "."  # a local write in progress: `.<name>.<random>.tmp` beside its target


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob: its key and when it was last written (seconds since the epoch)."""

    key: str
    modified: float


class BlobStore(Protocol):
    """Bytes by key: atomic writes, reads, existence, deletion, listing and a local copy."""

    def write(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, all or nothing."""
        ...

    def write_file(self, key: str, source: Path) -> None:
        """Store a local file's bytes under `key`, all or nothing."""
        ...

    def read(self, key: str) -> bytes:
        """The blob's bytes (FileNotFoundError if absent)."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob if present."""
        ...

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """The complete blobs whose key starts with `prefix/`."""
        ...

    def local_copy(self, key: str) -> contextlib.AbstractContextManager[Path]:
        """A readable local file with the blob's bytes, for as long as the block runs."""
        ...

    def remove_partial_writes(self, prefix: str, older_than: float) -> int:
        """Delete interrupted writes under `prefix/` last touched before `older_than`; count."""
        ...


def check_key(key: str) -> str:
    """`key` if it is a relative, slash-separated name with no `.`/`..` parts."""
    if not KEY.fullmatch(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"not a blob key: {key!r}")
    return key


class LocalBlobStore:
    """Blobs as files under `root/<key>`, written via a temporary file, fsync and rename."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        """Where this backend keeps `key` (for this backend's own tests and tools)."""
        return self.root / check_key(key)

    @contextlib.contextmanager
    def _staged(self, key: str) -> Iterator[Path]:
        """A temporary file beside the target, renamed into place if the block succeeds."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=target.parent, prefix=f"{PARTIAL_PREFIX}{target.name}.", suffix=".tmp"
        )
        os.close(fd)
        try:
            yield Path(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write(self, key: str, data: bytes) -> None:
        """Store `data` under `key` atomically."""
        with self._staged(key) as tmp:
            tmp.write_bytes(data)

    def write_file(self, key: str, source: Path) -> None:
        """Copy `source` under `key` atomically."""
        with self._staged(key) as tmp:
            shutil.copyfile(source, tmp)

    def read(self, key: str) -> bytes:
        """The blob's bytes."""
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        """Whether the blob's file exists."""
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove the blob's file if present."""
        self.path(key).unlink(missing_ok=True)

    def _files(self, prefix: str) -> Iterator[Path]:
        folder = self.path(prefix)
        if folder.is_dir():
            yield from (p for p in sorted(folder.rglob("*")) if p.is_file())

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """Complete blobs under `prefix/` (interrupted writes are left out)."""
        for file in self._files(prefix):
            if not file.name.startswith(PARTIAL_PREFIX):
                key = file.relative_to(self.root).as_posix()
                yield BlobInfo(key, file.stat().st_mtime)

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """The blob's own file: it is local already."""
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no blob {key!r}")
        yield path

    def remove_partial_writes(self, prefix: str, older_than: float) -> int:
        """Delete the `.…tmp` files of crashed writes under `prefix/` older than `older_than`."""
        removed = 0
        for file in self._files(prefix):
            if file.name.startswith(PARTIAL_PREFIX) and file.stat().st_mtime < older_than:
                file.unlink(missing_ok=True)
                removed += 1
        return removed
