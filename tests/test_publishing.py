"""The "Publishing events" guide's examples run end to end against the real services: an order
and its event in one transaction (and one rolled back), relayed, consumed once."""

from __future__ import annotations

import base64
import importlib.util
import os
import subprocess
import sys
import time

import pytest
import standardwebhooks

from outbox.relay.webhooks import sign
from tests.helpers import ROOT


@pytest.mark.slow
@pytest.mark.parametrize(
    "example", ["publishing_nats", "publishing_rabbitmq", "publishing_webhook"]
)
def test_a_publishing_example_invoices_each_committed_order_once(example, scratch_dsn):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env["OUTBOX_DSN"] = scratch_dsn
    result = subprocess.run(
        [sys.executable, f"examples/{example}.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "invoiced [12, 30]" in result.stdout  # the rolled-back order (99) never left


def _webhook_example():
    spec = importlib.util.spec_from_file_location(
        "publishing_webhook", ROOT / "examples" / "publishing_webhook.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_guide_verifies_signatures_as_the_reference_library_does():
    example = _webhook_example()
    secret = example.SECRET
    body = b'{"order_id": 1, "total": 30}'
    stamp = int(time.time())
    headers = {"webhook-id": "outbox-1-2", "webhook-timestamp": str(stamp)}
    signed = {**headers, "webhook-signature": sign(secret, "outbox-1-2", stamp, body)}
    standardwebhooks.Webhook(secret).verify(body, signed)  # the reference agrees with the relay
    assert example.verify(secret, signed, body)
    rotated = {**signed, "webhook-signature": "v1,bm90IGl0 " + signed["webhook-signature"]}
    assert example.verify(secret, rotated, body)
    assert not example.verify(secret, signed, body[:-1])  # cut short or altered
    assert not example.verify(secret, {**signed, "webhook-id": "outbox-1-3"}, body)
    old = stamp - example.TOLERANCE - 1
    stale = {**headers, "webhook-timestamp": str(old)}
    stale["webhook-signature"] = sign(secret, "outbox-1-2", old, body)
    assert not example.verify(secret, stale, body)  # a replay past the tolerance
    other = "whsec_" + base64.b64encode(b"another key, 24 bytes!!").decode()
    assert not example.verify(other, signed, body)
