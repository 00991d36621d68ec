"""Test helpers for the HTTP API: a client with keys by role, the error check, a fake queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.testclient import TestClient

from app.errors import ERROR_CODES
from app.settings import Settings


class FakeQueue:
    """Stands in for the broker: records each task sent by name, or refuses while `down`."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...], str | None]] = []
        self.revoked: list[str] = []
        self.down = False

    def send(self, task: str, *args: Any, task_id: str | None = None) -> str:
        """What `app.queue.send` does, minus the broker."""
        if self.down:
            raise ConnectionError("broker unreachable")
        self.sent.append((task, args, task_id))
        return task_id or f"task-{len(self.sent)}"

    def ids(self, task: str) -> list[Any]:
        """The first argument of every `task` sent, in order."""
        return [args[0] for name, args, _ in self.sent if name == task]


@dataclass
class KeyedClient:
    """A test client on a fresh app, its settings, API keys by role and the captured queue."""

    client: TestClient
    settings: Settings
    keys: dict[str, str]
    queue: FakeQueue

    def call(self, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
        """A request with the key of role `key`."""
        return self.client.request(method, path, headers={"X-API-Key": self.keys[key]}, **kwargs)

    def get(self, path: str, key: str, **params: Any) -> httpx.Response:
        """GET with the key of role `key`."""
        return self.call("GET", path, key, params=params)


def error_code(response: httpx.Response) -> str:
    """The `error.code` of an error answer, after checking its shape and its status."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) <= {"code", "message", "details"}, body
    assert body["error"]["message"]
    code: str = body["error"]["code"]
    assert ERROR_CODES[code].status == response.status_code
    return code
