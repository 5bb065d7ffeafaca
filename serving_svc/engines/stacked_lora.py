"""LoRA for a batch whose rows use many different adapters, at the cost of one adapter.

peft's mixed-adapter batches (`adapter_names`) loop over the adapters present in the batch in
every LoRA layer: a sub-batch gather and two small matmuls per adapter, so a step with 32
adapters costs 32 times the per-layer overhead of a step with one (measured: 0.29x the tokens/s
of one adapter at 32). Here the adapters present in a batch are stacked once per layer (A as
[sum of ranks, in], B as [out, sum of ranks]) and every step computes, per layer,

    delta = ((x @ A_stack.T) * row_mask) @ B_stack.T

where `row_mask` keeps, for each row, only its own adapter's block, scaled by that adapter's
LoRA scaling (zero for base-model rows). Two matmuls and a multiply, whatever the number of
adapters: the same computation as punica's SGMV kernels in vLLM, in plain torch.

peft still loads each adapter (its key mapping, ranks, alpha and rslora scaling are the source of
truth) and holds the weights; its layers are switched off for these batches and a forward hook on
each wrapped base layer adds the delta. Adapters that are not plain LoRA on linear layers (DoRA,
LoRA with bias, embedding LoRA) are not stacked: the engine runs them through peft in batches of
their own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer

BASE = "__base__"
"""The row name of the base model (no adapter), as in peft's `adapter_names`."""

_CACHED_COMPOSITIONS = 2
_MASKED_UP_TO = 4
"""Up to this many adapters in a batch, every row multiplies by all their stacked A's and keeps its
own block (each adapter adds ~2% to a step); past it, each row gathers its own adapter's weights."""


@dataclass(frozen=True)
class _LayerStack:
    """One layer's weights for the adapters of a batch (`composition`), in both layouts.

    Concatenated: a [sum of ranks, in], b [out, sum of ranks], masks [adapters + 1, sum of ranks]
    holding each adapter's scaling over its block (the last row, for the base model, is zero).
    Per adapter: a3 [adapters + 1, in, max rank], b3 [adapters + 1, max rank, out], zero-padded
    ranks with the scaling folded into b3, and zeros for the base model.
    """

    a: torch.Tensor
    b: torch.Tensor
    masks: torch.Tensor
    a3: torch.Tensor
    b3: torch.Tensor


_Delta = Callable[[int, torch.Tensor], torch.Tensor | None]
"""A layer's LoRA delta for its input, given the layer's id (None: no adapter of the batch has it)."""


def _weight(linear: torch.nn.Module) -> torch.Tensor:
    weight = linear.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _stack_layer(layer: LoraLinear, composition: tuple[str, ...]) -> _LayerStack | None:
    present = [name for name in composition if name in layer.lora_A]
    if not present:
        return None
    weights_a = [_weight(layer.lora_A[name]) for name in present]
    weights_b = [_weight(layer.lora_B[name]) for name in present]
    a, b = torch.cat(weights_a), torch.cat(weights_b, dim=1)
    max_rank = max(int(w.shape[0]) for w in weights_a)
    slots = len(composition) + 1
    masks = torch.zeros((slots, a.shape[0]), dtype=a.dtype)
    a3 = torch.zeros((slots, a.shape[1], max_rank), dtype=a.dtype)
    b3 = torch.zeros((slots, max_rank, b.shape[0]), dtype=b.dtype)
    offset = 0
    for name, weight_a, weight_b in zip(present, weights_a, weights_b, strict=True):
        slot, rank, scaling = composition.index(name), int(weight_a.shape[0]), layer.scaling[name]
        masks[slot, offset : offset + rank] = scaling
        a3[slot, :, :rank] = weight_a.T
        b3[slot, :rank, :] = weight_b.T * scaling
        offset += rank
    return _LayerStack(a, b, masks, a3, b3)


class StackedLora:
    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self._layers: list[LoraLinear] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._stacks: OrderedDict[tuple[str, ...], dict[int, _LayerStack]] = OrderedDict()
        self._gathered: tuple[tuple[str, ...], dict[int, tuple[torch.Tensor, torch.Tensor]]] | None = None
        self._current: _Delta | None = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read the model's LoRA layers and forget every stack; call after adding or removing an adapter."""
        for handle in self._hooks:
            handle.remove()
        self._layers = [m for m in self._model.modules() if isinstance(m, LoraLinear)]
        self._hooks = [layer.base_layer.register_forward_hook(self._hook_for(id(layer))) for layer in self._layers]
        self._stacks.clear()
        self._gathered = None

    def stackable(self, adapter: str) -> bool:
        """Whether `adapter` is plain LoRA on linear layers only (no DoRA, bias or other variant)."""
        holders = [m for m in self._model.modules() if isinstance(m, LoraLayer) and adapter in m.lora_A]
        return bool(holders) and all(
            isinstance(m, LoraLinear)
            and adapter not in m.lora_variant
            and not m.lora_bias.get(adapter, False)
            and not m.fan_in_fan_out
            for m in holders
        )

    @contextmanager
    def rows(self, adapter_names: list[str]) -> Iterator[None]:
        """Apply each row's adapter (or none, for BASE) to the forward passes inside the block."""
        composition = tuple(sorted({name for name in adapter_names if name != BASE}))
        if not composition:
            yield
            return
        stacks = self._stacks_for(composition)
        position = {name: i for i, name in enumerate(composition)}
        index = torch.tensor([position.get(name, len(composition)) for name in adapter_names], dtype=torch.long)
        if len(composition) <= _MASKED_UP_TO:
            self._current = self._masked(stacks, index)
        else:
            self._current = self._per_row(self._gather(stacks, tuple(adapter_names), index))
        try:
            yield
        finally:
            self._current = None

    def _stacks_for(self, composition: tuple[str, ...]) -> dict[int, _LayerStack]:
        if composition in self._stacks:
            self._stacks.move_to_end(composition)
            return self._stacks[composition]
        stacks = {}
        for layer in self._layers:
            if (stack := _stack_layer(layer, composition)) is not None:
                stacks[id(layer)] = stack
        self._stacks[composition] = stacks
        while len(self._stacks) > _CACHED_COMPOSITIONS:
            self._stacks.popitem(last=False)
        return stacks

    def _gather(
        self, stacks: dict[int, _LayerStack], rows: tuple[str, ...], index: torch.Tensor
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Each row's own weights per layer, kept while the batch's rows stay the same (most steps)."""
        if self._gathered is None or self._gathered[0] != rows:
            gathered = {key: (stack.a3[index], stack.b3[index]) for key, stack in stacks.items()}
            self._gathered = (rows, gathered)
        return self._gathered[1]

    @staticmethod
    def _masked(
        stacks: dict[int, _LayerStack], index: torch.Tensor
    ) -> Callable[[int, torch.Tensor], torch.Tensor | None]:
        def delta(layer_id: int, x: torch.Tensor) -> torch.Tensor | None:
            stack = stacks.get(layer_id)
            if stack is None:
                return None
            return ((x @ stack.a.T) * stack.masks[index].unsqueeze(1)) @ stack.b.T

        return delta

    @staticmethod
    def _per_row(gathered: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> _Delta:
        def delta(layer_id: int, x: torch.Tensor) -> torch.Tensor | None:
            weights = gathered.get(layer_id)
            if weights is None:
                return None
            a_rows, b_rows = weights
            return torch.bmm(torch.bmm(x.to(a_rows.dtype), a_rows), b_rows)

        return delta

    def _hook_for(self, layer_id: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
            if self._current is None:
                return None
            delta = self._current(layer_id, args[0])
            return None if delta is None else output + delta.to(output.dtype)

        return hook
