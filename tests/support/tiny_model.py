"""A tiny random Llama with a locally trained tokenizer: the base model of every integration test.

Built from a config in a few seconds and seeded, so its fingerprint is the same on every run and
no test needs a download. Shapes suit vLLM's CPU attention (head_dim 64) as well as peft.
Run as a script to build one for a benchmark: `python -m tests.support.tiny_model DEST`.

Every test session loads this module as a pytest plugin, so torch and transformers are imported
inside the functions: tests that never build the model do not pay for them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from serving_svc.engines.base import EngineConfig

BOS, EOS, PAD = "<|im_start|>", "<|im_end|>", "<|pad|>"
# ChatML, as SmolLM2 and many instruct models use: every turn ends in EOS, so a chat completion
# stops where an assistant turn ends.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
VOCAB_SIZE = 512
SEED = 0

_CORPUS = (
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.",
    "Water boils at one hundred degrees Celsius at sea level and freezes at zero degrees.",
    "A language model predicts the next token from the tokens that came before it.",
    "Fine-tuning adapts a pretrained model to a new task with a small amount of data.",
    "Question: What is two plus two? Answer: Four. Question: What colour is the sky? Answer: Blue.",
    "Translate to French: good morning -> bonjour. Translate to French: thank you -> merci.",
    "user: Hello, how are you today? assistant: I am well, thank you for asking.",
    "system: You are a helpful assistant that answers briefly and politely.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 30 42 100 1000. Symbols: {}[]()<>.,;:!?'\"-_/",
    "Rivers flow to the sea; mountains rise above the clouds; forests cover the hills.",
    "Reply with the label: positive, negative or neutral. The film was wonderful. Label: positive",
)


def _train_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the built-in corpus, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )


def build_tiny_model(dest: Path) -> Path:
    """Write the tiny model (config, safetensors weights, tokenizer) into `dest` and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # Five times the usual 0.02: with hidden size 128, the frozen random output layer could
        # not express a confident prediction otherwise, and no adapter could memorise test data.
        initializer_range=0.1,
        dtype="float32",
    )
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


def tiny_engine_config(model_dir: Path, *, max_batch_size: int, adapters: int) -> EngineConfig:
    """An engine config for the tiny model: float32, a 256-token context, `adapters` engine and host slots."""
    from serving_svc.engines.base import EngineConfig

    return EngineConfig(
        model_path=model_dir,
        served_model_name="tiny",
        dtype="float32",
        max_model_len=256,
        max_batch_size=max_batch_size,
        max_loaded_adapters=adapters,
        max_cpu_adapters=adapters,
        max_lora_rank=16,
        gpu_memory_utilization=0.2,  # on a CPU, vLLM's share of the machine's memory, shared with the tests
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny model per test session, shared by every test that needs a base model."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.support.tiny_model DEST")
    print(build_tiny_model(Path(sys.argv[1])))
