import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loraplane.errors import FailedPrecondition, InvalidArgument
from tests.support.adapters import load_model
from trainer_svc.spec import JobSpec


def _spec(**overrides) -> JobSpec:
    return JobSpec(base_model="tiny", adapter_name="a", training_data={"inline_jsonl": "{}"}, **overrides)


def _lora_b_gradients(model) -> dict[str, float]:
    model.zero_grad()
    ids = torch.arange(3, 19).reshape(2, 8)
    model(input_ids=ids, labels=ids).loss.backward()
    return {name: p.grad.abs().sum().item() for name, p in model.named_parameters() if "lora_B" in name}


def test_qlora_keeps_learning_after_an_evaluation(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir, _spec(method="qlora"))
    assert model.training
    model.eval()
    with torch.no_grad():  # what an evaluation during training does
        model(input_ids=torch.arange(3, 11)[None])
    model.train()
    gradients = _lora_b_gradients(model)
    assert gradients and all(value > 0 for value in gradients.values()), gradients


def test_dora_sets_use_dora(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir, _spec(method="dora", lora={"rank": 4}))
    config = model.peft_config["default"]
    assert config.use_dora and config.r == 4 and config.lora_alpha == 8
    assert model.training


def test_unknown_target_module_is_an_invalid_argument(tiny_model_dir: Path) -> None:
    with pytest.raises(InvalidArgument) as caught:
        load_model(tiny_model_dir, _spec(lora={"target_modules": ["no_such_proj"]}))
    assert caught.value.field == "spec.lora.target_modules"


def test_pickled_weights_are_never_loaded(tiny_model_dir: Path, tmp_path: Path) -> None:
    for path in tiny_model_dir.iterdir():
        if path.name != "model.safetensors":
            shutil.copy(path, tmp_path / path.name)
    torch.save(load_file(tiny_model_dir / "model.safetensors"), tmp_path / "pytorch_model.bin")
    with pytest.raises(FailedPrecondition, match="model.safetensors"):
        load_model(tmp_path, _spec())
