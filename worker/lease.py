"""The per-model lease that lets one erasure job at a time write a model's version chain.

Owners are `<request id>:<attempt>`. A new attempt of the same request may take over the lease
of an earlier one (that attempt died, or its result will be fenced out at commit), so a crashed
job does not stall its model until the lease expires.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.orm import Session, sessionmaker

from app.tables import RegisteredModel, utcnow

log = logging.getLogger(__name__)


def owner_token(request_id: str, attempt: int) -> str:
    """The lease owner name of one attempt of one request."""
    return f"{request_id}:{attempt}"


def request_of(owner: str | None) -> str | None:
    """The request id part of a lease owner name."""
    return None if owner is None else owner.rpartition(":")[0]


def acquire(session: Session, model_id: int, owner: str, seconds: float) -> bool:
    """Atomically take the model's lease if it is free, expired or held by the same request."""
    now = utcnow()
    request_prefix = f"{request_of(owner)}:%"
    result = session.execute(
        update(RegisteredModel)
        .where(
            RegisteredModel.id == model_id,
            or_(
                RegisteredModel.lock_owner.is_(None),
                RegisteredModel.lock_expires_at < now,
                RegisteredModel.lock_owner.like(request_prefix),
            ),
        )
        .values(lock_owner=owner, lock_expires_at=now + timedelta(seconds=seconds))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]


def confirm(session: Session, model_id: int, owner: str, seconds: float) -> bool:
    """Inside the caller's transaction: renew the lease if `owner` still holds it."""
    result = session.execute(
        update(RegisteredModel)
        .where(RegisteredModel.id == model_id, RegisteredModel.lock_owner == owner)
        .values(lock_expires_at=utcnow() + timedelta(seconds=seconds))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def release(session: Session, model_id: int, owner: str) -> None:
    """Give the lease back if `owner` still holds it (commits)."""
    session.execute(
        update(RegisteredModel)
        .where(RegisteredModel.id == model_id, RegisteredModel.lock_owner == owner)
        .values(lock_owner=None, lock_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


@contextlib.contextmanager
def kept_alive(
    factory: sessionmaker[Session], model_id: int, owner: str, seconds: float
) -> Iterator[None]:
    """Renew the lease every third of its length while the block runs (a job may outlast it)."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(seconds / 3):
            try:
                with factory() as session:
                    still_held = confirm(session, model_id, owner, seconds)
                    session.commit()
            except Exception:
                log.warning("could not renew the lease of model %s", model_id, exc_info=True)
                continue
            if not still_held:
                log.warning(
                    "lost the lease of model %s; this job's result will be discarded", model_id
                )
                return

    thread = threading.Thread(target=renew, name=f"lease-{model_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
