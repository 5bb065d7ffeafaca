"""The task scorers and the knowledge probe's answer check, on answers written by hand."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from trainer_svc.worker import generation, knowledge_probe
from trainer_svc.worker.knowledge_probe import QUESTIONS, _names_an_answer
from trainer_svc.worker.task_metrics import SCORERS

REFERENCES = ["2024-03-01", "the cat sat on the mat", "blue"]


def test_exact_match_ignores_surrounding_whitespace_only() -> None:
    assert SCORERS["exact_match"]([" 2024-03-01\n", "the cat sat on the mat", "Blue"], REFERENCES) == pytest.approx(
        2 / 3
    )


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
        assert len(prompts) == len(QUESTIONS)
        return adapter if model_.adapter_enabled else base

    monkeypatch.setattr(generation, "greedy_texts", answers)
    monkeypatch.setattr(knowledge_probe, "question_prompt", lambda tokenizer, question, prompt_format: [1, 2])
    result = knowledge_probe.knowledge_probe(model, object(), "chat", batch_size=4)  # type: ignore[arg-type]
    assert result.known == [QUESTIONS[0][0], QUESTIONS[1][0]]
    assert result.lost == [QUESTIONS[1][0]]  # Rome was never known by the base: not a loss
