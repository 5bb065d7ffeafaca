"""Redaction of captured text: the default patterns, an operator's own patterns and hook, and their errors."""

from __future__ import annotations

import time

import pytest

from loraplane.errors import InvalidArgument
from loraplane.redaction import Redactor


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("write to jo.smith+x@mail.example.co.uk today", "write to [email] today"),
        ("call +1 415 555 0100", "call [phone]"),
        ("call (415) 555-0100 or 555-123-4567", "call [phone] or [phone]"),
        ("card 4111111111111111, account 123456789", "card [digits], account [digits]"),
        ("key sk-proj-abcdefghijklmnop1234", "key [secret]"),
        ("AKIAIOSFODNN7EXAMPLE and lp_3f9a8b7c6d5e4f3a2b1c", "[secret] and [secret]"),
        ("token a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8 end", "token [secret] end"),
    ],
    ids=["email", "phone-spaces", "phone-dashes", "digit-runs", "api-key", "cloud-and-own-keys", "long-token"],
)
def test_the_default_patterns_replace_what_identifies_or_opens_a_door(text: str, redacted: str) -> None:
    assert Redactor()(text) == redacted


@pytest.mark.parametrize(
    "text",
    [
        "Anna Meyer, 34, lives in Berlin.",
        "born 2024-03-15, on 15/03/2024 at 10:30",
        "order 12345678 of 10 000 units, version 1.2.3",
        "the word internationalisation-and-localisation is long",
    ],
    ids=["person", "dates", "short-numbers", "long-word"],
)
def test_the_text_a_task_is_about_stays(text: str) -> None:
    assert Redactor()(text) == text


def test_an_operators_patterns_and_hook_run_after_the_defaults() -> None:
    redact = Redactor({"order": r"ORD-\d+"}, hook="string:capwords")
    assert redact("order ORD-1234 for bo@example.com") == "Order [order] For [email]"


@pytest.mark.parametrize(
    ("patterns", "hook", "message"),
    [
        ({"bad": "[a-"}, "", "redaction pattern 'bad' is not a regular expression"),
        ({}, "string", "must be written module:function"),
        ({}, "no_such_module_here:f", "cannot be imported"),
        ({}, "string:ascii_letters", "is not a function"),
    ],
    ids=["pattern", "no-function", "no-module", "not-callable"],
)
def test_a_bad_pattern_or_hook_is_refused_saying_what_is_wrong(
    patterns: dict[str, str], hook: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Redactor(patterns, hook)


def test_redaction_takes_time_linear_in_the_text_whatever_it_holds() -> None:
    redact = Redactor()
    for adversarial in ("a-" * 50_000, "a" * 100_000, "1" * 100_000, "a." * 50_000 + "@", "x@" * 50_000):
        started = time.perf_counter()
        redact(adversarial)
        assert time.perf_counter() - started < 1.0, adversarial[:10]


def test_a_long_run_of_letters_alone_is_not_a_secret() -> None:
    word = "internationalisationandlocalisationofsoftware"
    assert Redactor()(f"the {word} team") == f"the {word} team"
