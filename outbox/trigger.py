"""An HTTP endpoint that runs one bounded round of jobs per authenticated POST.

For schedulers that call URLs (Cloud Scheduler, EventBridge, a cron job with curl) in front of
a serverless container::

    from outbox.trigger import create_trigger_app

    app = create_trigger_app(runner, token=os.environ["OUTBOX_TRIGGER_TOKEN"], max_seconds=50)

``POST /`` with ``Authorization: Bearer <token>`` runs ``runner.run_once(max_seconds=…)`` and
answers 200 with the summary as JSON (``"ok": false`` when some attempt did not succeed);
a wrong or missing token gets 401, a round already running 409, a database that cannot be
reached 503. A plain ASGI application: serve it with uvicorn, or mount it in your own app.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson

from outbox.errors import ConfigurationError, OutboxError
from outbox.runner import Runner
from outbox.safety import safe_failure_message

__all__ = ["MIN_TOKEN_LENGTH", "create_trigger_app"]

MIN_TOKEN_LENGTH = 16
"""Shortest shared secret accepted: a guessable token would let anyone run rounds."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def create_trigger_app(
    runner: Runner, *, token: str, max_seconds: float = 60.0, until_empty: bool = False
) -> ASGIApp:
    """An ASGI app that runs one round of ``runner`` per authenticated ``POST /``.

    ``max_seconds`` bounds each round (keep it under your platform's request timeout);
    ``until_empty`` also waits, within it, for jobs falling due (retries).
    """
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        raise ConfigurationError(
            f"the trigger's token must be a string of at least {MIN_TOKEN_LENGTH} characters"
        )
    if not max_seconds > 0:
        raise ConfigurationError(f"max_seconds must be > 0, got {max_seconds!r}")
    expected = f"Bearer {token}".encode()
    busy = False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal busy
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        await _drain_body(receive)
        if scope["path"] not in ("", "/"):
            await _answer(send, 404, {"error": "not found: POST / runs a round"})
            return
        if scope["method"] != "POST":
            await _answer(send, 405, {"error": "POST / runs a round"}, [(b"allow", b"POST")])
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, expected):
            challenge = [(b"www-authenticate", b"Bearer")]
            await _answer(send, 401, {"error": "a valid bearer token is required"}, challenge)
            return
        if busy:
            await _answer(send, 409, {"error": "a round is already running"})
            return
        busy = True
        try:
            summary = await runner.run_once(until_empty=until_empty, max_seconds=max_seconds)
        except OutboxError as exc:
            await _answer(send, 503, {"error": safe_failure_message(exc)})
            return
        finally:
            busy = False
        await _answer(send, 200, {"ok": summary.ok, **dataclasses.asdict(summary)})

    return app


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _drain_body(receive: Receive) -> None:
    while True:
        message = await asyncio.wait_for(receive(), 10)
        if message["type"] != "http.request" or not message.get("more_body"):
            return


async def _answer(
    send: Send,
    status: int,
    body: dict[str, Any],
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    data = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
