"""What the runner tells about each job: structlog events and the observer hook.

Labels (kinds) go through ``safe_label``; error texts are already bounded by
``safe_failure_message``. A failing observer is logged and never affects a job.
"""

from __future__ import annotations

from typing import Any

from outbox.models import Job
from outbox.observe import Observer, Outcome, job_event, noop_observer
from outbox.safety import safe_failure_message, safe_label
from outbox.store import Outcome as Written

__all__ = ["Reporter"]

_OUTCOMES: dict[str, Outcome] = {
    "succeeded": "succeeded",
    "pending": "retried",
    "failed": "failed",
    "discarded": "discarded",
}


class Reporter:
    """Logs each attempt's end and passes it to the observer."""

    def __init__(self, log: Any, observer: Observer) -> None:
        self.log = log
        self.observer = observer

    def finished(self, job: Job, written: Written, duration: float, lag: float) -> None:
        """An attempt ended with an outcome to write."""
        outcome = _OUTCOMES[written.state]
        fields = {
            "job_id": job.id,
            "kind": safe_label(job.kind),
            "attempt": job.attempts,
            "duration": round(duration, 6),
        }
        if outcome == "succeeded":
            self.log.debug("job.succeeded", **fields)
        elif outcome == "retried":
            self.log.info("job.retry", delay=round(written.delay, 3), error=written.error, **fields)
        elif outcome == "failed":
            self.log.error("job.failed", error=written.error, **fields)
        else:
            self.log.warning("job.discarded", error=written.error, **fields)
        self.observe(job, outcome, duration, lag, written.error)

    def unrecorded(self, job: Job, outcome: Outcome, duration: float, lag: float) -> None:
        """An attempt ended without an outcome to write: cancelled, or handed back."""
        self.log.info(f"job.{outcome}", job_id=job.id, kind=safe_label(job.kind))
        self.observe(job, outcome, duration, lag)

    def observe(
        self, job: Job, outcome: Outcome, duration: float, lag: float, error: str | None = None
    ) -> None:
        """Pass the event to the observer, if there is one."""
        if self.observer is noop_observer:
            return
        event = job_event(
            job.kind, job.queue, outcome, duration, lag,
            job_id=job.id, attempt=job.attempts, max_attempts=job.max_attempts, error=error,
        )  # fmt: skip
        try:
            self.observer(event)
        except Exception as exc:
            self.log.warning("runner.observer_failed", error=safe_failure_message(exc))
