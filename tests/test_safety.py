"""Safety helpers: whatever job data reaches a column, a log line or a metric label is bounded."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from outbox import InvalidKindError, UnknownQueueError
from outbox.safety import (
    FAILURE_MESSAGE_LIMIT,
    LABEL_FALLBACK,
    LABEL_MAX_LENGTH,
    safe_failure_message,
    safe_label,
    sanitize_kind,
    sanitize_queue,
)

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
KIND = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
LABEL = re.compile(r"[a-z0-9_.-]{1,64}")

# Text that leans on the hard parts: controls, line separators, lone surrogates, wide characters.
TRICKY = st.sampled_from(
    ["\x00", "\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\x9f", "\u2028", "\u2029", " ", "\xa0"]
)
SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
WIDE = st.sampled_from(["é", "€", "😀", "𝄞", "漢"])
ANY_TEXT = st.text(st.one_of(st.characters(), TRICKY, SURROGATE, WIDE), max_size=300)
LIMITS = st.integers(0, 5000)


# -- safe_failure_message ------------------------------------------------------------------------


@given(ANY_TEXT, LIMITS)
@example("é" * 10, 5)  # the cut would split a two-byte character
@example("a\ud800b", 100)
@example("  \n  ", 10)
@settings(max_examples=300)
def test_safe_failure_message_is_bounded_valid_one_line_utf8_and_idempotent(text, limit):
    message = safe_failure_message(text, limit=limit)
    encoded = message.encode("utf-8")  # strict: no lone surrogate survives
    assert len(encoded) <= limit
    assert not CONTROL.search(message)
    assert message == message.strip()
    assert safe_failure_message(message, limit=limit) == message


@given(st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Zl", "Zp"]), max_size=200))
def test_safe_failure_message_keeps_clean_short_text(text):
    assert safe_failure_message(text) == text.strip()


@given(ANY_TEXT)
def test_safe_failure_message_default_limit_is_2048_bytes(text):
    long = text + "x" * 5000
    assert len(safe_failure_message(long).encode()) <= FAILURE_MESSAGE_LIMIT == 2048


def test_safe_failure_message_replaces_controls_with_spaces():
    assert safe_failure_message("line 1\nline 2\x1b[31m\u2028end") == "line 1 line 2 [31m end"


def test_safe_failure_message_never_splits_a_character():
    assert safe_failure_message("€€€", limit=8) == "€€"  # 6 bytes: a third € would need 9
    assert safe_failure_message("€€€", limit=2) == ""


def test_safe_failure_message_refuses_a_negative_limit():
    with pytest.raises(ValueError, match="limit"):
        safe_failure_message("x", limit=-1)


class BoomError(Exception):
    pass


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no string for you")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ValueError("bad value"), "ValueError: bad value"),
        (BoomError("it broke\nbadly"), "BoomError: it broke badly"),
        (KeyError("k"), "KeyError: 'k'"),
        (RuntimeError(), "RuntimeError"),
        (UnprintableError("x"), "UnprintableError: <unprintable>"),
    ],
)
def test_safe_failure_message_of_an_exception_is_type_name_and_message(error, expected):
    assert safe_failure_message(error) == expected


def test_safe_failure_message_of_an_unprintable_exception_says_unprintable():
    message = safe_failure_message(UnprintableError())
    assert "<unprintable>" in message
    assert "no string for you" not in message


@given(ANY_TEXT, LIMITS)
def test_safe_failure_message_of_an_exception_is_bounded_and_idempotent(text, limit):
    message = safe_failure_message(BoomError(text), limit=limit)
    assert len(message.encode("utf-8")) <= limit
    assert not CONTROL.search(message)
    assert safe_failure_message(message, limit=limit) == message
    assert message == safe_failure_message(
        f"BoomError: {text}" if text else "BoomError", limit=limit
    )


# -- safe_label ----------------------------------------------------------------------------------


@given(st.one_of(ANY_TEXT, st.integers(), st.floats(), st.none(), st.binary(max_size=50)))
@example("")
@example("___")
@example("A" * 500)
@settings(max_examples=300)
def test_safe_label_is_short_lowercase_safe_never_empty_and_idempotent(value):
    label = safe_label(value)
    assert LABEL.fullmatch(label), label
    assert len(label) <= LABEL_MAX_LENGTH
    assert safe_label(label) == label


@pytest.mark.parametrize(
    ("value", "label"),
    [
        ("Email.Send", "email.send"),
        ("a b\nc", "a_b_c"),
        ("  padded  ", "padded"),
        ("é-x", "-x"),  # "_-x": runs of _ are dropped at the ends
        ("", LABEL_FALLBACK),
        ("!!!", LABEL_FALLBACK),
        (None, LABEL_FALLBACK),
        (42, "42"),
        ("x" * 100, "x" * 64),
    ],
)
def test_safe_label_examples(value, label):
    assert safe_label(value) == label


def test_safe_label_fallback_is_unknown():
    assert LABEL_FALLBACK == "unknown"


# -- sanitize_kind -------------------------------------------------------------------------------

VALID_KIND = st.from_regex(KIND, fullmatch=True)


@given(st.one_of(ANY_TEXT, VALID_KIND, VALID_KIND.map(lambda k: f" {k.upper()}\t")))
@example("Email.Send ")
@example("\u212a")  # KELVIN SIGN lowercases to ASCII "k": still a valid kind after canonicalizing
@example("İ")  # lowercases to "i" + a combining dot: refused
@settings(max_examples=500)
def test_sanitize_kind_accepts_only_canonical_names_and_is_idempotent(text):
    try:
        kind = sanitize_kind(text)
    except InvalidKindError as exc:
        assert isinstance(exc, ValueError)
        assert not KIND.fullmatch(text.strip().lower())
        return
    assert KIND.fullmatch(kind)
    assert kind == text.strip().lower()
    assert sanitize_kind(kind) == kind


@given(VALID_KIND, st.sampled_from(["", " ", "\t", "\n "]), st.sampled_from(["", " ", "\n"]))
def test_sanitize_kind_trims_and_lowercases_valid_kinds(kind, before, after):
    mixed = "".join(ch.upper() if i % 2 else ch for i, ch in enumerate(kind))
    assert sanitize_kind(before + mixed + after) == kind


@pytest.mark.parametrize(
    "kind",
    ["", " ", "a" * 65, "a b", "é", "../x", ".x", "_x", "-x", "a/b", "a\x00", "a:b", "a\nb"],
)
def test_sanitize_kind_refuses_invalid_kinds(kind):
    with pytest.raises(InvalidKindError):
        sanitize_kind(kind)


@pytest.mark.parametrize("kind", [None, 1, 1.5, b"email", ["email"], {"k": 1}, object()])
def test_sanitize_kind_refuses_non_strings(kind):
    with pytest.raises(InvalidKindError, match="must be a str"):
        sanitize_kind(kind)


def test_invalid_kind_error_is_a_value_error():
    assert issubclass(InvalidKindError, ValueError)


def test_sanitize_kind_accepts_64_characters():
    assert sanitize_kind("a" * 64) == "a" * 64


# -- sanitize_queue ------------------------------------------------------------------------------


def test_sanitize_queue_follows_the_kind_rules():
    assert sanitize_queue(" Mail ") == "mail"
    with pytest.raises(UnknownQueueError, match="queue name"):
        sanitize_queue("no good")


def test_sanitize_queue_refuses_an_undeclared_queue():
    declared = frozenset({"a", "b"})
    assert sanitize_queue("A", declared) == "a"
    with pytest.raises(UnknownQueueError, match="declared queues"):
        sanitize_queue("c", declared)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("connect postgresql://app:S3cret@db:5432/x failed", "postgresql://app:***@db:5432/x"),
        ("host=db password=S3cret dbname=x", "password=*** dbname=x"),
        ("https://hook:S3cret@example.com/in", "https://hook:***@example.com/in"),
    ],
)
def test_failure_messages_never_carry_a_password(text, kept):
    message = safe_failure_message(RuntimeError(text))
    assert "S3cret" not in message
    assert kept in message
    assert safe_failure_message(message) == message
