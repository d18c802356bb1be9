"""The fault-injection proxy itself, against the real test database."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.faultproxy import FaultProxy

DSN = os.environ.get("OUTBOX_TEST_DSN") or "postgresql://postgres@127.0.0.1:5432/test"

pytestmark = pytest.mark.timeout(30)


def wait_until(check, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    info = conninfo_to_dict(DSN)
    with FaultProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)) as p:
        yield p


def test_query_through_the_proxy(proxy: FaultProxy) -> None:
    assert proxy.connections == 0
    with psycopg.connect(proxy.dsn(DSN)) as conn:
        assert conn.info.port == proxy.port
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert proxy.connections == 1
        # Far more than the socket buffers hold: the proxy must pass it on in pieces.
        big = conn.execute("SELECT repeat('x', 20000000)").fetchone()
        assert big is not None and len(big[0]) == 20_000_000
        conn.execute("CREATE TEMP TABLE t (v text)")
        with conn.cursor().copy("COPY t FROM STDIN") as copy:
            for _ in range(200):
                copy.write_row(["y" * 100_000])
        row = conn.execute("SELECT count(*), sum(length(v)) FROM t").fetchone()
        assert row == (200, 20_000_000)
    wait_until(lambda: proxy.connections == 0)


def test_reset_drops_connections_and_refuses_new_ones(proxy: FaultProxy) -> None:
    port = proxy.port
    with psycopg.connect(proxy.dsn(DSN), autocommit=True) as conn:
        conn.execute("SELECT 1")
        proxy.cut("reset")
        assert proxy.connections == 0
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert time.monotonic() - started < 1
        assert conn.closed

    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(proxy.dsn(DSN), connect_timeout=2).close()
    assert not isinstance(refused.value, psycopg.errors.ConnectionTimeout)
    assert time.monotonic() - started < 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

    proxy.restore()
    assert proxy.port == port
    with psycopg.connect(proxy.dsn(DSN)) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_blackhole_makes_new_connections_time_out(proxy: FaultProxy) -> None:
    proxy.cut("blackhole")
    started = time.monotonic()
    with pytest.raises(psycopg.errors.ConnectionTimeout):
        psycopg.connect(proxy.dsn(DSN), connect_timeout=1).close()
    assert 0.9 < time.monotonic() - started < 5  # psycopg waits at least 2 s

    proxy.restore()
    with psycopg.connect(proxy.dsn(DSN), connect_timeout=1) as conn:
        assert conn.execute("SELECT 3").fetchone() == (3,)
    wait_until(lambda: proxy.connections == 0)


def test_blackhole_stalls_open_connections_until_restore_drops_them(proxy: FaultProxy) -> None:
    with (
        psycopg.connect(proxy.dsn(DSN), autocommit=True) as conn,
        ThreadPoolExecutor(1) as pool,
    ):
        conn.execute("SELECT 1")
        proxy.cut("blackhole")
        query = pool.submit(conn.execute, "SELECT 1")
        time.sleep(0.5)
        assert not query.done()
        assert proxy.connections == 1

        proxy.restore()
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            query.result(timeout=5)
        assert time.monotonic() - started < 1
        assert proxy.connections == 0

    with psycopg.connect(proxy.dsn(DSN)) as conn:
        assert conn.execute("SELECT 4").fetchone() == (4,)


async def test_async_clients_see_the_cut(proxy: FaultProxy) -> None:
    async with await psycopg.AsyncConnection.connect(proxy.dsn(DSN), autocommit=True) as conn:
        await conn.execute("SELECT 1")
        proxy.cut("reset")
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")
    proxy.restore()
    async with await psycopg.AsyncConnection.connect(proxy.dsn(DSN)) as conn:
        cur = await conn.execute("SELECT 5")
        assert await cur.fetchone() == (5,)


def test_close_stops_everything() -> None:
    before = threading.active_count()
    proxy = FaultProxy("127.0.0.1", int(conninfo_to_dict(DSN).get("port") or 5432))
    conn = psycopg.connect(proxy.dsn(DSN), autocommit=True)
    try:
        proxy.close()
        proxy.close()  # idempotent
        assert threading.active_count() == before
        assert proxy.connections == 0
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        with pytest.raises(RuntimeError):
            proxy.cut()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
    finally:
        conn.close()


def test_dsn_rewrites_host_and_port(proxy: FaultProxy) -> None:
    info = conninfo_to_dict(proxy.dsn("host=db.example hostaddr=10.0.0.1 port=6432 dbname=x"))
    assert info == {
        "host": "127.0.0.1",
        "hostaddr": "127.0.0.1",
        "port": str(proxy.port),
        "dbname": "x",
    }
