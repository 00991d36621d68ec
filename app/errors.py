"""The API's error codes (the one table of them), the `ApiError` exception and its handlers."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from app.schemas import ErrorBody

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorCode:
    """A documented error: HTTP status, stable code and what it means."""

    status: int
    code: str
    description: str


_CODES = (
    ErrorCode(401, "missing_api_key", "No `X-API-Key` header was sent."),
    ErrorCode(401, "invalid_api_key", "The API key is unknown or revoked."),
    ErrorCode(403, "insufficient_scope", "The API key lacks the scope this endpoint needs."),
    ErrorCode(422, "invalid_request", "A parameter or the body failed validation."),
    ErrorCode(422, "portrait_missing", "No `portrait` file was sent, or it was empty."),
    ErrorCode(415, "portrait_not_an_image", "The portrait's bytes are not an image."),
    ErrorCode(415, "portrait_unsupported_format", "The portrait is not JPEG, PNG or WebP."),
    ErrorCode(422, "portrait_truncated", "The portrait's image data is truncated or corrupt."),
    ErrorCode(413, "portrait_too_large", "The portrait exceeds the maximum file size."),
    ErrorCode(413, "portrait_too_many_pixels", "The portrait exceeds the maximum pixel count."),
    ErrorCode(422, "identity_missing", "`identity_id` is missing or empty."),
    ErrorCode(422, "identity_too_long", "`identity_id` exceeds the maximum length."),
    ErrorCode(422, "idempotency_key_invalid", "`Idempotency-Key` is empty or too long."),
    ErrorCode(409, "idempotency_key_reused", "`Idempotency-Key` was used with another body."),
    ErrorCode(404, "model_not_found", "No registered model has this name."),
    ErrorCode(409, "model_not_ready", "The model has no `serving` version that is ready."),
    ErrorCode(422, "method_unknown", "No unlearning method has this name."),
    ErrorCode(422, "method_not_allowed", "The method needs training data; benchmark use only."),
    ErrorCode(409, "method_not_prepared", "The serving version lacks this method's artifacts."),
    ErrorCode(
        409,
        "method_ineffective",
        "The method's calibrated efficacy on the serving version is below LETHE_EFFICACY_FLOOR.",
    ),
    ErrorCode(
        429,
        "rate_limited",
        "The client sent more deletion requests than its per-minute or per-day limit; retry "
        "after `Retry-After` s.",
    ),
    ErrorCode(422, "invalid_cursor", "The pagination cursor is malformed."),
    ErrorCode(404, "request_not_found", "No deletion request with this id is visible to you."),
    ErrorCode(409, "not_cancelable", "Only a queued request can be canceled."),
    ErrorCode(422, "invalid_checkpoint", "The checkpoint file cannot be registered."),
    ErrorCode(413, "checkpoint_too_large", "The checkpoint exceeds `LETHE_MAX_CHECKPOINT_BYTES`."),
    ErrorCode(
        422, "checkpoint_path_refused", "The checkpoint path is not under `LETHE_CHECKPOINT_DIRS`."
    ),
    ErrorCode(422, "checkpoint_sha256_mismatch", "The file's SHA-256 differs from `sha256`."),
    ErrorCode(422, "checkpoint_arch_unknown", "The checkpoint's architecture is not supported."),
    ErrorCode(422, "checkpoint_head_mismatch", "The classifier head does not fit the task."),
    ErrorCode(422, "invalid_training_data", "The training-data spec does not fit the checkpoint."),
    ErrorCode(404, "version_not_found", "The model has no version with this number."),
    ErrorCode(409, "version_not_ready", "The version is preparing, failed or purged."),
    ErrorCode(422, "invalid_alias", "Alias names are lowercase slugs (a-z, 0-9, '-', '_')."),
    ErrorCode(409, "alias_refused", "The version lacks completed erasures (listed in `details`)."),
    ErrorCode(409, "purge_refused", "A serving, aliased, head or preparing version is kept."),
    ErrorCode(409, "refresh_unavailable", "The model has no ready serving version to refresh."),
    ErrorCode(
        422,
        "data_root_refused",
        "The data-set folder is missing, not a folder, or not under `LETHE_DATA_ROOTS`.",
    ),
    ErrorCode(404, "benchmark_not_found", "No benchmark run has this id."),
    ErrorCode(409, "benchmark_not_finished", "The benchmark run has not completed; no report yet."),
    ErrorCode(
        429,
        "benchmark_queue_full",
        "As many benchmark runs as LETHE_MAX_ACTIVE_BENCHMARKS are queued or running; retry "
        "after `Retry-After` s.",
    ),
    ErrorCode(404, "not_found", "No such endpoint."),
    ErrorCode(400, "http_error", "The HTTP request was malformed or not allowed."),
    ErrorCode(
        503, "service_unavailable", "The database cannot be reached; retry after `Retry-After` s."
    ),
    ErrorCode(500, "internal_error", "An unexpected server error; it has been logged."),
)
ERROR_CODES: dict[str, ErrorCode] = {entry.code: entry for entry in _CODES}


class ApiError(HTTPException):
    """An error answered as `{"error": {"code", "message"}}` with the given status."""

    # Subclassing HTTPException lets it pass through FastAPI's body parsing untouched.

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if code not in ERROR_CODES or ERROR_CODES[code].status != status:
            raise ValueError(f"undocumented error {status} {code!r}; add it to app.errors")
        super().__init__(status_code=status, detail=message, headers=headers)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    @classmethod
    def of(
        cls,
        code: str,
        message: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> ApiError:
        """The error for a code of the table, with its default message unless one is given."""
        entry = ERROR_CODES[code]
        return cls(entry.status, code, message or entry.description, details, headers)


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    """The JSON response of an error (`details` only where the code has some)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return JSONResponse(status_code=status, content={"error": error})


def responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` documenting these codes, grouped by status."""
    by_status: dict[int, list[ErrorCode]] = defaultdict(list)
    for code in codes:
        entry = ERROR_CODES[code]
        by_status[entry.status].append(entry)
    return {
        status: {
            "model": ErrorBody,
            "description": "\n".join(f"- `{e.code}`: {e.description}" for e in entries),
        }
        for status, entries in sorted(by_status.items())
    }


# every authenticated endpoint reads its key from the database first, so each can answer 503
AUTH_ERRORS = (
    "missing_api_key",
    "invalid_api_key",
    "insufficient_scope",
    "invalid_request",
    "service_unavailable",
)
# seconds a client waits before retrying while the database is unreachable
RETRY_AFTER_SECONDS = 5


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    response = error_response(exc.status, exc.code, exc.message, exc.details)
    response.headers.update(exc.headers or {})
    return response


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_request", _validation_message(exc))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else "http_error"
    response = error_response(exc.status_code, code, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


async def _database_down(_: Request, exc: Exception) -> JSONResponse:
    # the exception's text names the host, port and statement: log its type only
    log.warning("database unreachable: %s", type(exc.__cause__ or exc).__name__)
    response = error_response(
        503, "service_unavailable", ERROR_CODES["service_unavailable"].description
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", ERROR_CODES["internal_error"].description)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in the `{"error": {...}}` shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    for outage in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(outage, _database_down)
    app.add_exception_handler(Exception, _unexpected)
