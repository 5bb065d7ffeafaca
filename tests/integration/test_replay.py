"""Replay examples: the base model's own greedy answers to general questions, learnt answer-only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraplane.models import end_token_ids
from trainer_svc.worker.generation import greedy_answers
from trainer_svc.worker.knowledge_probe import QUESTIONS, question_prompt
from trainer_svc.worker.replay import REPLAY_QUESTIONS, replay_count, replay_examples
from trainer_svc.worker.tokenization import IGNORE_INDEX

COUNT = 16


def test_replay_is_a_share_of_the_training_set_up_to_one_per_question() -> None:
    assert replay_count(360, 0.1) == 36
    assert replay_count(10_000, 0.1) == len(REPLAY_QUESTIONS)
    assert replay_count(360, 0.0) == 0
    assert replay_count(4, 0.1) == 0


def test_no_replay_question_is_a_probe_question() -> None:
    """The knowledge probe would otherwise measure what replay trained."""
    assert not {question for question, _ in QUESTIONS} & set(REPLAY_QUESTIONS)


@pytest.mark.parametrize("prompt_format", ["chat", "raw"])
def test_replay_examples_are_the_base_models_finished_answers(tiny_model_dir: Path, prompt_format: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    examples = replay_examples(base, tokenizer, prompt_format, COUNT, max_seq_length=512, batch_size=COUNT)  # type: ignore[arg-type]
    assert examples, "the tiny model finishes some of its answers"
    prompts = {tuple(question_prompt(tokenizer, q, prompt_format)): q for q in REPLAY_QUESTIONS[:COUNT]}  # type: ignore[arg-type]
    answers = greedy_answers(base, tokenizer, [list(p) for p in prompts], 96)
    expected = {prompt: answer for prompt, (answer, _) in zip(prompts, answers, strict=True)}
    ends = set(end_token_ids(base, tokenizer))
    for example in examples:
        prompt, answer = example.input_ids[: example.prompt_length], example.input_ids[example.prompt_length :]
        assert tuple(prompt) in prompts, "each prompt is a replay question put the job's way"
        assert answer == expected[tuple(prompt)], "the base model's own greedy answer"
        assert answer[-1] in ends, "only answers that ended"
        assert example.labels == [IGNORE_INDEX] * len(prompt) + answer, "the answer alone is learnt"
    assert len(examples) < COUNT, "answers still going at the token limit are left out"
    short = replay_examples(base, tokenizer, prompt_format, COUNT, max_seq_length=40, batch_size=COUNT)  # type: ignore[arg-type]
    assert all(len(example.input_ids) <= 40 for example in short) and len(short) < len(examples)
