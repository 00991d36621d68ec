"""Deletion requests: validate, record, enqueue, read, list and cancel."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import ApiError
from app.security import identity_hash
from app.services.lifecycle import followers, release_followers, transition
from app.services.portraits import validate_portrait
from app.settings import Settings
from app.storage import portrait_vault
from app.tables import (
    SERVING,
    Alias,
    ApiClient,
    DeletionRequest,
    ModelIdentity,
    ModelVersion,
    RegisteredModel,
    RequestStatus,
    VersionStatus,
    new_id,
)

log = logging.getLogger(__name__)

# The worker owns the implementations (models.methods); the API must not import torch to ask it,
# so it keeps this static table. tests/test_api.py checks it against the registry.
METHOD_NEEDS: dict[str, str] = {
    "bad_teacher": "support+retain",
    "jit": "support",
    "metaunlearn": "support",
    "neggrad": "support",
    "pgu": "support",
    "scrub": "support+retain",
    "ssd": "support",
}
KNOWN_METHODS = tuple(METHOD_NEEDS)
# Methods that erase with artifacts computed at onboarding (stored as "method:<name>").
PREPARED_METHODS = frozenset({"metaunlearn", "pgu", "ssd"})

ERASE_TASK = "lethe.erase"
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


def enqueue_erase(request_id: str) -> str:
    """Send the erase task for a request; return the Celery task id."""
    # Imported on use: the Celery app reads the process settings and is only needed to send.
    from worker.celery_app import enqueue

    return enqueue(ERASE_TASK, request_id)


def revoke_task(task_id: str) -> None:
    """Ask workers to drop a task that has not started."""
    from worker.celery_app import celery_app

    celery_app.control.revoke(task_id)


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


def storable(text: str) -> bool:
    """Whether `text` can be used in a query (PostgreSQL refuses NUL characters in text)."""
    return "\x00" not in text


def find_model(session: Session, name: str) -> RegisteredModel | None:
    """The registered model called `name`, if any."""
    if not storable(name):
        return None
    return session.scalar(select(RegisteredModel).where(RegisteredModel.name == name))


def serving_version(session: Session, name: str) -> tuple[RegisteredModel, ModelVersion]:
    """The model called `name` and its ready serving version (404/409 otherwise)."""
    model = find_model(session, name)
    if model is None:
        raise ApiError.of("model_not_found", f"no registered model is called {name!r}")
    version = session.scalar(
        select(ModelVersion)
        .join(Alias, Alias.version_id == ModelVersion.id)
        .where(Alias.model_id == model.id, Alias.name == SERVING)
    )
    if version is None or version.status != VersionStatus.ready.value:
        raise ApiError.of("model_not_ready", f"model {name!r} has no ready serving version")
    return model, version


def _check_method(method: str) -> None:
    needs = METHOD_NEEDS.get(method)
    if needs is None:
        raise ApiError.of(
            "method_unknown", f"unknown method {method!r}; known: {', '.join(KNOWN_METHODS)}"
        )
    if needs != "support":
        raise ApiError.of(
            "method_not_allowed", f"method {method!r} needs training data; use it in benchmarks"
        )


def _check_prepared(version: ModelVersion, method: str) -> None:
    if method in PREPARED_METHODS and f"method:{method}" not in (version.artifacts or {}):
        raise ApiError.of(
            "method_not_prepared",
            f"method {method!r} needs onboarding artifacts that version {version.version} lacks "
            f"(method:{method}); prepare it with LETHE_PREPARE_METHODS",
        )


def _check_identity_known(session: Session, model: RegisteredModel, identity: str) -> None:
    row = session.get(ModelIdentity, (model.id, identity))
    if row is None:
        raise ApiError.of("identity_unknown", f"the identity is not one model {model.name!r} knows")


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


Step = tuple[RequestStatus, str]


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


def _in_flight(session: Session, model: RegisteredModel, identity: str) -> DeletionRequest | None:
    """The unfinished request erasing `identity` from `model` (the one others follow), if any."""
    active = [
        s.value for s in (RequestStatus.received, RequestStatus.queued, RequestStatus.running)
    ]
    found = session.scalar(
        select(DeletionRequest)
        .where(
            DeletionRequest.model_id == model.id,
            DeletionRequest.identity_hash == identity,
            DeletionRequest.status.in_(active),
        )
        .order_by(DeletionRequest.linked_request_id.is_not(None), DeletionRequest.created_at)
    )
    if found is not None and found.linked_request_id is not None:
        return session.get(DeletionRequest, found.linked_request_id)
    return found


def _duplicate_plan(
    session: Session, model: RegisteredModel, version: ModelVersion, identity: str
) -> tuple[bool, list[Step], DeletionRequest | None]:
    """How a request for `identity` proceeds: (store the portrait?, transitions, request to follow).

    Already forgotten by the serving version: complete now, no portrait kept, no job. Already in
    flight: follow that request (its portrait is kept in case that one fails). Else: a new job.
    """
    if identity in (version.erased_identity_hashes or []):
        reason = f"the identity is already erased from serving version v{version.version}"
        return False, [(RequestStatus.completed, reason)], None
    primary = _in_flight(session, model, identity)
    if primary is not None:
        reason = f"duplicate of request {primary.id} in flight; follows its outcome"
        return True, [(RequestStatus.queued, reason)], primary
    return True, [], None


def _enqueue(session: Session, request: DeletionRequest) -> None:
    """Send the task and keep its id; on failure the request stays queued for the sweeper."""
    try:
        request.task_id = enqueue_erase(request.id)
        session.commit()
    except Exception:
        session.rollback()
        log.exception("could not enqueue request %s; the sweeper will re-send it", request.id)


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
    model, version = serving_version(session, submission.model)
    _check_method(submission.method)
    _check_prepared(version, submission.method)
    _check_identity_known(session, model, identity)
    portrait = validate_portrait(submission.portrait, settings)

    # Submissions for one model take turns from the duplicate check to the commit, so two
    # requests for one person cannot both miss each other (a no-op on SQLite, which has one
    # writer at a time anyway).
    session.execute(
        select(RegisteredModel.id).where(RegisteredModel.id == model.id).with_for_update()
    )
    store, steps, primary = _duplicate_plan(session, model, version, identity)
    request = DeletionRequest(
        id=new_id(),
        client_id=client.id,
        model_id=model.id,
        identity_hash=identity,
        method=submission.method,
        idempotency_key=key,
        body_fingerprint=fingerprint,
        attempts=0,
        linked_request_id=primary.id if primary is not None else None,
        result_version_id=None if store else version.id,
    )
    try:
        _insert(session, settings, request, portrait.data, _actor(client), store=store, then=steps)
    except IntegrityError:
        # A concurrent submission with the same key won the insert: answer as its replay.
        if key is not None and (earlier := _replay(session, client, key, fingerprint)):
            return earlier
        raise
    if steps:
        return Created(request, replayed=False)
    transition(session, request, RequestStatus.queued, _actor(client))
    session.commit()
    _enqueue(session, request)
    return Created(request, replayed=False)


def _visible(client: ApiClient) -> ColumnElement[bool]:
    """Clients see their own requests; model admins see every request."""
    if ADMIN_SCOPE in client.scopes:
        return DeletionRequest.id.is_not(None)
    return DeletionRequest.client_id == client.id


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


def encode_cursor(request: DeletionRequest) -> str:
    """An opaque cursor after `request` in (created_at, id) descending order."""
    created = request.created_at.astimezone(UTC).isoformat()
    raw = json.dumps([created, request.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) position of a cursor (422 `invalid_cursor` if malformed)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, request_id = json.loads(raw)
        at = datetime.fromisoformat(created)
        if at.tzinfo is None or not isinstance(request_id, str) or not storable(request_id):
            raise ValueError("bad cursor")
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ApiError.of("invalid_cursor") from None
    return at, request_id


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
    if position is not None:
        at, request_id = position
        query = query.where(
            or_(
                DeletionRequest.created_at < at,
                and_(DeletionRequest.created_at == at, DeletionRequest.id < request_id),
            )
        )
    query = query.order_by(DeletionRequest.created_at.desc(), DeletionRequest.id.desc())
    rows = list(session.scalars(query.limit(limit + 1)))
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]) if len(rows) > limit else None
    return page, next_cursor


def _release_followers(
    session: Session, request: DeletionRequest, actor: str
) -> list[DeletionRequest]:
    """Duplicates that followed a request which will not run: they run on their own now."""
    released = followers(session, request.id)
    release_followers(session, request.id, actor, f"request {request.id} was canceled")
    return released


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
    released = _release_followers(session, request, _actor(client))
    session.commit()
    for follower in released:
        _enqueue(session, follower)
    # Destroyed only after the commit: a failed commit must leave the queued request runnable.
    if uri is not None:
        portrait_vault(settings).destroy(uri)
    if request.task_id:
        try:
            revoke_task(request.task_id)
        except Exception:
            log.warning("could not revoke task %s of request %s", request.task_id, request.id)
    return request
