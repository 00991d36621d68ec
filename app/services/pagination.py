"""Keyset pagination over (created_at, id), newest first, with opaque cursors."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.errors import ApiError
from app.services.lookup import storable


class Keyed(Protocol):
    """A row ordered by when it was created, then by its string id."""

    id: str
    created_at: datetime


def encode_cursor(row: Keyed) -> str:
    """An opaque cursor after `row` in (created_at, id) descending order."""
    created = row.created_at.astimezone(UTC).isoformat()
    raw = json.dumps([created, row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) position of a cursor (422 `invalid_cursor` if malformed)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        at = datetime.fromisoformat(created)
        if at.tzinfo is None or not isinstance(row_id, str) or not storable(row_id):
            raise ValueError("bad cursor")
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ApiError.of("invalid_cursor") from None
    return at, row_id


def page(
    session: Session,
    query: Select[Any],
    table: type[Any],
    *,
    after: tuple[datetime, str] | None,
    limit: int,
) -> tuple[list[Any], str | None]:
    """A page of `query` over `table` after a decoded cursor, newest first, and the next cursor."""
    created: InstrumentedAttribute[datetime] = table.created_at
    key: InstrumentedAttribute[str] = table.id
    if after is not None:
        at, row_id = after
        query = query.where(or_(created < at, and_(created == at, key < row_id)))
    query = query.order_by(created.desc(), key.desc())
    rows = list(session.scalars(query.limit(limit + 1)))
    kept = rows[:limit]
    return kept, encode_cursor(kept[-1]) if len(rows) > limit else None
