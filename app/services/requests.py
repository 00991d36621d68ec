"""Deletion requests: validate, record, enqueue, read, list and cancel."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import queue
from app.errors import ApiError
from app.security import identity_hash
from app.services import duplicates
from app.services.lifecycle import transition
from app.services.lookup import find_model, model_and_serving, storable
from app.services.pagination import decode_cursor, page
from app.services.portraits import validate_portrait
from app.services.quotas import check_request_limits
from app.services.registry import gap_closed, method_efficacy
from app.settings import Settings
from app.storage import portrait_vault
from app.tables import (
    ApiClient,
    DeletionRequest,
    ModelVersion,
    RegisteredModel,
    RequestStatus,
    VersionStatus,
    new_id,
)
from models.catalog import METHODS

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY = 200
ADMIN_SCOPE = "models:admin"


@dataclass(frozen=True)
class Submission:
    """What a client sent to create a deletion request."""

    identity_id: str
    portrait: bytes
    model: str
    method: str
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Created:
    """A new request, or the earlier one an idempotent replay refers to."""

    request: DeletionRequest
    replayed: bool


def _actor(client: ApiClient) -> str:
    return client.name[:100]


def _check_identity(identity_id: str, settings: Settings) -> None:
    if not identity_id.strip():
        raise ApiError.of("identity_missing")
    if len(identity_id) > settings.max_identity_length:
        raise ApiError.of(
            "identity_too_long",
            f"identity_id is longer than {settings.max_identity_length} characters",
        )


def _fingerprint(submission: Submission, identity: str) -> str:
    """Hash of everything that makes two submissions the same request."""
    body = {
        "identity_hash": identity,
        "model": submission.model,
        "method": submission.method,
        "portrait_sha256": hashlib.sha256(submission.portrait).hexdigest(),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _replay(session: Session, client: ApiClient, key: str, fingerprint: str) -> Created | None:
    """The earlier request under this idempotency key, or None; 409 if its body differed."""
    earlier = session.scalar(
        select(DeletionRequest).where(
            DeletionRequest.client_id == client.id, DeletionRequest.idempotency_key == key
        )
    )
    if earlier is None:
        return None
    if earlier.body_fingerprint != fingerprint:
        raise ApiError.of("idempotency_key_reused")
    return Created(earlier, replayed=True)


def ready_serving(session: Session, name: str) -> tuple[RegisteredModel, ModelVersion]:
    """The model called `name` and its ready serving version (404/409 otherwise)."""
    model, version = model_and_serving(session, name)
    if model is None:
        raise ApiError.of("model_not_found", f"no registered model is called {name!r}")
    if version is None or version.status != VersionStatus.ready.value:
        raise ApiError.of("model_not_ready", f"model {name!r} has no ready serving version")
    return model, version


def _check_method(method: str, version: ModelVersion) -> None:
    """The method exists, erases from portraits alone, and `version` has its artifacts."""
    info = METHODS.get(method)
    if info is None:
        raise ApiError.of(
            "method_unknown", f"unknown method {method!r}; known: {', '.join(METHODS)}"
        )
    if not info.serves_requests:
        raise ApiError.of(
            "method_not_allowed", f"method {method!r} needs training data; use it in benchmarks"
        )
    if info.prepares and info.artifact_key not in (version.artifacts or {}):
        raise ApiError.of(
            "method_not_prepared",
            f"method {method!r} needs onboarding artifacts that version {version.version} lacks "
            f"({info.artifact_key}); prepare it with LETHE_PREPARE_METHODS",
        )


def _check_efficacy(
    session: Session, settings: Settings, method: str, version: ModelVersion
) -> None:
    """With LETHE_EFFICACY_FLOOR set, the method's calibrated efficacy must reach it."""
    floor = settings.efficacy_floor
    if floor is None:
        return
    measured = gap_closed(method_efficacy(session, version, method))
    if measured is None or measured < floor:
        shown = "unmeasured" if measured is None else f"{measured:.2f}"
        raise ApiError.of(
            "method_ineffective",
            f"method {method!r} closes a membership gap of {shown} on version "
            f"{version.version}'s simulated erasures; the floor is {floor:.2f}",
            details={"method": method, "gap_closed": measured, "floor": floor},
        )


def _check_submission(submission: Submission, settings: Settings) -> None:
    """The checks that need neither the database nor decoding the image."""
    _check_identity(submission.identity_id, settings)
    if not submission.portrait:
        raise ApiError.of("portrait_missing")
    key = submission.idempotency_key
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise ApiError.of(
            "idempotency_key_invalid", f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} chars"
        )


Step = tuple[RequestStatus, str | None]


def _insert(
    session: Session,
    settings: Settings,
    request: DeletionRequest,
    portrait: bytes,
    actor: str,
    *,
    store: bool = True,
    then: Sequence[Step] = (),
) -> None:
    """Store the portrait (if `store`) and commit the request as `received`, then the `then`
    transitions in the same commit; on failure keep neither row nor file."""
    vault = portrait_vault(settings)
    if store:
        request.portrait_sha256, uri = vault.put(portrait)
    else:
        request.portrait_sha256, uri = hashlib.sha256(portrait).hexdigest(), None
    request.portrait_uri = uri
    try:
        session.add(request)
        transition(session, request, RequestStatus.received, actor)
        for status, reason in then:
            transition(session, request, status, actor, reason)
        session.commit()
    except BaseException:
        session.rollback()
        if uri is not None:
            vault.destroy(uri)
        raise


def create_request(
    session: Session, settings: Settings, client: ApiClient, submission: Submission
) -> Created:
    """Validate, store the portrait, record the request as queued, then enqueue its task."""
    _check_submission(submission, settings)
    key = submission.idempotency_key
    identity = identity_hash(submission.identity_id, settings)
    fingerprint = _fingerprint(submission, identity)
    if key is not None and (earlier := _replay(session, client, key, fingerprint)):
        return earlier
    check_request_limits(session, settings, client)
    model, version = ready_serving(session, submission.model)
    _check_method(submission.method, version)
    _check_efficacy(session, settings, submission.method, version)
    # Nothing here depends on whether the model knows the identity: an answer that did would
    # be a free membership test. The erasure job rejects a person the model never saw.
    portrait = validate_portrait(submission.portrait, settings)

    duplicates.lock_identity(session, model, identity)
    plan = duplicates.plan(session, model, version, identity)
    runs = not plan.steps  # neither already erased nor following a request in flight
    request = DeletionRequest(
        id=new_id(),
        client_id=client.id,
        model_id=model.id,
        identity_hash=identity,
        method=submission.method,
        idempotency_key=key,
        body_fingerprint=fingerprint,
        attempts=0,
        linked_request_id=plan.follows.id if plan.follows is not None else None,
        result_version_id=None if plan.store_portrait else version.id,
        # the id its message will carry, committed with the row: no second commit to record it
        task_id=queue.new_task_id() if runs else None,
    )
    # `received` and `queued` land in one commit: an API that dies between two commits would
    # leave a `received` row that nothing runs and later requests for the person follow
    steps = plan.steps or [(RequestStatus.queued, None)]
    try:
        _insert(
            session,
            settings,
            request,
            portrait.data,
            _actor(client),
            store=plan.store_portrait,
            then=steps,
        )
    except IntegrityError:
        # A concurrent submission with the same key won the insert: answer as its replay.
        if key is not None and (earlier := _replay(session, client, key, fingerprint)):
            return earlier
        raise
    if runs:
        queue.send_recorded(queue.ERASE, request.id, task_id=request.task_id)
    return Created(request, replayed=False)


def _visible(client: ApiClient) -> ColumnElement[bool]:
    """Clients see their own requests; model admins see every request."""
    if ADMIN_SCOPE in client.scopes:
        return DeletionRequest.id.is_not(None)
    return DeletionRequest.client_id == client.id


def visible_ids(session: Session, client: ApiClient, ids: set[str]) -> set[str]:
    """Those of `ids` naming requests `client` may see: other clients' ids stay hidden."""
    if not ids:
        return set()
    found = session.scalars(
        select(DeletionRequest.id).where(DeletionRequest.id.in_(ids), _visible(client))
    )
    return set(found)


def get_request(
    session: Session, client: ApiClient, request_id: str, *, lock: bool = False
) -> DeletionRequest:
    """A request visible to `client` (404 `request_not_found` otherwise)."""
    query = select(DeletionRequest).where(DeletionRequest.id == request_id, _visible(client))
    request = (
        session.scalar(query.with_for_update() if lock else query) if storable(request_id) else None
    )
    if request is None:
        raise ApiError.of("request_not_found", f"no deletion request {request_id!r}")
    return request


def list_requests(
    session: Session,
    client: ApiClient,
    *,
    status: RequestStatus | None,
    model: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[DeletionRequest], str | None]:
    """A page of visible requests, newest first, and the cursor of the next page."""
    position = decode_cursor(cursor) if cursor is not None else None
    query = select(DeletionRequest).where(_visible(client))
    if status is not None:
        query = query.where(DeletionRequest.status == status.value)
    if model is not None:
        found = find_model(session, model)
        if found is None:
            return [], None
        query = query.where(DeletionRequest.model_id == found.id)
    return page(session, query, DeletionRequest, after=position, limit=limit)


def cancel_request(
    session: Session, settings: Settings, client: ApiClient, request_id: str
) -> DeletionRequest:
    """Cancel a queued request, destroy its portrait and revoke its task (best effort)."""
    request = get_request(session, client, request_id, lock=True)
    if request.status != RequestStatus.queued.value:
        raise ApiError.of(
            "not_cancelable", f"the request is {request.status}; only queued ones can be canceled"
        )
    transition(session, request, RequestStatus.canceled, _actor(client), "canceled by the client")
    uri, request.portrait_uri = request.portrait_uri, None
    released = duplicates.release_followers(
        session, request.id, _actor(client), "the request it followed was canceled"
    )
    session.commit()
    for follower in released:
        queue.send_after_commit(session, queue.ERASE, follower.id, holder=follower)
    # Destroyed only after the commit: a failed commit must leave the queued request runnable.
    if uri is not None:
        portrait_vault(settings).destroy(uri)
    if request.task_id:
        try:
            queue.revoke(request.task_id)
        except Exception:
            log.warning("could not revoke task %s of request %s", request.task_id, request.id)
    return request
