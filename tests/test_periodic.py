"""Periodic jobs: one job per tick across any number of runners, restarts included."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from outbox import ConfigurationError, HandlerMux, Runner
from outbox.periodic import Schedule
from tests.helpers import running


def ticking_mux() -> HandlerMux:
    mux = HandlerMux()
    mux.register("tick", lambda job: None)
    mux.periodic("tick", every=1, payload={"report": "daily"})
    return mux


def make_runner(dsn, ob, mux) -> Runner:
    return Runner(mux, dsn=dsn, outbox=ob, poll_interval=0.1)


def ticks(conn, schema: str) -> list[datetime]:
    rows = conn.execute(
        f"SELECT metadata->'periodic'->>'tick', unique_key, payload FROM \"{schema}\".jobs"
        " WHERE kind = 'tick' ORDER BY 1"
    ).fetchall()
    assert all(key == f"periodic:tick:{tick}" for tick, key, _ in rows)
    assert all(payload == {"report": "daily"} for *_, payload in rows)
    return [datetime.fromisoformat(tick) for tick, _, _ in rows]


def assert_consecutive(found: list[datetime]) -> None:
    assert len(found) == len(set(found)), f"a tick fired twice: {found}"
    gaps = {b - a for a, b in itertools.pairwise(found)}
    assert gaps <= {timedelta(seconds=1)}, f"ticks skipped or doubled: {found}"


async def test_two_runners_with_the_same_schedule_enqueue_one_job_per_tick(dsn, ob, conn):
    first, second = make_runner(dsn, ob, ticking_mux()), make_runner(dsn, ob, ticking_mux())
    async with running(first), running(second):
        await asyncio.sleep(3.5)
    found = ticks(conn, ob.schema)
    assert len(found) >= 3
    assert_consecutive(found)


async def test_a_restarted_runner_neither_repeats_nor_skips_a_tick(dsn, ob, conn):
    for _ in range(2):
        async with running(make_runner(dsn, ob, ticking_mux())):
            await asyncio.sleep(1.6)
    found = ticks(conn, ob.schema)
    assert len(found) >= 3
    assert_consecutive(found)


async def test_after_downtime_the_latest_missed_tick_runs_once(dsn, ob, conn, capsys):
    async with running(make_runner(dsn, ob, ticking_mux())):
        await asyncio.sleep(0.2)
    conn.execute(f'DELETE FROM "{ob.schema}".jobs')
    conn.execute(  # the runners were down for 10 ticks
        f"UPDATE \"{ob.schema}\".periodic SET next_run_at = date_trunc('second', now())"
        " - interval '10 seconds'"
    )
    async with running(make_runner(dsn, ob, ticking_mux())):
        await asyncio.sleep(0.5)
    found = ticks(conn, ob.schema)
    now = datetime.now(timezone.utc)
    assert len(found) in (1, 2)  # the latest missed tick, and maybe the one after it
    assert now - found[0] < timedelta(seconds=2)
    assert "periodic.missed_ticks" in capsys.readouterr().out


async def test_a_changed_schedule_starts_again_from_its_next_tick(dsn, ob, conn):
    async with running(make_runner(dsn, ob, ticking_mux())):
        await asyncio.sleep(0.2)
    mux = HandlerMux()
    mux.register("tick", lambda job: None)
    mux.periodic("tick", cron="0 0 1 1 *")  # once a year
    async with running(make_runner(dsn, ob, mux)):
        await asyncio.sleep(0.3)
    [(spec, next_run_at)] = conn.execute(
        f'SELECT schedule, next_run_at FROM "{ob.schema}".periodic'
    ).fetchall()
    assert spec == "0 0 1 1 * UTC"
    assert (next_run_at.month, next_run_at.day, next_run_at.hour) == (1, 1, 0)


def test_cron_schedules_tick_in_their_time_zone():
    schedule = Schedule.build(
        "report", "report", cron="0 6 * * *", every=None, tz="Europe/Paris", payload=None,
        queue="default", priority=0, max_attempts=3,
    )  # fmt: skip
    after = schedule.next_after(datetime(2026, 7, 1, 12, 0, tzinfo=timezone.utc))
    assert after == datetime(2026, 7, 2, 4, 0, tzinfo=timezone.utc)  # 06:00 CEST


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "cron expression or every"),
        ({"cron": "* * * * *", "every": 5}, "not both"),
        ({"cron": "61 * * * *"}, "invalid cron"),
        ({"cron": "* * * * * *"}, "five fields"),
        ({"every": 0.5}, "from 1 s"),
        ({"every": 60, "tz": "Mars/Olympus"}, "unknown time zone"),
        ({"every": 60, "max_attempts": 0}, "max_attempts"),
    ],
)
def test_bad_schedules_are_refused_with_what_to_fix(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        HandlerMux().periodic("tick", **kwargs)


def test_two_schedules_of_one_kind_need_two_names():
    mux = HandlerMux()
    mux.periodic("tick", every=60)
    with pytest.raises(ConfigurationError, match="pass name="):
        mux.periodic("tick", every=3600)
    mux.periodic("tick", every=3600, name="tick.hourly")
    assert [s.name for s in mux.schedules()] == ["tick", "tick.hourly"]


async def test_in_memory_store_fires_ticks_too():
    from outbox.testing import FakeClock, InMemoryStore

    clock = FakeClock()
    store = InMemoryStore(clock=clock)
    mux = ticking_mux()
    await store.register_periodic(mux.schedules())
    clock.advance(1.05)
    fired, upcoming = await store.fire_periodic(mux.schedules())
    assert len(fired) == 1 and upcoming > fired[0].tick
    assert store.get_job(fired[0].job_id).unique_key == f"periodic:tick:{fired[0].tick.isoformat()}"


async def test_a_daily_schedule_fires_once_a_day_on_an_injected_clock():
    """Three days pass in the test, not on the wall clock."""
    from outbox.testing import FakeClock, InMemoryStore

    clock = FakeClock(datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc))
    store = InMemoryStore(clock=clock)
    ran: list[int] = []
    mux = HandlerMux()
    mux.register("report", lambda job: ran.append(job.id))
    mux.periodic("report", cron="0 6 * * *")  # 06:00 UTC every day
    async with Runner(mux, store=store, clock=clock, poll_interval=0.01).running():
        for _ in range(3 * 24 * 6):  # three days, ten minutes at a time
            clock.advance(600)
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.05)
    keys = sorted(j.unique_key for j in store.jobs() if j.kind == "report")
    assert keys == [f"periodic:report:2026-12-0{d}T06:00:00+00:00" for d in (2, 3, 4)]
    assert len(ran) == 3


def test_sql_check_refuses_a_bad_schedule_name(conn, ob):
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            f'INSERT INTO "{ob.schema}".periodic (name, schedule, next_run_at)'
            " VALUES ('Bad Name', 'x', now())"
        )
