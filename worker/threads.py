"""torch's intra-op threads for a computing process, from the settings."""

from __future__ import annotations

from app.settings import Settings


def configure_threads(settings: Settings) -> int:
    """Set torch's threads to `LETHE_TORCH_THREADS`, or the cores shared among
    `LETHE_COMPUTE_PROCESSES`; returns the count set."""
    from models.device import default_threads, set_threads

    threads = settings.torch_threads or default_threads(settings.compute_processes)
    set_threads(threads)
    return threads
