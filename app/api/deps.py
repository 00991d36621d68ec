"""Request-scoped dependencies: settings, a database session, the authenticated client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import session_factory
from app.errors import ApiError
from app.security import hash_api_key
from app.settings import Settings
from app.tables import ApiClient, utcnow

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An API key from `lethe keys create`."
)


def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """A session for this request; services commit, anything left uncommitted is rolled back."""
    session = session_factory(settings)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def require_scope(*scopes: str) -> Callable[..., ApiClient]:
    """A dependency returning the calling client if its key holds any of `scopes`."""

    def authenticate(
        session: SessionDep, key: Annotated[str | None, Security(api_key_header)] = None
    ) -> ApiClient:
        if not key:
            raise ApiError.of("missing_api_key")
        client = session.scalar(select(ApiClient).where(ApiClient.key_hash == hash_api_key(key)))
        if client is None or not client.usable(utcnow()):
            raise ApiError.of("invalid_api_key")
        if not set(scopes) & set(client.scopes):
            raise ApiError.of(
                "insufficient_scope", f"this endpoint needs scope {' or '.join(scopes)}"
            )
        return client

    return authenticate
