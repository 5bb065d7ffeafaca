"""Plain LoRA adapters read straight from their folder, for `StackedLora`, without peft.

peft's `load_adapter` injects the new adapter into every module of the model and walks all
modules once per adapter already loaded, so each load takes longer the more adapters are
resident (seconds, with dozens), all of it added to the first token of a request for a cold adapter. A plain LoRA
adapter is two matrices and a scaling per linear layer, which this module reads from
`adapter_model.safetensors` in milliseconds. An adapter that is anything more (DoRA, a bias,
embedding or token adapters, per-module alphas, any variant this reader does not know) is
refused with the reason, and the engine loads it through peft instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from loraplane.artifact import ADAPTER_WEIGHTS
from serving_svc.engines.compat import base_layer

_KEY_PREFIX = "base_model.model."
_A_SUFFIX, _B_SUFFIX = ".lora_A.weight", ".lora_B.weight"

_INERT_CONFIG_KEYS = frozenset(
    {
        # how the adapter was initialised or trained, or where it came from: no effect on its forward pass
        "auto_mapping",
        "base_model_name_or_path",
        "corda_config",
        "eva_config",
        "exclude_modules",
        "inference_mode",
        "init_lora_weights",
        "layers_pattern",
        "layers_to_transform",
        "loftq_config",
        "lora_dropout",
        "lora_ga_config",
        "megatron_config",
        "megatron_core",
        "peft_version",
        "qalora_group_size",
        "revision",
        "task_type",
        "ensure_weight_tying",
        # read below: the weights' shapes give each module's rank, so a rank_pattern needs nothing more
        "peft_type",
        "bias",
        "r",
        "rank_pattern",
        "lora_alpha",
        "use_rslora",
        "target_modules",
    }
)


@dataclass(frozen=True)
class LoraModule:
    """One linear layer's adapter: delta(x) = x @ a.T @ b.T * scaling."""

    a: torch.Tensor
    """[rank, in]"""
    b: torch.Tensor
    """[out, rank]"""
    scaling: float


def why_not_plain(config: dict[str, Any]) -> str | None:
    """Why an adapter with this `adapter_config.json` is more than plain LoRA (None: it is plain)."""
    if config.get("peft_type") != "LORA":
        return f"peft_type is {config.get('peft_type')!r}, not LORA"
    if config.get("bias", "none") != "none":
        return f"it trains biases ({config['bias']!r})"
    for key, value in sorted(config.items()):
        if key not in _INERT_CONFIG_KEYS and value:
            return f"{key} is set ({value!r})"
    return None


def read_adapter(path: Path, model: torch.nn.Module, dtype: torch.dtype) -> dict[str, LoraModule] | str:
    """The adapter in `path` as {module path in `model`: weights}, or why it must go through peft.

    Raises ValueError when the folder is broken (no config, weights for layers `model` lacks,
    shapes that do not fit): such an adapter could not be loaded by peft either.
    """
    config_file, weights_file = path / "adapter_config.json", path / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        return f"it has no {ADAPTER_WEIGHTS}"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable adapter_config.json ({exc})") from None
    if (reason := why_not_plain(config)) is not None:
        return reason
    tensors = load_file(weights_file)
    alpha, rslora = float(config["lora_alpha"]), bool(config.get("use_rslora"))
    modules: dict[str, LoraModule] = {}
    for key in tensors:
        if not key.startswith(_KEY_PREFIX) or not key.endswith((_A_SUFFIX, _B_SUFFIX)):
            return f"it holds {key}, which is not a LoRA A or B matrix"
        if not key.endswith(_A_SUFFIX):
            continue
        module_path = key[len(_KEY_PREFIX) : -len(_A_SUFFIX)]
        a = tensors[key]
        b = tensors.get(f"{_KEY_PREFIX}{module_path}{_B_SUFFIX}")
        if b is None:
            raise ValueError(f"{module_path} has a LoRA A matrix and no B")
        linear = _linear(model, module_path)
        if linear is None:
            return f"{module_path} is not a linear layer"
        rank = int(a.shape[0])
        if tuple(a.shape) != (rank, linear.in_features) or tuple(b.shape) != (linear.out_features, rank):
            raise ValueError(
                f"{module_path}: LoRA shapes {tuple(a.shape)} and {tuple(b.shape)} do not fit the layer "
                f"({linear.in_features} -> {linear.out_features}); the adapter was trained on another base model"
            )
        scaling = alpha / (math.sqrt(rank) if rslora else rank)
        modules[module_path] = LoraModule(a.to(dtype), b.to(dtype), scaling)
    if not modules:
        raise ValueError(f"{ADAPTER_WEIGHTS} holds no LoRA weights")
    return modules


def base_linear(model: torch.nn.Module, module_path: str) -> torch.nn.Linear:
    """The plain linear layer at `module_path`, looking through a peft wrapper if peft added one."""
    linear = _linear(model, module_path)
    if linear is None:
        raise ValueError(f"{module_path} is not a linear layer of the model")
    return linear


def _linear(model: torch.nn.Module, module_path: str) -> torch.nn.Linear | None:
    try:
        module = model.get_submodule(module_path)
    except AttributeError:
        raise ValueError(
            f"the base model has no layer {module_path}; the adapter was trained on another model"
        ) from None
    module = base_layer(module)
    return module if type(module) is torch.nn.Linear else None
