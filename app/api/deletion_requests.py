"""`/deletion-requests`: submit, read, list and cancel requests to forget a person."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, Response, UploadFile
from sqlalchemy.orm import Session
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import SessionDep, SettingsDep, require_scope
from app.errors import AUTH_ERRORS, ApiError, error_response, responses
from app.schemas import (
    AuditOut,
    DeletionRequestOut,
    DeletionRequestPage,
    DeletionRequestSummary,
    ErrorDetail,
    RequestAccepted,
    RequestEventOut,
    VersionRef,
)
from app.services import requests as service
from app.services.portraits import read_bounded
from app.tables import ApiClient, DeletionRequest, ModelVersion, RegisteredModel, RequestStatus

PATH = "/deletion-requests"
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and the small text fields

router = APIRouter(prefix=PATH, tags=["deletion requests"])
Creator = Annotated[ApiClient, Depends(require_scope("requests:create"))]
Reader = Annotated[ApiClient, Depends(require_scope("requests:read"))]


class UploadLimit:
    """ASGI middleware capping the body of `POST /deletion-requests` before it is parsed."""

    # FastAPI spools the whole multipart body before the route runs; without this cap a client
    # could make it buffer any amount. The route then checks the portrait's own size exactly.

    def __init__(self, app: ASGIApp, max_portrait_bytes: int) -> None:
        self.app = app
        self.max_portrait_bytes = max_portrait_bytes
        self.limit = max_portrait_bytes + FORM_OVERHEAD

    def _error(self) -> ApiError:
        return ApiError.of(
            "portrait_too_large", f"the portrait is over {self.max_portrait_bytes} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a declared oversize body at once; count the bytes of an undeclared one."""
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].rstrip("/").endswith(PATH)
        ):
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            error = self._error()
            await error_response(error.status, error.code, error.message)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._error()
            return message

        await self.app(scope, limited, send)


def _version_ref(session: Session, version_id: int | None) -> VersionRef | None:
    if version_id is None:
        return None
    version = session.get(ModelVersion, version_id)
    if version is None:
        return None
    return VersionRef(model=version.model.name, version=version.version)


def _shown(session: Session, viewer: ApiClient, requests: list[DeletionRequest]) -> set[str]:
    """The linked and batch-leading request ids among `requests` that `viewer` may see."""
    ids = {i for r in requests for i in (r.linked_request_id, r.batch_id) if i is not None}
    return service.visible_ids(session, viewer, ids)


def _summary(session: Session, request: DeletionRequest, shown: set[str]) -> DeletionRequestSummary:
    model = session.get(RegisteredModel, request.model_id)
    error = None
    if request.error_code:
        error = ErrorDetail(code=request.error_code, message=request.error_message or "")
    return DeletionRequestSummary(
        id=request.id,
        status=request.status,
        model=model.name if model else "",
        method=request.method,
        portrait_sha256=request.portrait_sha256,
        created_at=request.created_at,
        updated_at=request.updated_at,
        started_at=request.started_at,
        finished_at=request.finished_at,
        result_version=_version_ref(session, request.result_version_id),
        # another client's request id would tell who else asked for this person
        linked_request_id=request.linked_request_id if request.linked_request_id in shown else None,
        batch_id=request.batch_id if request.batch_id in shown else None,
        error=error,
    )


def _detail(session: Session, viewer: ApiClient, request: DeletionRequest) -> DeletionRequestOut:
    session.expire(request, ["events", "audit"])  # this session may have added events since
    audit = request.audit
    shown = _shown(session, viewer, [request])
    run = dict(audit.run) if audit else {}
    if run.get("batch_id") not in shown:
        run.pop("batch_id", None)
    return DeletionRequestOut(
        **_summary(session, request, shown).model_dump(),
        attempts=request.attempts,
        events=[
            RequestEventOut(
                at=e.at,
                actor=e.actor,
                from_status=e.from_status,
                to_status=e.to_status,
                reason=e.reason,
            )
            for e in request.events
        ],
        audit=AuditOut(before=audit.before, after=audit.after, delta=audit.delta, run=run)
        if audit
        else None,
    )


@router.post(
    "",
    status_code=202,
    summary="Ask for a person to be forgotten",
    responses=responses(
        *AUTH_ERRORS,
        "portrait_missing",
        "portrait_not_an_image",
        "portrait_unsupported_format",
        "portrait_truncated",
        "portrait_too_large",
        "portrait_too_many_pixels",
        "identity_missing",
        "identity_too_long",
        "idempotency_key_invalid",
        "idempotency_key_reused",
        "model_not_found",
        "model_not_ready",
        "method_unknown",
        "method_not_allowed",
        "method_not_prepared",
        "method_ineffective",
        "rate_limited",
    ),
)
def create_deletion_request(
    request: Request,
    response: Response,
    settings: SettingsDep,
    session: SessionDep,
    client: Creator,
    portrait: Annotated[
        UploadFile | None, File(description="One JPEG, PNG or WebP portrait of the person.")
    ] = None,
    identity_id: Annotated[str, Form(description="The person's ID in the training data.")] = "",
    model: Annotated[
        str | None, Form(description="Model name (default: the configured one).")
    ] = None,
    method: Annotated[str | None, Form(description="Unlearning method (default: jit).")] = None,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", description="Replays return the first answer.")
    ] = None,
) -> RequestAccepted:
    """Record the request and queue its erasure; the portrait is destroyed when it ends.

    A request for an identity the serving version has already forgotten completes at once; one
    for an identity whose erasure is in flight is linked to that request and takes its outcome.
    """
    raw = read_bounded(portrait.file, settings.max_portrait_bytes) if portrait else b""
    submission = service.Submission(
        identity_id=identity_id,
        portrait=raw,
        model=model or settings.default_model,
        method=method or settings.default_method,
        idempotency_key=idempotency_key,
    )
    created = service.create_request(session, settings, client, submission).request
    response.headers["Location"] = request.url_for(
        "get_deletion_request", request_id=created.id
    ).path
    return RequestAccepted(id=created.id, status=created.status)


@router.get(
    "/{request_id}",
    name="get_deletion_request",
    summary="A request's status, history, audit and result",
    responses=responses(*AUTH_ERRORS, "request_not_found"),
)
def get_deletion_request(
    request_id: str, session: SessionDep, client: Reader
) -> DeletionRequestOut:
    """Status, timestamps, events, the audit, the produced version and any error."""
    return _detail(session, client, service.get_request(session, client, request_id))


@router.get(
    "",
    summary="List requests, newest first",
    responses=responses(*AUTH_ERRORS, "invalid_cursor"),
)
def list_deletion_requests(
    session: SessionDep,
    client: Reader,
    status: RequestStatus | None = None,
    model: Annotated[str | None, Query(description="Only requests for this model.")] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> DeletionRequestPage:
    """Filter by status and model; paginate with `cursor`."""
    page, next_cursor = service.list_requests(
        session, client, status=status, model=model, cursor=cursor, limit=limit
    )
    shown = _shown(session, client, page)
    items = [_summary(session, r, shown) for r in page]
    return DeletionRequestPage(items=items, next_cursor=next_cursor)


@router.post(
    "/{request_id}/cancel",
    summary="Cancel a queued request",
    responses=responses(*AUTH_ERRORS, "request_not_found", "not_cancelable"),
)
def cancel_deletion_request(
    request_id: str, settings: SettingsDep, session: SessionDep, client: Creator
) -> DeletionRequestOut:
    """Only while queued: the portrait is destroyed and the task revoked."""
    canceled = service.cancel_request(session, settings, client, request_id)
    return _detail(session, client, canceled)
