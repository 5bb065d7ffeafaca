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

from collections.abc import Sequence

import torch

from serving_svc.engines.kv_cache import BatchCache
from serving_svc.engines.stacked_lora import BASE

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
    def for_prompts(
        cls, prompts: Sequence[Sequence[int]], adapter_names: list[str]
    ) -> tuple[DecodeBatch, torch.Tensor]:
        """A batch for these prompts, its cache empty, and their token ids ([rows, columns], left-padded):
        run them with `mask` and `positions()` to fill the cache."""
        length = max(len(p) for p in prompts)
        input_ids = torch.zeros((len(prompts), length), dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, length - len(prompt) :] = torch.tensor(prompt)
            mask[row, length - len(prompt) :] = 1
        return cls(BatchCache(), mask, adapter_names), input_ids

    def positions(self) -> torch.Tensor:
        """Each row's position of every column of a prefill: its own count from its first real token."""
        return (self.mask.cumsum(1) - 1).clamp(min=0)

    def next_inputs(self, next_tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A decode step's token ids and positions ([rows, 1]) for each row's next token (free rows: any
        token); the mask gets the step's column."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self), 1))], dim=1)
        positions = self.mask.sum(1, keepdim=True) - 1
        return torch.tensor(next_tokens, dtype=torch.long).unsqueeze(1), positions

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
