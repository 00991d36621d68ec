"""The job queue: the Celery app, every task's name, and the one way to send a task.

app/ owns the queue and sends tasks by name; worker/tasks.py registers the task bodies under these
names. Nothing here imports torch or worker code, so the API stays light.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import kombu.transport.redis
import kombu.transport.sqlalchemy
from celery import Celery
from sqlalchemy.orm import Session

from app.settings import Settings, get_settings

log = logging.getLogger(__name__)

PREPARE = "lethe.prepare"
REFRESH = "lethe.refresh"
ERASE = "lethe.erase"
SWEEP = "lethe.sweep"
BENCHMARK = "lethe.benchmark"
TASKS = (PREPARE, REFRESH, ERASE, SWEEP, BENCHMARK)
TASK_MODULE = "worker.tasks"  # imported by the worker process only, by name
# Erasures (and sweeps) have a queue of their own and a worker that takes nothing else, so an
# hour-long benchmark or a preparation never delays one; the maintenance worker takes the rest.
ERASURES_QUEUE = "lethe.erasures"
MAINTENANCE_QUEUE = "lethe.maintenance"
QUEUES = (ERASURES_QUEUE, MAINTENANCE_QUEUE)
ROUTES = {task: {"queue": MAINTENANCE_QUEUE} for task in (PREPARE, REFRESH, BENCHMARK)}
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
        task_default_queue=ERASURES_QUEUE,
        task_routes=ROUTES,
    )


celery_app = Celery("lethe", include=[TASK_MODULE])
configure(celery_app, get_settings())


def send(task: str, *args: object, task_id: str | None = None) -> str:
    """Send `task` with `args` by name and return its id (raises if the broker refuses)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return celery_app.send_task(task, args=list(args), task_id=task_id).id


def new_task_id() -> str:
    """A fresh task id, for a row to record before its message is sent."""
    return str(uuid.uuid4())


def send_recorded(task: str, *args: object, task_id: str | None) -> bool:
    """Send `task` under the id its already committed row holds; False if the broker refused.

    The row is committed first, so a lost message leaves a row the sweeper re-sends (its task id
    is in no broker and held by no worker), never a job without a row.
    """
    try:
        send(task, *args, task_id=task_id)
    except Exception:
        log.exception("could not send %s%s; the sweeper will re-send it", task, list(args))
        return False
    return True


class TaskHolder(Protocol):
    """A row that remembers the id of the task running it."""

    task_id: str | None


def send_after_commit(
    session: Session, task: str, *args: object, holder: TaskHolder | None = None
) -> str | None:
    """Commit what the caller recorded, then send `task`; None if the broker refused.

    Record first, then send: a lost message leaves a row the sweeper re-sends, never a job without
    a row. `holder` keeps the task id (committed too); on a failure it keeps none.
    """
    session.commit()
    try:
        task_id = send(task, *args)
        if holder is not None:
            holder.task_id = task_id
            session.commit()
    except Exception:
        session.rollback()
        log.exception("could not send %s%s; the sweeper will re-send it", task, list(args))
        return None
    return task_id


@dataclass(frozen=True)
class Waiting:
    """A task message the broker holds: its task name and first argument (a row's id)."""

    task: str
    subject: object


def _waiting(message: bytes | str | dict[str, Any]) -> tuple[str, Waiting] | None:
    """The task id, name and first argument of a Celery (protocol 2) message, if it is one."""
    try:
        envelope = json.loads(message) if isinstance(message, bytes | str) else message
        headers = envelope["headers"]
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        return str(headers["id"]), Waiting(str(headers["task"]), args[0] if args else None)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _redis_waiting(channel: Any, queues: list[str], fresh_after: float) -> list[Any]:
    """Messages queued in Redis, and those a worker fetched after `fresh_after` (Unix time)."""
    client = channel.client
    messages = [
        raw
        for name in queues
        for step in channel.priority_steps
        for raw in client.lrange(channel._q_for_pri(name, step), 0, -1)
    ]
    # a fetched message stays in `unacked` until acknowledged: while young it is in a live
    # worker's hands; an old one on a queued row belongs to a worker that died
    fetched = client.zrangebyscore(channel.unacked_index_key, fresh_after, "+inf")
    if fetched:
        for raw in client.hmget(channel.unacked_key, fetched):
            if raw:
                messages.append(json.loads(raw)[0])
    return messages


def _sql_waiting(channel: Any, queues: list[str]) -> list[Any]:
    """The SQL broker's messages not yet fetched (it keeps fetched ones, marked invisible)."""
    message, queue_row = channel.message_cls, channel.queue_cls
    rows = (
        channel.session.query(message.payload)
        .join(queue_row, queue_row.id == message.queue_id)
        .filter(message.visible.is_(True), queue_row.name.in_(queues))
    )
    return [payload for (payload,) in rows]


def waiting_tasks(fetched_within: float) -> dict[str, Waiting] | None:
    """The tasks waiting in the broker, or fetched less than `fetched_within` s ago, by task id.

    What the sweeper must not re-send: those messages still reach a worker. None where the
    broker cannot be read this way (or not at all): the caller falls back to its delays.
    """
    queues = list(QUEUES)
    try:
        with celery_app.connection_for_read() as connection:
            channel = connection.default_channel
            if isinstance(channel, kombu.transport.redis.Channel):
                messages = _redis_waiting(channel, queues, time.time() - fetched_within)
            elif isinstance(channel, kombu.transport.sqlalchemy.Channel):
                messages = _sql_waiting(channel, queues)
            else:
                return None
    except Exception:
        log.warning("the broker's waiting tasks could not be read", exc_info=True)
        return None
    return dict(found for found in map(_waiting, messages) if found is not None)


def revoke(task_id: str) -> None:
    """Ask workers to drop a task that has not started."""
    celery_app.control.revoke(task_id)
