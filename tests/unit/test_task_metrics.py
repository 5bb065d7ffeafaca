"""The task scorers and the knowledge probe's answer check, on answers written by hand."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from loraplane.training import TASK_METRICS, HeldOutSet
from trainer_svc.worker import generation, knowledge_probe, task_metrics
from trainer_svc.worker.knowledge_probe import QUESTIONS, _names_an_answer
from trainer_svc.worker.task_metrics import SCORERS, metrics_left_out, task_scores
from trainer_svc.worker.tokenization import TokenizedExample

REFERENCES = ["2024-03-01", "the cat sat on the mat", "blue"]


def test_exact_match_ignores_surrounding_whitespace_only() -> None:
    assert SCORERS["exact_match"]([" 2024-03-01\n", "the cat sat on the mat", "Blue"], REFERENCES) == pytest.approx(
        2 / 3
    )


def test_normalised_exact_match_forgives_case_punctuation_and_how_a_number_is_written() -> None:
    answers = ["2024-03-01.", "The cat sat on the  mat", "Blue"]
    assert SCORERS["normalized_exact_match"](answers, REFERENCES) == 1.0
    assert SCORERS["normalized_exact_match"](["3.50"], ["3.5"]) == 1.0


class FakeCharTokenizer:
    """A stand-in for a tokenizer (named as the fake it is): one token per character."""

    @staticmethod
    def encode(text: str) -> list[int]:
        return [ord(char) for char in text]

    @staticmethod
    def decode(ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids)


def _examples(pairs: list[tuple[str, str]]) -> list[TokenizedExample]:
    encode = FakeCharTokenizer.encode
    return [
        TokenizedExample(input_ids=encode(prompt + answer), labels=encode(prompt + answer), prompt_length=len(prompt))
        for prompt, answer in pairs
    ]


def _answering(monkeypatch: pytest.MonkeyPatch, base: list[str], adapter: list[str]) -> list[int]:
    """Generation replaced by fixed answers; the list returned counts the calls."""
    calls: list[int] = []

    def texts(model: object, tokenizer: object, prompts: list[list[int]], **budget: int) -> tuple[list[str], list[str]]:
        calls.append(len(prompts))
        return base, adapter

    monkeypatch.setattr(task_metrics, "base_and_adapter_texts", texts)
    return calls


PEOPLE = [
    ("Ada, 36, lives in London.", '{"name":"Ada","age":36,"city":"London"}'),
    ("Lyon is home to Esther Cohen, 34.", '{"name":"Esther Cohen","age":34,"city":"Lyon"}'),
]


def test_json_answers_are_scored_as_parsed_values_and_by_field(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ['{\n  "name": "Ada",\n  "age": 36,\n  "city": "London"\n}', "I cannot tell."]
    adapter = ['{"name":"Ada","age":36,"city":"London"}', '{"name":"Lyon","age":34,"city":"Esther Cohen"}']
    _answering(monkeypatch, base, adapter)
    examples = _examples(PEOPLE)
    assert metrics_left_out(FakeCharTokenizer(), examples, list(TASK_METRICS)) == {}  # type: ignore[arg-type]
    scores = task_scores(object(), FakeCharTokenizer(), examples, list(TASK_METRICS), HeldOutSet.TEST, batch_size=2)  # type: ignore[arg-type]
    by_metric = {score.metric: (score.base, score.adapter) for score in scores}
    assert list(by_metric) == list(TASK_METRICS)
    assert by_metric["exact_match"] == (0.0, 0.5)  # the base's pretty-printed answer is no string match
    assert by_metric["json_exact_match"] == (0.5, 0.5)  # but it is the right value
    assert by_metric["field_accuracy"] == pytest.approx((0.5, 0.5 + 0.5 / 3))


def test_json_metrics_on_answers_that_are_not_json_are_left_out_with_why(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _answering(monkeypatch, ["blue", "red"], ["Blue", "red"])
    examples = _examples([("Sky?", "blue"), ("Sea?", '{"colour":"blue"}')])
    tokenizer = FakeCharTokenizer()
    assert metrics_left_out(tokenizer, examples, list(TASK_METRICS)) == {  # type: ignore[arg-type]
        "json_exact_match": "1 of 2 reference answers are not JSON",
        "field_accuracy": "1 of 2 reference answers are not JSON objects",
    }
    scores = task_scores(object(), tokenizer, examples, list(TASK_METRICS), HeldOutSet.TEST, batch_size=2)  # type: ignore[arg-type]
    assert [score.metric for score in scores] == ["exact_match", "normalized_exact_match", "rouge_l", "bleu", "chrf"]
    assert calls == [2]
    only_json = task_scores(object(), tokenizer, examples, ["json_exact_match"], HeldOutSet.TEST, batch_size=2)  # type: ignore[arg-type]
    assert only_json == [] and calls == [2]  # nothing that applies: no generation either


@pytest.mark.parametrize("metric", ["rouge_l", "bleu", "chrf"])
def test_similarity_metrics_rank_a_close_answer_above_a_wrong_one(metric: str) -> None:
    score = SCORERS[metric]  # type: ignore[index]
    assert score(REFERENCES, REFERENCES) == pytest.approx(1.0)
    close = score(["2024-03-01", "the cat sat on a mat", "blue"], REFERENCES)
    wrong = score(["no idea", "dogs bark loudly", "red"], REFERENCES)
    assert 0.0 <= wrong < close < 1.0


@pytest.mark.parametrize(
    ("answer", "accepted", "right"),
    [
        ("The capital of France is Paris.", ("paris",), True),
        ("Parisian cafés are famous.", ("paris",), False),
        ("Water freezes at 0°C.", ("zero", "0"), True),
        ("Water boils at 100 degrees.", ("zero", "0"), False),
        ("CO2, carbon dioxide.", ("carbon dioxide", "co2"), True),
        ("A spider has 8 legs.", ("eight", "8"), True),
    ],
)
def test_an_answer_counts_when_it_names_an_accepted_answer_as_a_word(
    answer: str, accepted: tuple[str, ...], right: bool
) -> None:
    assert _names_an_answer(answer, accepted) is right


def test_every_probe_question_has_lower_case_answers() -> None:
    assert all(answers and all(a == a.lower() for a in answers) for _, answers in QUESTIONS)


class FakeAdapterModel:
    """A stand-in for a peft model (named as the fake it is): answers come from `answers`, and
    `disable_adapter` switches to the base model's, as peft's does."""

    def __init__(self) -> None:
        self.adapter_enabled = True

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        self.adapter_enabled = False
        try:
            yield
        finally:
            self.adapter_enabled = True


def test_a_fact_the_base_knew_and_the_adapter_does_not_is_counted_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    model = FakeAdapterModel()
    base = ["Paris.", "Tokyo is the capital.", "I do not know."] + ["no"] * (len(QUESTIONS) - 3)
    adapter = ["It is Paris.", "Kyoto.", "Rome!"] + ["no"] * (len(QUESTIONS) - 3)

    def answers(model_: FakeAdapterModel, tokenizer: object, prompts: list[list[int]], **budget: int) -> list[str]:
        if model_.adapter_enabled:  # asked only what the base knew
            assert prompts == [[0], [1]]
            return adapter[:2]
        assert len(prompts) == len(QUESTIONS)
        return base

    monkeypatch.setattr(generation, "greedy_texts", answers)
    numbered = {question: [n] for n, (question, _) in enumerate(QUESTIONS)}
    monkeypatch.setattr(
        knowledge_probe, "question_prompt", lambda tokenizer, question, prompt_format: numbered[question]
    )
    result = knowledge_probe.knowledge_probe(model, object(), "chat", batch_size=4)  # type: ignore[arg-type]
    assert result.known == [QUESTIONS[0][0], QUESTIONS[1][0]]
    assert result.lost == [QUESTIONS[1][0]]  # Rome was never known by the base: not a loss
