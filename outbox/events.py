"""Error events: failed attempts as CloudEvents, POSTed to a broker or webhook.

``CloudEventsSink(url)`` is a runner observer. For every attempt that ended badly it sends one
CloudEvent in the HTTP binary mode (the ``ce-*`` headers carry the attributes, the body is the
data), with the type ``dev.outbox.job.error.v1``. An empty URL makes it a no-op, so the feature
is opt-in through configuration alone.

Delivery never touches jobs and never blocks the runner: the observer only appends to a bounded
queue, a daemon thread POSTs with a short timeout, and whatever goes wrong (queue full, sink
down, slow or answering 500) is counted and logged, never retried.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Final

from outbox.errors import ConfigurationError
from outbox.observe import JobEvent, get_logger
from outbox.safety import safe_failure_message, safe_label

__all__ = [
    "ACTIONS",
    "DEFAULT_DELIVERY_TIMEOUT",
    "DEFAULT_MAX_QUEUED",
    "ERROR_EVENT_TYPE",
    "CloudEventsSink",
]

ERROR_EVENT_TYPE: Final = "dev.outbox.job.error.v1"
"""The CloudEvent type of an error event; the data's schema changes only with a new version."""

ACTIONS: Final = {"retried": "retried", "failed": "dead_lettered", "discarded": "discarded"}
"""The outcomes that send an event, and the ``action`` each is reported as."""

DEFAULT_MAX_QUEUED: Final = 1000
"""Events waiting for delivery before new ones are dropped: a dead sink costs bounded memory."""

DEFAULT_DELIVERY_TIMEOUT: Final = 5.0
"""Seconds to connect, and for each read, before a delivery counts as failed."""

DROP_WARNING_INTERVAL: Final = 60.0
"""At most one warning about dropped events per this many seconds: a full queue is no log flood."""

# CloudEvents HTTP binding: header values are printable ASCII, with space, '"' and '%' encoded.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


@dataclass(frozen=True, slots=True)
class _Pending:
    event: JobEvent
    time: datetime


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would resend a POST as a GET without its body."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class CloudEventsSink:
    """A runner observer that POSTs error events to ``url`` as binary-mode CloudEvents.

    Events go out for the outcomes ``retried``, ``failed`` (reported as ``dead_lettered``) and
    ``discarded``; the others send nothing. Headers: ``ce-specversion: 1.0``, ``ce-type``
    (ERROR_EVENT_TYPE), ``ce-source`` (``source``), ``ce-id`` (a fresh UUID), ``ce-time`` (RFC
    3339, when the attempt ended), ``ce-subject`` (the job id). Body (``application/json``):
    ``job_id, kind, queue, attempt, max_attempts, action, error``.

    With ``url`` None or empty the sink does nothing and starts no thread. ``delivered``,
    ``failed`` (sent but not accepted with a 2xx) and ``dropped`` (never sent: queue full or
    sink closed) count events. Call ``close()`` at shutdown to send what is queued.
    """

    def __init__(
        self,
        url: str | None,
        source: str = "outbox",
        *,
        timeout: float = DEFAULT_DELIVERY_TIMEOUT,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self.url = url or None
        if self.url is not None and urllib.parse.urlsplit(self.url).scheme not in ("http", "https"):
            shown = safe_failure_message(self.url, limit=80)
            raise ConfigurationError(
                f"the error sink URL must be http:// or https://, got {shown!r}"
            )
        if not source:
            raise ConfigurationError("the CloudEvents source must not be empty")
        if not timeout > 0 or max_queued < 1:
            raise ConfigurationError("timeout must be > 0 and max_queued >= 1")
        self.source = source
        self.timeout = timeout
        self.max_queued = max_queued
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._queue: collections.deque[_Pending] = collections.deque()
        self._ready = threading.Condition()
        self._closing = False
        self._last_drop_warning = -DROP_WARNING_INTERVAL
        self._log = get_logger(component="events")
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._thread: threading.Thread | None = None
        if self.url is not None:
            self._thread = threading.Thread(
                target=self._deliver_loop, name="outbox-error-events", daemon=True
            )
            self._thread.start()

    @property
    def enabled(self) -> bool:
        """Whether the sink sends anything (it has a URL)."""
        return self.url is not None

    def __call__(self, event: JobEvent) -> None:
        """Queue an error event for delivery; return at once (a full queue drops it)."""
        if self.url is None or event.outcome not in ACTIONS:
            return
        item = _Pending(event, datetime.now(timezone.utc))
        warn = False
        with self._ready:
            if self._closing or len(self._queue) >= self.max_queued:
                self.dropped += 1
                now = time.monotonic()
                if now - self._last_drop_warning >= DROP_WARNING_INTERVAL:
                    self._last_drop_warning, warn = now, True
            else:
                self._queue.append(item)
                self._ready.notify()
                return
        if warn:
            self._log.warning("events.dropped", dropped=self.dropped, max_queued=self.max_queued)

    def close(self, timeout: float = DEFAULT_DELIVERY_TIMEOUT) -> bool:
        """Stop taking events, send those queued, and stop the thread; wait at most ``timeout``.

        Returns whether everything queued was handled in time. Events the thread had not
        reached by then are abandoned with it (it is a daemon thread).
        """
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _deliver_loop(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    return
                item = self._queue.popleft()
            try:
                self._deliver(item)
            except Exception as exc:  # the thread must outlive any one event
                self.failed += 1
                self._log.warning("events.delivery_failed", error=safe_failure_message(exc))

    def _request(self, item: _Pending) -> urllib.request.Request:
        event = item.event
        body = {
            "job_id": event.job_id,
            "kind": safe_label(event.kind),
            "queue": safe_label(event.queue),
            "attempt": event.attempt,
            "max_attempts": event.max_attempts,
            "action": ACTIONS[event.outcome],
            "error": None if event.error is None else safe_failure_message(event.error),
        }
        headers = {
            "ce-specversion": "1.0",
            "ce-type": ERROR_EVENT_TYPE,
            "ce-source": urllib.parse.quote(self.source, safe=_HEADER_SAFE),
            "ce-id": str(uuid.uuid4()),
            "ce-time": item.time.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "ce-subject": str(event.job_id),
            "content-type": "application/json",
            "user-agent": "outbox",
        }
        assert self.url is not None
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        # The scheme was checked in __init__: http or https only.
        return urllib.request.Request(self.url, data=data, headers=headers, method="POST")  # noqa: S310

    def _deliver(self, item: _Pending) -> None:
        request = self._request(item)
        fields = {"job_id": item.event.job_id, "action": ACTIONS[item.event.outcome]}
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read(65536)
                status = response.status
        except urllib.error.HTTPError as exc:
            with exc:  # holds the response: close it
                status = exc.code
        except OSError as exc:  # refused, unreachable, timed out, TLS
            self.failed += 1
            self._log.warning("events.delivery_failed", error=safe_failure_message(exc), **fields)
            return
        if 200 <= status < 300:
            self.delivered += 1
        else:
            self.failed += 1
            self._log.warning("events.delivery_failed", status=status, **fields)
