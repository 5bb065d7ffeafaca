"""The base model and its trainable adapter: LoRA, DoRA (LoRA with use_dora) or QLoRA (4-bit base).

Only safetensors weights are loaded and trust_remote_code stays off: a base model folder can
never run code in the worker.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, prepare_model_for_kbit_training
from peft.tuners.tuners_utils import check_target_module_exists
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from loraplane.errors import FailedPrecondition, InvalidArgument
from loraplane.training import Method
from trainer_svc.spec import JobSpec


def compute_dtype() -> torch.dtype:
    """bf16 on a GPU that has it; fp32 otherwise (CPU bf16 training is slow or unsupported)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(base_model_path: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(base_model_path, trust_remote_code=False)
    if tokenizer.pad_token is None:
        # Padding positions are masked out of attention and loss, so any token will do.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _quantization_config() -> BitsAndBytesConfig:
    """QLoRA's recipe: NF4 weights with double quantisation, computing in the training dtype."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
    )


def _keep_4bit_weights_trainable_on_cpu(model: torch.nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for fast CPU inference.

    On CPUs with AVX512-BF16, a Linear4bit in eval mode repacks its weight on the first no-grad
    forward (an evaluation during training), and from then on passes no gradient to the layers
    below it, so those adapters stop learning. Evaluation runs slower without the repack.
    """
    from bitsandbytes.nn import Linear4bit  # only QLoRA needs bitsandbytes; it logs on import

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def adapter_config(base: PreTrainedModel, spec: JobSpec) -> LoraConfig:
    """The adapter `spec` asks for (DoRA is LoRA with use_dora); InvalidArgument when its target modules name
    no module of `base`."""
    params = spec.lora
    targets: str | list[str] = "all-linear" if params.target_modules == ["all-linear"] else params.target_modules
    config = LoraConfig(
        r=params.rank,
        lora_alpha=params.alpha,  # type: ignore[arg-type]  # peft annotates int; scaling alpha/r takes floats
        lora_dropout=params.dropout,
        target_modules=targets,
        use_dora=spec.method == Method.DORA,
        task_type="CAUSAL_LM",
    )
    if targets != "all-linear" and not any(
        check_target_module_exists(config, name) for name, _ in base.named_modules()
    ):
        raise InvalidArgument(
            f"no module of the base model is named {' or '.join(params.target_modules)}; name its linear layers "
            "(such as q_proj, v_proj) or leave target_modules empty for all of them",
            field="spec.lora.target_modules",
        )
    return config


def load_base_model(base_model_path: Path, spec: JobSpec) -> PreTrainedModel:
    """The base model for `spec`, 4-bit for QLoRA, in train mode."""
    quantized = spec.method == Method.QLORA
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base_model_path,
            use_safetensors=True,
            trust_remote_code=False,
            dtype=compute_dtype(),
            quantization_config=_quantization_config() if quantized else None,
            # A 4-bit model cannot be moved after loading, so it is placed now; others go where
            # the Trainer puts them.
            device_map={"": torch.cuda.current_device()} if quantized and torch.cuda.is_available() else None,
        )
    except OSError as exc:
        raise FailedPrecondition(f"cannot load the base model from {base_model_path}: {exc}") from exc
    # from_pretrained returns eval mode; a 4-bit layer must not run a forward in it before training.
    model.train()
    if quantized:
        _keep_4bit_weights_trainable_on_cpu(model)
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
