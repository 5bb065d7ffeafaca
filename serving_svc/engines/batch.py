"""A batch of sequences decoding together, that sequences join and leave between steps.

This is the continuous batching of TGI's transformers models (`CausalLMBatch.concatenate` and
`filter`) on a cache made for it (`kv_cache.BatchCache`): rows are left-padded to one length, a
2D attention mask marks the padding and per-row position ids keep each row's positions its own,
so a row computes exactly what it would alone. New sequences are prefilled together, then take
the places of rows that have finished (or are added after the last); finished rows are only
marked free, and the batch is compacted once a quarter of its rows are free. Either way no step
copies the whole cache, as dropping and appending rows of transformers' `DynamicCache` does.

Each row names its adapter, "__base__" for the base model; a free row decodes a placeholder token
as the base model, which costs a row of a step that is bound by reading the weights, and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from serving_svc.engines.kv_cache import BatchCache
from serving_svc.engines.stacked_lora import BASE

Forward = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
"""The model's forward, bound to how the batch's adapters are applied (see TransformersEngine):
called as forward(input_ids, mask, positions, cache, adapter_names, *, prefill, every_position_of),
it returns the last position's logits of every row, and every position's logits of the rows named
in `every_position_of` (None when no row is named)."""

_COMPACT_AT = 0.25
"""Share of a batch's rows that may be free before it is compacted (one copy of the cache)."""


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - tensor.shape[1]
    return tensor if missing == 0 else torch.cat([tensor.new_zeros((tensor.shape[0], missing)), tensor], dim=1)


class DecodeBatch:
    """Rows of token ids decoding in step, with their attention mask and key/value cache."""

    def __init__(self, cache: BatchCache, mask: torch.Tensor, adapter_names: list[str]) -> None:
        self.cache = cache
        self.mask = mask  # [rows, columns]: 1 for a real token, 0 for left padding
        self.adapter_names = adapter_names
        self.free: set[int] = set()

    def __len__(self) -> int:
        return len(self.adapter_names)

    @property
    def live(self) -> list[int]:
        return [row for row in range(len(self)) if row not in self.free]

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
        cache = BatchCache()
        logits, every_position = forward(
            input_ids, mask, positions, cache, adapter_names, prefill=True, every_position_of=scored
        )
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
        """Feed each row its next token (free rows: any token); the logits for the token after it."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self), 1))], dim=1)
        positions = self.mask.sum(1, keepdim=True) - 1
        input_ids = torch.tensor(next_tokens, dtype=torch.long).unsqueeze(1)
        logits, _ = forward(input_ids, self.mask, positions, self.cache, self.adapter_names, prefill=False)
        return logits

    def release(self, rows: list[int]) -> None:
        """Free `rows` for sequences that join later; the columns no live row needs leave the window."""
        for row in rows:
            self.mask[row] = 0
            self.adapter_names[row] = BASE
            self.free.add(row)
        live = self.live
        if not live:
            return
        first = int(self.mask[live].any(0).long().argmax())
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.cache.window_layers:
                layer.drop_leading(first)

    def join(self, other: DecodeBatch) -> list[int]:
        """Put `other`'s rows into free rows (then after the last); the rows they now are, in order.
        Both batches must be between the same kind of step."""
        free = sorted(self.free)
        rows = [free[i] if i < len(free) else len(self) + i - len(free) for i in range(len(other))]
        length = max(self.mask.shape[1], other.mask.shape[1])
        grown = len(self) + max(0, len(other) - len(free))
        mask = self.mask.new_zeros((grown, length))
        mask[: len(self)] = _left_pad(self.mask, length)
        index = torch.tensor(rows, dtype=torch.long)
        mask[index] = _left_pad(other.mask, length)
        for mine, theirs in zip(self.cache.window_layers, other.cache.window_layers, strict=True):
            mine.write_rows(index, theirs.keys, theirs.values)  # type: ignore[arg-type]
        self.mask = mask
        self.adapter_names.extend([BASE] * (grown - len(self)))
        for row, name in zip(rows, other.adapter_names, strict=True):
            self.adapter_names[row] = name
            self.free.discard(row)
        return rows

    def needs_compacting(self) -> bool:
        return len(self.free) > _COMPACT_AT * len(self)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), then drop the leading columns that are padding in all of them."""
        if rows == list(range(len(self))):
            return
        index = torch.tensor(rows, dtype=torch.long)
        for layer in self.cache.window_layers:
            layer.keep_rows(index)
        self.mask = self.mask[index]
        self.adapter_names = [self.adapter_names[i] for i in rows]
        self.free = {i for i, row in enumerate(rows) if row in self.free}
        self.release([])
