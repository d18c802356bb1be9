"""What the runner tells about each job: structlog events and the observer hook.

Labels (kinds) go through ``safe_label``; error texts are already bounded by
``safe_failure_message``. A failing observer is logged and never affects a job.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from outbox.models import Job
from outbox.observe import Observer, Outcome, job_event, noop_observer
from outbox.safety import safe_failure_message, safe_label
from outbox.store import Outcome as Written

__all__ = ["Reporter", "RunSummary"]

_OUTCOMES: dict[str, Outcome] = {
    "succeeded": "succeeded",
    "pending": "retried",
    "failed": "failed",
    "discarded": "discarded",
}


@dataclass(frozen=True)
class RunSummary:
    """What one ``Runner.run_once()`` did: attempts by how they ended."""

    succeeded: int = 0
    retried: int = 0
    """Attempts that failed and will be retried (the job is pending again)."""
    failed: int = 0
    """Attempts that failed for the last time (the job is ``failed``)."""
    discarded: int = 0
    cancelled: int = 0
    released: int = 0
    """Jobs handed back unfinished (the run hit its time limit)."""

    @property
    def attempts(self) -> int:
        """Every attempt that ended."""
        return sum(vars(self).values())

    @property
    def ok(self) -> bool:
        """Every attempt succeeded (and there may have been none)."""
        return self.attempts == self.succeeded

    def __str__(self) -> str:
        parts = ", ".join(f"{n} {name}" for name, n in vars(self).items() if n or name == "failed")
        return f"{self.attempts} attempts: {parts}"


_SUMMARY_FIELDS = {f.name for f in fields(RunSummary)}


def _always(level: int) -> bool:
    return True


class Reporter:
    """Logs each attempt's end, counts it, and passes it to the observer."""

    def __init__(self, log: Any, observer: Observer) -> None:
        self.log = log
        self.observer = observer
        self._enabled_for: Callable[[int], bool] = getattr(log, "is_enabled_for", _always)
        self.counts: Counter[str] = Counter()

    def summary(self) -> RunSummary:
        """The attempts counted so far."""
        return RunSummary(**{k: v for k, v in self.counts.items() if k in _SUMMARY_FIELDS})

    def started(self, job: Job) -> None:
        """An attempt started (a DEBUG event)."""
        if self._enabled_for(logging.DEBUG):
            self.log.debug("job.started", job_id=job.id, kind=job.kind, attempt=job.attempts)

    def finished(self, job: Job, written: Written, duration: float) -> None:
        """An attempt ended with an outcome to write."""
        outcome = _OUTCOMES[written.state]
        self.counts[outcome] += 1
        if outcome != "succeeded" or self._enabled_for(logging.DEBUG):
            # A success is a DEBUG event: its fields are built only when it will be shown.
            fields = {
                "job_id": job.id,
                "kind": safe_label(job.kind),
                "attempt": job.attempts,
                "duration": round(duration, 6),
            }
            if outcome == "succeeded":
                self.log.debug("job.succeeded", **fields)
            elif outcome == "retried":
                self.log.info(
                    "job.retry", delay=round(written.delay, 3), error=written.error, **fields
                )
            elif outcome == "failed":
                self.log.error("job.failed", error=written.error, **fields)
            else:
                self.log.warning("job.discarded", error=written.error, **fields)
        if self.observer is not noop_observer:
            self.observe(job, outcome, duration, written.error)

    def unrecorded(self, job: Job, outcome: Outcome, duration: float) -> None:
        """An attempt ended without an outcome to write: cancelled, or handed back."""
        self.counts[outcome] += 1
        self.log.info(f"job.{outcome}", job_id=job.id, kind=safe_label(job.kind))
        self.observe(job, outcome, duration)

    def observe(
        self, job: Job, outcome: Outcome, duration: float, error: str | None = None
    ) -> None:
        """Pass the event to the observer, if there is one."""
        if self.observer is noop_observer:
            return
        # From due to leased: attempted_at is when this runner leased the job.
        lag = max(0.0, (job.attempted_at - job.run_at).total_seconds()) if job.attempted_at else 0.0
        event = job_event(
            job.kind, job.queue, outcome, duration, lag,
            job_id=job.id, attempt=job.attempts, max_attempts=job.max_attempts, error=error,
        )  # fmt: skip
        try:
            self.observer(event)
        except Exception as exc:
            self.log.warning("runner.observer_failed", error=safe_failure_message(exc))
