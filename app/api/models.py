"""`/models`: the registry: onboarding, versions and progress, aliases, refresh, retention."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Body, Depends, Request
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.checkpoint_upload import FILE_FIELD, Upload, receive_upload
from app.api.deps import SessionDep, SettingsDep, require_scope
from app.errors import AUTH_ERRORS, ApiError, responses
from app.schemas import (
    DATASET_NAMES,
    TASK_NAMES,
    AliasEventOut,
    AliasHistory,
    AliasOut,
    ModelList,
    ModelOut,
    ModelVersionList,
    ModelVersionOut,
    MoveAlias,
    PurgeOut,
    PurgeVersions,
    RefreshQueued,
    RegisterModel,
)
from app.services.lookup import find_model
from app.settings import Settings
from app.storage import forget_references
from app.tables import SERVING, Alias, AliasEvent, ApiClient, ModelVersion, RegisteredModel

router = APIRouter(prefix="/models", tags=["models"])
Viewer = Annotated[ApiClient, Depends(require_scope("requests:read", "models:admin"))]
Admin = Annotated[ApiClient, Depends(require_scope("models:admin"))]
MAX_JSON_BYTES = 64 * 1024
ONBOARDING_ERRORS = (
    "invalid_checkpoint",
    "checkpoint_too_large",
    "checkpoint_path_refused",
    "checkpoint_sha256_mismatch",
    "checkpoint_arch_unknown",
    "checkpoint_head_mismatch",
    "invalid_training_data",
    "data_root_refused",
)
_FORM_FIELDS = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        FILE_FIELD: {"type": "string", "format": "binary", "description": "A `lethe train` file."},
        "checkpoint_path": {"type": "string"},
        "sha256": {"type": "string"},
        "dataset": {"type": "string", "enum": list(DATASET_NAMES)},
        "data_root": {"type": "string"},
        "task": {"type": "string", "enum": list(TASK_NAMES)},
        "split_seed": {"type": "integer"},
    },
    "required": ["name"],
}
REGISTER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _FORM_FIELDS},
            "application/x-www-form-urlencoded": {"schema": _FORM_FIELDS},
            "application/json": {"schema": {"$ref": "#/components/schemas/RegisterModel"}},
        },
    }
}


def _aliases(session: Session, model: RegisteredModel) -> dict[int, list[str]]:
    """Alias names per version id."""
    result: dict[int, list[str]] = {}
    for alias in session.scalars(select(Alias).where(Alias.model_id == model.id)):
        result.setdefault(alias.version_id, []).append(alias.name)
    return result


def _version_out(
    session: Session, version: ModelVersion, aliases: dict[int, list[str]]
) -> ModelVersionOut:
    from app.services.registry import artifacts_source, methods_ready, training_data_of

    by_id = {v.id: v.version for v in version.model.versions}
    source = artifacts_source(session, version)
    return ModelVersionOut(
        model=version.model.name,
        version=version.version,
        status=version.status,
        parent_version=by_id.get(version.parent_id) if version.parent_id else None,
        arch=version.arch,
        method=version.method,
        sha256=version.sha256,
        aliases=sorted(aliases.get(version.id, [])),
        erased_identities=len(version.erased_identity_hashes or []),
        created_by_request_id=version.created_by_request_id,
        prepare_error=version.prepare_error,
        created_at=version.created_at,
        progress=dict(version.progress or {}),
        methods_ready=methods_ready(version),
        training_data=training_data_of(session, version),
        artifacts_version=None if source is None else source.version,
        artifacts_prepared_at=None if source is None else source.artifacts_prepared_at,
        efficacy=dict(source.efficacy or {}) if source is not None else {},
        purged_at=version.purged_at,
    )


def _model_out(session: Session, model: RegisteredModel) -> ModelOut:
    aliases = _aliases(session, model)
    serving = next((v.version for v in model.versions if SERVING in aliases.get(v.id, [])), None)
    return ModelOut(
        name=model.name,
        task=model.task,
        created_at=model.created_at,
        serving_version=serving,
        latest_version=model.versions[-1].version if model.versions else None,
    )


def _model(session: Session, name: str) -> RegisteredModel:
    model = find_model(session, name)
    if model is None:
        raise ApiError.of("model_not_found", f"no registered model is called {name!r}")
    return model


def _version(model: RegisteredModel, number: int) -> ModelVersion:
    version = next((v for v in model.versions if v.version == number), None)
    if version is None:
        raise ApiError.of("version_not_found", f"{model.name!r} has no version {number}")
    return version


@router.get("", summary="Registered models", responses=responses(*AUTH_ERRORS))
def list_models(session: SessionDep, _: Viewer) -> ModelList:
    """Every registered model with its serving and latest version numbers."""
    models = session.scalars(select(RegisteredModel).order_by(RegisteredModel.name))
    return ModelList(items=[_model_out(session, m) for m in models])


@router.get(
    "/{name}/versions",
    summary="A model's versions",
    responses=responses(*AUTH_ERRORS, "model_not_found"),
)
def list_versions(name: str, session: SessionDep, _: Viewer) -> ModelVersionList:
    """The version chain, oldest first, with status, lineage and aliases."""
    model = _model(session, name)
    aliases = _aliases(session, model)
    return ModelVersionList(items=[_version_out(session, v, aliases) for v in model.versions])


@router.get(
    "/{name}/versions/{version}",
    summary="One version: preparation progress and ready methods",
    responses=responses(*AUTH_ERRORS, "model_not_found", "version_not_found"),
)
def get_version(name: str, version: int, session: SessionDep, _: Viewer) -> ModelVersionOut:
    """Status, `progress` (stage, done/total, last refresh), `methods_ready`, training data."""
    model = _model(session, name)
    return _version_out(session, _version(model, version), _aliases(session, model))


def _register_fields(fields: dict[str, Any]) -> RegisterModel:
    try:
        return RegisterModel.model_validate({k: v for k, v in fields.items() if v != ""})
    except ValidationError as exc:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
        raise ApiError.of("invalid_request", "; ".join(parts)) from None


def _onboard(
    session: Session, settings: Settings, body: RegisterModel, upload: Upload | None
) -> ModelVersionOut:
    # Imported on use: the registry loads the Celery app, which only these admin routes need.
    from app.services.onboarding import DataRequest, Refused, allowed_checkpoint, onboard

    data = DataRequest(body.dataset, body.data_root, body.task, body.split_seed)
    try:
        if upload is not None and upload.path is not None:
            if body.checkpoint_path is not None:
                raise Refused("invalid_checkpoint", "send a file or checkpoint_path, not both")
            if body.sha256 is not None and body.sha256 != upload.sha256:
                raise Refused("checkpoint_sha256_mismatch", "the upload's SHA-256 differs")
            version = onboard(session, settings, body.name, upload.path, data=data)
        elif body.checkpoint_path is not None:
            path = allowed_checkpoint(settings, body.checkpoint_path)
            version = onboard(session, settings, body.name, path, sha256=body.sha256, data=data)
        else:
            raise ApiError.of("invalid_request", "send a `checkpoint` file or `checkpoint_path`")
    except Refused as exc:
        session.rollback()
        raise ApiError.of(exc.code, str(exc)) from None
    session.commit()
    session.refresh(version.model)
    return _version_out(session, version, _aliases(session, version.model))


@router.post(
    "",
    status_code=201,
    summary="Register a checkpoint (upload or server path) with its training-data spec",
    responses=responses(*AUTH_ERRORS, *ONBOARDING_ERRORS),
    openapi_extra=REGISTER_BODY,
)
async def register_model(
    request: Request, settings: SettingsDep, session: SessionDep, _: Admin
) -> ModelVersionOut:
    """Validate the checkpoint and the data spec, store it and queue its preparation.

    multipart: a `checkpoint` file (or `checkpoint_path`) and the fields; JSON: `RegisterModel`.
    The version is `preparing` until onboarded; follow it at `GET /models/{name}/versions/{v}`.
    """
    content_type = request.headers.get("content-type", "")
    upload: Upload | None = None
    try:
        if content_type.startswith("multipart/form-data"):
            upload = await receive_upload(request, settings)
            body = _register_fields(upload.fields)
        else:
            raw = b""
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > MAX_JSON_BYTES:
                    raise ApiError.of("invalid_request", "the body is too large")
            if content_type.startswith("application/x-www-form-urlencoded"):
                fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
                body = _register_fields({k: v[-1] for k, v in fields.items()})
                return await run_in_threadpool(_onboard, session, settings, body, None)
            try:
                body = RegisterModel.model_validate_json(raw or b"null")
            except ValidationError as exc:
                parts = [
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
                ]
                raise ApiError.of("invalid_request", "; ".join(parts)) from None
        return await run_in_threadpool(_onboard, session, settings, body, upload)
    finally:
        if upload is not None:
            upload.discard()


@router.get(
    "/{name}/aliases",
    summary="Aliases and the history of their moves",
    responses=responses(*AUTH_ERRORS, "model_not_found"),
)
def alias_history(name: str, session: SessionDep, _: Viewer) -> AliasHistory:
    """Every alias with its version, and every move (promotions and rollbacks), newest first."""
    model = _model(session, name)
    number = {v.id: v.version for v in model.versions}
    current = session.scalars(select(Alias).where(Alias.model_id == model.id))
    events = session.scalars(
        select(AliasEvent)
        .where(AliasEvent.model_id == model.id)
        .order_by(AliasEvent.at.desc(), AliasEvent.id.desc())
    )
    return AliasHistory(
        model=model.name,
        aliases={a.name: number[a.version_id] for a in current},
        events=[
            AliasEventOut(
                at=e.at,
                alias=e.alias,
                from_version=number.get(e.from_version_id) if e.from_version_id else None,
                to_version=number[e.to_version_id],
                actor=e.actor,
                reason=e.reason,
            )
            for e in events
        ],
    )


@router.put(
    "/{name}/aliases/{alias}",
    summary="Point an alias at a version (promotion, rollback)",
    responses=responses(
        *AUTH_ERRORS,
        "model_not_found",
        "version_not_found",
        "version_not_ready",
        "invalid_alias",
        "alias_refused",
    ),
)
def move_alias(
    name: str,
    alias: str,
    body: Annotated[MoveAlias, Body()],
    session: SessionDep,
    settings: SettingsDep,
    admin: Admin,
) -> AliasOut:
    """`serving` only moves to a version containing every completed erasure (else 409 with the
    missing request ids in `details.missing_request_ids`); `needs_review` requests the target
    version erased become `completed`."""
    from app.services.registry import AliasRefused, RegistryError, VersionUnusable
    from app.services.registry import move_alias as move

    model = _model(session, name)
    version = _version(model, body.version)
    try:
        completed = move(session, model, alias, version, f"admin:{admin.name}")
    except AliasRefused as exc:
        session.rollback()
        details = {"missing_request_ids": exc.missing_request_ids}
        raise ApiError.of("alias_refused", str(exc), details) from None
    except VersionUnusable as exc:
        session.rollback()
        raise ApiError.of("version_not_ready", str(exc)) from None
    except RegistryError as exc:
        session.rollback()
        raise ApiError.of("invalid_alias", str(exc)) from None
    session.commit()
    if alias == SERVING:
        # after the commit: the serving version no longer knows them, nor may the verifier
        forget_references(settings, version.artifacts or {}, version.erased_identity_hashes or [])
    return AliasOut(
        model=model.name, alias=alias, version=version.version, completed_request_ids=completed
    )


@router.post(
    "/{name}/refresh",
    status_code=202,
    summary="Re-run preparation on the serving version",
    responses=responses(*AUTH_ERRORS, "model_not_found", "refresh_unavailable"),
)
def refresh_model(name: str, session: SessionDep, admin: Admin) -> RefreshQueued:
    """Queue `lethe.refresh`: fresh artifacts from the training data minus erased identities,
    or, if the data is gone, the inherited ones kept; the outcome is in `progress.refresh`.
    While one is queued or running, another ask answers `already_queued` and queues nothing."""
    from app.services.lookup import NoReadyVersion
    from app.services.registry import request_refresh

    model = _model(session, name)
    try:
        version, queued = request_refresh(session, model, f"asked by admin:{admin.name}")
    except NoReadyVersion as exc:
        session.rollback()
        raise ApiError.of("refresh_unavailable", str(exc)) from None
    status = "queued" if queued else "already_queued"
    return RefreshQueued(model=model.name, version=version.version, status=status)


@router.post(
    "/{name}/purge",
    summary="Purge the weights and artifacts of superseded versions",
    responses=responses(*AUTH_ERRORS, "model_not_found", "version_not_found", "purge_refused"),
)
def purge_versions(
    name: str,
    settings: SettingsDep,
    session: SessionDep,
    _: Admin,
    body: Annotated[PurgeVersions | None, Body()] = None,
) -> PurgeOut:
    """Default: every version not serving, not aliased, not the chain's head. Rows, hashes,
    lineage and erased sets stay; blobs another version still uses stay too."""
    from app.services.retention import PurgeRefused, UnknownVersions, purge

    model = _model(session, name)
    try:
        result = purge(session, settings, model, None if body is None else body.versions)
    except UnknownVersions as exc:
        session.rollback()
        raise ApiError.of("version_not_found", str(exc)) from None
    except PurgeRefused as exc:
        session.rollback()
        raise ApiError.of("purge_refused", str(exc), {"versions": exc.versions}) from None
    return PurgeOut(
        model=model.name,
        purged_versions=result.versions,
        deleted_blobs=result.deleted_blobs,
        kept_blobs=result.kept_blobs,
    )
