"""Stream a multipart checkpoint upload to a temporary file under the artifact folder, capped.

FastAPI's own form parsing would spool the whole body to the system temp folder before the
route runs; checkpoints can be gigabytes, so the body is parsed here as it arrives and refused
as soon as it passes `max_checkpoint_bytes`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.errors import ApiError
from app.settings import Settings

FILE_FIELD = "checkpoint"
MAX_FIELD_BYTES = 64 * 1024  # the text fields are names, a hash and a path
FORM_OVERHEAD = 256 * 1024


@dataclass
class Upload:
    """The form's text fields and, if one was sent, the checkpoint file and its SHA-256."""

    fields: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None
    size: int = 0

    def discard(self) -> None:
        """Remove the temporary file (idempotent)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class _Part:
    def __init__(self) -> None:
        self.headers: dict[str, bytes] = {}
        self.header_name = b""
        self.header_value = b""
        self.name: str | None = None
        self.filename: str | None = None
        self.text = bytearray()


def incoming_dir(settings: Settings) -> Path:
    """Where uploads are written before they are validated and copied into the store."""
    path = settings.resolved_staging_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


async def receive_upload(request: Request, settings: Settings) -> Upload:
    """Parse the multipart body; the caller must `discard()` the result when done."""
    limit = settings.max_checkpoint_bytes
    too_large = ApiError.of("checkpoint_too_large", f"the checkpoint is over {limit} bytes")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + FORM_OVERHEAD:
        raise too_large
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError.of("invalid_request", "multipart body without a boundary")

    upload = Upload()
    digest = hashlib.sha256()
    handle = None
    part = _Part()
    problem: ApiError | None = None

    def on_part_begin() -> None:
        nonlocal part
        part = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header_name += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.header_value += data[start:end]

    def on_header_end() -> None:
        part.headers[part.header_name.lower().decode("latin-1")] = part.header_value
        part.header_name, part.header_value = b"", b""

    def on_headers_finished() -> None:
        nonlocal handle, problem
        _, options = parse_options_header(part.headers.get("content-disposition", b""))
        part.name = options.get(b"name", b"").decode("utf-8", "replace") or None
        raw_filename = options.get(b"filename")
        part.filename = None if raw_filename is None else raw_filename.decode("utf-8", "replace")
        if part.name == FILE_FIELD and part.filename is not None:
            if upload.path is not None:
                problem = ApiError.of("invalid_request", "send one checkpoint file")
                return
            fd, tmp = tempfile.mkstemp(dir=incoming_dir(settings), suffix=".upload")
            upload.path = Path(tmp)
            handle = os.fdopen(fd, "wb")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal problem
        if problem is not None:
            return
        chunk = data[start:end]
        if part.name == FILE_FIELD and part.filename is not None and handle is not None:
            upload.size += len(chunk)
            if upload.size > limit:
                problem = too_large
                return
            digest.update(chunk)
            handle.write(chunk)
        else:
            part.text += chunk
            if len(part.text) > MAX_FIELD_BYTES:
                problem = ApiError.of("invalid_request", f"form field {part.name!r} is too long")

    def on_part_end() -> None:
        nonlocal handle
        if part.name == FILE_FIELD and part.filename is not None and handle is not None:
            handle.close()
            handle = None
        elif part.name is not None and problem is None:
            upload.fields[part.name] = part.text.decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if problem is not None:
                raise problem
        parser.finalize()
        if problem is not None:
            raise problem
    except ApiError:
        upload.discard()
        raise
    except Exception as exc:
        upload.discard()
        raise ApiError.of("invalid_request", f"malformed multipart body: {exc}") from None
    finally:
        if handle is not None:
            handle.close()
    if upload.path is not None:
        upload.sha256 = digest.hexdigest()
    return upload
