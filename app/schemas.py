"""Pydantic shapes of the API's request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    """A stable machine-readable code and a human-readable message."""

    code: str = Field(examples=["portrait_too_large"])
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer has this shape."""

    error: ErrorDetail


class RequestAccepted(BaseModel):
    """The answer to a new (or replayed) deletion request."""

    id: str
    status: str


class RequestEventOut(BaseModel):
    """One transition of a request."""

    at: datetime
    actor: str
    from_status: str | None
    to_status: str
    reason: str | None


class AuditOut(BaseModel):
    """Before/after metrics of the erasure."""

    before: dict[str, Any]
    after: dict[str, Any]
    delta: dict[str, Any]
    run: dict[str, Any]


class VersionRef(BaseModel):
    """A model version by model name and version number."""

    model: str
    version: int


class DeletionRequestSummary(BaseModel):
    """A deletion request as listed."""

    id: str
    status: str
    model: str
    method: str
    portrait_sha256: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result_version: VersionRef | None
    error: ErrorDetail | None = Field(description="Set when the request failed or was rejected.")


class DeletionRequestOut(DeletionRequestSummary):
    """A deletion request with its history and audit."""

    attempts: int
    events: list[RequestEventOut]
    audit: AuditOut | None


class DeletionRequestPage(BaseModel):
    """One page of deletion requests, newest first."""

    items: list[DeletionRequestSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end.")


class ModelOut(BaseModel):
    """A registered model."""

    name: str
    task: str
    created_at: datetime
    serving_version: int | None
    latest_version: int | None


class ModelList(BaseModel):
    """Every registered model."""

    items: list[ModelOut]


class ModelVersionOut(BaseModel):
    """One version of a model."""

    model: str
    version: int
    status: str
    parent_version: int | None
    arch: str
    method: str | None
    sha256: str
    aliases: list[str]
    erased_identities: int = Field(description="How many identities this version has forgotten.")
    created_by_request_id: str | None
    prepare_error: str | None
    created_at: datetime


class ModelVersionList(BaseModel):
    """A model's versions, oldest first."""

    items: list[ModelVersionOut]


class RegisterModel(BaseModel):
    """A checkpoint file to register as a new model (or a new version of one)."""

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    checkpoint_path: str = Field(min_length=1)


class Health(BaseModel):
    """The process is up."""

    status: Literal["ok"]
    version: str


class Check(BaseModel):
    """The outcome of one readiness check."""

    ok: bool
    detail: str


class Readiness(BaseModel):
    """Whether the API can take requests that will be processed."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, Check]
