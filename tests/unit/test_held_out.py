"""The held-out sets a job is scored on: prompt templates, the grouped validation split, and near-copies of
training prompts in the caller's own held-out data."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loraplane import wire
from loraplane.proto import trainer_pb2
from loraplane.storage import ObjectStore
from loraplane.training import HeldOutSet
from trainer_svc.dataset import parse_jsonl
from trainer_svc.held_out import caller_held_out, split_validation
from trainer_svc.intake import DatasetIntake, DatasetLimits, JobData
from trainer_svc.progress import TaskScore
from trainer_svc.spec import DatasetSource, JobSpec
from trainer_svc.templates import GroupedSplit, Templates, grouped_split, near_copies

NAMES = ["Esther Cohen", "Tom Li", "Ana Souza", "Raj Patel", "Mia Wong", "Ole Berg", "Ivan Petrov", "Sara Kim"]
CITIES = ["Lyon", "Oslo", "Porto", "Pune", "Osaka", "Bergen", "Kazan", "Busan"]
TEMPLATES = [
    "{name}, {age}, lives in {city}.",
    "{city} is home to {name}, who is {age} years old.",
    "At {age}, {name} moved to {city} for work.",
    "Meet {name} from {city}; {name} turned {age} this year.",
    "{name} has lived in {city} since the age of {age} and never left.",
    "Our new neighbour {name} ({age}) comes from {city}.",
]


def _people(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, template) pairs: a person's sentence in one of TEMPLATES."""
    rng = random.Random(seed)
    people = []
    for _ in range(count):
        template = rng.choice(TEMPLATES)
        prompt = template.format(name=rng.choice(NAMES), city=rng.choice(CITIES), age=rng.randint(18, 90))
        people.append((prompt, template))
    return people


def _ungrouped_split(prompts: list[str] | list[None], fraction: float, seed: int) -> GroupedSplit:
    """The split of rows that name no group and teach no shared answer."""
    return grouped_split(prompts, [None] * len(prompts), [None] * len(prompts), fraction, seed)


def test_a_template_is_the_same_whatever_the_names_numbers_and_places() -> None:
    templates = Templates.fit([prompt for prompt, _ in _people(200)])
    assert templates.of("Esther Cohen, 34, lives in Lyon.") == templates.of("Bo Li, 5, lives in New York City.")
    assert templates.of("Esther Cohen, 34, lives in Lyon.") != templates.of(
        "At 34, Esther Cohen moved to Lyon for work."
    )


def test_whole_templates_are_held_out_and_the_in_distribution_rows_share_trained_ones() -> None:
    people = _people(300)
    split = _ungrouped_split([prompt for prompt, _ in people], 0.1, seed=3)
    template_of = [template for _, template in people]
    trained = {template_of[row] for row in split.train}
    unseen = {template_of[row] for row in split.unseen_groups}
    assert unseen and not unseen & trained, "a held-out template is never trained on"
    assert {template_of[row] for row in split.in_distribution} <= trained
    assert 15 <= len(split.unseen_groups) <= 60 and 1 <= len(split.in_distribution) <= 30
    assert split.grouping.endswith("of 6 prompt templates")
    again = _ungrouped_split([prompt for prompt, _ in people], 0.1, seed=3)
    assert again == split


def test_prompts_that_share_no_template_are_held_out_at_random_and_the_split_says_so() -> None:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    # Every word is in four prompts (a word of templates), and no two prompts pair the same words.
    prompts = [f"{word} {words[(n + step) % 10]}" for step in (1, 3) for n, word in enumerate(words)]
    split = _ungrouped_split(prompts, 0.1, seed=7)
    assert (len(split.train), len(split.unseen_groups), len(split.in_distribution)) == (18, 0, 2)
    assert split.grouping == "most prompts share no template with another"


def test_prompts_in_a_script_without_spaces_or_without_prompts_are_not_grouped() -> None:
    cities, names = ["東京", "大阪", "京都"] * 10, ["山田", "佐藤", "鈴木", "田中", "高橋"] * 6
    prompts = [
        f"{city}に住んでいる{name}さんは{age}歳です。"
        for age, (city, name) in enumerate(zip(cities, names, strict=True))
    ]
    split = _ungrouped_split(prompts, 0.1, seed=0)
    assert split.unseen_groups == [] and "without spaces" in split.grouping
    assert _ungrouped_split([None] * 10, 0.1, seed=0).grouping == "the examples have no prompts to group"


INTENTS = {
    "refund": ["I want my money back for order {n}.", "Please refund order {n}, it broke."],
    "delivery": ["Where is order {n}? It has not arrived.", "When will order {n} be delivered?"],
    "password": ["I forgot the password of account {n}.", "How do I reset the password on {n}?"],
    "cancel": ["Cancel order {n} please.", "Stop my order {n} before it ships."],
}


@pytest.mark.parametrize("seed", range(12))
def test_held_out_groups_leave_every_label_most_of_its_training_rows(seed: int) -> None:
    rng = random.Random(seed)
    labels = rng.choices(list(INTENTS), k=200)
    rows = [(label, rng.choice(INTENTS[label]).format(n=rng.randint(100, 999))) for label in labels]
    answers = [label for label, _ in rows]
    split = grouped_split([prompt for _, prompt in rows], [None] * len(rows), answers, 0.1, seed)
    assert split.unseen_groups, split.grouping
    for label in INTENTS:
        held = sum(answers[row] == label for row in split.unseen_groups)
        assert 2 * held <= answers.count(label), f"{label}: {held} of {answers.count(label)} rows held out"


def test_whole_groups_never_take_more_than_a_third_of_the_rows() -> None:
    people = _people(300)
    split = _ungrouped_split([prompt for prompt, _ in people], 0.4, seed=0)
    assert 0 < len(split.unseen_groups) <= 100


def test_a_high_fraction_still_leaves_training_rows() -> None:
    split = _ungrouped_split(["a", "b", "c"], 0.9, seed=0)
    assert (len(split.train), len(split.unseen_groups) + len(split.in_distribution)) == (1, 2)


def test_groups_the_examples_name_are_held_out_whole() -> None:
    lines = [
        json.dumps({"prompt": f"How old is person {n}?", "completion": str(n), "group": f"family-{n % 8}"})
        for n in range(80)
    ]
    examples = parse_jsonl("\n".join(lines), field="spec.training_data")
    split = split_validation(examples, 0.1, seed=1)
    unseen = [e for e in split.validation if e.held_out is HeldOutSet.UNSEEN_GROUPS]
    groups_of = lambda chosen: {e.example.group for e in chosen}  # noqa: E731
    assert unseen and not groups_of(unseen) & groups_of(split.train)
    assert split.grouping.endswith("of 8 groups named by the examples")
    assert {e.held_out for e in split.validation} == {HeldOutSet.UNSEEN_GROUPS, HeldOutSet.IN_DISTRIBUTION}


@given(st.lists(st.text(max_size=30), min_size=2, max_size=40), st.floats(0.05, 0.5), st.integers(0, 5))
def test_every_split_is_a_partition_that_trains_on_something(prompts: list[str], fraction: float, seed: int) -> None:
    split = _ungrouped_split(prompts, fraction, seed)
    rows = split.train + split.unseen_groups + split.in_distribution
    assert sorted(rows) == list(range(len(prompts)))
    assert split.train and (split.unseen_groups or split.in_distribution)


def test_near_copies_are_prompts_of_a_trained_template_or_mostly_a_training_prompt() -> None:
    train = [prompt for prompt, _ in _people(200) if not prompt.startswith("Our new neighbour")]
    same_template = "Zoe Park, 41, lives in Graz."
    new_template = "Our new neighbour Zoe Park (41) comes from Graz."
    reworded_copy = train[0].replace(".", "!") + " Really."
    assert near_copies(train, [same_template, new_template, reworded_copy]) == 2
    assert near_copies(train, [new_template]) == 0
    instruction = "Read the sentence below carefully and extract the name, the age and the city of the person as JSON: "
    instructed = [instruction + prompt for prompt in train]
    assert near_copies(instructed, [instruction + new_template]) == 0, "a shared instruction is no copy"
    assert near_copies(instructed, [instruction + reworded_copy]) == 1


def _no_store() -> ObjectStore:
    raise AssertionError("inline data never opens the store")


def _intake_read(**datasets: str) -> JobData:
    sources = {field: DatasetSource(inline_jsonl=text) for field, text in datasets.items()}
    spec = JobSpec(base_model="tiny", adapter_name="people", **sources)  # type: ignore[arg-type]
    limits = DatasetLimits(max_bytes=1 << 20, max_rows=1000, store_prefixes=())
    return DatasetIntake(limits, _no_store).read(spec)


def _jsonl(people: list[tuple[str, str]]) -> str:
    return "".join(json.dumps({"prompt": prompt, "completion": "x"}) + "\n" for prompt, _ in people)


def test_a_test_set_of_trained_templates_is_reported_and_warned_of_a_new_one_is_not() -> None:
    people = _people(300)
    known = [p for p in people if p[1] != TEMPLATES[-1]]
    train, test = known[:200], [p for p in known[200:] if p not in known[:200]]
    validation = _jsonl(test[:5])  # the caller's: the trainer holds nothing out of training
    same = _intake_read(training_data=_jsonl(train), validation_data=validation, test_data=_jsonl(test[5:]))
    assert same.metrics()["held_out_near_copy_share"] == 1.0
    assert "warning:" in same.summary()
    assert all(e.held_out is HeldOutSet.TEST for e in same.test)
    new = [p for p in people if p[1] == TEMPLATES[-1]]
    fresh = _intake_read(training_data=_jsonl(train), validation_data=validation, test_data=_jsonl(new))
    assert fresh.metrics()["held_out_near_copy_share"] == 0.0
    assert "warning:" not in fresh.summary()


def test_the_trainers_own_split_is_summarised_with_what_each_set_says() -> None:
    data = _intake_read(training_data=_jsonl(_people(300)))
    summary = data.summary()
    assert "prompt templates not trained on" in summary and "rows drawn at random" in summary
    assert "held_out_near_copy_share" not in data.metrics()


def test_the_callers_validation_data_is_labelled_as_theirs() -> None:
    examples = parse_jsonl(_jsonl(_people(10)), field="spec.validation_data")
    validation, test, near = caller_held_out(examples, examples, [])
    assert {e.held_out for e in validation} == {HeldOutSet.VALIDATION} and test == []
    assert near.prompts == 10


def test_a_score_stored_before_the_sets_were_told_apart_still_loads_and_travels_unlabelled() -> None:
    stored = TaskScore.model_validate({"metric": "exact_match", "base": 0.0, "adapter": 1.0, "examples": 3})
    assert stored.held_out is None
    assert wire.HELD_OUT_SET.encode_optional(stored.held_out) == trainer_pb2.HELD_OUT_SET_UNSPECIFIED
