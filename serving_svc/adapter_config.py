"""Check an adapter's `adapter_config.json` before peft or vLLM reads it.

The config is data from the store, and peft acts on some of its fields: `auto_mapping` names a
module and class to import (peft writes one naming the transformers model class when a config
has no task type), `megatron_core` a module to import, a `target_modules` string is a regular
expression run against every module name. So a config must be a plain LoRA config of the peft
version we pin: known fields only, nothing that loads code, ranks within this replica's bound,
target modules as names (or a short pattern).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path

from loraplane.errors import FailedPrecondition

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")
_MAX_PATTERN_CHARS = 256
_DEFAULT_MEGATRON_CORE = "megatron.core"
"""What peft writes for megatron_core in every config; it imports the module only with megatron_config set."""


@functools.cache
def _known_fields() -> frozenset[str]:
    from peft import LoraConfig  # the serving extra has it; only this check needs it here

    return frozenset(field.name for field in dataclasses.fields(LoraConfig))


def check_adapter_config(path: Path, key: str, max_rank: int) -> None:
    """Raise FailedPrecondition naming the first thing wrong with adapter `key`'s config at `path`."""

    def refuse(reason: str) -> FailedPrecondition:
        return FailedPrecondition(f"adapter {key} cannot be loaded: its adapter_config.json {reason}")

    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise refuse(f"cannot be read ({exc})") from None
    if not isinstance(config, dict):
        raise refuse("is not a JSON object")
    unknown = sorted(set(config) - _known_fields())
    if unknown:
        raise refuse(f"has fields peft's LoraConfig does not know: {', '.join(unknown)}")
    if config.get("peft_type") != "LORA":
        raise refuse(f"has peft_type {config.get('peft_type')!r}; only LORA (with DoRA) is served")
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise refuse(f"has task_type {config['task_type']!r}; only CAUSAL_LM is served")
    if config.get("megatron_config"):
        raise refuse("asks for code to be imported (megatron_config)")
    if not _is_transformers_class(config.get("auto_mapping")):
        raise refuse(f"asks for code outside transformers to be imported (auto_mapping {config['auto_mapping']!r})")
    if config.get("megatron_core") not in (None, _DEFAULT_MEGATRON_CORE):
        raise refuse(f"names a module to import ({config['megatron_core']!r} as megatron_core)")
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1 for rank in ranks):
        raise refuse(f"has a rank that is not a positive integer ({ranks})")
    if max(ranks) > max_rank:
        raise refuse(f"has LoRA rank {max(ranks)}; this replica accepts at most {max_rank} (LORAPLANE_MAX_LORA_RANK)")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        if len(targets) > _MAX_PATTERN_CHARS:
            raise refuse(f"has a target_modules pattern of {len(targets)} characters (at most {_MAX_PATTERN_CHARS})")
    elif not (isinstance(targets, list) and targets and all(_is_module_name(t) for t in targets)):
        raise refuse("must name its target_modules as a list of module names (or one pattern)")


def _is_module_name(target: object) -> bool:
    return isinstance(target, str) and _MODULE_NAME.match(target) is not None


def _is_transformers_class(auto_mapping: object) -> bool:
    """True for no mapping, or one naming a class of a transformers module (what peft itself writes)."""
    if not auto_mapping:
        return True
    if not isinstance(auto_mapping, dict) or set(auto_mapping) - {"base_model_class", "parent_library"}:
        return False
    library, model_class = auto_mapping.get("parent_library"), auto_mapping.get("base_model_class")
    return (
        isinstance(library, str)
        and _MODULE_NAME.match(library) is not None
        and library.startswith("transformers.")
        and isinstance(model_class, str)
        and model_class.isidentifier()
    )
