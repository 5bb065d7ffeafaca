"""After training: validation loss and perplexity, the forgetting probe, and the drift reference profile."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from loraplane.answer_form import AnswerForm
from loraplane.drift import Profile
from trainer_svc.worker.probe_text import GENERAL_TEXT
from trainer_svc.worker.reference import reference_profile
from trainer_svc.worker.scoring import token_logprobs
from trainer_svc.worker.tokenization import IGNORE_INDEX, TokenizedExample


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    profile: Profile


def answer_logprobs(model: PeftModel, examples: list[TokenizedExample], *, batch_size: int) -> list[np.ndarray]:
    """For each example, the log-probabilities of its trained tokens (labels not masked: its answer) given
    the tokens before them."""
    scores = token_logprobs(model, [example.input_ids for example in examples], batch_size=batch_size)
    return [s[np.asarray(e.labels[1:]) != IGNORE_INDEX] for e, s in zip(examples, scores, strict=True)]


def token_statistics(train_set: list[TokenizedExample]) -> dict[str, float]:
    """Tokens of the training examples: in all, and per example at the median, 90th percentile and most."""
    lengths = np.array([len(example.input_ids) for example in train_set])
    return {
        "train_tokens": float(lengths.sum()),
        "example_tokens_p50": float(np.percentile(lengths, 50)),
        "example_tokens_p90": float(np.percentile(lengths, 90)),
        "example_tokens_max": float(lengths.max()),
    }


def _probe_loss(model: PeftModel, sequences: list[list[int]], batch_size: int) -> float:
    return -float(np.concatenate(token_logprobs(model, sequences, batch_size=batch_size)).mean())


def evaluate(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    seen: list[TokenizedExample],
    validation_set: list[TokenizedExample],
    reference_set: list[TokenizedExample],
    form: AnswerForm | None,
    *,
    batch_size: int,
    generation_batch_size: int,
) -> Evaluation:
    """Metrics of the trained adapter (validation loss on `validation_set`) and the drift profile: the prompts
    of every example the job `seen` (training and validation), and the held-out data `reference_set` (the
    examples seen, without one) answered, judged by the training answers' `form`; sequences are scored
    `batch_size` at a time and answered `generation_batch_size` at a time."""
    metrics: dict[str, float] = {}
    if validation_set:
        loss = -float(np.concatenate(answer_logprobs(model, validation_set, batch_size=batch_size)).mean())
        metrics["validation_loss"] = loss
        metrics["validation_perplexity"] = math.exp(min(loss, 50.0))  # capped: a diverged run stays finite
    probe = [tokenizer(text)["input_ids"] for text in GENERAL_TEXT]
    with model.disable_adapter():
        metrics["forgetting_probe_base_loss"] = _probe_loss(model, probe, batch_size)
    metrics["forgetting_probe_adapter_loss"] = _probe_loss(model, probe, batch_size)
    profile = reference_profile(
        model,
        tokenizer,
        seen,
        reference_set or seen,
        form,
        batch_size=batch_size,
        generation_batch_size=generation_batch_size,
    )
    return Evaluation(metrics=metrics, profile=profile)
