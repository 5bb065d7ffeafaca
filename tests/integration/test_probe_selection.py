"""The published checkpoint is the best one that loses no fact, and replay rises once facts go: the
knowledge probe's selection score and the replay mix with the real Trainer and the tiny model. The tiny
model knows no facts, so the probe here is a fake of our own interface (KnowledgeProbe) that starts
losing its one fact from the fourth evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM

from loraplane.training import HeldOutSet
from trainer_svc.dataset import PromptCompletion, SourcedExample
from trainer_svc.progress import PhaseEvent
from trainer_svc.spec import DpoParameters, TrainingParameters
from trainer_svc.worker import train as train_module
from trainer_svc.worker.model import load_tokenizer
from trainer_svc.worker.tokenization import tokenize_examples
from trainer_svc.worker.training_run import Examples, ModelToTrain, TrainingRun, TrainingSets

THINGS = ["the sky", "the sea", "a sapphire", "a bluebird", "the ocean", "a blueberry", "denim", "a jay"]


class FakeProbe:
    """Knows one fact on the base model; the adapter loses it from the fourth evaluation on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.evaluations = 0

    def answered_right(self, model: Any, questions: list[str] | None = None) -> list[str]:
        return ["What is the capital of France?"]

    def lost(self, model: Any, known: list[str]) -> list[str]:
        self.evaluations += 1
        return known if self.evaluations >= 4 else []


def _examples(things: list[str], held_out: HeldOutSet | None, tokenizer: Any) -> Examples:
    sourced = [
        SourcedExample(
            line=n, example=PromptCompletion(prompt=f"What colour is {thing}?", completion=" Blue."), held_out=held_out
        )
        for n, thing in enumerate(things, start=1)
    ]
    tokenized = tokenize_examples(sourced, tokenizer, prompt_format="chat", max_seq_length=64, field="f")
    return Examples(sourced, tokenized, [], "f")


def test_the_published_checkpoint_is_the_best_that_loses_no_fact(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_module, "KnowledgeProbe", FakeProbe)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = ModelToTrain(base, LoraConfig(r=8, target_modules="all-linear"), tokenizer)
    data = TrainingSets(
        train=_examples(THINGS[:6], None, tokenizer),
        validation=_examples(THINGS[6:], HeldOutSet.UNSEEN_GROUPS, tokenizer),
        test=Examples([], [], [], "spec.test_data"),
        replayed=_examples(["a cloud", "snow"], None, tokenizer).tokenized,
        prompt_format="chat",
    )
    params = TrainingParameters(max_steps=16, batch_size=3, learning_rate=1e-2, eval_every_steps=2)
    events: list[Any] = []
    trained = train_module.train(model, data, TrainingRun(params, DpoParameters(), tmp_path, None, events.append))

    checkpoints = trained.outcome.checkpoints
    assert [c.facts_lost for c in checkpoints][:5] == [0, 0, 0, 1, 1]
    losses = [c.validation_loss for c in checkpoints]
    assert min(losses[3:]) < min(losses[:3]), "by validation loss alone a later checkpoint would win"
    best_kept = min(checkpoints[:3], key=lambda c: c.validation_loss)
    assert trained.outcome.metrics["best_step"] == best_kept.step
    assert [c.step for c in checkpoints if c.published] == [best_kept.step]

    assert trained.outcome.metrics["replay_rises"] >= 1, "the fourth evaluation lost a fact"
    rises = [e.message for e in events if isinstance(e, PhaseEvent) and "replay examples now get" in e.message]
    assert rises[0].startswith(f"step {checkpoints[3].step}: the adapter answers 1 of its base model's general facts ")
