"""``Runner``: lease jobs in batches, run them with bounded concurrency, record them in batches.

The moving parts, each one task on the runner's event loop:

- a **lane** per concurrency pool leases ``min(free slots, batch_size)`` jobs in one statement
  whenever it has free slots and is woken (NOTIFY, a freed slot, or the poll interval);
- one task per job runs its handler (``async def`` on the loop, ``def`` in a thread);
- the **recorder** writes finished attempts in one statement per batch while the lanes lease
  the next ones; it holds at most ``batch_size`` outcomes, so at most ``concurrency +
  batch_size`` jobs ever ran without their outcome recorded, and a crash runs at most that many
  again;
- the **heartbeat** thread extends the leases of every job held, on a connection of its own so
  that a handler blocking the loop cannot lose them, and stops jobs cancelled meanwhile;
- **maintenance** retries jobs whose runner died (expired leases) and prunes old finished jobs;
- the **listener** LISTENs for new jobs on its own connection and wakes the lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from outbox import tracing
from outbox.backoff import Backoff
from outbox.client import Outbox
from outbox.enqueuing import dump_payload
from outbox.errors import (
    ConfigurationError,
    OutboxError,
    PayloadError,
    PermanentError,
    RetryableError,
)
from outbox.heartbeat import HeartbeatThread
from outbox.models import Job, JobState, trusted_job
from outbox.mux import HandlerMux, Route
from outbox.observe import Observer, Outcome, get_logger, job_event, noop_observer
from outbox.safety import safe_failure_message, safe_label, sanitize_queue
from outbox.store import Leased, PgStore, Store
from outbox.store import Outcome as Written

__all__ = ["Runner"]

DEFAULT_LEASE_SECONDS = 30.0
"""How long a lease lasts without a heartbeat; heartbeats come every third of it."""

DEFAULT_SHUTDOWN_TIMEOUT = 30.0
"""How long a graceful stop waits for running handlers before handing their jobs back."""

RESCUE_BATCH = 1000
"""Expired leases recovered per statement."""

PRUNE_EVERY = 60.0
"""Seconds between pruning rounds."""

GATHER_SECONDS = 0.002
"""With a backlog, how long a lane waits for more free slots before leasing a small batch."""

PERIODIC_MAX_SLEEP = 30.0
"""Longest wait between looks at the periodic schedules (a changed row is seen this soon)."""

FLUSH_TIMEOUT = 5.0
"""How long a stopping runner keeps trying to write the outcomes it holds."""

RECONNECT_MAX_DELAY = 5.0
"""Longest wait between attempts to reach a database that stopped answering."""

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


CANCEL_TIMEOUT = 5.0
"""How long shutdown keeps cancelling a task that will not end before leaving it behind."""


async def _cancel_and_wait(
    tasks: Sequence[asyncio.Task[Any]], *, grace: float = 0.0
) -> set[asyncio.Task[Any]]:
    """Let ``tasks`` end within ``grace`` seconds, then cancel them until they have ended.

    One ``cancel()`` is not enough: before Python 3.12, ``asyncio.wait_for`` (which psycopg
    uses while it waits on the socket) drops a cancellation that arrives just as what it waits
    for completes, and a handler may catch ``CancelledError``. So cancel again until the task
    ends, for up to CANCEL_TIMEOUT seconds; return the tasks that outlived that.
    """
    pending = {task for task in tasks if not task.done()}
    if pending and grace > 0:
        _, pending = await asyncio.wait(pending, timeout=grace)
    deadline = time.monotonic() + CANCEL_TIMEOUT
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a helper's failure was logged where it happened
    return pending


@dataclass(eq=False)
class _Lane:
    """A concurrency pool: the queues it serves and how many of their jobs may run at once."""

    queues: list[str] | None
    limit: int
    busy: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _Held:
    """A job this runner holds a lease on, from lease until its outcome is written."""

    job: Job
    lane: _Lane
    route: Route
    task: asyncio.Task[None] | None = None
    stop_reason: str | None = None
    """Why the runner cancelled the handler: 'shutdown' or 'cancelled'."""
    slot_freed: bool = False
    """Its lane slot is free again (the outcome is with the recorder, or there is none)."""


def _default_runner_id() -> str:
    host = safe_label(socket.gethostname())[:32]
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Runner:
    """Runs the jobs of a mux's kinds from one outbox schema.

    Give it a ``dsn`` (it opens a pool of POOL_SIZE connections, plus one for LISTEN and one
    for heartbeats), an open ``pool`` of yours (it borrows from it, and opens the other two
    with the pool's conninfo), or any ``store`` (``outbox.testing.InMemoryStore`` for tests).
    ``queues`` is None (every queue), a list of queue names sharing ``concurrency`` slots, or
    a mapping of queue name to its own slot count.
    """

    def __init__(
        self,
        mux: HandlerMux,
        *,
        dsn: str | None = None,
        pool: AsyncConnectionPool[Any] | None = None,
        store: Store | None = None,
        outbox: Outbox | None = None,
        concurrency: int = 10,
        queues: Sequence[str] | Mapping[str, int] | None = None,
        batch_size: int = 100,
        poll_interval: float = 1.0,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        backoff: Backoff | None = None,
        retention: timedelta | None = timedelta(days=7),
        observer: Observer = noop_observer,
        runner_id: str | None = None,
    ) -> None:
        if [dsn, pool, store].count(None) != 2:
            raise ConfigurationError("give the runner a dsn, a pool or a store (one of them)")
        if not len(mux) and not mux.schedules():
            raise ConfigurationError("the mux has no handlers: register at least one kind")
        for name, value in (("concurrency", concurrency), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an int of at least 1, got {value!r}")
        if not poll_interval > 0 or not lease_seconds >= 1 or not shutdown_timeout >= 0:
            raise ConfigurationError(
                "poll_interval must be > 0, lease_seconds >= 1 and shutdown_timeout >= 0"
            )
        self.mux = mux
        self.outbox = outbox or Outbox()
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.shutdown_timeout = shutdown_timeout
        self.backoff = backoff or Backoff()
        self.retention = retention
        self.observer = observer
        self.runner_id = safe_label(runner_id) if runner_id else _default_runner_id()
        self.store: Store = store or PgStore(
            schema=self.outbox.schema,
            dsn=dsn,
            pool=pool,
            # What pg_stat_activity shows for the runner's connections.
            application_name=f"outbox {self.runner_id}",
        )
        self._lanes = self._make_lanes(queues, concurrency)
        self._kinds = mux.kinds()
        self._log = get_logger(runner=self.runner_id)
        self._held: dict[int, _Held] = {}
        self._outcomes: list[tuple[_Held, Written]] = []
        self._outcome_ready: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._unwritten = 0
        self._stopping: asyncio.Event | None = None
        self._stop_now = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._tracing = False

    @staticmethod
    def _make_lanes(
        queues: Sequence[str] | Mapping[str, int] | None, concurrency: int
    ) -> list[_Lane]:
        if queues is None:
            return [_Lane(None, concurrency)]
        if isinstance(queues, str):
            raise ConfigurationError("queues must be a list of names or a mapping, not a str")
        if isinstance(queues, Mapping):
            lanes = []
            for name, limit in queues.items():
                if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                    raise ConfigurationError(f"queue {name!r} needs a concurrency of at least 1")
                lanes.append(_Lane([sanitize_queue(name)], limit))
            if not lanes:
                raise ConfigurationError("queues, when given, must name at least one queue")
            return lanes
        names = sorted({sanitize_queue(q) for q in queues})
        if not names:
            raise ConfigurationError("queues, when given, must name at least one queue")
        return [_Lane(names, concurrency)]

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``stop()`` (or cancellation), then shut down gracefully.

        On stop it leases no more jobs, waits up to ``shutdown_timeout`` for running handlers,
        then hands the unfinished jobs back as pending without spending an attempt.
        """
        await self._run(on_started=None)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Runner]:
        """Run in the current event loop for the duration of an ``async with`` block.

        Made for ASGI lifespans (FastAPI, Starlette): entering returns once the runner is
        connected and has checked the schema, and raises what stopped it from starting (a bad
        DSN, an unmigrated schema), so the app fails to start rather than run without its
        jobs; leaving stops it gracefully, as ``stop()`` does.
        """
        started = asyncio.get_running_loop().create_future()

        def on_started() -> None:
            if not started.done():
                started.set_result(None)

        task = asyncio.create_task(self._run(on_started=on_started), name="outbox-runner")
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            started.cancel()
            task.result()  # raises what stopped it
            raise ConfigurationError("the runner stopped before it started")
        try:
            yield self
        finally:
            self.stop()
            await task

    async def _run(self, on_started: Callable[[], None] | None) -> None:
        if self._loop is not None:
            raise ConfigurationError("this runner is already running")
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._outcome_ready = asyncio.Event()
        self._room = asyncio.Event()
        for lane in self._lanes:
            lane.wake = asyncio.Event()
        workers = sum(lane.limit for lane in self._lanes)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="outbox-handler")
        try:
            await self.store.open()
            try:
                if on_started is not None:
                    on_started()
                await self._serve(self.store)
            finally:
                await self.store.close()
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._loop = None

    async def _serve(self, store: Store) -> None:
        assert self._stopping is not None
        self._log.info(
            "runner.started",
            kinds=[safe_label(k) for k in self._kinds],
            lanes=[(lane.queues, lane.limit) for lane in self._lanes],
        )
        heartbeat = HeartbeatThread(
            renew=functools.partial(store.heartbeat, self.runner_id),
            lease_seconds=self.lease_seconds,
            held=self._held_ids,
            on_lost=self._stop_lost,
            blocking_kinds=self._async_kinds_running,
            loop=asyncio.get_running_loop(),
            log=self._log,
        )
        heartbeat.start()
        lanes = [asyncio.create_task(self._lane_loop(store, lane)) for lane in self._lanes]
        helpers = [
            asyncio.create_task(self._record_loop(store)),
            asyncio.create_task(self._maintenance_loop(store)),
            asyncio.create_task(self._listen_loop(store)),
        ]
        if self.mux.schedules():
            helpers.append(asyncio.create_task(self._periodic_loop(store)))
        try:
            await self._stopping.wait()
        except asyncio.CancelledError:
            self._stop_now = True
            self._stopping.set()
            await self._shutdown(store, lanes, helpers, heartbeat)
            raise
        await self._shutdown(store, lanes, helpers, heartbeat)

    async def _shutdown(
        self,
        store: Store,
        lanes: list[asyncio.Task[None]],
        helpers: list[asyncio.Task[None]],
        heartbeat: HeartbeatThread,
    ) -> None:
        self._wake_all()
        # Lanes end by themselves once stopping is set; one stuck on a dead database is cut off.
        await _cancel_and_wait(lanes, grace=FLUSH_TIMEOUT)
        running = [h.task for h in self._held.values() if h.task is not None and not h.task.done()]
        if running and not self._stop_now:
            self._log.info("runner.draining", jobs=len(running), timeout=self.shutdown_timeout)
            await asyncio.wait(running, timeout=self.shutdown_timeout)
        for held in self._held.values():
            if held.task is not None and not held.task.done():
                held.stop_reason = "shutdown"
        stuck = await _cancel_and_wait(running)
        if stuck:
            self._log.warning(
                "runner.handlers_ignored_cancellation",
                jobs=len(stuck),
                advice="a handler caught CancelledError and kept running; its job is handed "
                "back anyway. Let CancelledError propagate.",
            )
        await self._flush()
        unfinished = [job_id for job_id, held in self._held.items() if held.stop_reason]
        if unfinished:
            with contextlib.suppress(OutboxError):
                released = await store.release(self.runner_id, unfinished)
                self._log.info("runner.released", jobs=len(released))
        await heartbeat.stop()
        await _cancel_and_wait(helpers)
        self._log.info("runner.stopped")

    async def _flush(self) -> None:
        """Wait (a few seconds at most: the database may be gone) for outcomes to be written."""
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while time.monotonic() < deadline and any(
            held.stop_reason is None for held in self._held.values()
        ):
            await asyncio.sleep(0.01)

    def stop(self, *, now: bool = False) -> None:
        """Ask the runner to stop; safe from any thread and from signal handlers.

        ``now=True`` skips waiting for running handlers: their jobs are handed back at once.
        When the runner runs in its own thread (``start_in_thread``), this also waits for it.
        """
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._request_stop, now)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.shutdown_timeout + 15.0)

    def _request_stop(self, now: bool) -> None:
        self._stop_now = self._stop_now or now
        if self._stopping is not None:
            self._stopping.set()
        if now:
            for held in self._held.values():
                if held.task is not None and not held.task.done():
                    held.stop_reason = "shutdown"
                    held.task.cancel()

    def start_in_thread(self) -> threading.Thread:
        """Run in a background thread with its own event loop (for WSGI apps); return it.

        Returns once the runner is connected and has checked the schema; raises what stopped
        it from starting (a bad DSN, an unmigrated schema) in the calling thread. Stop it with
        ``stop()``, which waits for the thread.
        """
        started = threading.Event()
        failure: list[BaseException] = []

        def target() -> None:
            try:
                asyncio.run(self._run(on_started=started.set))
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=target, name="outbox-runner", daemon=True)
        thread.start()
        while not started.wait(0.05) and thread.is_alive():
            pass
        if not started.is_set():
            thread.join()
            raise failure[0] if failure else ConfigurationError("the runner thread ended early")
        self._thread = thread
        return thread

    # -- leasing -----------------------------------------------------------------------------

    async def _lane_loop(self, store: Store, lane: _Lane) -> None:
        assert self._stopping is not None
        delay = 0.1
        backlog = False
        while not self._stopping.is_set():
            lane.wake.clear()
            if backlog and 0 < lane.limit - lane.busy < min(lane.limit, self.batch_size) // 4:
                # Jobs are waiting and slots free up one by one: gather a few before leasing,
                # rather than a statement per freed slot.
                await asyncio.sleep(GATHER_SECONDS)
            want = min(lane.limit - lane.busy, self.batch_size)
            got = 0
            if want > 0:
                try:
                    rows = await store.lease(
                        self.runner_id, self._kinds, lane.queues, want, self.lease_seconds
                    )
                except OutboxError as exc:
                    self._log.warning("runner.lease_failed", error=safe_failure_message(exc))
                    await self._sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_DELAY)
                    continue
                delay = 0.1
                got = len(rows)
                # Per batch, not per job: asking OpenTelemetry costs microseconds.
                self._tracing = tracing.ENABLED and tracing.recording()
                for row in rows:
                    self._start(lane, row)
                if got:
                    self._log.debug("runner.leased", jobs=got, queues=lane.queues)
                # A full batch means more are probably waiting; a short one, that none are.
                backlog = got == want
            if got and got == want:
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(lane.wake.wait(), self.poll_interval)

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _start(self, lane: _Lane, row: Leased) -> None:
        job_id, kind, queue, payload, priority, attempts, max_attempts, run_at, created = row[:9]
        key, meta = row[9], row[10]
        job = trusted_job({
            "id": job_id, "kind": kind, "queue": queue, "payload": payload,
            "state": JobState.RUNNING, "priority": priority, "attempts": attempts,
            "max_attempts": max_attempts, "run_at": run_at, "created_at": created,
            "finished_at": None, "leased_until": None, "leased_by": self.runner_id,
            "last_error": None, "errors": [], "unique_key": key, "result": None,
            "metadata": meta,
        })  # fmt: skip
        held = _Held(job, lane, self.mux.route(kind))
        lane.busy += 1
        self._held[job_id] = held
        held.task = asyncio.create_task(self._run_job(held), name=f"outbox-job-{job_id}")

    # -- running one job ---------------------------------------------------------------------

    async def _call(self, route: Route, job: Job) -> Any:
        if route.payload_model is not None:
            try:
                payload = route.payload_model.model_validate(job.payload)
            except ValidationError as exc:
                raise PermanentError(f"MalformedPayload: {exc}") from None
            job = job.model_copy(update={"payload": payload})
        if not self._tracing:
            return await self._invoke_within_timeout(route, job)
        with tracing.job_span(job):
            return await self._invoke_within_timeout(route, job)

    async def _invoke_within_timeout(self, route: Route, job: Job) -> Any:
        if route.timeout is None:
            return await self._invoke(route, job)
        async with _timeout(route.timeout):
            return await self._invoke(route, job)

    async def _invoke(self, route: Route, job: Job) -> Any:
        if route.is_async:
            return await route.handler(job)
        loop = asyncio.get_running_loop()
        # The handler's thread sees this task's context: its span, structlog's contextvars.
        call = contextvars.copy_context().run
        return await loop.run_in_executor(self._executor, call, route.handler, job)

    async def _run_job(self, held: _Held) -> None:
        job, route = held.job, held.route
        started = time.monotonic()
        lag = max(0.0, time.time() - job.run_at.timestamp())
        self._log.debug("job.started", job_id=job.id, kind=job.kind, attempt=job.attempts)
        try:
            result = await self._call(route, job)
            written = self._success(job, result)
        except asyncio.CancelledError:
            if held.stop_reason is None:
                raise
            self._finish_unrecorded(held, started, lag)
            return
        except BaseException as exc:
            written = self._failure(job, route, exc, time.monotonic() - started)
        duration = time.monotonic() - started
        self._emit(job, written, duration, lag)
        assert self._outcome_ready is not None and self._room is not None
        # The recorder holds at most batch_size outcomes (queued or being written); past that,
        # the job keeps its slot until there is room. So at most concurrency + batch_size jobs
        # ever ran without their outcome written: a crash runs at most that many again.
        while self._unwritten >= self.batch_size:
            self._room.clear()
            await self._room.wait()
        self._unwritten += 1
        self._outcomes.append((held, written))
        self._outcome_ready.set()
        self._free_slot(held)

    def _success(self, job: Job, result: Any) -> Written:
        if result is None:
            return Written(job.id, job.attempts, JobState.SUCCEEDED.value)
        try:
            text = dump_payload(result, self.outbox.max_payload_bytes)
        except PayloadError as exc:
            # The handler ran and its side effects happened: running it again would repeat them.
            message = safe_failure_message(f"ResultNotStored: {exc}")
            return Written(job.id, job.attempts, JobState.DISCARDED.value, error=message)
        return Written(job.id, job.attempts, JobState.SUCCEEDED.value, result=text)

    def _failure(self, job: Job, route: Route, exc: BaseException, duration: float) -> Written:
        timed_out = route.timeout is not None and duration >= route.timeout
        if timed_out and isinstance(exc, asyncio.TimeoutError | TimeoutError):
            message = safe_failure_message(f"Timeout: the attempt ran over {route.timeout} s")
        else:
            message = safe_failure_message(exc)
        if isinstance(exc, PermanentError):
            return Written(job.id, job.attempts, JobState.DISCARDED.value, error=message)
        if job.attempts >= job.max_attempts:
            return Written(job.id, job.attempts, JobState.FAILED.value, error=message)
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            delay = exc.retry_after
        else:
            delay = (route.backoff or self.backoff).delay(job.attempts)
        return Written(job.id, job.attempts, JobState.PENDING.value, delay=delay, error=message)

    def _emit(self, job: Job, written: Written, duration: float, lag: float) -> None:
        outcome: Outcome = {
            "succeeded": "succeeded",
            "pending": "retried",
            "failed": "failed",
            "discarded": "discarded",
        }[written.state]  # type: ignore[assignment]
        fields = {
            "job_id": job.id,
            "kind": safe_label(job.kind),
            "attempt": job.attempts,
            "duration": round(duration, 6),
        }
        if outcome == "succeeded":
            self._log.debug("job.succeeded", **fields)
        elif outcome == "retried":
            self._log.info(
                "job.retry", delay=round(written.delay, 3), error=written.error, **fields
            )
        elif outcome == "failed":
            self._log.error("job.failed", error=written.error, **fields)
        else:
            self._log.warning("job.discarded", error=written.error, **fields)
        self._observe(job, outcome, duration, lag, written.error)

    def _observe(
        self, job: Job, outcome: Outcome, duration: float, lag: float, error: str | None = None
    ) -> None:
        if self.observer is noop_observer:
            return
        event = job_event(
            job.kind, job.queue, outcome, duration, lag,
            job_id=job.id, attempt=job.attempts, max_attempts=job.max_attempts, error=error,
        )  # fmt: skip
        try:
            self.observer(event)
        except Exception as exc:
            self._log.warning("runner.observer_failed", error=safe_failure_message(exc))

    def _finish_unrecorded(self, held: _Held, started: float, lag: float) -> None:
        """A job that ends without an outcome to write: cancelled, lost, or stopped by shutdown."""
        reason = held.stop_reason
        outcome: Outcome = "released" if reason == "shutdown" else reason  # type: ignore[assignment]
        self._log.info(f"job.{outcome}", job_id=held.job.id, kind=safe_label(held.job.kind))
        self._observe(held.job, outcome, time.monotonic() - started, lag)
        if reason != "shutdown":
            self._forget(held)

    def _free_slot(self, held: _Held) -> None:
        if not held.slot_freed:
            held.slot_freed = True
            held.lane.busy -= 1
            held.lane.wake.set()

    def _forget(self, held: _Held) -> None:
        self._held.pop(held.job.id, None)
        self._free_slot(held)

    # -- recording ---------------------------------------------------------------------------

    async def _record_loop(self, store: Store) -> None:
        assert self._outcome_ready is not None
        delay = 0.05
        while True:
            await self._outcome_ready.wait()
            self._outcome_ready.clear()
            if not self._outcomes:
                continue
            batch, self._outcomes = self._outcomes, []
            try:
                written = await store.record(self.runner_id, [w for _, w in batch])
            except OutboxError as exc:
                self._log.warning("runner.record_failed", error=safe_failure_message(exc))
                self._outcomes[:0] = batch  # keep them, in order, for the next try
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                self._outcome_ready.set()
                continue
            delay = 0.05
            for held, outcome in batch:
                if outcome.id not in written:
                    self._log.warning("job.lease_lost", job_id=outcome.id, attempt=outcome.attempts)
                self._forget(held)
            self._unwritten -= len(batch)
            assert self._room is not None
            self._room.set()

    # -- leases ------------------------------------------------------------------------------

    def _held_ids(self) -> list[int]:
        """The ids of the jobs held; called from the heartbeat thread."""
        while True:
            try:
                return list(self._held)
            except RuntimeError:  # the dict changed size under us: read again
                continue

    def _async_kinds_running(self) -> list[str]:
        """Kinds of the async handlers running now; called from the heartbeat thread."""
        try:
            held = list(self._held.values())
        except RuntimeError:
            return []
        kinds = {h.job.kind for h in held if h.route.is_async and h.task and not h.task.done()}
        return sorted(safe_label(kind) for kind in kinds)

    def _stop_lost(self, lost: set[int]) -> None:
        """Stop the handlers of jobs whose lease is gone: cancelled, or taken over."""
        for job_id in lost:
            held = self._held.get(job_id)
            if held is None or held.task is None or held.task.done():
                continue
            held.stop_reason = "cancelled"
            held.task.cancel()

    async def _maintenance_loop(self, store: Store) -> None:
        last_prune = 0.0
        while True:
            try:
                rescued = await store.rescue(RESCUE_BATCH)
                if rescued:
                    self._log.info("runner.rescued", jobs=rescued)
                    self._wake_all()
                if self.retention is not None and time.monotonic() - last_prune > PRUNE_EVERY:
                    last_prune = time.monotonic()
                    pruned = await store.prune(self.retention.total_seconds())
                    if pruned:
                        self._log.info("runner.pruned", jobs=pruned)
            except OutboxError as exc:
                self._log.warning("runner.maintenance_failed", error=safe_failure_message(exc))
            await asyncio.sleep(self.lease_seconds / 3)

    async def _periodic_loop(self, store: Store) -> None:
        schedules = self.mux.schedules()
        registered = False
        while True:
            pause = PERIODIC_MAX_SLEEP
            try:
                if not registered:
                    await store.register_periodic(schedules)
                    registered = True
                fired, upcoming = await store.fire_periodic(schedules)
                for tick in fired:
                    self._log.debug("periodic.enqueued", schedule=tick.name, job_id=tick.job_id)
                    if tick.missed:
                        self._log.warning(
                            "periodic.missed_ticks", schedule=tick.name, missed=tick.missed,
                            advice="no runner with this schedule was up: the latest missed "
                            "tick ran once, the earlier ones were skipped",
                        )  # fmt: skip
                until = (upcoming - datetime.now(timezone.utc)).total_seconds()
                # Clocks differ a little between hosts: look again just after the tick.
                pause = min(max(until + 0.01, 0.05), PERIODIC_MAX_SLEEP)
            except OutboxError as exc:
                self._log.warning("runner.periodic_failed", error=safe_failure_message(exc))
            await asyncio.sleep(pause)

    # -- wake-ups ----------------------------------------------------------------------------

    def _wake_all(self) -> None:
        for lane in self._lanes:
            lane.wake.set()

    async def _listen_loop(self, store: Store) -> None:
        async for _ in store.notifications():
            self._wake_all()
