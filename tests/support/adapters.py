"""Adapters for tests: made with peft (random, non-zero B weights so they change the output) and
published to a store the way the trainer publishes them; and the fresh adapter the worker trains."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loraplane.artifact import ArtifactRepository, BaseModelInfo, DatasetInfo, Manifest, ManifestDraft
from loraplane.drift import Profile

if TYPE_CHECKING:
    from peft import PeftModel

    from trainer_svc.spec import JobSpec

RANK = 8


def make_adapter(base_dir: Path, dest: Path, seed: int, *, dora: bool = False) -> Path:
    """A peft LoRA (or DoRA) adapter on every linear layer, with random B (and magnitudes) so it really
    changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=RANK,
        lora_alpha=2 * RANK,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_dora=dora,
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
            elif "lora_magnitude_vector" in name:
                parameter.mul_(1 + 0.5 * torch.rand(parameter.shape, generator=generator))
    peft_model.save_pretrained(str(dest))
    Profile().save(dest / "profile.json")  # valid and empty: traffic is profiled, no statistic computed
    return dest


def publish_adapter(
    repository: ArtifactRepository,
    source: Path,
    name: str,
    fingerprint: str,
    method: str = "lora",
    prompt_format: str = "raw",
) -> Manifest:
    draft = ManifestDraft(
        name=name,
        base_model=BaseModelInfo(name="tiny", fingerprint=fingerprint),
        method=method,
        hyperparameters={"rank": RANK, "alpha": 2 * RANK},
        metrics={"train_loss": 1.0},
        dataset=DatasetInfo(fingerprint="sha256:test", train_examples=1, validation_examples=0),
        job_id=f"test-{name}",
        prompt_format=prompt_format,
    )
    return repository.publish(source, draft)[0]


def load_model(base_model_path: Path, spec: JobSpec) -> PeftModel:
    """The base model with the fresh adapter `spec` asks for, as the worker builds it for supervised tuning."""
    from peft import get_peft_model

    from trainer_svc.worker.model import adapter_config, load_base_model

    base = load_base_model(base_model_path, spec)
    return get_peft_model(base, adapter_config(base, spec))  # type: ignore[return-value]
