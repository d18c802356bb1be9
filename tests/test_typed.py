"""Typed payloads: a kind's pydantic model types its handler and guards its enqueue."""

from __future__ import annotations

import subprocess
import sys

import pytest

from outbox import InvalidPayloadError, NewJob, Outbox, Runner
from outbox.testing import InMemoryStore
from tests.helpers import ROOT
from tests.typed.receipts import Receipt, mux


def test_a_typed_handler_passes_mypy_strict_and_a_wrong_use_does_not(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "tests/typed/receipts.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "from outbox import Job\n"
        "from tests.typed.receipts import Receipt\n"
        "async def handler(job: Job[Receipt]) -> int:\n"
        "    return job.payload.emial\n"
    )
    bad = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(wrong)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 1
    assert '"Receipt" has no attribute "emial"' in bad.stdout


def test_enqueue_validates_a_kind_with_a_model_before_writing(ob, conn):
    typed = Outbox(schema=ob.schema, payloads=mux.payload_models())
    good = typed.enqueue(conn, "orders.send_receipt", {"order_id": "7", "email": "A@x.org"})
    assert ob.get_job(conn, good).payload == {"order_id": 7, "email": "A@x.org"}  # coerced
    model = typed.enqueue(conn, "orders.send_receipt", Receipt(order_id=8, email="b@x.org"))
    assert ob.get_job(conn, model).payload["order_id"] == 8
    with pytest.raises(InvalidPayloadError, match=r"does not validate into Receipt.*email"):
        typed.enqueue(conn, "orders.send_receipt", {"order_id": 9})
    with pytest.raises(InvalidPayloadError, match=r"job 1: .*order_id"):
        typed.enqueue_many(
            conn,
            [
                NewJob("orders.send_receipt", {"order_id": 1, "email": "c@x.org"}),
                NewJob("orders.send_receipt", {"order_id": "x", "email": "d@x.org"}),
            ],
        )
    assert ob.count_unfinished(conn, kind="orders.send_receipt") == 2  # nothing more written
    assert typed.enqueue(conn, "untyped.kind", {"anything": 1})  # kinds without a model


async def test_the_handler_gets_the_model_and_a_bad_payload_is_discarded():
    store = InMemoryStore()
    good = store.enqueue("orders.send_receipt", {"order_id": 1, "email": "A@X.ORG"})
    bad = store.enqueue("orders.send_receipt", {"order_id": "not a number"})
    summary = await Runner(mux, store=store).run_once()
    assert (summary.succeeded, summary.discarded) == (1, 1)
    assert store.get_job(good).result == {"sent_to": "a@x.org", "order": "1"}
    discarded = store.get_job(bad)
    assert discarded.state == "discarded"
    assert discarded.last_error.startswith("PermanentError: MalformedPayload")
