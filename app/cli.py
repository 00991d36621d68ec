"""Service commands behind `lethe keys ...`."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select

from app.db import migrate, session_scope
from app.security import check_scopes, generate_api_key, hash_api_key, key_prefix
from app.settings import Settings
from app.tables import ApiClient, utcnow


def keys_create(
    name: str, scopes: list[str], settings: Settings, *, expires_in_days: float | None = None
) -> str:
    """Create an API client with `scopes` and return its key (only the hash is stored)."""
    if not name.strip():
        raise ValueError("an API client needs a name")
    scopes = check_scopes(scopes)
    if not scopes:
        raise ValueError("an API client needs at least one scope")
    if expires_in_days is not None and expires_in_days <= 0:
        raise ValueError("a key's lifetime must be a positive number of days")
    # A fresh embedded data folder has no schema yet; migrating is a no-op when it is current.
    migrate(settings)
    key = generate_api_key()
    expires_at = None if expires_in_days is None else utcnow() + timedelta(days=expires_in_days)
    with session_scope(settings) as session:
        session.add(
            ApiClient(
                name=name,
                key_prefix=key_prefix(key),
                key_hash=hash_api_key(key),
                scopes=scopes,
                expires_at=expires_at,
            )
        )
    return key


def _state(client: ApiClient, now: datetime) -> str:
    """`active`, `revoked` or `expired`."""
    if client.revoked_at is not None:
        return "revoked"
    return "active" if client.usable(now) else "expired"


def keys_list(settings: Settings) -> list[dict[str, object]]:
    """Every API client, oldest first: id, name, key prefix, scopes, dates and state (no hash)."""
    migrate(settings)
    now = utcnow()
    with session_scope(settings) as session:
        clients = session.scalars(select(ApiClient).order_by(ApiClient.created_at)).all()
        return [
            {
                "id": c.id,
                "name": c.name,
                "prefix": c.key_prefix,
                "scopes": list(c.scopes),
                "created_at": c.created_at.isoformat(),
                "expires_at": c.expires_at.isoformat() if c.expires_at else None,
                "revoked_at": c.revoked_at.isoformat() if c.revoked_at else None,
                "state": _state(c, now),
            }
            for c in clients
        ]


def keys_revoke(which: str, settings: Settings) -> str:
    """Revoke the one client whose id or key prefix is `which`; returns its id."""
    migrate(settings)
    with session_scope(settings) as session:
        found = session.scalars(
            select(ApiClient).where(or_(ApiClient.id == which, ApiClient.key_prefix == which))
        ).all()
        if not found:
            raise ValueError(f"no API client has the id or key prefix {which!r}")
        if len(found) > 1:
            raise ValueError(f"{len(found)} clients share the prefix {which!r}; revoke by id")
        client = found[0]
        if client.revoked_at is None:
            client.revoked_at = utcnow()
        return client.id
