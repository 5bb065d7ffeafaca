"""Stacked LoRA against peft's own mixed-adapter batches: adapters saved by peft, read from their
folders into the stacks, give the same logits for every row, in both layouts (few adapters:
masked blocks; many: per-row gathered weights), with ranks that differ and rsLoRA scaling; an
unloaded adapter's slot is reused without a trace of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = [f"a{index}" for index in range(7)]
CLOSE = {"rtol": 1e-3, "atol": 1e-3}
"""Float32 sums in another order (per-row bmm against peft's per-adapter matmuls) differ by up to
~1e-4 in these large random logits; a wrong or missing adapter changes them by more than 1."""


@pytest.fixture(scope="module")
def peft_model(tiny_model_dir: Path) -> Any:
    """The tiny model with seven random LoRA adapters of ranks 4 and 8 (one only on attention)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    peft: Any = None
    for index, name in enumerate(ADAPTERS):
        targets = TARGETS[:4] if index == 6 else TARGETS
        config = LoraConfig(r=4 if index % 2 else 8, lora_alpha=16, target_modules=targets, use_rslora=index == 3)
        if peft is None:
            peft = get_peft_model(model, config, adapter_name=name)
        else:
            peft.add_adapter(name, config)
    with torch.no_grad():
        for parameter_name, parameter in peft.named_parameters():
            if "lora_B" in parameter_name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return peft.eval()


@pytest.fixture(scope="module")
def adapter_dirs(peft_model: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    peft_model.save_pretrained(root, selected_adapters=ADAPTERS)
    return {name: root / name for name in ADAPTERS}


@pytest.fixture()
def stacked(tiny_model_dir: Path, adapter_dirs: dict[str, Path]) -> Any:
    """A fresh copy of the base model with every adapter read from its folder into the stacks."""
    import torch
    from transformers import AutoModelForCausalLM

    from serving_svc.engines.lora_weights import read_adapter
    from serving_svc.engines.stacked_lora import StackedLora

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    lora = StackedLora(model, torch.float32, expected_adapters=2)  # fewer than loaded: the tables must grow
    rank_4_first = sorted(adapter_dirs, key=lambda name: int(name[1:]) % 2 == 0)  # and their rank grows from 4 to 8
    for name in rank_4_first:
        modules = read_adapter(adapter_dirs[name], model, torch.float32)
        assert not isinstance(modules, str), modules
        lora.add(name, modules)
    return model, lora


def _logits(model: Any, rows: list[str], lora: Any = None, running: bool = False) -> Any:
    import torch

    input_ids = torch.randint(3, 500, (len(rows), 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        if lora is None:
            return model(input_ids=input_ids, adapter_names=rows).logits
        with lora.rows(rows, running=running):
            return model(input_ids=input_ids).logits


@pytest.mark.parametrize(
    "rows",
    [
        ["a0", "__base__", "a1", "a0"],  # masked blocks
        ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "__base__", "a2"],  # per-row gathered weights
    ],
    ids=["few-adapters", "many-adapters"],
)
def test_stacked_rows_give_peft_mixed_batch_logits(peft_model: Any, stacked: Any, rows: list[str]) -> None:
    import torch

    model, lora = stacked
    expected = _logits(peft_model, rows)
    actual = _logits(model, rows, lora)
    plain = _logits(model, ["__base__"] * len(rows), lora)
    torch.testing.assert_close(actual, expected, **CLOSE)
    base_rows = [i for i, name in enumerate(rows) if name == "__base__"]
    torch.testing.assert_close(plain[base_rows], expected[base_rows], **CLOSE)
    assert (plain[0] - expected[0]).abs().max() > 1, "the adapters must change the logits far beyond the tolerance"


def test_the_running_batchs_rows_follow_each_change_of_adapter(peft_model: Any, stacked: Any) -> None:
    """The running batch keeps each row's weights between steps and copies in only the rows that
    change: after rows are freed, retaken by other adapters and the batch grows, every row still
    gets its own adapter."""
    import torch

    model, _ = stacked
    lora = stacked[1]
    for rows in (
        ["a0", "a1", "a2", "a3", "a4", "a5"],
        ["a0", "__base__", "a2", "a6", "a4", "a5"],  # a row freed, another retaken by a6
        ["a5", "a1", "a2", "a6", "a4", "a5", "a3", "a0"],  # the batch grows by two rows
        ["a0", "a1", "a2", "a3", "a4", "a5"],  # and is compacted again
    ):
        torch.testing.assert_close(_logits(model, rows, lora, running=True), _logits(peft_model, rows), **CLOSE)


def test_a_removed_adapters_slot_is_reused_cleanly(
    peft_model: Any, stacked: Any, adapter_dirs: dict[str, Path]
) -> None:
    """a6 adapts attention only: written into a0's old slot, a0's MLP weights must not linger there,
    neither in the tables nor in the running batch's row that held a0."""
    import torch

    from serving_svc.engines.lora_weights import read_adapter

    model, lora = stacked
    others = ["a1", "__base__", "a2", "a3", "a4"]
    _logits(model, ["a0", *others], lora, running=True)  # row 0 of the running batch holds a0
    lora.remove("a0")
    assert "a0" not in lora
    modules = read_adapter(adapter_dirs["a6"], model, torch.float32)
    assert not isinstance(modules, str)
    lora.add("a6 again", modules)
    for running in (False, True):
        torch.testing.assert_close(
            _logits(model, ["a6 again", *others], lora, running),
            _logits(peft_model, ["a6", *others]),
            **CLOSE,
        )


def test_removed_weights_added_back_give_the_same_logits(peft_model: Any, stacked: Any) -> None:
    """What `take` hands back (the host copy of an offloaded adapter) is the adapter at its own rank,
    scaling folded in: added again, it answers as before, beside adapters of a higher rank."""
    import torch

    model, lora = stacked
    rows = ["a1", "a0", "__base__", "a3"]  # a1: rank 4 in tables padded to 8; a3: rank 4 with rsLoRA scaling
    for name in ("a1", "a3"):
        weights = lora.take(name)
        assert {module.a.shape[0] for module in weights.values()} == {4}
        assert {module.scaling for module in weights.values()} == {1.0}
        lora.add(name, weights)
    torch.testing.assert_close(_logits(model, rows, lora), _logits(peft_model, rows), **CLOSE)


def test_adapters_beyond_plain_lora_are_left_to_peft(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from serving_svc.engines.lora_weights import read_adapter

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True)).save_pretrained(tmp_path)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert read_adapter(tmp_path, fresh, torch.float32) == "use_dora is set (True)"


def test_an_adapter_for_another_model_is_refused_with_the_layer(
    tiny_model_dir: Path, adapter_dirs: dict[str, Path], tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from serving_svc.engines.lora_weights import read_adapter

    source = adapter_dirs["a1"]
    (tmp_path / "adapter_config.json").write_text((source / "adapter_config.json").read_text())
    tensors = load_file(source / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith("q_proj.lora_A.weight"))
    tensors[key] = torch.zeros((tensors[key].shape[0], tensors[key].shape[1] + 1))
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with pytest.raises(ValueError, match="q_proj: LoRA shapes .* trained on another base model"):
        read_adapter(tmp_path, model, torch.float32)
