"""`/healthz` (the process is up) and `/readyz` (database, broker and a worker answer)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Response
from sqlalchemy import text

from app.api.deps import SettingsDep
from app.db import get_engine
from app.queue import celery_app
from app.schemas import Check, Health, Readiness
from app.settings import Settings
from models import __version__

router = APIRouter(tags=["health"])


class CheckFailed(RuntimeError):
    """A check's own finding, safe to show; any other error shows as "unreachable"."""


def check_database(settings: Settings) -> str:
    """`SELECT 1` on the configured database."""
    with get_engine(settings).connect() as connection:
        connection.execute(text("SELECT 1"))
    return "SELECT 1 ok"


def check_broker(settings: Settings) -> str:
    """One connection attempt to the Celery broker."""
    with celery_app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1)
    return "connected"


def check_workers(settings: Settings) -> str:
    """At least one worker answers a ping within a second."""
    with celery_app.connection_for_read() as connection:
        transport = connection.transport
    # Pings are broadcasts; the embedded SQL broker cannot broadcast, so its worker goes unchecked.
    if not getattr(transport.Channel, "supports_fanout", True):
        return f"not checked: the {connection.transport_cls} broker cannot broadcast a ping"
    replies = celery_app.control.ping(timeout=1.0)
    if not replies:
        raise CheckFailed("no worker answered a ping")
    return f"{len(replies)} worker(s) answered"


CHECKS: dict[str, Callable[[Settings], str]] = {
    "database": check_database,
    "broker": check_broker,
    "workers": check_workers,
}


@router.get("/healthz", summary="Liveness")
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok", version=__version__)


@router.get(
    "/readyz",
    summary="Readiness",
    responses={503: {"model": Readiness, "description": "A check failed; see `checks`."}},
)
def readyz(settings: SettingsDep, response: Response) -> Readiness:
    """The database answers, the broker is reachable and a worker is alive."""
    checks: dict[str, Check] = {}
    for name, check in CHECKS.items():
        try:
            checks[name] = Check(ok=True, detail=check(settings))
        except CheckFailed as exc:
            checks[name] = Check(ok=False, detail=str(exc))
        except Exception:
            # /readyz is public: a driver's message names hosts, ports and users
            checks[name] = Check(ok=False, detail="unreachable")
    ready = all(c.ok for c in checks.values())
    if not ready:
        response.status_code = 503
    return Readiness(status="ready" if ready else "not_ready", checks=checks)
