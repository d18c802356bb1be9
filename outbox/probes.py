"""Health probes over HTTP for a runner: ``GET /livez`` and ``GET /readyz``.

``outbox run --health-port PORT`` serves them; an app that runs a runner in its own process
can serve ``Runner.health()`` from its own routes instead. Each answers 200 or 503 with a small
JSON body naming every check and what is wrong with it::

    {"live": true, "ready": false, "checks": {"database": "DatabaseUnavailableError: ...", ...}}

``/livez`` fails when a service has died past its restart limit or the event loop stopped
answering (restart the process); ``/readyz`` fails also while the database is away or its
schema is not current (send no work; the runner waits the outage out by itself).
"""

from __future__ import annotations

import asyncio
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from outbox.runner import Health, Runner

__all__ = ["ProbeServer"]


class ProbeServer:
    """Serves a runner's ``/livez`` and ``/readyz`` from a thread of its own."""

    def __init__(self, runner: Runner, *, port: int, host: str = "127.0.0.1") -> None:
        self.runner = runner
        handler = type("_Handler", (_ProbeHandler,), {"runner": runner})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="outbox-probes", daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on (useful when given 0)."""
        return int(self._server.server_address[1])

    def start(self) -> ProbeServer:
        """Start serving; returns self."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class _ProbeHandler(BaseHTTPRequestHandler):
    runner: Runner

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ("/livez", "/readyz"):
            self._answer(HTTPStatus.NOT_FOUND, {"error": "try /livez or /readyz"})
            return
        health: Health = asyncio.run(self.runner.health())
        ok = health.live if path == "/livez" else health.ready
        status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
        self._answer(status, health.as_dict())

    def _answer(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds: no access log."""
