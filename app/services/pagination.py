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


# encode_cursor's output is about 110 characters; a longer one was not made here, and the cap
# keeps a tampered one from nesting JSON deep enough to exhaust the parser's recursion
MAX_CURSOR_CHARS = 512


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) position of a cursor (422 `invalid_cursor` if malformed)."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("cursor too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        at = datetime.fromisoformat(created)
        if at.tzinfo is None or not isinstance(row_id, str) or not storable(row_id):
            raise ValueError("bad cursor")
        # a UTC offset can push a date past year 1 or 9999, which the query cannot bind
        at = at.astimezone(UTC)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, OverflowError):
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
