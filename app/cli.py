"""Service commands behind `lethe keys ...`."""

from __future__ import annotations

from app.db import migrate, session_scope
from app.security import check_scopes, generate_api_key, hash_api_key, key_prefix
from app.settings import Settings
from app.tables import ApiClient


def keys_create(name: str, scopes: list[str], settings: Settings) -> str:
    """Create an API client with `scopes` and return its key (only the hash is stored)."""
    if not name.strip():
        raise ValueError("an API client needs a name")
    scopes = check_scopes(scopes)
    if not scopes:
        raise ValueError("an API client needs at least one scope")
    # A fresh embedded data folder has no schema yet; migrating is a no-op when it is current.
    migrate(settings)
    key = generate_api_key()
    with session_scope(settings) as session:
        session.add(
            ApiClient(
                name=name, key_prefix=key_prefix(key), key_hash=hash_api_key(key), scopes=scopes
            )
        )
    return key
