"""The runner's own VACUUM of the jobs table (outbox/runner/vacuum.py): every VACUUM_EVERY seconds
it looks, and vacuums only when autovacuum has fallen far behind; never for a quiet table, never
twice for rows an old snapshot keeps, once said and then left alone by a role that may not.

Autovacuum is off on every table here (per table: the test server may run it), so each vacuum
counted is the runner's or the test's. The vacuumer's looks are driven one by one (``round()``),
or by a FakeClock; with PRUNE_EVERY and VACUUM_EVERY at 0 every round is this runner's and none
is quiet."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
import pytest
from structlog.testing import capture_logs

from outbox import HandlerMux, Job, Runner
from outbox.observe import get_logger
from outbox.runner import maintenance, vacuum
from outbox.runner.maintenance import Pruner
from outbox.runner.vacuum import Vacuumer
from outbox.store import PgStore
from outbox.testing import FakeClock
from tests.helpers import eventually, make_dead_rows, no_autovacuum, running, vacuums

RETENTION = timedelta(days=7)


@pytest.fixture
async def store(dsn: str, schema: str, conn) -> AsyncIterator[PgStore]:
    no_autovacuum(conn, schema)
    s = PgStore(schema=schema, dsn=dsn)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def every_round(monkeypatch) -> None:
    """Every round is this runner's (no other claimed it lately) and none is quiet."""
    monkeypatch.setattr(maintenance, "PRUNE_EVERY", 0.0)
    monkeypatch.setattr(vacuum, "VACUUM_EVERY", 0.0)


def _events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


async def test_a_prune_round_that_leaves_many_dead_rows_vacuums_the_table(
    conn, schema, store, every_round
):
    conn.execute(
        f'INSERT INTO "{schema}".jobs (kind, state, created_at, run_at, finished_at, attempts)'
        " SELECT 'old', 'succeeded', now() - interval '9 days', now() - interval '9 days',"
        " now() - interval '8 days', 1 FROM generate_series(1, 100)"
    )
    make_dead_rows(conn, schema, 30_000)
    before = vacuums(conn, schema)
    with capture_logs() as logs:
        pruner = Pruner(store=store, retention=RETENTION, clock=FakeClock(), log=get_logger())
        await pruner.round()
        await Vacuumer(store, clock=FakeClock(), log=get_logger()).round()
    assert vacuums(conn, schema) == before + 1
    [pruned] = _events(logs, "runner.pruned")
    assert pruned["jobs"] == 100
    [done] = _events(logs, "runner.vacuumed")
    assert done["dead_before"] >= 30_000
    assert done["dead_after"] < done["dead_before"]
    assert done["seconds"] >= 0


async def test_a_table_with_few_dead_rows_is_not_vacuumed(conn, schema, store, every_round):
    make_dead_rows(conn, schema, vacuum.VACUUM_MIN_DEAD // 2)
    before = vacuums(conn, schema)
    with capture_logs() as logs:
        vacuumer = Vacuumer(store, clock=FakeClock(), log=get_logger())
        await vacuumer.round()
    assert vacuums(conn, schema) == before
    assert not _events(logs, "runner.vacuumed")


async def test_a_big_table_whose_dead_rows_are_a_small_share_is_not_vacuumed(
    conn, schema, store, every_round
):
    conn.execute(
        f"INSERT INTO \"{schema}\".jobs (kind) SELECT 'live' FROM generate_series(1, 100000)"
    )
    make_dead_rows(conn, schema, 15_000)  # above VACUUM_MIN_DEAD, under 20 % of 100,000
    before = vacuums(conn, schema)
    vacuumer = Vacuumer(store, clock=FakeClock(), log=get_logger())
    await vacuumer.round()
    assert vacuums(conn, schema) == before
    make_dead_rows(conn, schema, 10_000)  # 25,000 now: a quarter of the live rows
    await vacuumer.round()
    assert vacuums(conn, schema) == before + 1


async def test_a_table_vacuumed_moments_ago_is_not_vacuumed_again(conn, schema, store):
    make_dead_rows(conn, schema, 30_000)
    conn.execute(f'VACUUM "{schema}".jobs')  # autovacuum, or another runner, just did
    make_dead_rows(conn, schema, 30_000)
    before = vacuums(conn, schema)
    vacuumer = Vacuumer(store, clock=FakeClock(), log=get_logger())
    await vacuumer.round()
    assert vacuums(conn, schema) == before


async def test_dead_rows_an_old_snapshot_still_sees_are_vacuumed_for_once(
    dsn, conn, schema, store, every_round
):
    with psycopg.connect(dsn) as reader:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute(f'SELECT count(*) FROM "{schema}".jobs')  # its snapshot holds them
        make_dead_rows(conn, schema, 30_000)
        before = vacuums(conn, schema)
        with capture_logs() as logs:
            vacuumer = Vacuumer(store, clock=FakeClock(), log=get_logger())
            await vacuumer.round()
            await vacuumer.round()
        assert vacuums(conn, schema) == before + 1  # the second would have freed nothing
        [done] = _events(logs, "runner.vacuumed")
        assert done["dead_after"] >= 30_000
        reader.rollback()
    make_dead_rows(conn, schema, vacuum.VACUUM_MIN_DEAD)  # as many dead rows again as it takes
    await vacuumer.round()
    assert vacuums(conn, schema) == before + 2


async def test_vacuum_can_be_turned_off(dsn, ob, conn, every_round):
    no_autovacuum(conn, ob.schema)
    make_dead_rows(conn, ob.schema, 30_000)
    before = vacuums(conn, ob.schema)
    old = _old_job(conn, ob.schema)
    mux = HandlerMux()
    mux.register("x", lambda job: None)
    with capture_logs() as logs:
        async with running(Runner(mux, dsn=dsn, outbox=ob, clock=FakeClock(), vacuum=False)):
            await eventually(lambda: _gone(conn, ob.schema, old))  # its maintenance has run
    [started] = _events(logs, "runner.started")
    assert "vacuumer" not in started["services"] and started["vacuum"] is False
    assert vacuums(conn, ob.schema) == before
    assert not [e for e in logs if e["event"].startswith("runner.vacuum")]


async def test_a_vacuum_cut_off_by_its_timeout_is_warned_once_and_tried_at_the_next_round(
    dsn, conn, schema, every_round, monkeypatch
):
    no_autovacuum(conn, schema)
    make_dead_rows(conn, schema, 30_000)
    before = vacuums(conn, schema)
    # A vacuum that sleeps 40 ms after every 100 units of work: about a second for this table.
    slow = psycopg.conninfo.make_conninfo(
        dsn, options="-c vacuum_cost_delay=40 -c vacuum_cost_limit=100"
    )
    store = PgStore(schema=schema, dsn=slow)
    await store.open()
    try:
        with capture_logs() as logs:
            vacuumer = Vacuumer(store, clock=FakeClock(), log=get_logger())
            monkeypatch.setattr(vacuum, "VACUUM_TIMEOUT", 0.1)
            await vacuumer.round()
            [failed] = _events(logs, "runner.vacuum_failed")
            assert "did not finish within 0.1 s" in failed["error"]
            await vacuumer.round()  # failing again: said at debug level, not warned again
            said = [e["log_level"] for e in _events(logs, "runner.vacuum_failed")]
            assert said == ["warning", "debug"]
            ours = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'outbox' AND state = 'active' AND query LIKE 'VACUUM%%'"
            ).fetchone()
            assert ours == (0,)
            assert vacuums(conn, schema) == before  # cancelled on the server, not left running
            monkeypatch.setattr(vacuum, "VACUUM_TIMEOUT", 60.0)
            await vacuumer.round()  # on the same pool: the cancelled statement left it usable
    finally:
        await store.close()
    assert vacuums(conn, schema) == before + 1
    assert len(_events(logs, "runner.vacuumed")) == 1


def _old_job(conn, schema: str) -> int:
    row = conn.execute(
        f'INSERT INTO "{schema}".jobs (kind, state, created_at, run_at, finished_at, attempts)'
        " VALUES ('old', 'succeeded', now() - interval '9 days', now() - interval '9 days',"
        " now() - interval '8 days', 1) RETURNING id"
    ).fetchone()
    return row[0]


def _gone(conn, schema: str, job_id: int) -> bool:
    return (
        conn.execute(f'SELECT 1 FROM "{schema}".jobs WHERE id = %s', (job_id,)).fetchone() is None
    )


async def test_a_runner_that_may_not_vacuum_says_so_once_and_keeps_running(dsn, ob, conn, role):
    name, as_runner = role()
    ob.grant(conn, runner=name)  # what a runner needs: no ownership, no MAINTAIN
    no_autovacuum(conn, ob.schema)
    make_dead_rows(conn, ob.schema, 30_000)
    before = vacuums(conn, ob.schema)
    old = _old_job(conn, ob.schema)
    job_id = ob.enqueue(conn, "x")
    done: list[int] = []
    mux = HandlerMux()

    @mux.register("x")
    async def x(job: Job) -> None:
        done.append(job.id)

    clock = FakeClock()
    with capture_logs() as logs:
        runner = Runner(mux, dsn=as_runner, outbox=ob, clock=clock, retention=RETENTION)
        async with running(runner):
            await eventually(lambda: _events(logs, "runner.vacuum_skipped"))
            # The pruner and the vacuumer are services of their own: either may go first.
            await eventually(lambda: _gone(conn, ob.schema, old))
            for _ in range(3):  # three more rounds, each this runner's: pruned, not said again
                old = _old_job(conn, ob.schema)
                conn.execute(f'UPDATE "{ob.schema}".lease_state SET pruned_at = NULL')
                clock.advance(maintenance.PRUNE_EVERY)
                await eventually(lambda: _gone(conn, ob.schema, old))  # noqa: B023
                await asyncio.sleep(0.05)
            await eventually(lambda: done == [job_id])
            assert (await runner.health()).live
    [skipped] = _events(logs, "runner.vacuum_skipped")
    assert skipped["log_level"] == "warning"
    assert name in skipped["reason"] and "MAINTAIN" in skipped["fix"]
    assert not _events(logs, "runner.vacuumed") and not _events(logs, "runner.vacuum_failed")
    assert vacuums(conn, ob.schema) == before


async def test_a_runner_role_granted_maintain_vacuums_the_table(ob, conn, role, every_round):
    if conn.info.server_version < 170000:
        pytest.skip("MAINTAIN is a privilege from PostgreSQL 17 on")
    name, as_runner = role()
    ob.grant(conn, runner=name)
    conn.execute(f'GRANT MAINTAIN ON "{ob.schema}".jobs TO "{name}"')
    no_autovacuum(conn, ob.schema)
    make_dead_rows(conn, ob.schema, 30_000)
    before = vacuums(conn, ob.schema)
    store = PgStore(schema=ob.schema, dsn=as_runner)
    await store.open()
    try:
        vacuumer = Vacuumer(store, clock=FakeClock(), log=get_logger())
        await vacuumer.round()
    finally:
        await store.close()
    assert vacuums(conn, ob.schema) == before + 1


async def test_a_vacuumer_that_dies_is_restarted_and_the_runner_keeps_running(dsn, ob, conn):
    class BuggyStats(PgStore):
        looks = 0

        async def table_stats(self):
            self.looks += 1
            if self.looks == 1:
                raise RuntimeError("a bug in the statistics")
            return await super().table_stats()

    clock = FakeClock()
    store = BuggyStats(schema=ob.schema, dsn=dsn)
    mux = HandlerMux()
    mux.register("x", lambda job: None)
    runner = Runner(mux, store=store, outbox=ob, clock=clock)
    with capture_logs() as logs:
        async with running(runner):
            for _ in range(100):  # the supervisor's restart pause is on the runner's clock
                if store.looks >= 2:
                    break
                clock.advance(1.0)
                await asyncio.sleep(0.01)
            assert store.looks >= 2
            assert (await runner.health()).live
    failed = [e for e in logs if e["event"] == "runner.service_failed"]
    assert [e["service"] for e in failed] == ["vacuumer"]
    assert any(e["event"] == "runner.service_restarted" for e in logs)
