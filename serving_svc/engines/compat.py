"""Every place the transformers engine touches transformers, peft or private torch ops, in one module.

The rest of the engine sees plain functions and small classes, so an upgrade of transformers,
peft or torch that changes one of these breaks here, where each touchpoint is named. Written
against transformers 5.19, peft 0.21 and torch 2.13 (CPU build):

- loading: `AutoTokenizer` and `AutoModelForCausalLM.from_pretrained(dtype=, attn_implementation=)`;
  the config's `max_position_embeddings` and `vocab_size` (`load_model`, `context_length`).
- attention: `AttentionInterface.register`, and `masking_utils.AttentionMaskInterface.register`
  with `sdpa_mask` so that a custom attention function gets sdpa's masks (`register_attention`,
  used by attention.py).
- the KV cache: `cache_utils.DynamicLayer`'s contract (`lazy_initialization`, `update`,
  `is_initialized`, `keys`/`values`, `get_seq_length`) and `Cache(layer_class_to_replicate=)`
  (`CacheLayer`, `LayeredCache`, used by kv_cache.py).
- the forward pass: `model(input_ids, attention_mask, position_ids, past_key_values, use_cache,
  logits_to_keep)`, and the decoder's `last_hidden_state` through `get_decoder()` and a forward hook
  (`forward`).
- the LM head: `get_output_embeddings()` and Gemma's `final_logit_softcapping` (`head_logits`),
  checked at load against the model's own logits (`head_reproduced`): other architectures change
  their logits further (Granite's `logits_scaling`, Cohere's `logit_scale`, ...).
- peft: `PeftModel.from_pretrained`, `load_adapter`, `set_adapter`, `delete_adapter`,
  `enable_adapter_layers`/`disable_adapter_layers` (`PeftAdapters`), and `LoraLayer.get_base_layer()`
  (`base_layer`, used by lora_weights.py).
- private torch ops: `torch.ops.mkldnn._reorder_linear_weight`, `_linear_pointwise` and
  `_is_mkldnn_bf16_supported` (`onednn_*`, used by packed_linear.py).
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from peft import PeftModel
from peft.tuners.lora.layer import LoraLayer
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

_DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# -- loading ------------------------------------------------------------------------------------


def load_tokenizer(path: Path) -> Any:
    """The model folder's tokenizer; OSError when there is none."""
    return AutoTokenizer.from_pretrained(path)


def load_model(path: Path, dtype: str, attn_implementation: str) -> PreTrainedModel:
    """The model folder's causal LM in `dtype` ("auto": the config's), in eval mode; OSError when absent."""
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
        path, dtype=_DTYPES[dtype], attn_implementation=attn_implementation
    )
    return model.eval()


def context_length(model: PreTrainedModel) -> int | None:
    """The longest sequence the model's config allows, when it says."""
    return int(getattr(model.config, "max_position_embeddings", 0) or 0) or None


def vocab_size(model: PreTrainedModel) -> int:
    return int(model.config.vocab_size)


def register_attention(name: str, function: Callable[..., tuple[torch.Tensor, None]]) -> None:
    """Make `name` loadable as an `attn_implementation` computing `function` on sdpa's masks (idempotent)."""
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, sdpa_mask)


# -- the KV cache -------------------------------------------------------------------------------


class CacheLayer(DynamicLayer, abc.ABC):
    """transformers' per-layer cache contract, for a layer that keeps its keys and values its own way.

    The model calls `update` with each step's keys and values ([rows, heads, columns, dim]) and reads
    the `keys` and `values` it returns; a subclass implements `start` (the first write's shapes),
    `append` and `get_seq_length`, and calls `show` whenever the tensors it exposes change.
    """

    @abc.abstractmethod
    def start(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Prepare empty storage for states shaped like these."""

    @abc.abstractmethod
    def append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Add the states' columns after those held."""

    @abc.abstractmethod
    def get_seq_length(self) -> int: ...

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.start(key_states, value_states)
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.append(key_states, value_states)
        return self.keys, self.values  # type: ignore[return-value]

    def show(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values


L = TypeVar("L", bound=CacheLayer)


class LayeredCache(Cache):
    """A transformers cache whose layers, one class for all, are created as the model's layers first write."""

    def __init__(self, layer_class: type[CacheLayer]) -> None:
        super().__init__(layer_class_to_replicate=layer_class)

    def layers_of(self, layer_class: type[L]) -> list[L]:
        return [layer for layer in self.layers if isinstance(layer, layer_class)]


# -- the forward pass and the LM head -----------------------------------------------------------


def forward(
    model: Any,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: Cache | None,
    *,
    every_position: bool = False,
    hidden_of: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's logits, from its own head: at every row's last position ([rows, vocabulary]), or at
    every position ([rows, positions, vocabulary]); and the decoder's hidden states at every position of
    the rows in `hidden_of` (None when it names none). Keys and values go into `cache` when given."""
    hidden: list[torch.Tensor] = []
    capture = None
    if hidden_of:
        capture = model.get_decoder().register_forward_hook(lambda m, a, out: hidden.append(out.last_hidden_state))
    try:
        output = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=cache is not None,
            logits_to_keep=0 if every_position else 1,
        )
    finally:
        if capture is not None:
            capture.remove()
    logits = output.logits if every_position else output.logits[:, -1, :]
    return logits, hidden[0][hidden_of] if hidden else None


def head_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The logits for these hidden states as the LM head gives them, soft-capped where the config says
    (Gemma); `head_reproduced` tells whether that is what the model's own forward computes."""
    logits: torch.Tensor = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def head_reproduced(model: Any) -> bool:
    """Whether `head_logits` on the decoder's hidden states gives the model's own logits, on a probe of a
    few tokens."""
    input_ids = torch.arange(1, 5).remainder(vocab_size(model)).unsqueeze(0)
    positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
    with torch.inference_mode():
        own, hidden = forward(
            model, input_ids, torch.ones_like(input_ids), positions, None, every_position=True, hidden_of=[0]
        )
        assert hidden is not None
        ours = head_logits(model, hidden)
    return own.shape == ours.shape and torch.allclose(own.float(), ours.float(), rtol=1e-3, atol=1e-3)


# -- peft ---------------------------------------------------------------------------------------


def base_layer(module: torch.nn.Module) -> torch.nn.Module:
    """The layer a peft LoRA wrapper wraps, or `module` itself when peft has not wrapped it."""
    return module.get_base_layer() if isinstance(module, LoraLayer) else module


class PeftAdapters:
    """peft's own adapters in the model (those that are more than plain LoRA), each applied to a batch alone."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self._peft: PeftModel | None = None
        self._layers_enabled: bool | None = None

    def load(self, name: str, path: Path) -> None:
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._model, path, adapter_name=name, is_trainable=False)
            self._peft.eval()
        else:
            self._peft.load_adapter(path, adapter_name=name, is_trainable=False)
        self._layers_enabled = None  # layers peft just added start enabled

    def delete(self, name: str) -> None:
        if self._peft is not None:
            with warnings.catch_warnings():  # "was active, now deleted": rows name their adapter anyway
                warnings.simplefilter("ignore", UserWarning)
                self._peft.delete_adapter(name)

    def apply(self, name: str | None) -> None:
        """Apply adapter `name` to the forward passes that follow, or none of peft's (None)."""
        self._enable_layers(name is not None)
        if name is not None:
            assert self._peft is not None, f"adapter {name} was not loaded into peft"
            self._peft.set_adapter(name)

    def _enable_layers(self, enabled: bool) -> None:
        if self._peft is not None and self._layers_enabled != enabled:
            tuner: Any = self._peft.base_model
            if enabled:
                tuner.enable_adapter_layers()
            else:
                tuner.disable_adapter_layers()
            self._layers_enabled = enabled


# -- oneDNN -------------------------------------------------------------------------------------


def onednn_packs(dtype: torch.dtype) -> bool:
    """Whether this torch build and CPU can pack linear weights of `dtype` for oneDNN."""
    if not torch.backends.mkldnn.is_available() or dtype not in (torch.float32, torch.bfloat16):
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    return hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_pack(weight: torch.Tensor, expected_rows: int) -> torch.Tensor:
    """`weight` ([out, in]) reordered into oneDNN's layout for inputs of about `expected_rows` rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, expected_rows)  # type: ignore[no-any-return]


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`torch.nn.functional.linear` on a weight `onednn_pack` reordered."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")  # type: ignore[no-any-return]
