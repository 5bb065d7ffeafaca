"""LoRA for a batch whose rows use many different adapters, at the cost of one adapter.

peft's mixed-adapter batches (`adapter_names`) loop over the adapters present in the batch in
every LoRA layer: a sub-batch gather and two small matmuls per adapter, so a step with 32
adapters costs 32 times the per-layer overhead of a step with one. Here, as in vLLM's punica
kernels, every loaded adapter has a slot in one table per linear layer (A as [slots, in, rank],
B as [slots, rank, out] with the LoRA scaling folded in; slot 0 holds zeros, for base-model
rows), and a forward hook on each layer adds

- for a few distinct adapters in the batch: ((x @ A_cat) * row_mask) @ B_cat, where A_cat and
  B_cat hold just those adapters side by side and `row_mask` keeps each row's own block;
- for more: each row's own A and B, applied with two batched matmuls. For the running batch they
  live in per-row buffers, and a row that changes (a request that joins in a freed row) copies
  just its own adapter's weights there; a prefill gathers the weights of its new rows.

Either way two matmuls per layer, whatever the number of adapters. Adding an adapter writes its
weights into a free slot (no module of the model changes), so a cold adapter costs the read of
its file; removing one zeroes its slot for reuse, and `take` first copies its weights out (the
host copy an engine keeps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from serving_svc.engines.lora_weights import LoraModule, base_linear

BASE = "__base__"
"""The row name of the base model (no adapter)."""

_MASKED_UP_TO = 4
"""Up to this many adapters in a batch, every row multiplies by all their A's side by side and
keeps its own block (each adapter adds a little to every step); past it, each row gathers its own weights."""

_Delta = Callable[[torch.Tensor, torch.Tensor], object]
"""Adds a layer's LoRA delta for input x ([rows, seq, in]) to its output ([rows, seq, out]), in place."""


class _LayerTable:
    """One linear layer's adapters: slot s holds adapter s's A (a[s]: [in, rank]) and scaled B (b[s]: [rank, out]).

    Only slot 0 (zeros) and the slots in `ranks` are ever read, so the rest stay uninitialised
    memory: a table for 64 adapters is allocated without touching its pages.
    """

    def __init__(self, linear: torch.nn.Linear, slots: int, dtype: torch.dtype) -> None:
        self.in_features, self.out_features, self.dtype = linear.in_features, linear.out_features, dtype
        self.a = torch.zeros((1, self.in_features, 0), dtype=dtype)
        self.b = torch.zeros((1, 0, self.out_features), dtype=dtype)
        self.ranks: dict[int, int] = {}
        """The rank of the adapter in each used slot; past it, the slot's columns are zero padding."""
        self.resize(slots, 0)
        # The running batch's rows: row i holds slot row_slots[i]'s weights (stale past len(row_slots)).
        self._row_a = torch.zeros((0, self.in_features, 0), dtype=dtype)
        self._row_b = torch.zeros((0, 0, self.out_features), dtype=dtype)
        self._row_slots: list[int] = []

    def resize(self, slots: int, rank: int) -> None:
        """Grow to at least `slots` slots of rank `rank` (zero-padded), keeping what is there."""
        old_slots, old_rank = self.a.shape[0], self.a.shape[2]
        if slots <= old_slots and rank <= old_rank:
            return
        slots, rank = max(slots, old_slots), max(rank, old_rank)
        a = torch.empty((slots, self.in_features, rank), dtype=self.dtype)
        b = torch.empty((slots, rank, self.out_features), dtype=self.dtype)
        kept = [0, *sorted(self.ranks)]
        a[kept], b[kept] = 0, 0
        a[kept, :, :old_rank] = self.a[kept]
        b[kept, :old_rank, :] = self.b[kept]
        self.a, self.b = a, b
        self._row_slots = []

    def write(self, slot: int, module: LoraModule) -> None:
        rank = int(module.a.shape[0])
        self.resize(slot + 1, rank)
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.a[slot, :, :rank] = module.a.T
        self.b[slot, :rank, :] = module.b.T * module.scaling
        self.ranks[slot] = rank
        self._row_slots = []

    def weights(self, slot: int) -> LoraModule | None:
        """The weights in `slot` (None: none here), copied to host memory, scaling folded in."""
        rank = self.ranks.get(slot)
        if rank is None:
            return None
        a = self.a[slot, :, :rank].T.to("cpu", copy=True)
        b = self.b[slot, :rank, :].T.to("cpu", copy=True)
        return LoraModule(a, b, scaling=1.0)

    def clear(self, slot: int) -> None:
        """Zero `slot` for reuse."""
        if self.ranks.pop(slot, None) is not None:
            self.a[slot].zero_()
            self.b[slot].zero_()
            self._row_slots = []

    def delta_for(self, slots: list[int], running: bool) -> _Delta | None:
        """This layer's delta for rows using `slots` (one per row), or None when none of them has weights
        here; `running` for the running batch, whose per-row weights stay in buffers between steps."""
        distinct = sorted(set(slots) & self.ranks.keys())
        if not distinct:
            return None
        if len(distinct) <= _MASKED_UP_TO:
            rank = self.a.shape[2]
            a_cat = self.a[distinct].permute(1, 0, 2).reshape(self.in_features, len(distinct) * rank)
            b_cat = self.b[distinct].reshape(len(distinct) * rank, self.out_features)
            if len(distinct) == 1 and set(slots) == set(distinct):  # one adapter on every row: nothing to mask
                return lambda x, out: out.view(-1, self.out_features).addmm_((x @ a_cat).view(-1, rank), b_cat)
            block = torch.tensor([distinct.index(s) if s in distinct else -1 for s in slots])
            mask = (block.unsqueeze(1) == torch.arange(len(distinct)).repeat_interleave(rank)).to(self.dtype)
            mask = mask.unsqueeze(1)  # [rows, 1, blocks * rank]: broadcast over the sequence
            return lambda x, out: out.view(-1, self.out_features).addmm_(
                ((x @ a_cat) * mask).view(-1, b_cat.shape[0]), b_cat
            )
        # Slot 0 (zeros) for rows whose adapter has no weights here: their slot holds no data in this table.
        own = [slot if slot in self.ranks else 0 for slot in slots]
        if running:
            a_rows, b_rows = self._running_rows(own)
        else:
            index = torch.tensor(own, dtype=torch.long)
            a_rows, b_rows = self.a[index], self.b[index]
        return lambda x, out: out.baddbmm_(torch.bmm(x, a_rows), b_rows)

    def _running_rows(self, slots: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-row buffers for rows using `slots`, after copying in the weights of the rows that changed."""
        rows, rank = len(slots), self.a.shape[2]
        if self._row_a.shape[0] < rows or self._row_a.shape[2] != rank:
            self._row_a = torch.empty((rows, self.in_features, rank), dtype=self.dtype)
            self._row_b = torch.empty((rows, rank, self.out_features), dtype=self.dtype)
            self._row_slots = []
        held = self._row_slots
        changed = [row for row, slot in enumerate(slots) if row >= len(held) or held[row] != slot]
        if changed:
            index, source = torch.tensor(changed), torch.tensor([slots[row] for row in changed])
            self._row_a[index] = self.a[source]
            self._row_b[index] = self.b[source]
            self._row_slots = [*slots, *held[rows:]]
        return self._row_a[:rows], self._row_b[:rows]


class StackedLora:
    """Every plain LoRA adapter loaded in a model, applied per row of a batch by forward hooks."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, expected_adapters: int) -> None:
        self._model = model
        self._dtype = dtype
        self._capacity = expected_adapters + 1  # tables are allocated for this many slots, and grow if need be
        self._tables: dict[str, _LayerTable] = {}
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._running: tuple[tuple[int, ...], dict[str, _Delta]] | None = None  # the running batch's rows, deltas
        self._current: dict[str, _Delta] | None = None

    def __contains__(self, adapter: str) -> bool:
        return adapter in self._slots

    def add(self, adapter: str, modules: dict[str, LoraModule]) -> None:
        """Give `adapter` a slot and write its weights there; `modules` maps layer paths to weights."""
        if adapter in self._slots:
            raise ValueError(f"adapter {adapter} is already loaded")
        linears = {path: base_linear(self._model, path) for path in modules}  # every path checked before any write
        slot = self._free.pop() if self._free else len(self._slots) + 1
        if slot >= self._capacity:
            self._capacity = max(slot + 1, 2 * self._capacity)
            for table in self._tables.values():
                table.resize(self._capacity, 0)
        for path, module in modules.items():
            if path not in self._tables:  # the first adapter on this layer: its table, and its hook for good
                self._tables[path] = _LayerTable(linears[path], self._capacity, self._dtype)
                linears[path].register_forward_hook(self._hook_for(path))
            self._tables[path].write(slot, module)
        self._slots[adapter] = slot
        self._running = None

    def take(self, adapter: str) -> dict[str, LoraModule]:
        """`remove` `adapter`, handing back its weights in host memory (scaling folded in) for `add`."""
        slot = self._slots[adapter]
        modules = {path: module for path, table in self._tables.items() if (module := table.weights(slot)) is not None}
        self.remove(adapter)
        return modules

    def remove(self, adapter: str) -> None:
        """Free `adapter`'s slot."""
        slot = self._slots.pop(adapter)
        for table in self._tables.values():
            table.clear(slot)
        self._free.append(slot)
        self._running = None

    @contextmanager
    def rows(self, adapter_names: list[str], running: bool) -> Iterator[None]:
        """Apply each row's adapter (or none, for BASE) to the forward passes inside the block;
        `running` for the batch that decodes step after step, whose deltas are kept between steps."""
        slots = tuple(self._slots.get(name, 0) for name in adapter_names)
        if not any(slots):
            yield
            return
        if not running:
            self._current = self._deltas_for(slots, running=False)
        elif self._running is not None and self._running[0] == slots:
            self._current = self._running[1]
        else:
            self._current = self._deltas_for(slots, running=True)
            self._running = (slots, self._current)
        try:
            yield
        finally:
            self._current = None

    def _deltas_for(self, slots: tuple[int, ...], running: bool) -> dict[str, _Delta]:
        deltas = {}
        for path, table in self._tables.items():
            if (delta := table.delta_for(list(slots), running)) is not None:
                deltas[path] = delta
        return deltas

    def _hook_for(self, path: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if self._current is not None and (delta := self._current.get(path)) is not None:
                delta(args[0], output)  # the layer's fresh output, changed in place: no second tensor

        return hook
