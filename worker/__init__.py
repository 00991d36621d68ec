"""Lethe's Celery worker: preparation, erasure and benchmark jobs."""
