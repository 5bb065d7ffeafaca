"""A batch of sequences decoding together, that sequences join and leave between steps.

This is the continuous batching of TGI's transformers models (`CausalLMBatch.concatenate` and
`filter`) on today's transformers cache: rows are left-padded to one length, a 2D attention mask
marks the padding and per-row position ids keep each row's positions its own, so a row computes
exactly what it would alone. New sequences are prefilled together, then concatenated onto the
running batch (keys and values left-padded to the longer one); finished rows are dropped and
the columns no live row needs any more are trimmed away.

Each row names its adapter; `adapter_names` (peft's mixed-adapter batches) applies to each row
its own adapter in the same forward pass, and "__base__" is the base model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import DynamicCache

Forward = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
"""The model's forward, bound to how the batch's adapters are applied (see TransformersEngine): the
last position's logits of every row, and every position's logits of the rows named in
`every_position_of` (None when no row is named)."""


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's per-layer key/value holders (DynamicLayer: `.keys`, `.values` of [rows, heads, columns, dim])."""
    return list(cache.layers)


class DecodeBatch:
    """Rows of token ids decoding in step, with their attention mask and key/value cache."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor, adapter_names: list[str]) -> None:
        self.cache = cache
        self.mask = mask  # [rows, columns]: 1 for a real token, 0 for left padding
        self.adapter_names = adapter_names

    def __len__(self) -> int:
        return len(self.adapter_names)

    @classmethod
    def prefill(
        cls, forward: Forward, prompts: Sequence[Sequence[int]], adapter_names: list[str], scored: list[int]
    ) -> tuple[DecodeBatch, torch.Tensor, dict[int, float]]:
        """Run the prompts through the model together: the batch, each row's next-token logits and the
        log-probability (tokens 1..n-1) of each prompt in `scored` (row indices), from every position's
        logits of those rows alone."""
        length = max(len(p) for p in prompts)
        input_ids = torch.zeros((len(prompts), length), dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, length - len(prompt) :] = torch.tensor(prompt)
            mask[row, length - len(prompt) :] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits, every_position = forward(input_ids, mask, positions, cache, adapter_names, every_position_of=scored)
        scores: dict[int, float] = {}
        if every_position is not None:
            rows = scored
            # log p(token) = its logit - logsumexp(logits): no second [rows, positions, vocabulary] tensor.
            previous = every_position[:, :-1].float()
            chosen = previous.gather(-1, input_ids[rows, 1:, None]).squeeze(-1)
            token_logprobs = chosen - torch.logsumexp(previous, dim=-1)
            # A prompt's first token (and the left padding before it) has no score.
            real = mask[rows, :-1].bool() & mask[rows, 1:].bool()
            scores = dict(zip(rows, (token_logprobs * real).sum(1).tolist(), strict=True))
        return cls(cache, mask, adapter_names), logits, scores

    def step(self, forward: Forward, next_tokens: list[int]) -> torch.Tensor:
        """Feed each row its next token; the logits for the token after it."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self), 1))], dim=1)
        positions = self.mask.sum(1, keepdim=True) - 1
        input_ids = torch.tensor(next_tokens, dtype=torch.long).unsqueeze(1)
        logits, _ = forward(input_ids, self.mask, positions, self.cache, self.adapter_names)
        return logits

    def concatenate(self, other: DecodeBatch) -> None:
        """Append `other`'s rows (both batches must be between the same kind of step)."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        self.mask = torch.cat([_left_pad(self.mask, length, 1), _left_pad(other.mask, length, 1)])
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache), strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, length, 2), _left_pad(theirs.keys, length, 2)])
            mine.values = torch.cat([_left_pad(mine.values, length, 2), _left_pad(theirs.values, length, 2)])
        self.adapter_names = [*self.adapter_names, *other.adapter_names]

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), then drop the leading columns that are padding in all of them."""
        if len(rows) == len(self):
            return
        index = torch.tensor(rows, dtype=torch.long)
        mask = self.mask[index]
        first = int(mask.any(0).long().argmax()) if rows else 0
        self.mask = mask[:, first:]
        for layer in _layers(self.cache):
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self.adapter_names = [self.adapter_names[i] for i in rows]
