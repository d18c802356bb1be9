"""Every store follows the same rules: PgStore and InMemoryStore run outbox.testing's contract."""

from __future__ import annotations

import contextlib
import uuid
from datetime import timedelta

import psycopg
import pytest

from outbox import Job, Outbox
from outbox.store import PgStore
from outbox.testing import FakeClock, InMemoryStore, StoreContract


class TestInMemoryStore(StoreContract):
    @contextlib.asynccontextmanager
    async def open_store(self):
        self.clock = FakeClock()
        store = InMemoryStore(clock=self.clock)
        await store.open()
        yield store
        await store.close()

    async def advance(self, store, seconds) -> None:
        self.clock.advance(seconds)

    async def add(self, store, kind, **options) -> int:
        return store.enqueue(kind, **options)

    async def set_limit(self, store, **limit) -> None:
        store.set_limit(**limit)

    async def get(self, store, job_id) -> Job | None:
        return store.get_job(job_id)


class TestPgStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, dsn):
        self.dsn = dsn

    @contextlib.asynccontextmanager
    async def open_store(self):
        ob = Outbox(schema=f"c_{uuid.uuid4().hex[:12]}")
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await ob.migrate(conn)
            store = PgStore(schema=ob.schema, dsn=self.dsn)
            await store.open()
            try:
                yield store
            finally:
                await store.close()
                await conn.execute(f'DROP SCHEMA "{ob.schema}" CASCADE')

    async def add(self, store, kind, **options) -> int:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            return await Outbox(schema=store.schema).enqueue(conn, kind, **options)

    async def advance(self, store, seconds) -> None:
        # The database's clock cannot be moved: move every timestamp back instead, which is
        # the same to every statement that compares them with now().
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute(
                f'UPDATE "{store.schema}".jobs SET run_at = run_at - %(s)s,'
                " created_at = created_at - %(s)s, leased_until = leased_until - %(s)s,"
                " finished_at = finished_at - %(s)s",
                {"s": timedelta(seconds=seconds)},
            )
            await conn.execute(
                f'UPDATE "{store.schema}".runners SET last_seen = last_seen - %(s)s,'
                " started_at = started_at - %(s)s",
                {"s": timedelta(seconds=seconds)},
            )
            await conn.execute(
                f'UPDATE "{store.schema}".buckets SET refilled_at = refilled_at - %(s)s',
                {"s": timedelta(seconds=seconds)},
            )

    async def set_limit(self, store, **limit) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await Outbox(schema=store.schema).set_limit(conn, **limit)

    async def get(self, store, job_id) -> Job | None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            return await Outbox(schema=store.schema).get_job(conn, job_id)
