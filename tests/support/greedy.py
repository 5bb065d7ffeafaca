"""transformers' and peft's own greedy generation, the reference the engines' answers are checked against."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def reference_model(base_dir: Path, adapter_dir: Path | None = None) -> Any:
    """The base model in float32 (with the peft adapter in `adapter_dir`, when given), in eval mode."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return (PeftModel.from_pretrained(model, adapter_dir) if adapter_dir is not None else model).eval()


def greedy_reference(model: Any, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """`model.generate(do_sample=False)` of one prompt alone: its new tokens, ended by max_new_tokens or EOS."""
    import torch

    input_ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=model.config.pad_token_id,
        )
    return output[0, len(prompt_ids) :].tolist()  # type: ignore[no-any-return]
