"""The HTTP trigger: one bounded round per authenticated POST, through a real server."""

from __future__ import annotations

import sys

import httpx
import pytest

from outbox import NewJob, Runner
from outbox.errors import ConfigurationError
from outbox.testing import InMemoryStore
from outbox.trigger import create_trigger_app
from tests.helpers import free_port, serving, states
from tests.jobs_app import mux

pytestmark = pytest.mark.slow

TOKEN = "t0ken-for-tests-only-0123456789"


def test_a_post_with_the_token_runs_one_round_and_says_what_happened(dsn, ob, conn):
    ob.enqueue_many(conn, [NewJob("maybe_fail", {"fail": i == 0}) for i in range(10)])
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "tests.trigger_app:app", "--port", str(port)]
    env = {"OUTBOX_DSN": dsn, "OUTBOX_SCHEMA": ob.schema, "OUTBOX_TRIGGER_TOKEN": TOKEN}
    with serving(args, port, env) as base:
        assert httpx.post(base).status_code == 401
        wrong = httpx.post(base, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert httpx.get(base, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405
        assert states(dsn, ob.schema) == {"pending": 10}  # refused requests ran nothing

        ran = httpx.post(base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert ran.status_code == 200
        body = ran.json()
        assert (body["ok"], body["succeeded"], body["retried"]) == (False, 9, 1)
        assert states(dsn, ob.schema) == {"succeeded": 9, "pending": 1}


def test_a_short_token_is_refused():
    runner = Runner(mux, store=InMemoryStore())
    with pytest.raises(ConfigurationError, match="at least 16"):
        create_trigger_app(runner, token="short")
