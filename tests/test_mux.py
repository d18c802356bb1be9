"""HandlerMux: kinds are sanitized like enqueue's, registered once, listed sorted."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from outbox import ConfigurationError, HandlerMux, HandlerNotFoundError, InvalidKindError, Job


def test_register_returns_the_handler_and_the_decorator_form_works():
    mux = HandlerMux()

    def plain(job: Job) -> None: ...

    assert mux.register("plain", plain) is plain

    @mux.register("decorated", timeout=5)
    async def decorated(job: Job) -> None: ...

    assert mux.route("decorated").handler is decorated
    assert mux.route("decorated").is_async
    assert mux.route("decorated").timeout == 5
    assert not mux.route("plain").is_async


def test_kinds_are_sanitized_like_enqueue_and_listed_sorted():
    mux = HandlerMux()
    mux.register(" Emails.Welcome ", lambda job: None)
    mux.register("billing.charge", lambda job: None)
    assert mux.kinds() == ["billing.charge", "emails.welcome"]
    assert "emails.welcome" in mux and len(mux) == 2


def test_registering_a_kind_twice_is_an_error():
    mux = HandlerMux()
    mux.register("a", lambda job: None)
    with pytest.raises(ConfigurationError, match="already registered"):
        mux.register("A", lambda job: None)


@pytest.mark.parametrize("kind", ["", "a b", "../x", "é", "x" * 65])
def test_an_unsafe_kind_is_refused(kind):
    with pytest.raises(InvalidKindError):
        HandlerMux().register(kind, lambda job: None)


def test_an_unknown_kind_has_no_route():
    with pytest.raises(HandlerNotFoundError, match="nope"):
        HandlerMux().route("nope")


def test_async_callable_objects_are_detected():
    class Handler:
        async def __call__(self, job: Job) -> None: ...

    mux = HandlerMux()
    mux.register("obj", Handler())
    assert mux.route("obj").is_async


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"payload": dict}, "pydantic model"),
    ],
)
def test_bad_route_options_are_refused(options, message):
    with pytest.raises(ConfigurationError, match=message):
        HandlerMux().register("k", lambda job: None, **options)


def test_a_handler_must_be_callable():
    with pytest.raises(ConfigurationError, match="not callable"):
        HandlerMux().register("k", 42)  # type: ignore[call-overload]


def test_a_payload_model_is_kept_on_the_route():
    class Payload(BaseModel):
        n: int

    mux = HandlerMux()
    mux.register("k", lambda job: None, payload=Payload)
    assert mux.route("k").payload_model is Payload
