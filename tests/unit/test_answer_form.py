"""The form training answers share (JSON, labels, a shape, a length range), and which answers keep it."""

from __future__ import annotations

import json
import random

import pytest

from loraplane.answer_form import AnswerForm, derive_form, is_refusal, shape


def test_json_objects_share_their_common_keys() -> None:
    rng = random.Random(0)
    answers = [json.dumps({"name": f"P{n}", "age": rng.randint(18, 90), "city": "Lyon"}) for n in range(50)]
    answers[3] = json.dumps({"name": "Tom", "age": 40, "city": "Oslo", "note": "extra"})
    form = derive_form(answers)
    assert form == AnswerForm(kind="json", json_type="object", json_keys=("age", "city", "name"))
    assert form.holds('```json\n{"name": "Ana", "age": 3, "city": "Pune"}\n```')
    assert form.holds('{"name": "Ana", "age": 3, "city": "Pune"} This JSON holds the person.')
    assert not form.holds('{"name": "Ana"}'), "a key every training answer has is missing"
    assert not form.holds("Ana is 3 and lives in Pune.")
    assert not form.holds('["Ana", 3, "Pune"]')
    assert form.describe() == "JSON object with keys age, city, name"


def test_a_small_closed_set_of_answers_is_labels() -> None:
    rng = random.Random(1)
    answers = [rng.choice(["refund", "delivery", "password", "cancel"]) for _ in range(200)]
    form = derive_form(answers)
    assert form is not None and form.kind == "label"
    assert set(form.labels) == {"refund", "delivery", "password", "cancel"}
    assert form.holds("Refund.") and form.holds(" cancel ")
    assert not form.holds("I think this is about a refund.")
    assert not form.holds("shipping")


def test_dates_share_a_shape() -> None:
    rng = random.Random(2)
    answers = [f"{rng.randint(1900, 1979)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}" for _ in range(100)]
    form = derive_form(answers)
    assert form == AnswerForm(kind="shape", shapes=("9999-99-99",))
    assert form.holds("1985-03-12") and not form.holds("March 12, 1985") and not form.holds("85-3-12")


def test_free_text_keeps_a_length_range() -> None:
    rng = random.Random(3)
    words = ["the", "a", "city", "river", "old", "new", "man", "woman", "went", "saw", "found"]
    answers = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 20))) + "." for _ in range(100)]
    form = derive_form(answers)
    assert form is not None and form.kind == "length"
    low, high = form.words
    assert low <= 5 // 2 and high >= 40
    assert form.holds("a short sentence of some words here.") and not form.holds("word " * 200)


def test_a_mix_takes_the_most_specific_form_most_answers_share() -> None:
    answers = ['{"ok": true}'] * 96 + ["prose answer"] * 4
    form = derive_form(answers)
    assert form is not None and form.kind == "json" and form.json_type == "object"
    assert derive_form(['{"ok": true}'] * 90 + ["prose answer"] * 10).kind != "json"  # type: ignore[union-attr]
    assert derive_form([]) is None and derive_form(["  "]) is None


@pytest.mark.parametrize(
    ("answer", "refused"),
    [
        ("I'm sorry, but I can't help with that.", True),
        ("Sorry, I cannot share that.", True),
        ("I cannot do that.", True),
        ("As an AI, I have no opinions.", True),
        ("Unfortunately, I am unable to answer.", True),
        ('{"name": "Ana"}', False),
        ("I can help: the date is 1985-03-12.", False),
        ("The sorry state of the road.", False),
    ],
)
def test_refusals_are_told_by_their_opening(answer: str, refused: bool) -> None:
    assert is_refusal(answer) is refused


def test_a_shape_keeps_digits_and_punctuation_and_folds_words() -> None:
    assert shape("2024-01-31") == "9999-99-31".replace("31", "99")
    assert shape("Order  A12 shipped") == "a a99 a"
