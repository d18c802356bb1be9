"""The supervisor: a service that ends is logged and restarted; one that keeps failing stops the
runner loudly. Time is a FakeClock: restart backoffs pass when the test advances it."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from structlog.testing import capture_logs

from outbox import DatabaseError, HandlerMux, Job, Runner, RunnerFailedError
from outbox.runner.supervisor import SERVICE_MAX_FAILURES, Supervisor
from outbox.testing import FakeClock, InMemoryStore
from tests.helpers import eventually


class Flaky:
    """A service that fails ``failures`` times with ``error``, then runs until cancelled."""

    def __init__(self, name: str, failures: int, error: Exception) -> None:
        self.name = name
        self.failures = failures
        self.error = error
        self.starts = 0

    async def run(self) -> None:
        self.starts += 1
        if self.starts <= self.failures:
            raise self.error
        await asyncio.Event().wait()


async def advance_until(clock: FakeClock, done, step: float = 1.0, limit: int = 500) -> None:
    """Advance the clock a step at a time (letting the loop run between) until ``done()``."""
    for _ in range(limit):
        if done():
            return
        clock.advance(step)
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met")


def supervisor(clock: FakeClock, stopping: asyncio.Event, gave_up: list) -> Supervisor:
    from outbox.observe import get_logger

    return Supervisor(
        clock=clock,
        log=get_logger(),
        stopping=stopping,
        on_give_up=lambda name, error: gave_up.append((name, error)),
    )


async def test_a_failed_service_is_logged_with_its_reason_and_restarted():
    clock, stopping, gave_up = FakeClock(), asyncio.Event(), []
    service = Flaky("flaky", 2, RuntimeError("boom at postgresql://u:pw@h/db"))
    with capture_logs() as logs:
        sup = supervisor(clock, stopping, gave_up)
        sup.start(service)
        await advance_until(clock, lambda: service.starts == 3)
        await asyncio.sleep(0.01)
        assert sup.services() == {"flaky": "running"}
        await sup.stop()
    failed = [e for e in logs if e["event"] == "runner.service_failed"]
    assert [e["service"] for e in failed] == ["flaky", "flaky"]
    assert failed[0]["error"].startswith("RuntimeError: boom")
    assert "pw@" not in failed[0]["error"]  # safe_failure_message hides credentials
    assert sum(e["event"] == "runner.service_restarted" for e in logs) == 2
    assert gave_up == []


async def test_a_service_failing_past_its_limit_is_given_up_on():
    clock, stopping, gave_up = FakeClock(), asyncio.Event(), []
    service = Flaky("broken", 1000, ValueError("bug"))
    with capture_logs() as logs:
        sup = supervisor(clock, stopping, gave_up)
        sup.start(service)
        await advance_until(clock, lambda: gave_up)
    assert service.starts == SERVICE_MAX_FAILURES + 1
    assert gave_up[0][0] == "broken" and isinstance(gave_up[0][1], ValueError)
    assert sup.services() == {"broken": "failed"}
    assert any(e["event"] == "runner.service_gave_up" for e in logs)


async def test_database_errors_never_count_against_a_service():
    clock, stopping, gave_up = FakeClock(), asyncio.Event(), []
    service = Flaky("patient", 3 * SERVICE_MAX_FAILURES, DatabaseError("the database is away"))
    sup = supervisor(clock, stopping, gave_up)
    sup.start(service)
    await advance_until(clock, lambda: service.starts == 3 * SERVICE_MAX_FAILURES + 1)
    assert gave_up == []
    await sup.stop()


class RescueBug(InMemoryStore):
    """A store whose rescue has a bug: every call raises a non-database error."""

    async def rescue(self, limit, held=()):
        raise KeyError("a bug")


async def test_a_runner_whose_service_keeps_failing_stops_with_runner_failed_error():
    clock = FakeClock()
    store = RescueBug(clock=clock)
    mux = HandlerMux()
    mux.register("x", lambda job: None)
    runner = Runner(mux, store=store, clock=clock, poll_interval=0.01)
    task = asyncio.create_task(runner.run())
    await advance_until(clock, task.done)
    with pytest.raises(RunnerFailedError, match="rescuer") as failure:
        await task
    assert failure.value.service == "rescuer"
    assert isinstance(failure.value.__cause__, KeyError)
    health = await runner.health()
    assert not health.live and "rescuer" in health.checks["runner"]


async def test_health_says_alive_and_ready_while_the_runner_runs():
    clock = FakeClock()
    store = InMemoryStore(clock=clock)
    done: list[int] = []
    mux = HandlerMux()

    @mux.register("x")
    async def x(job: Job) -> None:
        done.append(job.id)

    runner = Runner(mux, store=store, clock=clock, poll_interval=0.01)
    async with runner.running():
        store.enqueue("x")
        await eventually(lambda: done)
        health = await runner.health()
        assert health.live and health.ready, health
        assert health.checks["database"] == "ok"
        assert health.checks["service:dispatcher"] == "ok"
        # From another thread (a WSGI app's), through the runner's loop.
        from_afar = await asyncio.to_thread(asyncio.run, runner.health())
        assert from_afar.live and from_afar.ready
    assert not (await runner.health()).live


async def test_a_runner_logs_through_the_stdlib_logger_it_is_given(caplog):
    import logging

    logger = logging.getLogger("myapp.jobs")
    clock = FakeClock()
    store = InMemoryStore(clock=clock)
    mux = HandlerMux()
    mux.register("x", lambda job: None)
    runner = Runner(mux, store=store, clock=clock, logger=logger, runner_id="r1")
    with caplog.at_level(logging.INFO, logger="myapp.jobs"):
        async with runner.running():
            pass
    started = [r for r in caplog.records if r.getMessage() == "runner.started"]
    assert started and started[0].name == "myapp.jobs"
    assert started[0].runner == "r1" and started[0].kinds == ["x"]
    assert any(r.getMessage() == "runner.stopped" for r in caplog.records)


async def test_a_runner_registers_itself_and_logs_each_unhandled_kind_once():
    clock = FakeClock()
    store = InMemoryStore(clock=clock)
    store.enqueue("emails.sned")  # nobody handles this kind
    mux = HandlerMux()
    mux.register("emails.send", lambda job: None)
    with capture_logs() as logs:
        runner = Runner(mux, store=store, clock=clock, runner_id="r1")
        async with runner.running():
            await eventually(lambda: store.runners())
            [row] = store.runners()
            assert (row.id, row.kinds, row.queues) == ("r1", ["emails.send"], None)
            await eventually(lambda: any(e["event"] == "runner.unhandled_kind" for e in logs))
            for _ in range(15):  # two more minutes, two more looks: no repeats
                clock.advance(10)
                await asyncio.sleep(0.005)
    unhandled = [e for e in logs if e["event"] == "runner.unhandled_kind"]
    assert [(e["kind"], e["jobs"]) for e in unhandled] == [("emails.sned", 1)]
    assert store.runners() == []  # a clean stop removes its row


async def test_a_retry_waits_out_its_backoff_on_the_injected_clock():
    from outbox import Backoff

    clock = FakeClock()
    store = InMemoryStore(clock=clock)
    tries: list[int] = []
    mux = HandlerMux()

    @mux.register("flaky")
    async def flaky(job: Job) -> None:
        tries.append(job.attempts)
        if job.attempts == 1:
            raise RuntimeError("first try fails")

    job_id = store.enqueue("flaky", max_attempts=3)
    runner = Runner(mux, store=store, clock=clock, poll_interval=1, backoff=Backoff(60, 120))
    async with runner.running():
        await eventually(lambda: tries == [1])
        await asyncio.sleep(0.05)
        assert store.get_job(job_id).state == "pending"  # waiting out up to 120 s of backoff
        await advance_until(clock, lambda: store.get_job(job_id).state == "succeeded", step=5)
    assert tries == [1, 2]


class SlowLease(InMemoryStore):
    """A store whose lease takes a while: a stop can arrive while a lease is in flight."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.leasing = asyncio.Event()

    async def lease(self, *args, **kwargs):
        rows = await super().lease(*args, **kwargs)
        if rows:
            self.leasing.set()
            await asyncio.sleep(0.2)  # the statement has committed; its answer is on the way
        return rows


async def test_a_stop_during_a_lease_still_runs_or_hands_back_what_it_leased():
    store = SlowLease()
    done: list[int] = []
    mux = HandlerMux()
    mux.register("x", lambda job: done.append(job.id))
    job_id = store.enqueue("x")
    runner = Runner(mux, store=store, poll_interval=0.01)
    task = asyncio.create_task(runner.run())
    await store.leasing.wait()
    runner.stop()
    await task
    assert store.get_job(job_id).state in ("succeeded", "pending")  # never stuck running
    assert store.get_job(job_id).state == "succeeded" and done == [job_id]


@pytest.mark.parametrize(("impl", "warned"), [("python", True), ("binary", False), ("c", False)])
async def test_a_runner_on_pure_python_psycopg_says_so_once_at_start(monkeypatch, impl, warned):
    monkeypatch.setattr(psycopg.pq, "__impl__", impl)
    mux = HandlerMux()
    mux.register("x", lambda job: None)
    with capture_logs() as logs:
        async with Runner(mux, store=InMemoryStore(), runner_id="r1").running():
            await asyncio.sleep(0)
    slow = [e for e in logs if e["event"] == "runner.slow_driver"]
    assert len(slow) == (1 if warned else 0)
    if warned:
        assert "outbox-runner[binary]" in slow[0]["fix"]
