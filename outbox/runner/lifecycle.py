"""One run of a runner: start-up (waiting for the database), the services, the ordered stop.

``Run`` wires the services to the shared state and the supervisor. Start-up retries the first
connection while the error is one that waiting can fix (the server is down, restarting, or
cut off) for up to ``wait_for_db`` seconds, logging ``runner.waiting_for_database`` each try;
anything else (a refused password, an unknown database, an unmigrated schema) fails at once.

Stopping goes in order: the dispatchers stop leasing; running handlers get up to
``shutdown_timeout`` (none with ``stop(now=True)``); the outcomes held are written (for up to
FLUSH_TIMEOUT seconds: the database may be gone); unfinished jobs are handed back; then the
other services stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import psycopg

from outbox.backoff import Backoff
from outbox.errors import DatabaseUnavailableError, OutboxError
from outbox.runner.completer import Completer
from outbox.runner.dispatcher import Dispatcher
from outbox.runner.events import Reporter
from outbox.runner.executor import Executor
from outbox.runner.health import LOOP_ANSWER_SECONDS, READY_CHECK_SECONDS, Health
from outbox.runner.heartbeat import Heartbeat
from outbox.runner.listener import Listener
from outbox.runner.maintenance import Pruner, Rescuer
from outbox.runner.registrar import Registrar, package_version, this_host
from outbox.runner.scheduler import PeriodicEnqueuer
from outbox.runner.state import Shared
from outbox.runner.supervisor import Service, Supervisor, cancel_and_wait
from outbox.runner.threads import HandlerThreads
from outbox.runner.vacuum import Vacuumer
from outbox.safety import safe_failure_message, safe_label
from outbox.store import RunnerRow, VacuumingStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from outbox.runner.runner import Runner

__all__ = ["FLUSH_TIMEOUT", "STARTUP_BACKOFF", "Run", "health_from_afar", "warn_if_slow_driver"]

FLUSH_TIMEOUT = 5.0
"""How long a stopping runner keeps trying to write the outcomes it holds."""

STARTUP_BACKOFF = Backoff(base=0.25, cap=5.0)
"""Waits between tries to reach the database at start-up."""


class Run:
    """The services of one ``Runner.run()`` and the order they start and stop in."""

    def __init__(
        self,
        runner: Runner,
        shared: Shared,
        threads: HandlerThreads,
        on_give_up: Callable[[str, BaseException | None], None],
    ) -> None:
        self.runner = runner
        self.shared = shared
        self.log = runner.log
        self.supervisor = Supervisor(
            clock=runner.clock, log=runner.log, stopping=shared.stopping, on_give_up=on_give_up
        )
        self.executor = Executor(
            shared,
            mux=runner.mux,
            reporter=Reporter(runner.log, runner.observer),
            backoff=runner.backoff,
            max_payload_bytes=runner.outbox.max_payload_bytes,
            runner_id=runner.runner_id,
            threads=threads,
        )

    async def open_store(self) -> None:
        """Open the store, waiting up to ``wait_for_db`` for a database that may come back."""
        runner, clock = self.runner, self.runner.clock
        deadline = clock.monotonic() + runner.wait_for_db
        tries = 0
        while True:
            try:
                await runner.store.open()
                return
            except DatabaseUnavailableError as exc:
                tries += 1
                left = deadline - clock.monotonic()
                if left <= 0 or self.shared.stopping.is_set():
                    raise DatabaseUnavailableError(
                        f"{exc} (gave up after waiting {runner.wait_for_db:g} s for it: see "
                        "wait_for_db, or outbox run --wait-for-db)"
                    ) from exc
                delay = min(max(STARTUP_BACKOFF.delay(tries), 0.05), left)
                self.log.warning(
                    "runner.waiting_for_database",
                    error=safe_failure_message(exc),
                    attempt=tries,
                    retry_in=round(delay, 2),
                    gives_up_in=round(left, 1),
                )
                await clock.wait(self.shared.stopping, delay)

    def dispatchers(self, *, once: bool = False, until: float | None = None) -> list[Dispatcher]:
        """A dispatcher per lane."""
        runner, shared = self.runner, self.shared
        return [
            Dispatcher(
                shared,
                lane,
                name=f"dispatcher-{i}" if len(shared.lanes) > 1 else "dispatcher",
                store=runner.store,
                start=self.executor.start,
                runner_id=runner.runner_id,
                kinds=runner.mux.kinds(),
                lease_seconds=runner.lease_seconds,
                poll_interval=runner.poll_interval,
                clock=runner.clock,
                log=self.log,
                once=once,
                until=until,
            )
            for i, lane in enumerate(shared.lanes)
        ]

    def services(self) -> list[Service]:
        """Every service of this run, dispatchers first."""
        runner, shared, store, clock, log = (
            self.runner, self.shared, self.runner.store, self.runner.clock, self.log,
        )  # fmt: skip
        services: list[Service] = [*self.dispatchers()]
        services += [
            Completer(shared, store=store, runner_id=runner.runner_id, clock=clock, log=log),
            Heartbeat(
                shared,
                renew=lambda leases, seconds: store.heartbeat(runner.runner_id, leases, seconds),
                lease_seconds=runner.lease_seconds,
                clock=clock,
                log=log,
            ),
            Rescuer(shared, store=store, lease_seconds=runner.lease_seconds, clock=clock, log=log),
            Listener(shared, store=store, clock=clock, log=log),
        ]
        services.append(Registrar(shared, store=store, row=self.runner_row(), clock=clock, log=log))
        if runner.retention is not None:
            services.append(Pruner(store=store, retention=runner.retention, clock=clock, log=log))
        if runner.vacuum and isinstance(store, VacuumingStore):
            services.append(Vacuumer(store, clock=clock, log=log))
        if runner.mux.schedules():
            services.append(
                PeriodicEnqueuer(
                    store=store, schedules=runner.mux.schedules(), clock=clock, log=log
                )
            )
        return services

    def runner_row(self) -> RunnerRow:
        """What this runner says about itself in the runners table."""
        runner, lanes = self.runner, self.shared.lanes
        host, pid = this_host()
        queues = None
        if all(lane.queues is not None for lane in lanes):
            queues = sorted({q for lane in lanes for q in lane.queues or ()})
        return RunnerRow(
            runner.runner_id, host, pid, package_version(), runner.mux.kinds(), queues,
            sum(lane.limit for lane in lanes),
        )  # fmt: skip

    async def serve(self) -> None:
        """Start the services and run until asked to stop; then stop in order."""
        services = self.services()
        warn_if_slow_driver(self.log)
        self.log.info(
            "runner.started",
            kinds=[safe_label(k) for k in self.runner.mux.kinds()],
            lanes=[(lane.queues, lane.limit) for lane in self.shared.lanes],
            services=[s.name for s in services],
            vacuum=any(isinstance(s, Vacuumer) for s in services),
        )
        for service in services:
            self.supervisor.start(service)
        dispatchers = [s.name for s in services if isinstance(s, Dispatcher)]
        try:
            await self.shared.stopping.wait()
        except asyncio.CancelledError:
            self.shared.stop_now = True
            self.shared.stopping.set()
            await self.shutdown(dispatchers)
            raise
        await self.shutdown(dispatchers)

    async def once(self, *, until_empty: bool, max_seconds: float | None) -> None:
        """Run what is due, write every outcome, and stop.

        With ``until_empty``, also what falls due within ``max_seconds``. Past ``max_seconds``
        it stops as ``stop()`` does.
        """
        clock, shared = self.runner.clock, self.shared
        until = None
        if until_empty:
            until = clock.monotonic() + (max_seconds if max_seconds is not None else 3600.0)
        runner, store, log = self.runner, self.runner.store, self.log
        warn_if_slow_driver(log)
        log.info(
            "runner.started",
            mode="until_empty" if until_empty else "once",
            kinds=[safe_label(k) for k in runner.mux.kinds()],
            max_seconds=max_seconds,
        )
        self.supervisor.start(
            Completer(shared, store=store, runner_id=runner.runner_id, clock=clock, log=log)
        )
        self.supervisor.start(
            Heartbeat(
                shared,
                renew=lambda leases, seconds: store.heartbeat(runner.runner_id, leases, seconds),
                lease_seconds=runner.lease_seconds,
                clock=clock,
                log=log,
            )
        )
        tasks = [asyncio.create_task(d.run()) for d in self.dispatchers(once=True, until=until)]
        try:
            done: asyncio.Future[Any] = asyncio.gather(*tasks)
            stopped: asyncio.Future[Any] = asyncio.ensure_future(shared.stopping.wait())
            await asyncio.wait(
                {done, stopped}, timeout=max_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            stopped.cancel()
            if done.done() and not done.cancelled() and done.exception() is not None:
                raise done.exception()  # type: ignore[misc]
        finally:
            shared.stopping.set()
            shared.wake_all()
            await cancel_and_wait(tasks, grace=FLUSH_TIMEOUT)
            await self.shutdown([])

    def request_stop(self, now: bool) -> None:
        """Begin stopping (on the loop's thread)."""
        shared = self.shared
        shared.stop_now = shared.stop_now or now
        shared.stopping.set()
        shared.wake_all()
        if now:
            for held in shared.held.values():
                if held.task is not None and not held.task.done():
                    held.stop_reason = "shutdown"
                    held.task.cancel()

    async def shutdown(self, dispatchers: list[str]) -> None:
        """Stop leasing, let handlers finish, write outcomes, hand the rest back, stop."""
        shared, runner = self.shared, self.runner
        shared.wake_all()
        # A dispatcher ends by itself once stopping is set; one waiting on a lease statement
        # must see it through: cancelled there, the jobs it leased would never start (nor be
        # handed back) until their leases expired. One stuck on a dead database is cut off.
        await self.supervisor.stop(dispatchers, grace=FLUSH_TIMEOUT)
        running = [h.task for h in shared.held.values() if h.task and not h.task.done()]
        if running and not shared.stop_now:
            self.log.info("runner.draining", jobs=len(running), timeout=runner.shutdown_timeout)
            await asyncio.wait(running, timeout=runner.shutdown_timeout)
        for held in shared.held.values():
            if held.task is not None and not held.task.done():
                held.stop_reason = "shutdown"
        stuck = await cancel_and_wait(running)
        if stuck:
            self.log.warning(
                "runner.handlers_ignored_cancellation",
                jobs=len(stuck),
                advice="a handler caught CancelledError and kept running; its job is handed "
                "back anyway. Let CancelledError propagate.",
            )
        await self._flush()
        unfinished = [key for key, held in shared.held.items() if held.stop_reason]
        if unfinished:
            with contextlib.suppress(OutboxError):
                released = await runner.store.release(runner.runner_id, unfinished)
                self.log.info("runner.released", jobs=len(released))
        await self.supervisor.stop()
        with contextlib.suppress(OutboxError):
            await runner.store.remove_runner(runner.runner_id)
        await runner.mux.close_relays(self.log)
        self.log.info("runner.stopped")

    async def _flush(self) -> None:
        """Wait (a few seconds at most: the database may be gone) for outcomes to be written."""
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while time.monotonic() < deadline and any(
            held.stop_reason is None for held in self.shared.held.values()
        ):
            await asyncio.sleep(0.01)

    async def health(self) -> Health:
        """The probes' answer, computed on the runner's loop."""
        services = self.supervisor.services()
        checks = {f"service:{name}": state for name, state in services.items()}
        live = all(state != "failed" for state in services.values())
        if self.supervisor.gave_up:
            live = False
        checks = {k: ("ok" if v == "running" else v) for k, v in checks.items()}
        try:
            await asyncio.wait_for(self.runner.store.check(), READY_CHECK_SECONDS)
            checks["database"] = "ok"
        except asyncio.TimeoutError:
            checks["database"] = f"did not answer within {READY_CHECK_SECONDS:g} s"
        except OutboxError as exc:
            checks["database"] = safe_failure_message(exc)
        ready = live and checks["database"] == "ok" and not self.shared.stopping.is_set()
        if self.shared.stopping.is_set():
            checks["runner"] = "stopping"
        return Health(live=live, ready=ready, checks=checks)


async def health_from_afar(loop: asyncio.AbstractEventLoop, run: Run) -> Health:
    """``Run.health`` asked from another thread or loop: a loop that does not answer is dead."""
    answered = asyncio.get_running_loop().create_future()
    here = asyncio.get_running_loop()

    def answer() -> None:
        if not answered.done():
            answered.set_result(None)

    def pong() -> None:
        with contextlib.suppress(RuntimeError):
            here.call_soon_threadsafe(answer)

    try:
        loop.call_soon_threadsafe(pong)
        await asyncio.wait_for(answered, LOOP_ANSWER_SECONDS)
    except (RuntimeError, asyncio.TimeoutError):
        return Health(
            live=False,
            ready=False,
            checks={"event_loop": f"did not answer within {LOOP_ANSWER_SECONDS:g} s"},
        )
    future: Any = asyncio.run_coroutine_threadsafe(run.health(), loop)
    try:
        result: Health = await asyncio.wait_for(
            asyncio.wrap_future(future), READY_CHECK_SECONDS + 5
        )
    except asyncio.TimeoutError:
        return Health(live=False, ready=False, checks={"event_loop": "the health check hung"})
    return result


def warn_if_slow_driver(log: Any) -> None:
    """Say once, at start, that psycopg runs its pure-Python implementation.

    A runner drains about half as fast on it, and nothing else would tell: psycopg falls back to
    it silently when neither its C extension (``psycopg[binary]``) nor ``psycopg[c]`` is there.
    """
    if psycopg.pq.__impl__ == "python":
        log.warning(
            "runner.slow_driver",
            psycopg_impl="python",
            fix="pip install 'outbox-runner[binary]' (psycopg's C implementation, about 2x the "
            "drain rate)",
        )
