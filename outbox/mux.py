"""``HandlerMux``: which handler runs a job, chosen by the job's sanitized kind.

A handler takes the leased :class:`~outbox.models.Job` and returns a JSON-serializable result
(stored with the job) or None. A plain ``def`` runs in a worker thread; an ``async def`` runs
on the runner's event loop and must not block it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, overload

from pydantic import BaseModel

from outbox.backoff import Backoff
from outbox.errors import ConfigurationError, HandlerNotFoundError
from outbox.models import Job
from outbox.periodic import Schedule
from outbox.safety import safe_failure_message, sanitize_kind

if TYPE_CHECKING:
    from outbox.relay import Destination, Envelope

__all__ = ["JOB_EVENTS", "Handler", "HandlerMux", "JobEventName", "Listener", "Route"]

Handler = Callable[[Job], Any] | Callable[[Job], Awaitable[Any]]
H = TypeVar("H", bound=Handler)

JobEventName = Literal["started", "succeeded", "retrying", "failed", "discarded"]
JOB_EVENTS: tuple[JobEventName, ...] = get_args(JobEventName)
"""What ``HandlerMux.on`` can listen for: an attempt started, or how it ended."""

Listener = Callable[[Job, "str | None"], None]
"""Called with the job and, for retrying, failed and discarded, the bounded error."""


@dataclass(frozen=True)
class Route:
    """One registered kind: its handler and the rules for running it."""

    kind: str
    handler: Handler
    is_async: bool
    timeout: float | None = None
    """Seconds an attempt may take; over it, the attempt fails (and is retried)."""
    backoff: Backoff | None = None
    """This kind's retry delays; None means the runner's."""
    payload_model: type[BaseModel] | None = None
    """When set, the payload is validated into this model; a payload that fails is discarded."""


def _is_async(handler: Handler) -> bool:
    call = getattr(handler, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


class HandlerMux:
    """Routes jobs to handlers by kind. A runner leases only the kinds its mux has."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._schedules: dict[str, Schedule] = {}
        self._listeners: dict[tuple[str, str], list[Listener]] = {}
        self._destinations: list[Destination] = []

    def on(self, kind: str, event: JobEventName, callback: Listener) -> None:
        """Call ``callback(job, error)`` when an attempt of ``kind`` starts or ends so.

        ``event`` is started, succeeded, retrying, failed (the last attempt failed) or
        discarded. Callbacks run on the runner's event loop, in registration order, after the
        outcome is decided: one that raises is logged and never changes the outcome. Keep them
        quick (schedule slow work elsewhere).
        """
        if event not in JOB_EVENTS:
            raise ConfigurationError(f"event must be one of {', '.join(JOB_EVENTS)}, got {event!r}")
        if not callable(callback):
            raise ConfigurationError("the callback is not callable")
        self._listeners.setdefault((sanitize_kind(kind), event), []).append(callback)

    def listeners(self, kind: str, event: JobEventName) -> list[Listener]:
        """The callbacks registered for this kind and event."""
        return self._listeners.get((kind, event), [])

    def periodic(
        self,
        kind: str,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        name: str | None = None,
        payload: Any = None,
        tz: str = "UTC",
        queue: str = "default",
        priority: int = 0,
        max_attempts: int = 3,
    ) -> None:
        """Enqueue a ``kind`` job on a schedule: ``cron`` (five fields, in ``tz``) or ``every``.

        Any number of runners with this schedule enqueue exactly one job per tick between
        them (its unique key names the tick). After downtime the latest missed tick runs once
        and the skipped ones are logged. ``name`` (default: the kind) identifies the schedule
        in the database: two schedules of one kind need two names.
        """
        schedule = Schedule.build(
            name or kind, kind, cron=cron, every=every, tz=tz, payload=payload, queue=queue,
            priority=priority, max_attempts=max_attempts,
        )  # fmt: skip
        if schedule.name in self._schedules:
            raise ConfigurationError(
                f"a schedule named {schedule.name!r} is already registered: pass name="
            )
        self._schedules[schedule.name] = schedule

    def schedules(self) -> list[Schedule]:
        """The registered schedules, by name."""
        return [self._schedules[name] for name in sorted(self._schedules)]

    def relay(
        self,
        kinds: str | Sequence[str],
        destination: Destination,
        *,
        envelope: Envelope = "raw",
        source: str = "outbox",
        timeout: float | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        """Publish the jobs of ``kinds`` to ``destination`` (see ``outbox.relay``).

        ``kinds`` names each kind exactly: a pattern (``"orders.*"``) is refused, because a
        runner leases the kinds its mux names and a pattern would match none. ``envelope`` is
        ``"raw"`` (the payload as JSON), ``"cloudevents"`` (structured) or
        ``"cloudevents-binary"``; ``source`` is the CloudEvents source.
        """
        from outbox.relay import relay_handler

        names = [kinds] if isinstance(kinds, str) else list(kinds)
        for kind in names:
            if isinstance(kind, str) and any(c in kind for c in "*>?"):
                raise ConfigurationError(
                    f"kind patterns such as {kind!r} are not supported: a runner leases the kinds "
                    "it names, exactly; list them: mux.relay(['orders.placed', 'orders.paid'], …)"
                )
        handler = relay_handler(destination, envelope=envelope, source=source)
        for kind in names:
            self.register(kind, handler, timeout=timeout, backoff=backoff)
        if destination not in self._destinations:
            self._destinations.append(destination)

    async def close_relays(self, log: Any = None) -> None:
        """Close every relay destination's connection (a runner does it as it stops)."""
        for destination in self._destinations:
            try:
                await destination.close()
            except Exception as exc:  # a broker gone already: nothing left to close
                if log is not None:
                    log.warning(
                        "relay.close_failed",
                        destination=type(destination).__name__,
                        error=safe_failure_message(exc),
                    )

    @overload
    def register(
        self,
        kind: str,
        handler: H,
        *,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        payload: type[BaseModel] | None = None,
    ) -> H: ...
    @overload
    def register(
        self,
        kind: str,
        handler: None = None,
        *,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        payload: type[BaseModel] | None = None,
    ) -> Callable[[H], H]: ...
    def register(
        self,
        kind: str,
        handler: H | None = None,
        *,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        payload: type[BaseModel] | None = None,
    ) -> H | Callable[[H], H]:
        """Register ``handler`` for ``kind``; without a handler, return a decorator.

        ``kind`` passes the same sanitizer as enqueue; registering a kind twice raises
        ConfigurationError. ``timeout`` bounds one attempt in seconds; ``backoff`` overrides
        the runner's retry delays for this kind; ``payload`` is a pydantic model the payload
        must validate into (the handler then sees the model as ``job.payload``).
        """
        if handler is None:

            def decorator(fn: H) -> H:
                return self.register(kind, fn, timeout=timeout, backoff=backoff, payload=payload)

            return decorator
        canonical = sanitize_kind(kind)
        if canonical in self._routes:
            raise ConfigurationError(f"a handler for kind {canonical!r} is already registered")
        if not callable(handler):
            raise ConfigurationError(f"the handler for {canonical!r} is not callable")
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout!r}")
        if payload is not None and not (
            isinstance(payload, type) and issubclass(payload, BaseModel)
        ):
            raise ConfigurationError("payload must be a pydantic model class")
        self._routes[canonical] = Route(
            canonical, handler, _is_async(handler), timeout, backoff, payload
        )
        return handler

    def payload_models(self) -> dict[str, type[BaseModel]]:
        """The pydantic model of each kind registered with ``payload=``.

        Give it to ``Outbox(payloads=...)`` so that enqueue validates those payloads before
        writing.
        """
        return {k: r.payload_model for k, r in self._routes.items() if r.payload_model}

    def kinds(self) -> list[str]:
        """The registered kinds, sorted."""
        return sorted(self._routes)

    def route(self, kind: str) -> Route:
        """The route for ``kind``; HandlerNotFoundError when none is registered."""
        try:
            return self._routes[kind]
        except KeyError:
            raise HandlerNotFoundError(f"no handler is registered for kind {kind!r}") from None

    def __contains__(self, kind: object) -> bool:
        return kind in self._routes

    def __len__(self) -> int:
        return len(self._routes)
