"""`/models`: registered models, their versions, and registering a checkpoint."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import SessionDep, SettingsDep, require_scope
from app.errors import AUTH_ERRORS, ApiError, responses
from app.schemas import ModelList, ModelOut, ModelVersionList, ModelVersionOut, RegisterModel
from app.services.requests import SERVING, find_model
from app.tables import Alias, ApiClient, ModelVersion, RegisteredModel

router = APIRouter(prefix="/models", tags=["models"])
Viewer = Annotated[ApiClient, Depends(require_scope("requests:read", "models:admin"))]
Admin = Annotated[ApiClient, Depends(require_scope("models:admin"))]


def _aliases(session: Session, model: RegisteredModel) -> dict[int, list[str]]:
    """Alias names per version id."""
    result: dict[int, list[str]] = {}
    for alias in session.scalars(select(Alias).where(Alias.model_id == model.id)):
        result.setdefault(alias.version_id, []).append(alias.name)
    return result


def _version_out(version: ModelVersion, aliases: dict[int, list[str]]) -> ModelVersionOut:
    by_id = {v.id: v.version for v in version.model.versions}
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
    model = find_model(session, name)
    if model is None:
        raise ApiError.of("model_not_found", f"no registered model is called {name!r}")
    aliases = _aliases(session, model)
    return ModelVersionList(items=[_version_out(v, aliases) for v in model.versions])


@router.post(
    "",
    status_code=201,
    summary="Register a checkpoint",
    responses=responses(*AUTH_ERRORS, "invalid_checkpoint"),
)
def register_model(
    body: RegisterModel, settings: SettingsDep, session: SessionDep, _: Admin
) -> ModelVersionOut:
    """Register a checkpoint file as a new model version; it is `preparing` until onboarded."""
    # Imported on use: the registry loads the Celery app, which only this admin route needs.
    from app.services.registry import register_checkpoint

    try:
        version = register_checkpoint(session, settings, body.name, body.checkpoint_path)
    except (ValueError, FileNotFoundError) as exc:
        session.rollback()
        raise ApiError.of("invalid_checkpoint", str(exc)) from None
    session.commit()
    session.refresh(version.model)
    return _version_out(version, _aliases(session, version.model))
