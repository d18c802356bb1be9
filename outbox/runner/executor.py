"""The executor: runs one job. Its handler's context, timeout and cancellation; its outcome.

``start`` makes a task per leased job. The task validates the payload (when the kind has a
model), runs the handler (``async def`` on the loop, ``def`` in a worker thread that sees the
task's context), turns what happened into an outcome, and queues it for the completer. The
completer holds at most ``batch_size`` outcomes: past that a finished job keeps its slot until
there is room, so at most ``concurrency + batch_size`` jobs ever ran without their outcome
written, and a crash runs at most that many again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from outbox import tracing
from outbox.backoff import Backoff
from outbox.enqueuing import dump_payload
from outbox.errors import PayloadError, PermanentError, RetryableError
from outbox.models import Job, JobState, trusted_job
from outbox.mux import HandlerMux, JobEventName, Route
from outbox.runner.events import Reporter
from outbox.runner.state import Held, Lane, Shared
from outbox.runner.threads import HandlerThreads
from outbox.safety import safe_failure_message, safe_label
from outbox.store import Leased
from outbox.store import Outcome as Written

__all__ = ["Executor"]

_EVENTS: dict[str, JobEventName] = {
    "succeeded": "succeeded",
    "pending": "retrying",
    "failed": "failed",
    "discarded": "discarded",
}

_timeout: Callable[[float | None], contextlib.AbstractAsyncContextManager[Any]]
if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:  # pragma: no cover - Python 3.10

    @contextlib.asynccontextmanager
    async def _timeout(seconds: float | None) -> Any:
        task = asyncio.current_task()
        assert task is not None
        fired = False

        def fire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        handle = None if seconds is None else asyncio.get_running_loop().call_later(seconds, fire)
        try:
            yield
        except asyncio.CancelledError:
            if fired:
                raise asyncio.TimeoutError from None
            raise
        finally:
            if handle is not None:
                handle.cancel()


def _timeout_of(route: Route, job: Job) -> float | None:
    """The job's own timeout, else its kind's, else None."""
    own: float | None = job.timeout_seconds
    return route.timeout if own is None else own


class Executor:
    """Runs leased jobs through the mux and hands their outcomes to the completer."""

    def __init__(
        self,
        shared: Shared,
        *,
        mux: HandlerMux,
        reporter: Reporter,
        backoff: Backoff,
        max_payload_bytes: int,
        runner_id: str,
        threads: HandlerThreads,
    ) -> None:
        self._shared = shared
        self._mux = mux
        self.reporter = reporter
        self._backoff = backoff
        self._max_payload_bytes = max_payload_bytes
        self._runner_id = runner_id
        self._threads = threads

    def start(self, lane: Lane, rows: Sequence[Leased]) -> None:
        """Hold a batch of leased jobs and start their handlers."""
        attempted = datetime.now(timezone.utc)
        held_jobs, route_of, runner_id = self._shared.held, self._mux.route, self._runner_id
        for row in rows:
            job_id, kind, queue, payload, priority, attempts, max_attempts, run_at = row[:8]
            created, key, meta, timeout, tenant, ordering_key = row[8:14]
            job = trusted_job({
                "id": job_id, "kind": kind, "queue": queue, "payload": payload,
                "state": JobState.RUNNING, "priority": priority, "attempts": attempts,
                "max_attempts": max_attempts, "run_at": run_at, "created_at": created,
                "finished_at": None, "leased_until": None, "leased_by": runner_id,
                "last_error": None, "errors": [], "unique_key": key, "result": None,
                "metadata": meta, "timeout_seconds": timeout, "attempted_at": attempted,
                "updated_at": None, "tenant": tenant, "ordering_key": ordering_key,
            })  # fmt: skip
            held = Held(job, lane, route_of(kind), (job_id, attempts))
            lane.busy += 1
            held_jobs[held.key] = held
            held.task = _start_task(self._run(held), f"outbox-job-{job_id}")

    async def _run(self, held: Held) -> None:
        job, route = held.job, held.route
        started = time.monotonic()
        self.reporter.started(job)
        self._tell(job, "started", None)
        try:
            result = await self._attempt(route, job)
            written = self._success(job, result)
        except asyncio.CancelledError:
            if held.stop_reason is None:
                raise
            reason = held.stop_reason
            outcome = "released" if reason == "shutdown" else reason
            self.reporter.unrecorded(job, outcome, time.monotonic() - started)
            if reason != "shutdown":
                self._shared.forget(held)
            return
        except BaseException as exc:
            written = self._failure(job, route, exc, time.monotonic() - started)
        self.reporter.finished(job, written, time.monotonic() - started)
        self._tell(job, _EVENTS[written.state], written.error)
        shared = self._shared
        while shared.unwritten >= shared.batch_size:
            shared.room.clear()
            await shared.room.wait()
        shared.unwritten += 1
        held.outcome_queued = True
        shared.outcomes.append((held, written))
        shared.outcome_ready.set()
        shared.free_slot(held)

    def _tell(self, job: Job, event: JobEventName, error: str | None) -> None:
        """Call the mux's listeners for this kind and event; a failing one is only logged."""
        for listener in self._mux.listeners(job.kind, event):
            try:
                listener(job, error)
            except Exception as exc:
                self.reporter.log.warning(
                    "runner.listener_failed",
                    kind=safe_label(job.kind),
                    job_event=event,
                    error=safe_failure_message(exc),
                )

    def _attempt(self, route: Route, job: Job) -> Awaitable[Any]:
        """The handler's call, inside what this job needs: validation, a span, a timeout.

        A plain job (none of those) awaits the handler itself: no wrapping coroutine per job.
        """
        plain = route.payload_model is None and not self._shared.tracing
        if plain and _timeout_of(route, job) is None:
            return self._invoke(route, job)
        return self._guarded(route, job)

    async def _guarded(self, route: Route, job: Job) -> Any:
        if route.payload_model is not None:
            try:
                payload = route.payload_model.model_validate(job.payload)
            except ValidationError as exc:
                raise PermanentError(f"MalformedPayload: {exc}") from None
            job = job.model_copy(update={"payload": payload})
        if not self._shared.tracing:
            return await self._within_timeout(route, job)
        with tracing.job_span(job):
            return await self._within_timeout(route, job)

    async def _within_timeout(self, route: Route, job: Job) -> Any:
        seconds = _timeout_of(route, job)
        if seconds is None:
            return await self._invoke(route, job)
        async with _timeout(seconds):
            return await self._invoke(route, job)

    def _invoke(self, route: Route, job: Job) -> Awaitable[Any]:
        if route.is_async:
            result: Awaitable[Any] = route.handler(job)
            return result
        # Called in the job's task: the handler's thread sees its context (its span,
        # structlog's contextvars).
        return self._threads.run(route.handler, job)

    def _success(self, job: Job, result: Any) -> Written:
        if result is None:
            return Written(job.id, job.attempts, JobState.SUCCEEDED.value)
        try:
            text = dump_payload(result, self._max_payload_bytes)
        except PayloadError as exc:
            # The handler ran and its side effects happened: running it again would repeat them.
            message = safe_failure_message(f"ResultNotStored: {exc}")
            return Written(job.id, job.attempts, JobState.DISCARDED.value, error=message)
        return Written(job.id, job.attempts, JobState.SUCCEEDED.value, result=text)

    def _failure(self, job: Job, route: Route, exc: BaseException, duration: float) -> Written:
        seconds = _timeout_of(route, job)
        timed_out = seconds is not None and duration >= seconds
        if timed_out and isinstance(exc, asyncio.TimeoutError | TimeoutError):
            message = safe_failure_message(
                f"Timeout: the attempt ran over its {seconds:g} s timeout "
                f"(stopped after {duration:.3f} s)"
            )
        else:
            message = safe_failure_message(exc)
        if isinstance(exc, PermanentError):
            return Written(job.id, job.attempts, JobState.DISCARDED.value, error=message)
        if job.attempts >= job.max_attempts:
            return Written(job.id, job.attempts, JobState.FAILED.value, error=message)
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            delay = exc.retry_after
        else:
            delay = (route.backoff or self._backoff).delay(job.attempts)
        return Written(job.id, job.attempts, JobState.PENDING.value, delay=delay, error=message)


if sys.version_info >= (3, 12):

    def _start_task(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        # Eager: the handler runs at once, up to its first await; one that never awaits (a
        # no-op, a cached answer) finishes without a trip through the event loop.
        return asyncio.Task(coro, loop=asyncio.get_running_loop(), name=name, eager_start=True)

else:

    def _start_task(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        loop = asyncio.get_running_loop()
        if loop.get_task_factory() is None:  # what create_task would do, minus two calls
            return asyncio.Task(coro, loop=loop, name=name)
        return loop.create_task(coro, name=name)
