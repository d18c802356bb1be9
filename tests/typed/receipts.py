"""A user's module with a typed handler: `mypy --strict` must accept it (tests/test_typed.py)."""

from __future__ import annotations

from pydantic import BaseModel

from outbox import HandlerMux, Job


class Receipt(BaseModel):
    order_id: int
    email: str


mux = HandlerMux()


@mux.register("orders.send_receipt", payload=Receipt)
async def send_receipt(job: Job[Receipt]) -> dict[str, str]:
    receipt: Receipt = job.payload
    return {"sent_to": receipt.email.lower(), "order": str(receipt.order_id)}
