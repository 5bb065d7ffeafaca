"""The adapters in the transformers engine's model, and how each batch applies them.

Plain LoRA adapters are read straight from their safetensors into the stacked tables
(`lora_weights`, `StackedLora`), because peft's `load_adapter` slows down with every adapter
resident; rows with such adapters, and base-model rows, share one batch (`MIXED`) whose forward
pass applies each row's own adapter. peft loads and applies the others (DoRA), each in a batch of
its own, keyed by the adapter's key. Engine thread only, but for `route`, which reads one entry.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from serving_svc.engines.compat import PeftAdapters
from serving_svc.engines.lora_weights import LoraModule, read_adapter
from serving_svc.engines.stacked_lora import BASE, StackedLora

log = logging.getLogger(__name__)

MIXED = ""
"""The batch key of rows whose adapters are applied stacked in one forward pass (LoRA, and the base model)."""


class LoraAdapters:
    """Adapters by the key the engine was given, in stacked slots, in peft, or kept in host memory."""

    def __init__(self, model: torch.nn.Module, expected_adapters: int) -> None:
        self._model = model
        self._dtype = next(model.parameters()).dtype
        self._stacked = StackedLora(model, self._dtype, expected_adapters=expected_adapters)
        self._peft = PeftAdapters(model)
        self._loaded: dict[str, tuple[str, str]] = {}  # key -> (adapter name in the model, batch key)
        # Offloaded adapters: key -> (name, stacked weights in host memory; None: resident in peft).
        self._host_copies: dict[str, tuple[str, dict[str, LoraModule] | None]] = {}
        self._numbers = 0

    def route(self, key: str | None) -> tuple[str, str]:
        """The adapter name and batch key of a request for `key` (None: the base model); KeyError when
        no adapter is loaded under `key`."""
        return (BASE, MIXED) if key is None else self._loaded[key]

    def add(self, key: str, path: Path) -> None:
        """Load the adapter folder at `path` under `key`, from its host copy when one was kept; a no-op
        when `key` is loaded already (by an earlier call whose caller left before it finished)."""
        if key in self._loaded:
            return
        if (host_copy := self._host_copies.pop(key, None)) is not None:
            name, kept = host_copy  # offloaded: weights back into a slot, or peft's adapter back in use
            if kept is not None:
                self._stacked.add(name, kept)
            self._loaded[key] = (name, MIXED if kept is not None else key)
            return
        # peft names become module keys, which cannot hold the "." an adapter key may have.
        self._numbers += 1
        name = f"adapter_{self._numbers}"
        modules = read_adapter(path, self._model, self._dtype)
        if isinstance(modules, str):  # more than plain LoRA: peft applies it, in a batch of its own
            log.info("adapter %s goes through peft and decodes in batches of its own: %s", key, modules)
            self._peft.load(name, path)
            self._loaded[key] = (name, key)
        else:
            self._stacked.add(name, modules)
            self._loaded[key] = (name, MIXED)

    def offload(self, key: str) -> None:
        """Stacked weights move out of their slot into host memory; a peft adapter stays resident in
        peft (no request names it, so no batch applies it), since loading one into peft is the slow part."""
        entry = self._loaded.pop(key, None)
        if entry is not None:
            name, batch_key = entry
            self._host_copies[key] = (name, self._stacked.take(name) if batch_key == MIXED else None)

    def remove(self, key: str) -> None:
        entry = self._loaded.pop(key, None)
        host_copy = self._host_copies.pop(key, None)  # stacked weights held there just go with it
        if entry is not None and entry[1] == MIXED:
            self._stacked.remove(entry[0])
            return
        # Not stacked: a peft adapter, in use or resident for its host copy.
        peft_name = entry[0] if entry is not None else host_copy[0] if host_copy and host_copy[1] is None else None
        if peft_name is not None:
            self._peft.delete(peft_name)

    def applied(self, batch_key: str, adapter_names: list[str], running: bool) -> AbstractContextManager[None]:
        """Apply the adapters of a batch's rows to the forward passes inside the block; `running` for the
        batch that decodes step after step (its stacked weights are kept between steps)."""
        if batch_key == MIXED:
            self._peft.apply(None)
            return self._stacked.rows(adapter_names, running=running)
        self._peft.apply(self._loaded[batch_key][0])  # an adapter that is not stacked: peft applies it alone
        return nullcontext()
