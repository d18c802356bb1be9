"""A model-based test: random sequences of enqueue, lease, complete, fail, expire, cancel and
release against the real database, each job's state checked against a simple model."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from outbox import Outbox
from outbox.store import Outcome, PgStore

RUNNERS = ("a", "b")


@dataclass
class Model:
    state: str
    attempts: int
    max_attempts: int
    holder: str | None = None


class JobLifecycle(RuleBasedStateMachine):
    """Drives a PgStore and checks every job against the model after each step."""

    dsn: str = ""
    jobs = Bundle("jobs")

    @initialize()
    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ob = Outbox(schema=f"h_{uuid.uuid4().hex[:12]}")
        self.conn = psycopg.connect(self.dsn, autocommit=True)
        self.ob.migrate(self.conn)
        self.store = PgStore(schema=self.ob.schema, dsn=self.dsn)
        self.loop.run_until_complete(self.store.open())
        self.model: dict[int, Model] = {}

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.loop.run_until_complete(self.store.close())
            self.conn.execute(f'DROP SCHEMA "{self.ob.schema}" CASCADE')
            self.conn.close()
            self.loop.close()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def running(self) -> list[int]:
        return [i for i, m in self.model.items() if m.state == "running"]

    @rule(target=jobs, max_attempts=st.integers(1, 3))
    def enqueue(self, max_attempts: int) -> int:
        job_id = self.ob.enqueue(self.conn, "k", max_attempts=max_attempts)
        self.model[job_id] = Model("pending", 0, max_attempts)
        return job_id

    @rule(runner=st.sampled_from(RUNNERS), limit=st.integers(1, 3))
    def lease(self, runner: str, limit: int) -> None:
        pending = {i for i, m in self.model.items() if m.state == "pending"}
        leased = self.run(self.store.lease(runner, ["k"], None, limit, 60))
        assert {j.id for j in leased} <= pending
        assert len(leased) == min(limit, len(pending))
        for job in leased:
            m = self.model[job.id]
            m.state, m.attempts, m.holder = "running", m.attempts + 1, runner
            assert job.attempts == m.attempts

    @precondition(lambda self: self.running())
    @rule(data=st.data(), wrong_runner=st.booleans())
    def complete(self, data: st.DataObject, wrong_runner: bool) -> None:
        job_id = data.draw(st.sampled_from(self.running()))
        m = self.model[job_id]
        runner = next(r for r in RUNNERS if r != m.holder) if wrong_runner else m.holder
        written = self.run(self.store.record(runner, [Outcome(job_id, m.attempts, "succeeded")]))
        assert written == (set() if wrong_runner else {job_id})
        if not wrong_runner:
            m.state, m.holder = "succeeded", None

    @precondition(lambda self: self.running())
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.running()))
        m = self.model[job_id]
        state = "pending" if m.attempts < m.max_attempts else "failed"
        outcome = Outcome(job_id, m.attempts, state, delay=0, error="E")
        assert self.run(self.store.record(m.holder, [outcome])) == {job_id}
        m.state, m.holder = state, None

    @precondition(lambda self: self.running())
    @rule(data=st.data())
    def expire_and_rescue(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.running()))
        self.conn.execute(
            f"UPDATE \"{self.ob.schema}\".jobs SET leased_until = now() - interval '1 second'"
            " WHERE id = %s",
            (job_id,),
        )
        assert self.run(self.store.rescue(100)) == 1
        m = self.model[job_id]
        m.state = "failed" if m.attempts >= m.max_attempts else "pending"
        m.holder = None

    @precondition(lambda self: self.running())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.running()))
        m = self.model[job_id]
        assert self.run(self.store.release(m.holder, [(job_id, m.attempts)])) == {job_id}
        m.state, m.attempts, m.holder = "pending", m.attempts - 1, None

    @rule(job_id=consumes(jobs))
    def cancel(self, job_id: int) -> None:
        m = self.model[job_id]
        expected = m.state in ("pending", "running")
        assert self.ob.cancel(self.conn, job_id) is expected
        if expected:
            m.state, m.holder = "cancelled", None

    @invariant()
    def database_matches_model(self) -> None:
        if not hasattr(self, "conn"):
            return
        rows = self.conn.execute(
            f'SELECT id, state::text, attempts FROM "{self.ob.schema}".jobs'
        ).fetchall()
        assert {i: (s, a) for i, s, a in rows} == {
            i: (m.state, m.attempts) for i, m in self.model.items()
        }


def test_job_lifecycle_matches_the_model(dsn):
    JobLifecycle.dsn = dsn
    run_state_machine_as_test(
        JobLifecycle,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
