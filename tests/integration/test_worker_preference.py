"""Preference pairs as TRL's DPOTrainer takes them, and the preference scores of base and adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplane.errors import InvalidArgument
from tests.support.adapters import load_model
from trainer_svc.dataset import ChatTurn, PreferenceExample, SourcedExample
from trainer_svc.spec import JobSpec
from trainer_svc.worker.model import load_tokenizer
from trainer_svc.worker.preference import preference_scores, rejected_answers, trl_rows
from trainer_svc.worker.tokenization import tokenize_examples

TEXT = PreferenceExample(prompt="2+2=", chosen="4", rejected="5")
CONVERSATION = PreferenceExample(
    prompt=[ChatTurn(role="system", content="Be brief."), ChatTurn(role="user", content="2+2?")],
    chosen="4",
    rejected="5",
)


def _sourced(*pairs: PreferenceExample) -> list[SourcedExample]:
    return [SourcedExample(line=line, example=pair) for line, pair in enumerate(pairs, start=1)]


def test_in_chat_format_every_pair_is_conversational_with_one_assistant_answer() -> None:
    rows = trl_rows(_sourced(TEXT, CONVERSATION), "chat", field="spec.training_data")
    assert rows[0] == {
        "prompt": [{"role": "user", "content": "2+2="}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    }
    assert rows[1]["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


def test_in_raw_format_text_pairs_stay_text_and_a_mix_with_conversations_is_refused() -> None:
    assert trl_rows(_sourced(TEXT), "raw", field="f") == [{"prompt": "2+2=", "chosen": "4", "rejected": "5"}]
    assert isinstance(trl_rows(_sourced(CONVERSATION), "raw", field="f")[0]["prompt"], list)
    with pytest.raises(InvalidArgument, match="line 2: the prompt is a conversation") as info:
        trl_rows(_sourced(TEXT, CONVERSATION), "raw", field="spec.validation_data")
    assert info.value.field == "spec.validation_data"


def test_preference_scores_compare_the_answers_log_probabilities(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    spec = JobSpec(base_model="tiny", adapter_name="a", training_data={"inline_jsonl": "{}"})
    model = load_model(tiny_model_dir, spec)  # a fresh adapter changes nothing yet: base and adapter agree
    pairs = _sourced(TEXT, PreferenceExample(prompt="2+2=", chosen="5", rejected="4"))
    chosen = tokenize_examples(pairs, tokenizer, prompt_format="chat", max_seq_length=64, field="f")
    rejected = tokenize_examples(rejected_answers(pairs), tokenizer, prompt_format="chat", max_seq_length=64, field="f")
    scores = preference_scores(model, chosen, rejected, batch_size=2)
    # The second pair is the first with its answers swapped: exactly one of the two is preferred, and the
    # margins cancel.
    assert scores["preference_accuracy_base"] == scores["preference_accuracy_adapter"] == 0.5
    assert scores["preference_margin_base"] == pytest.approx(0.0, abs=1e-5)
    assert scores["preference_margin_adapter"] == pytest.approx(scores["preference_margin_base"], abs=1e-5)
