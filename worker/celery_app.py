"""The Celery application, configured from `app.settings`; it never imports torch.

The API imports this module only to send tasks by name, so it must stay light.
"""

from __future__ import annotations

from pathlib import Path

import kombu.transport.sqlalchemy
from celery import Celery

from app.settings import Settings, get_settings

SQL_BROKER_PREFIX = "sqla+"


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (`sqla+sqlite:///...`, `db+sqlite:///...`), else None."""
    for prefix in ("sqla+sqlite:///", "db+sqlite:///"):
        if url.startswith(prefix):
            return Path(url.removeprefix(prefix))
    return None


def configure(app: Celery, settings: Settings) -> None:
    """Point `app` at the broker and result backend of `settings`."""
    broker, backend = settings.resolved_broker_url, settings.resolved_result_backend
    for url in (broker, backend):
        path = _sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    if broker.startswith(SQL_BROKER_PREFIX):
        # This transport forwards every transport option to create_engine(), so the polling
        # interval can only be set on the class; producer and worker both import this module.
        kombu.transport.sqlalchemy.Transport.polling_interval = settings.broker_polling_interval
    app.conf.update(
        broker_url=broker,
        result_backend=backend,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        broker_connection_retry_on_startup=True,
    )


celery_app = Celery("lethe", include=["worker.tasks"])
configure(celery_app, get_settings())


def enqueue(name: str, *args: object, task_id: str | None = None) -> str:
    """Send task `name` with `args` by name (no task code is imported) and return its id."""
    return celery_app.send_task(name, args=list(args), task_id=task_id).id
