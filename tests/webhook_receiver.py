"""A webhook receiver as a process of its own, for tests that kill and restart it.

    python -m tests.webhook_receiver PORT LOG SECRET

Verifies each POST's signature with the Standard Webhooks reference library, then appends
``{"id": <webhook-id>, "body": <body>}`` to LOG (one JSON line) and answers 200. The line is
written before the answer: a receiver killed between the two has the event, and the relay,
without its 2xx, sends it again (a duplicate with the same id). A request cut short (its sender
killed mid-body) fails the signature and is refused, as a real receiver must.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading

import standardwebhooks


class _Receiver(http.server.ThreadingHTTPServer):
    request_queue_size = 512  # a runner opens up to its concurrency of connections at once
    daemon_threads = True

    def __init__(self, port: int, log: str, secret: str) -> None:
        self.verifier = standardwebhooks.Webhook(secret)
        self.log = open(log, "a", buffering=1)  # noqa: SIM115 - open for the server's life
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a sender killed mid-request resets its connection: expected here


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Receiver
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            self.server.verifier.verify(body, dict(self.headers.items()))
        except standardwebhooks.WebhookVerificationError:
            self.send_response(401)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        line = json.dumps({"id": self.headers.get("webhook-id"), "body": body.decode()})
        with self.server.lock:
            self.server.log.write(line + "\n")
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    _Receiver(int(sys.argv[1]), sys.argv[2], sys.argv[3]).serve_forever()
