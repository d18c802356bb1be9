"""Publishing events to a webhook, end to end (docs/publishing.md).

Orders and their ``orders.placed`` events are written in one transaction (one transaction is
rolled back: its event never leaves); a runner POSTs the events, signed the Standard Webhooks
way; the receiver checks each signature, then handles each event once, recording its
``webhook-id`` in the same transaction as its effect. Run it with
`python examples/publishing_webhook.py` (OUTBOX_DSN).
"""

import asyncio
import base64
import hashlib
import hmac
import http.server
import json
import os
import threading
import time

import psycopg

import outbox
from outbox import relay

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # shared with the receiver; keep it out of code
TOLERANCE = 300  # seconds: an older (or future) timestamp is refused, so a replay expires


def place_order(conn: psycopg.Connection, email: str, total: int) -> None:
    with conn.transaction():  # the order and its event commit together, or not at all
        row = conn.execute(
            "INSERT INTO orders (email, total) VALUES (%s, %s) RETURNING id", (email, total)
        ).fetchone()
        outbox.enqueue(conn, "orders.placed", {"order_id": row[0], "total": total})


# -- the receiver's side (the partner's service) ------------------------------------------------


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks check: HMAC-SHA256 of ``id.timestamp.body`` with the secret."""
    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > TOLERANCE:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(digest).decode()
    # The header may carry several space-separated signatures (a key rotation): any may match.
    return any(
        hmac.compare_digest(sig.removeprefix("v1,"), expected)
        for sig in headers.get("webhook-signature", "").split()
        if sig.startswith("v1,")
    )


def handle_once(conn: psycopg.Connection, event_id: str, event: dict) -> bool:
    """The effect and the event's id commit together; a repeat is a no-op."""
    with conn.transaction():
        first = conn.execute(
            "INSERT INTO processed_events (id) VALUES (%s) ON CONFLICT DO NOTHING", (event_id,)
        ).rowcount
        if first:
            conn.execute(
                "INSERT INTO invoices (order_id, total) VALUES (%s, %s)",
                (event["order_id"], event["total"]),
            )
    return bool(first)


class Receiver(http.server.BaseHTTPRequestHandler):
    dsn = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if not verify(SECRET, headers, body):
            status = 401  # not from the sender (or cut short): the relay discards the job
        else:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                handle_once(conn, headers["webhook-id"], json.loads(body))
            status = 204  # only after the commit: a 2xx is what makes the job succeed
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


# -- the sender's side --------------------------------------------------------------------------


async def main(dsn: str) -> None:
    Receiver.dsn = dsn
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks/orders"
    mux = outbox.HandlerMux()
    # 2xx succeeds; 408, 429 and 5xx retry (Retry-After honoured); other 4xx discard the job.
    mux.relay("orders.placed", relay.webhook(url, secret=SECRET, timeout=10))
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            outbox.migrate(conn)
            conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, email text, total int)")
            conn.execute("CREATE TABLE processed_events (id text PRIMARY KEY)")  # the receiver's
            conn.execute("CREATE TABLE invoices (order_id int PRIMARY KEY, total int)")
            place_order(conn, "ada@example.com", 30)
            place_order(conn, "grace@example.com", 12)
            try:
                with conn.transaction():
                    place_order(conn, "nobody@example.com", 99)
                    raise RuntimeError("payment declined")  # rolled back: no order, no event
            except RuntimeError:
                pass
        summary = await outbox.Runner(mux, dsn=dsn).run_once(until_empty=True, max_seconds=30)
        assert summary.ok, summary
        with psycopg.connect(dsn, autocommit=True) as conn:
            invoices = conn.execute("SELECT total FROM invoices ORDER BY total").fetchall()
        print("invoiced", [total for (total,) in invoices])
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    asyncio.run(main(os.environ["OUTBOX_DSN"]))
