"""Answer matching (loraplane/answers.py): tables of answers written by hand, and properties that
must hold for any JSON value however it is written."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loraplane import answers

PERSON = '{"name": "Esther Cohen", "age": 34, "city": "Lyon"}'


@pytest.mark.parametrize(
    ("answer", "reference", "exact", "normalized"),
    [
        ("Paris", "Paris", True, True),
        ("  Paris\n", "Paris", True, True),
        ("paris", "Paris", False, True),
        ("Paris.", "Paris", False, True),
        ('"Paris"', "Paris", False, True),
        ("«Paris»!", "Paris", False, True),
        ("New   York\tCity", "new york city", False, True),
        ("```\nParis\n```", "Paris", False, True),
        ("3.50", "3.5", False, True),
        ("3", "3.0", False, True),
        ("1e3", "1000", False, True),
        ("-3", "3", False, False),  # the sign is the number's, not punctuation
        (".5", "5", False, False),
        ("0.5", ".5", False, True),
        ("$3.50", "3.5", False, False),
        ("Lyon", "Paris", False, False),
        ("Paris, France", "Paris", False, False),
    ],
)
def test_strict_and_normalised_exact_match(answer: str, reference: str, exact: bool, normalized: bool) -> None:
    assert answers.exact_match(answer, reference) is exact
    assert answers.normalized_match(answer, reference) is normalized


@pytest.mark.parametrize(
    ("answer", "reference", "match"),
    [
        # the case: the base model's correct, pretty-printed answer against a compact reference
        ('{\n  "name": "Esther Cohen",\n  "age": 34,\n  "city": "Lyon"\n}', PERSON, True),
        ('{"city":"Lyon","age":34,"name":"Esther Cohen"}', PERSON, True),  # key order
        (f"```json\n{PERSON}\n```", PERSON, True),
        (f"```\n{PERSON}\n```\n", PERSON, True),
        ('{"name": "Esther Cohen", "age": 34.0, "city": "Lyon"}', PERSON, True),  # numbers by value
        ('{"name": "Esther Cohen", "age": "34", "city": "Lyon"}', PERSON, False),  # a string is not a number
        ('{"name": "esther cohen", "age": 34, "city": "Lyon"}', PERSON, False),  # strings compare exactly
        ('{"name": "E Esther Cohen", "age": 34, "city": "Lyon"}', PERSON, False),
        ('{"name": "Esther Cohen", "age": 34}', PERSON, False),
        ('{"name": "Esther Cohen", "age": 34, "city": "Lyon", "job": null}', PERSON, False),
        ('Here it is: {"name": "Esther Cohen"}', PERSON, False),  # text before the value
        (f"{PERSON}\n\nThis JSON object holds the person's name, age and city.", PERSON, True),
        (f"```json\n{PERSON}\n```\nThe keys are name, age and city.", PERSON, True),
        (f'{PERSON[:-1]}, "job": null}} and more', PERSON, False),
        ('{"name": "Esther Cohen", "age": 34, "city": "Lyon" and more', PERSON, False),  # never closed
        ("34 years", "34", False),  # a bare number followed by text is no JSON answer
        ('"Lyon" is the city', '"Lyon"', False),
        ("[1, 2] are the numbers", "[1, 2]", True),
        ('{"a": [1, {"b": true}]}', '{"a": [1.0, {"b": true}]}', True),
        ('{"a": [{"b": true}, 1]}', '{"a": [1, {"b": true}]}', False),  # arrays keep their order
        ('{"a": 1}', '{"a": true}', False),  # a bool is not a number
        ('{"a": 0.10}', '{"a": 0.1}', True),
        ('{"a": 12345678901234567890.1}', '{"a": 12345678901234567890.2}', False),  # exact, not float
        ("null", "null", True),
        ("NaN", "NaN", False),  # not JSON, though Python's parser takes it
        ("Paris", "Paris", False),  # neither is JSON: no JSON match to claim
    ],
)
def test_json_exact_match_compares_parsed_values(answer: str, reference: str, match: bool) -> None:
    assert answers.json_match(answer, reference) is match


@pytest.mark.parametrize(
    ("answer", "share"),
    [
        (PERSON, 1.0),
        ('{"age": 34, "name": "Esther Cohen", "city": "Lyon"}', 1.0),
        ('{"name": "Lyon", "age": 34, "city": "Esther Cohen"}', 1 / 3),  # the city put in `name`
        ('{"name": "Esther Cohen", "age": 34.0}', 2 / 3),
        ('{"name": "Esther Cohen", "age": 34, "city": "Lyon", "extra": 1}', 1.0),  # fields of the reference
        ('["Esther Cohen", 34, "Lyon"]', 0.0),
        ('{"name": "Esther Cohen", "age": 34', 0.0),  # does not parse: no field right
        ('{"name": "Esther Cohen", "age": 34}\nThe city is Lyon.', 2 / 3),  # what follows the object is not read
        ("Esther Cohen, 34, Lyon", 0.0),
    ],
)
def test_field_accuracy_is_the_share_of_the_references_fields_given_equal(answer: str, share: float) -> None:
    assert answers.field_accuracy(answer, PERSON) == pytest.approx(share)


def test_json_values_from_python_compare_numbers_by_value_and_keep_other_types_apart() -> None:
    assert answers.json_equal({"a": [3, 0.5]}, {"a": [3.0, 0.5]})
    assert not answers.json_equal(1, True) and not answers.json_equal(0, None) and not answers.json_equal(30, "30")


def test_field_accuracy_of_an_empty_reference_object_asks_for_an_empty_answer() -> None:
    assert answers.field_accuracy("{}", "{}") == 1.0
    assert answers.field_accuracy('{"a": 1}', "{}") == 0.0


def test_json_metrics_apply_only_when_every_reference_is_json() -> None:
    json_references = [PERSON, '{"name": "Ada", "age": 36, "city": "London"}']
    assert set(answers.scores(json_references, json_references)) == set(answers.ANSWER_METRICS)
    assert answers.not_applicable("json_exact_match", [*json_references, "Paris"]) == (
        "1 of 3 reference answers are not JSON"
    )
    arrays = ["[1, 2]", "[3]"]
    assert answers.not_applicable("json_exact_match", arrays) is None
    assert answers.not_applicable("field_accuracy", arrays) == "2 of 2 reference answers are not JSON objects"
    dates = ["2024-03-01", "1999-12-31"]
    assert answers.scores(["2024-03-01", "1999-12-30"], dates) == {
        "exact_match": 0.5,
        "normalized_exact_match": 0.5,
    }
    with pytest.raises(ValueError, match="JSON object"):
        answers.field_accuracy("{}", "Paris")


def test_scores_are_means_over_the_answers() -> None:
    references = [PERSON, '{"name": "Ada", "age": 36, "city": "London"}']
    given_answers = [
        '{"city": "Lyon", "age": 34, "name": "Esther Cohen"}',
        '{"name": "Ada", "age": 37, "city": "London"}',
    ]
    assert answers.scores(given_answers, references) == pytest.approx(
        {"exact_match": 0.0, "normalized_exact_match": 0.0, "json_exact_match": 0.5, "field_accuracy": 5 / 6}
    )


# -- properties: any JSON value, however it is written --------------------------------------------

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_JSON = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every object's keys in another order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {key: _shuffled(item, rng) for key, item in items}
    if isinstance(value, list):
        return [_shuffled(item, rng) for item in value]
    return value


@given(value=_JSON, seed=st.integers(0, 2**16), indent=st.sampled_from([None, 0, 2, 4]), fence=st.booleans())
def test_any_writing_of_the_same_json_value_matches(value: Any, seed: int, indent: int | None, fence: bool) -> None:
    reference = json.dumps(value, separators=(",", ":"))
    answer = json.dumps(_shuffled(value, random.Random(seed)), indent=indent, ensure_ascii=indent is None)
    if fence:
        answer = f"```json\n{answer}\n```"
    assert answers.json_match(f"  {answer}\n", reference)
    if isinstance(value, dict):
        assert answers.field_accuracy(answer, reference) == 1.0


@given(value=st.dictionaries(st.text(max_size=8), _JSON, min_size=1, max_size=6), data=st.data())
def test_changing_one_field_costs_exactly_that_field(value: dict[str, Any], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(value)))
    changed = {**value, key: [value[key]]}  # wrapped in an array: never equal to what it was
    reference = json.dumps(value)
    assert not answers.json_match(json.dumps(changed), reference)
    assert answers.field_accuracy(json.dumps(changed), reference) == pytest.approx(1 - 1 / len(value))


@given(number=st.decimals(allow_nan=False, allow_infinity=False, places=4), zeros=st.integers(0, 3))
def test_a_number_written_with_trailing_zeros_is_the_same_number(number: Any, zeros: int) -> None:
    written = f"{number:f}"
    padded = written + ("" if "." in written else ".") + "0" * zeros
    assert answers.normalized_match(padded, written)
    assert answers.json_match(padded, written)


@given(text=st.text())
def test_anything_not_json_scores_no_json_match_and_no_field(text: str) -> None:
    if answers.answer_json(text) is None:
        assert not answers.json_match(text, PERSON)
        assert answers.field_accuracy(text, PERSON) == 0.0
