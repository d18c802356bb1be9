"""Pruning walks the primary key from the oldest job and stops at the first window of jobs too
young to be old enough: a table of recent history costs it one window, not a scan. Of all the
runners on a schema, one prunes a round."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from structlog import get_logger
from structlog.testing import capture_logs

from outbox import store as store_module
from outbox.errors import DatabaseUnavailableError
from outbox.runner import maintenance
from outbox.runner.maintenance import Pruner
from outbox.runner.vacuum import VACUUM_EVERY
from outbox.store import PgStore
from outbox.testing import FakeClock, InMemoryStore
from tests.helpers import eventually


@pytest.fixture
async def store(dsn: str, schema: str) -> AsyncIterator[PgStore]:
    s = PgStore(schema=schema, dsn=dsn)
    await s.open()
    yield s
    await s.close()


def _jobs(conn, schema: str, n: int, state: str, created: str, finished: str | None) -> None:
    conn.execute(
        f'INSERT INTO "{schema}".jobs (kind, state, created_at, run_at, finished_at, attempts)'
        f" SELECT 'k', %s, now() - {created}, now() - {created}, {finished or 'NULL'}, 1"
        " FROM generate_series(1, %s)",
        (state, n),
    )


def _left(conn, schema: str) -> dict[str, int]:
    return dict(
        conn.execute(f'SELECT state::text, count(*) FROM "{schema}".jobs GROUP BY 1').fetchall()
    )


async def test_prune_deletes_old_finished_jobs_and_keeps_the_rest(conn, schema, store):
    _jobs(conn, schema, 2500, "succeeded", "interval '9 days'", "now() - interval '8 days'")
    _jobs(conn, schema, 10, "failed", "interval '9 days'", "now() - interval '8 days'")
    _jobs(conn, schema, 5, "pending", "interval '9 days'", None)  # old, never run: kept
    _jobs(conn, schema, 2500, "succeeded", "interval '1 hour'", "now()")

    assert await store.prune(7 * 86400) == 2510
    assert _left(conn, schema) == {"pending": 5, "succeeded": 2500}


async def test_prune_reads_one_window_when_nothing_is_old_enough(conn, schema, store, monkeypatch):
    windows = []
    real = store_module.prune_batch_plan

    def counted(*args, **kwargs):
        windows.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module, "prune_batch_plan", counted)
    _jobs(conn, schema, 20_000, "succeeded", "interval '1 hour'", "now()")

    assert await store.prune(7 * 86400) == 0
    assert len(windows) == 1  # of PRUNE_BATCH ids, not 20


async def test_one_runner_prunes_a_round(conn, schema, dsn, store):
    other = PgStore(schema=schema, dsn=dsn)
    await other.open()
    try:
        _jobs(conn, schema, 3, "succeeded", "interval '9 days'", "now() - interval '8 days'")
        assert await store.prune(86400, once_per=60) == 3
        _jobs(conn, schema, 2, "succeeded", "interval '9 days'", "now() - interval '8 days'")
        assert await other.prune(86400, once_per=60) is None  # the round is taken
        conn.execute(f"UPDATE \"{schema}\".lease_state SET pruned_at = now() - interval '61 s'")
        assert await other.prune(86400, once_per=60) == 2  # the next round
    finally:
        await other.close()


async def test_a_pruner_facing_a_dead_database_warns_once_a_round():
    class AwayStore(InMemoryStore):
        tries = 0

        async def prune(self, older_than: float, *, once_per: float | None = None) -> int | None:
            self.tries += 1
            raise DatabaseUnavailableError("cannot reach the database")

    clock = FakeClock()
    store = AwayStore()
    pruner = Pruner(store=store, retention=timedelta(days=1), clock=clock, log=get_logger())
    with capture_logs() as logs:
        task = asyncio.create_task(pruner.run())
        await eventually(lambda: store.tries == 1 and clock.sleepers == 1)
        for _ in range(5):  # the vacuumer's looks come and go: the pruner keeps its minute
            clock.advance(VACUUM_EVERY)
            await asyncio.sleep(0)
        assert store.tries == 1
        clock.advance(maintenance.PRUNE_EVERY)
        await eventually(lambda: store.tries == 2)
        task.cancel()
    assert store.tries == 2
    assert [e["event"] for e in logs] == ["runner.prune_failed"] * 2
