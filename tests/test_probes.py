"""Health probes over real HTTP: /readyz follows the database, /livez the runner's services."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile

import httpx
import psycopg
import pytest

from outbox import HandlerMux, Runner
from outbox.probes import ProbeServer
from outbox.testing import FakeClock, InMemoryStore
from tests.faultproxy import FaultProxy
from tests.helpers import ROOT, free_port, wait_for

pytestmark = pytest.mark.slow


def status(url: str) -> tuple[int, dict]:
    response = httpx.get(url, timeout=15)
    return response.status_code, response.json()


def test_readyz_answers_503_while_the_database_is_away_and_200_after(dsn, schema):
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    port = free_port()
    with (
        FaultProxy(str(info.get("host") or "localhost"), int(info.get("port") or 5432)) as proxy,
        tempfile.TemporaryFile() as log,
    ):
        env = {**os.environ, "OUTBOX_DSN": proxy.dsn(dsn), "OUTBOX_SCHEMA": schema}
        proc = subprocess.Popen(
            [sys.executable, "-m", "outbox.cli", "run", "tests.jobs_app:mux",
             "--health-port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _answers(base), timeout=30)
            code, body = status(f"{base}/readyz")
            assert code == 200 and body["ready"] and body["checks"]["database"] == "ok"

            proxy.cut("reset")
            code, body = status(f"{base}/readyz")
            assert code == 503
            assert body["ready"] is False
            assert "DatabaseUnavailableError" in body["checks"]["database"]
            # Alive all the same: the runner waits the outage out, nobody should restart it.
            code, body = status(f"{base}/livez")
            assert code == 200 and body["live"] is True

            proxy.restore()
            wait_for(lambda: status(f"{base}/readyz")[0] == 200, timeout=15)
            assert status(f"{base}/notthere")[0] == 404
        finally:
            proc.terminate()
            assert proc.wait(30) == 0


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/livez", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class BrokenRescue(InMemoryStore):
    async def rescue(self, limit, held=()):
        raise KeyError("a bug")


async def test_livez_answers_503_once_a_service_died_past_its_restart_limit():
    clock = FakeClock()
    mux = HandlerMux()
    mux.register("x", lambda job: None)
    runner = Runner(mux, store=BrokenRescue(clock=clock), clock=clock, poll_interval=0.01)
    probes = ProbeServer(runner, port=0).start()
    base = f"http://127.0.0.1:{probes.port}"
    try:
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(0.05)
        async with httpx.AsyncClient(timeout=15) as client:
            assert (await client.get(f"{base}/livez")).status_code == 200
            for _ in range(500):
                if task.done():
                    break
                clock.advance(1)
                await asyncio.sleep(0.005)
            response = await client.get(f"{base}/livez")
        assert response.status_code == 503
        assert "rescuer" in response.json()["checks"]["runner"]
        with pytest.raises(Exception, match="rescuer"):
            await task
    finally:
        probes.close()
