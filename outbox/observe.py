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

__all__ = ["JobEvent", "Observer", "Outcome", "get_logger", "job_event", "noop_observer"]

Outcome = Literal["succeeded", "retried", "failed", "discarded", "cancelled", "released"]
"""How one attempt ended. ``cancelled``: cancelled by an operator or its lease was taken over;
``released``: handed back at shutdown."""


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One attempt's end, with low-cardinality labels only."""

    kind: str
    queue: str
    outcome: Outcome
    duration: float
    """Seconds from handler start to its end."""
    lag: float
    """Seconds from the job's run_at to its handler's start: how far behind the runner is."""


Observer = Callable[[JobEvent], None]


def noop_observer(event: JobEvent) -> None:
    """The default observer: does nothing."""


def job_event(kind: str, queue: str, outcome: Outcome, duration: float, lag: float) -> JobEvent:
    """Build a JobEvent, bounding the labels."""
    return JobEvent(safe_label(kind), safe_label(queue), outcome, duration, lag)


def get_logger(**context: Any) -> Any:
    """Return outbox's structlog logger.

    When the application has configured structlog, its configuration applies. When it has not,
    outbox logs at INFO and above only: per-job events are DEBUG, and a library should not
    flood a console that nobody set up.
    """
    if structlog.is_configured():
        return structlog.get_logger("outbox").bind(**context)
    return structlog.wrap_logger(
        None,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_name="outbox",
    ).bind(**context)
