"""The Celery application; broker and result backend come from the environment."""

from __future__ import annotations

import os

from celery import Celery

celery_app = Celery(
    "lethe",
    broker=os.environ.get("LETHE_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("LETHE_RESULT_BACKEND", "redis://127.0.0.1:6379/1"),
    include=["worker.tasks"],
)
celery_app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_track_started=True)
