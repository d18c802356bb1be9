"""Backoff: full jitter under an exponential ceiling, never past the cap."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox import Backoff, ConfigurationError, RetryableError
from outbox.errors import InvalidOptionError


@given(
    base=st.floats(0.001, 100),
    extra=st.floats(0, 10_000),
    attempt=st.integers(-5, 10_000),
    seed=st.integers(0, 2**32),
)
def test_delay_is_between_zero_and_the_capped_exponential_ceiling(base, extra, attempt, seed):
    backoff = Backoff(base=base, cap=base + extra)
    delay = backoff.delay(attempt, random.Random(seed))
    assert 0 <= delay <= backoff.ceiling(attempt) <= backoff.cap


def test_ceiling_doubles_per_attempt_until_the_cap():
    backoff = Backoff(base=1, cap=10)
    assert [backoff.ceiling(n) for n in range(1, 6)] == [2, 4, 8, 10, 10]


def test_delays_are_spread_out_not_synchronized():
    backoff = Backoff(base=1, cap=3600)
    rng = random.Random(7)
    delays = {round(backoff.delay(10, rng), 3) for _ in range(100)}
    assert len(delays) > 90


@pytest.mark.parametrize(("base", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_bad_backoff_is_refused(base, cap):
    with pytest.raises(ConfigurationError):
        Backoff(base=base, cap=cap)


def test_retry_after_must_not_be_negative():
    with pytest.raises(InvalidOptionError):
        RetryableError("x", retry_after=-1)
