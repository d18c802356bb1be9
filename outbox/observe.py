"""What a runner tells the world: structlog events and a metrics hook.

Every value taken from job data passes through ``safe_label`` before it reaches a log field or
a metric label, so neither can grow without bound.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from outbox.safety import safe_label

__all__ = [
    "JobEvent",
    "Observer",
    "Outcome",
    "get_logger",
    "job_event",
    "noop_observer",
    "observers",
]

Outcome = Literal["succeeded", "retried", "failed", "discarded", "cancelled", "released"]
"""How one attempt ended. ``cancelled``: cancelled by an operator or its lease was taken over;
``released``: handed back at shutdown."""


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One attempt's end.

    ``kind``, ``queue`` and ``outcome`` are bounded and low-cardinality: fit for metric labels.
    ``job_id``, ``attempt`` and ``error`` are not: use them in logs and events, never as labels.
    """

    kind: str
    queue: str
    outcome: Outcome
    duration: float
    """Seconds from handler start to its end."""
    lag: float
    """Seconds from the job's run_at to its handler's start: how far behind the runner is."""
    job_id: int = 0
    attempt: int = 0
    """The attempt that ended (1 for the first)."""
    max_attempts: int = 0
    error: str | None = None
    """The stored failure message (bounded by safe_failure_message); None on success."""


Observer = Callable[[JobEvent], None]
"""Called on the runner's event loop after every attempt: keep it fast and let it not raise
(a raising observer is logged and otherwise ignored)."""


def noop_observer(event: JobEvent) -> None:
    """The default observer: does nothing."""


def job_event(
    kind: str,
    queue: str,
    outcome: Outcome,
    duration: float,
    lag: float,
    *,
    job_id: int = 0,
    attempt: int = 0,
    max_attempts: int = 0,
    error: str | None = None,
) -> JobEvent:
    """Build a JobEvent, bounding the labels."""
    return JobEvent(
        safe_label(kind), safe_label(queue), outcome, duration, lag,
        job_id, attempt, max_attempts, error,
    )  # fmt: skip


def observers(*chain: Observer) -> Observer:
    """One observer that calls each of ``chain`` in turn; one raising does not stop the rest."""
    active = [o for o in chain if o is not noop_observer]
    if not active:
        return noop_observer
    if len(active) == 1:
        return active[0]

    def call_all(event: JobEvent) -> None:
        failure: Exception | None = None
        for observer in active:
            try:
                observer(event)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    return call_all


def get_logger(logger: Any = None, /, **context: Any) -> Any:
    """Return outbox's structlog logger, or ``logger`` made into one, bound to ``context``.

    ``logger`` may be a structlog logger (anything with ``bind``) or a stdlib
    ``logging.Logger``: outbox's events then go to it as records whose message is the event
    name and whose ``extra`` holds the fields (structlog's ``render_to_log_kwargs``).

    When the application has configured structlog, its configuration applies. When it has not,
    outbox logs at INFO and above only: per-job events are DEBUG, and a library should not
    flood a console that nobody set up.
    """
    if isinstance(logger, logging.Logger):
        return structlog.wrap_logger(
            logger,
            wrapper_class=structlog.stdlib.BoundLogger,
            processors=[structlog.stdlib.render_to_log_kwargs],
        ).bind(**context)
    if logger is not None:
        return logger.bind(**context)
    if structlog.is_configured():
        return structlog.get_logger("outbox").bind(**context)
    return structlog.wrap_logger(
        None,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_name="outbox",
    ).bind(**context)
