"""The FastAPI application. It never imports torch: heavy work belongs to the worker."""

from __future__ import annotations

from fastapi import FastAPI

from models import __version__

app = FastAPI(title="Lethe", version=__version__, summary="Machine unlearning as a service")


@app.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok", "version": __version__}
