"""Setting, reading and removing flow limits, and finding the keys that wait."""

from __future__ import annotations

from datetime import timedelta

import pytest

from outbox import InvalidJobError, Limit


def test_a_limit_replaces_the_previous_one_and_can_be_removed(ob, conn):
    ob.set_limit(conn, kind="Emails.Send", max_running=5, rate=50, per=timedelta(seconds=2))
    ob.set_limit(conn, kind="emails.send", max_running=3)
    [limit] = ob.limits(conn)
    assert (limit.scope, limit.name, limit.max_running, limit.rate) == (
        "kind",
        "emails.send",
        3,
        None,
    )
    assert ob.remove_limit(conn, kind="emails.send") is True
    assert ob.remove_limit(conn, kind="emails.send") is False
    assert ob.limits(conn) == []


def test_limits_show_what_they_hold_back(ob, conn):
    ob.set_limit(conn, kind="k", max_running=1, rate=10, per=60)
    for _ in range(3):
        ob.enqueue(conn, "k")
    conn.execute(f"SELECT * FROM \"{ob.schema}\".lease(ARRAY['k'], NULL, 10, 30, 'r')")
    [limit] = ob.limits(conn)
    assert isinstance(limit, Limit)
    assert (limit.running, limit.waiting, limit.tokens) == (1, 2, 9)


def test_a_tenant_limit_for_every_tenant_is_named_star(ob, conn):
    ob.set_limit(conn, tenant="*", max_running=2)
    ob.set_limit(conn, tenant="gold", weight=5)
    assert [(lim.name, lim.max_running, lim.weight) for lim in ob.limits(conn)] == [
        ("*", 2, 1),
        ("gold", None, 5),
    ]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"kind": "k", "tenant": "t", "max_running": 1},
        {"kind": "k"},
        {"kind": "k", "max_running": 0},
        {"kind": "k", "max_running": True},
        {"kind": "k", "rate": 10, "per": 0},
        {"kind": "k", "rate": 10, "per": 86401},
        {"kind": "k", "rate": 10, "per": float("nan")},
        {"kind": "k", "weight": 2},
        {"tenant": "t", "weight": 1001},
        {"tenant": "", "max_running": 1},
        {"kind": "no good", "max_running": 1},
    ],
)
def test_a_bad_limit_is_refused_with_what_to_do(ob, conn, options):
    with pytest.raises(InvalidJobError):  # InvalidOptionError, or InvalidKindError for a kind
        ob.set_limit(conn, **options)
    assert ob.limits(conn) == []


def test_blocked_keys_name_the_head_that_waits_for_its_retry(ob, conn):
    head = ob.enqueue(conn, "k", ordering_key="order-42")
    ob.enqueue(conn, "k", ordering_key="order-42")
    ob.enqueue(conn, "k", ordering_key="order-43")  # alone: nothing waits behind it
    conn.execute(
        f"UPDATE \"{ob.schema}\".jobs SET attempts = 1, last_error = 'E: down',"
        " run_at = now() + interval '1 hour' WHERE id = %s",
        (head,),
    )
    [blocked] = ob.blocked_keys(conn)
    assert (blocked.ordering_key, blocked.head_id, blocked.waiting) == ("order-42", head, 1)
    assert blocked.last_error == "E: down"
    assert ob.cancel(conn, head)  # the way to let the key move on
    assert ob.blocked_keys(conn) == []
