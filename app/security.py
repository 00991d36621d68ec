"""Keyed identity hashes, API keys and scopes."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from app.settings import Settings, get_settings

SCOPES = ("requests:create", "requests:read", "models:admin", "benchmarks:admin")
KEY_PREFIX = "lethe_"


def identity_hash(identity_id: str, settings: Settings | None = None) -> str:
    """HMAC-SHA256 of an identity ID under the server secret: the only form ever stored."""
    secret = (settings or get_settings()).identity_secret.encode()
    return hmac.new(secret, identity_id.encode("utf-8"), hashlib.sha256).hexdigest()


def generate_api_key() -> str:
    """A new random API key (shown once; only its hash is stored)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_prefix(key: str) -> str:
    """The non-secret start of a key, kept to tell keys apart in listings."""
    return key[: len(KEY_PREFIX) + 6]


def hash_api_key(key: str) -> str:
    """SHA-256 of an API key (keys are high-entropy, so no salt or stretching is needed)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_scopes(scopes: list[str]) -> list[str]:
    """The scopes, validated against the known ones."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {unknown}; known: {list(SCOPES)}")
    return sorted(set(scopes))
