"""Greedy answers of a model to token-id prompts, the way serving decodes them.

The drift reference, the task metrics and the knowledge probe all judge what the model would
answer through serving, so they share this one decoding: greedy, left-padded batches, stopping
at any of the model's end tokens (loraplane.models.end_token_ids, which the engines use too).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from loraplane.models import end_token_ids

GENERATION_BATCH_FACTOR = 4
"""Generation batches are this many times the training batch. Generating keeps no activations for a
backward pass, only the KV cache, so a batch that trained fits; and each step of decoding reads every
weight once, however many rows it has, so larger batches answer the held-out prompts in fewer steps
(figures in docs/benchmarks.md)."""


def generation_batch_size(training_batch_size: int) -> int:
    return GENERATION_BATCH_FACTOR * training_batch_size


@torch.no_grad()
def greedy_answers(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]], max_new_tokens: int
) -> list[tuple[list[int], float]]:
    """Greedy answers to the prompts: each answer's tokens (up to and including an end token) and the
    sum of their log-probabilities."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    end_ids = end_token_ids(model, tokenizer)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left-padded, as generation needs
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    output = model.generate(  # type: ignore[operator]
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad,
        eos_token_id=end_ids or None,
        output_logits=True,
        return_dict_in_generate=True,
    )
    generated = output.sequences[:, width:]
    chosen = [  # the chosen tokens' alone: every step's logits over the vocabulary in float32 can be gigabytes
        torch.log_softmax(step.float(), dim=-1).gather(-1, generated[:, position, None]).squeeze(-1)
        for position, step in enumerate(output.logits)
    ]
    logprobs, generated = torch.stack(chosen, dim=1).cpu(), generated.cpu()
    answers = []
    for row in range(len(prompts)):
        tokens: list[int] = []
        total = 0.0
        for position, token in enumerate(generated[row].tolist()):
            tokens.append(token)
            total += float(logprobs[row, position])
            if token in end_ids:
                break
        answers.append((tokens, total))
    return answers


def batched_greedy_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
) -> list[tuple[list[int], float]]:
    """`greedy_answers` to any number of prompts, `batch_size` at a time, the model in eval mode meanwhile
    (dropout off) and left in the mode it was in."""
    was_training = model.training
    model.eval()
    answers: list[tuple[list[int], float]] = []
    try:
        for first in range(0, len(prompts), batch_size):
            answers.extend(greedy_answers(model, tokenizer, prompts[first : first + batch_size], max_new_tokens))
    finally:
        model.train(was_training)
    return answers


def greedy_texts(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """The answers as text, special tokens (the end token) left out."""
    answers = batched_greedy_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [str(tokenizer.decode(tokens, skip_special_tokens=True)) for tokens, _ in answers]


def base_and_adapter_texts(
    model: Any, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]], *, max_new_tokens: int, batch_size: int
) -> tuple[list[str], list[str]]:
    """The answers of the base model (the peft model's adapter disabled) and of the adapter."""
    budget = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    adapter = greedy_texts(model, tokenizer, prompts, **budget)
    with model.disable_adapter():
        base = greedy_texts(model, tokenizer, prompts, **budget)
    return base, adapter
