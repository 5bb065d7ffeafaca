"""After training: validation loss and perplexity, the forgetting probe, and the drift reference profile."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from loraplane.drift import Profile, ProfileBuilder
from trainer_svc.worker.probe_text import GENERAL_TEXT
from trainer_svc.worker.scoring import token_logprobs
from trainer_svc.worker.tokenization import IGNORE_INDEX, TokenizedExample


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    profile: Profile


def _validation_loss(examples: list[TokenizedExample], logprobs: list[np.ndarray]) -> float:
    """Mean loss per trained token (labels not masked), over the whole validation set."""
    total, tokens = 0.0, 0
    for example, scores in zip(examples, logprobs, strict=True):
        trained = np.asarray(example.labels[1:]) != IGNORE_INDEX
        total -= float(scores[trained].sum())
        tokens += int(trained.sum())
    return total / tokens


def _profile(examples: list[TokenizedExample], logprobs: list[np.ndarray]) -> Profile:
    """The reference profile: each example split into prompt and final response, as serving sees them."""
    builder = ProfileBuilder()
    for example, scores in zip(examples, logprobs, strict=True):
        cut = example.prompt_length
        # Score j is the log-probability of token j + 1, so the response's scores start at cut - 1;
        # a response with no prompt before it has an unscored first token and is left out.
        response_logprob = float(scores[cut - 1 :].sum()) if cut > 0 else None
        builder.add(example.input_ids[:cut], example.input_ids[cut:], response_logprob)
    return builder.build()


def _probe_loss(model: PeftModel, sequences: list[list[int]], batch_size: int) -> float:
    return -float(np.concatenate(token_logprobs(model, sequences, batch_size=batch_size)).mean())


def evaluate(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    train_set: list[TokenizedExample],
    validation_set: list[TokenizedExample],
    *,
    batch_size: int,
) -> Evaluation:
    """Metrics of the trained adapter and the profile of the held-out data (training data without one)."""
    reference = validation_set or train_set
    logprobs = token_logprobs(model, [example.input_ids for example in reference], batch_size=batch_size)
    metrics: dict[str, float] = {}
    if validation_set:
        loss = _validation_loss(validation_set, logprobs)
        metrics["validation_loss"] = loss
        metrics["validation_perplexity"] = math.exp(min(loss, 50.0))  # capped: a diverged run stays finite
    probe = [tokenizer(text)["input_ids"] for text in GENERAL_TEXT]
    with model.disable_adapter():
        metrics["forgetting_probe_base_loss"] = _probe_loss(model, probe, batch_size)
    metrics["forgetting_probe_adapter_loss"] = _probe_loss(model, probe, batch_size)
    return Evaluation(metrics=metrics, profile=_profile(reference, logprobs))
