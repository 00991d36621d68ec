"""Per-client limits on deletion requests: a per-minute rate and a per-day quota."""

from __future__ import annotations

import math
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import ApiError
from app.settings import Settings
from app.tables import ApiClient, DeletionRequest, utcnow


def check_request_limits(session: Session, settings: Settings, client: ApiClient) -> None:
    """Raise 429 `rate_limited` (with `Retry-After`) if `client` is at a limit of `settings`."""
    now = utcnow()
    for limit, window, name in (
        (settings.client_requests_per_minute, timedelta(minutes=1), "minute"),
        (settings.client_requests_per_day, timedelta(days=1), "day"),
    ):
        if not limit:
            continue
        # counted from the rows themselves, so every API process sees the same figure
        count, oldest = session.execute(
            select(func.count(), func.min(DeletionRequest.created_at)).where(
                DeletionRequest.client_id == client.id, DeletionRequest.created_at > now - window
            )
        ).one()
        if count >= limit:
            wait = max(1, math.ceil((oldest + window - now).total_seconds()))
            raise ApiError.of(
                "rate_limited",
                f"this client's limit is {limit} deletion requests per {name}",
                headers={"Retry-After": str(wait)},
            )
