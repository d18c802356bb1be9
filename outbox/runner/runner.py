"""``Runner``: its configuration and public API; it wires the services and stops them in order.

A run is a few small services under a supervisor (see ``supervisor``): a dispatcher per lane
(``dispatcher``), the executor's task per job (``executor``), the completer (``completer``),
the heartbeat (``heartbeat``), the rescuer and pruner (``maintenance``), the periodic enqueuer
(``scheduler``) and the listener (``listener``). They share ``state.Shared`` and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from outbox.backoff import Backoff
from outbox.client import Outbox
from outbox.clock import SYSTEM_CLOCK, Clock
from outbox.errors import ConfigurationError, OutboxError, RunnerFailedError
from outbox.mux import HandlerMux
from outbox.observe import Observer, get_logger, noop_observer
from outbox.runner import lifecycle
from outbox.runner.events import RunSummary
from outbox.runner.health import Health
from outbox.runner.state import Lane, Shared
from outbox.runner.threads import HandlerThreads
from outbox.safety import safe_label, sanitize_queue
from outbox.store import PgStore, Store

__all__ = ["DEFAULT_LEASE_SECONDS", "DEFAULT_SHUTDOWN_TIMEOUT", "DEFAULT_WAIT_FOR_DB", "Runner"]

DEFAULT_LEASE_SECONDS = 30.0
"""How long a lease lasts without a heartbeat; heartbeats come every third of it."""

DEFAULT_SHUTDOWN_TIMEOUT = 30.0
"""How long a graceful stop waits for running handlers before handing their jobs back."""

DEFAULT_WAIT_FOR_DB = 60.0
"""How long start-up waits for a database that cannot be reached yet (a restart, a failover)."""


def _default_runner_id() -> str:
    host = safe_label(socket.gethostname())[:32]
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Runner:
    """Runs the jobs of a mux's kinds from one outbox schema.

    Give it a ``dsn`` (it opens a pool of POOL_SIZE connections, plus one for LISTEN and one
    for heartbeats), an open ``pool`` of yours (it borrows from it, and opens the other two
    with the pool's conninfo), or any ``store`` (``outbox.testing.InMemoryStore`` for tests).
    ``queues`` is None (every queue), a list of queue names sharing ``concurrency`` slots, or
    a mapping of queue name to its own slot count. Start-up waits up to ``wait_for_db``
    seconds for a database that cannot be reached yet (0: fail at once). ``logger`` (a
    structlog or stdlib logger) receives every runner log line instead of outbox's own.
    ``clock`` is for tests (``outbox.testing.FakeClock``). Behind PgBouncer in transaction
    mode pass ``pgbouncer=True`` (no session settings are made) and, for LISTEN, a direct
    ``listen_dsn`` to Postgres; without one the runner polls every ``poll_interval``.

    Finished jobs older than ``retention`` are deleted once a minute by one of the runners on
    the schema (None: never). With ``vacuum`` (the default), the runner's vacuumer looks every
    2.5 s and runs a plain ``VACUUM`` of the jobs table when autovacuum has fallen far behind
    (see ``outbox.runner.vacuum``); it needs to own the table, or MAINTAIN on it (PostgreSQL 17+),
    and says once when it may not. ``vacuum=False`` leaves the table to autovacuum alone.
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
        wait_for_db: float = DEFAULT_WAIT_FOR_DB,
        backoff: Backoff | None = None,
        retention: timedelta | None = timedelta(days=7),
        vacuum: bool = True,
        observer: Observer = noop_observer,
        runner_id: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        logger: Any = None,
        pgbouncer: bool = False,
        listen_dsn: str | None = None,
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
        if not wait_for_db >= 0:
            raise ConfigurationError(f"wait_for_db must be >= 0 seconds, got {wait_for_db!r}")
        self.mux = mux
        self.outbox = outbox or Outbox()
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.shutdown_timeout = shutdown_timeout
        self.wait_for_db = wait_for_db
        self.backoff = backoff or Backoff()
        self.retention = retention
        self.vacuum = vacuum
        self.observer = observer
        self.clock = clock
        self.runner_id = safe_label(runner_id) if runner_id else _default_runner_id()
        self.store: Store = store or PgStore(
            schema=self.outbox.schema,
            dsn=dsn,
            pool=pool,
            # What pg_stat_activity shows for the runner's connections.
            application_name=f"outbox {self.runner_id}",
            pgbouncer=pgbouncer,
            listen_dsn=listen_dsn,
        )
        self.lanes = _make_lanes(queues, concurrency)
        self.log = get_logger(logger, runner=self.runner_id)
        self._run_state: lifecycle.Run | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._failure: OutboxError | None = None
        self._summary: RunSummary | None = None

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``stop()`` (or cancellation), then shut down gracefully.

        On stop it leases no more jobs, waits up to ``shutdown_timeout`` for running handlers,
        then hands the unfinished jobs back as pending without spending an attempt. Raises
        ``RunnerFailedError`` when a service kept failing past its restart limit.
        """
        await self._run(on_started=None)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Runner]:
        """Run in the current event loop for the duration of an ``async with`` block.

        Made for ASGI lifespans (FastAPI, Starlette): entering returns once the runner is
        connected and has checked the schema (waiting up to ``wait_for_db`` for the database),
        and raises what stopped it from starting (a refused password, an unmigrated schema),
        so the app fails to start rather than run without its jobs; leaving stops it
        gracefully, as ``stop()`` does.
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

    def start_in_thread(self) -> threading.Thread:
        """Run in a background thread with its own event loop (for WSGI apps); return it.

        Returns once the runner is connected and has checked the schema; raises what stopped
        it from starting (a refused password, an unmigrated schema) in the calling thread.
        Stop it with ``stop()``, which waits for the thread.
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

    async def run_once(
        self, *, until_empty: bool = False, max_seconds: float | None = None
    ) -> RunSummary:
        """Run the jobs that are due now, write every outcome, and return what happened.

        For serverless platforms and cron-started containers: it leases until nothing is due,
        waits for the handlers, writes their outcomes and returns (nothing is left leased).
        ``until_empty`` also waits for pending jobs that fall due (retries among them) until
        none is left or ``max_seconds`` have passed; past ``max_seconds`` (either way) it stops
        as ``stop()`` does and hands unfinished jobs back. Raises as ``run()`` does.
        """
        self._summary = None
        await self._run(on_started=None, once=(until_empty, max_seconds))
        assert self._summary is not None
        return self._summary

    async def _run(
        self,
        on_started: Callable[[], None] | None,
        once: tuple[bool, float | None] | None = None,
    ) -> None:
        if self._loop is not None:
            raise ConfigurationError("this runner is already running")
        self._loop = asyncio.get_running_loop()
        self._failure = None
        shared = Shared(self.lanes, self.batch_size)
        threads = HandlerThreads(self._loop, sum(lane.limit for lane in self.lanes))
        self._run_state = run = lifecycle.Run(self, shared, threads, self._give_up)
        try:
            await run.open_store()
            try:
                if on_started is not None:
                    on_started()
                if once is None:
                    await run.serve()
                else:
                    await run.once(until_empty=once[0], max_seconds=once[1])
                    self._summary = run.executor.reporter.summary()
            finally:
                await self.store.close()
        finally:
            threads.close()
            self._loop = None
        if self._failure is not None:
            raise self._failure

    def _give_up(self, service: str, error: BaseException | None) -> None:
        failure = RunnerFailedError(
            f"the runner's {service} service kept failing and was given up on; the runner "
            "stopped. Its runner.service_failed log events say why.",
            service=service,
        )
        failure.__cause__ = error
        self._failure = failure
        self.stop()

    # -- stopping ------------------------------------------------------------------------------

    def stop(self, *, now: bool = False) -> None:
        """Ask the runner to stop; safe from any thread and from signal handlers.

        ``now=True`` skips waiting for running handlers: their jobs are handed back at once.
        When the runner runs in its own thread (``start_in_thread``), this also waits for it.
        """
        loop, run = self._loop, self._run_state
        if loop is not None and run is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(run.request_stop, now)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.shutdown_timeout + 15.0)

    # -- probes --------------------------------------------------------------------------------

    async def health(self) -> Health:
        """Whether the runner is alive and ready, as the probes answer.

        Alive: its services run (or are being restarted) and its loop answers; ready: also its
        database answers and the schema is current. Await it from any event loop or thread.
        """
        loop, run = self._loop, self._run_state
        if loop is None or run is None:
            failure = self._failure
            return Health.stopped(str(failure) if failure else "not running")
        if asyncio.get_running_loop() is loop:
            return await run.health()
        return await lifecycle.health_from_afar(loop, run)


def _make_lanes(queues: Sequence[str] | Mapping[str, int] | None, concurrency: int) -> list[Lane]:
    if queues is None:
        return [Lane(None, concurrency)]
    if isinstance(queues, str):
        raise ConfigurationError("queues must be a list of names or a mapping, not a str")
    if isinstance(queues, Mapping):
        lanes = []
        for name, limit in queues.items():
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ConfigurationError(f"queue {name!r} needs a concurrency of at least 1")
            lanes.append(Lane([sanitize_queue(name)], limit))
        if not lanes:
            raise ConfigurationError("queues, when given, must name at least one queue")
        return lanes
    names = sorted({sanitize_queue(q) for q in queues})
    if not names:
        raise ConfigurationError("queues, when given, must name at least one queue")
    return [Lane(names, concurrency)]
