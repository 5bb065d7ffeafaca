"""Stacked LoRA against peft's own mixed-adapter batches: the same logits for every row, in both
layouts (few adapters: masked blocks; many: per-row gathered weights), and ranks that differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def peft_model(tiny_model_dir: Path) -> Any:
    """The tiny model with seven random LoRA adapters of ranks 4 and 8 (one only on attention)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    peft: Any = None
    for index in range(7):
        targets = TARGETS[:4] if index == 6 else TARGETS
        config = LoraConfig(r=4 if index % 2 else 8, lora_alpha=16, target_modules=targets, use_rslora=index == 3)
        name = f"a{index}"
        if peft is None:
            peft = get_peft_model(model, config, adapter_name=name)
        else:
            peft.add_adapter(name, config)
    with torch.no_grad():
        for parameter_name, parameter in peft.named_parameters():
            if "lora_B" in parameter_name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return peft.eval()


@pytest.mark.parametrize(
    "rows",
    [
        ["a0", "__base__", "a1", "a0"],  # masked blocks
        ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "__base__", "a2"],  # per-row gathered weights
    ],
    ids=["few-adapters", "many-adapters"],
)
def test_stacked_rows_give_peft_mixed_batch_logits(peft_model: Any, rows: list[str]) -> None:
    import torch

    from serving_svc.engines.stacked_lora import StackedLora

    input_ids = torch.randint(3, 500, (len(rows), 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = peft_model(input_ids=input_ids, adapter_names=rows).logits
        stacked = StackedLora(peft_model)
        assert all(stacked.stackable(name) for name in rows if name != "__base__")
        peft_model.base_model.disable_adapter_layers()
        try:
            with stacked.rows(rows):
                actual = peft_model.base_model.model(input_ids=input_ids).logits
            plain = peft_model.base_model.model(input_ids=input_ids).logits
        finally:
            peft_model.base_model.enable_adapter_layers()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    base_rows = [i for i, name in enumerate(rows) if name == "__base__"]
    torch.testing.assert_close(plain[base_rows], expected[base_rows], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain[0], expected[0], atol=1e-3), "the adapters must change the logits"
