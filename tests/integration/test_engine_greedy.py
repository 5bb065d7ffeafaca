"""The transformers engine computes what transformers and peft compute, token for token.

Prompts of different lengths decoded in one batch give `model.generate(do_sample=False)`'s tokens for
each alone; rows with LoRA and DoRA adapters mixed into that batch give peft's `generate`; prompt
scores (drift's prompt surprise) equal the log-probabilities of the model's own forward, for a head
the engine reproduces (Llama) and for one whose forward scales its logits (Granite's logits_scaling).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from serving_svc.engines.base import GenerationDelta, GenerationRequest, SamplingOptions
from serving_svc.engines.transformers import TransformersEngine
from tests.support.adapters import make_adapter
from tests.support.greedy import greedy_reference, reference_model
from tests.support.tiny_model import tiny_engine_config

NEW_TOKENS = 12
PROMPTS = [
    "The capital of France is",
    "Hello",
    "A language model predicts the next token from the tokens that came before it, and",
    "Water boils at",
    "Numbers: 0 1 2 3",
]


@asynccontextmanager
async def _engine(model_dir: Path) -> AsyncIterator[tuple[TransformersEngine, list[int]]]:
    """A started engine on `model_dir`, and the batch size of each decode step it runs."""
    config = tiny_engine_config(model_dir, max_batch_size=8, adapters=4)
    steps: list[int] = []
    engine = TransformersEngine(config, steps.append)
    await engine.start()
    try:
        yield engine, steps
    finally:
        await engine.close()


async def _generate(
    engine: TransformersEngine, prompt_ids: list[int], adapter: str | None = None, score_prompt: bool = False
) -> tuple[list[int], GenerationDelta]:
    """The greedy answer's tokens, and its last delta."""
    sampling = SamplingOptions(max_tokens=NEW_TOKENS, temperature=0.0)
    request = GenerationRequest("greedy", tuple(prompt_ids), sampling, adapter, score_prompt=score_prompt)
    deltas = [delta async for delta in engine.generate(request)]
    return [token for delta in deltas for token in delta.token_ids], deltas[-1]


def _prompt_logprob_reference(model: Any, prompt_ids: list[int]) -> float:
    """The sum of log p(token | tokens before) over prompt tokens 1..n-1, from the model's own logits."""
    import torch

    input_ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        logprobs = model(input_ids=input_ids).logits.float().log_softmax(-1)
    return float(logprobs[0, :-1].gather(-1, input_ids[0, 1:, None]).sum())


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engine-adapters")
    return {
        "lora-1": make_adapter(tiny_model_dir, root / "lora-1", seed=1),
        "lora-2": make_adapter(tiny_model_dir, root / "lora-2", seed=2),
        "dora": make_adapter(tiny_model_dir, root / "dora", seed=3, dora=True),
    }


async def test_prompts_of_different_lengths_in_one_batch_decode_what_generate_does(tiny_model_dir: Path) -> None:
    async with _engine(tiny_model_dir) as (engine, steps):
        prompts = [await engine.tokenize(prompt) for prompt in PROMPTS]
        answers = await asyncio.gather(*(_generate(engine, prompt_ids) for prompt_ids in prompts))
    assert max(steps) == len(PROMPTS), "the prompts decoded together"
    model = reference_model(tiny_model_dir, None)
    assert [tokens for tokens, _ in answers] == [
        greedy_reference(model, prompt_ids, NEW_TOKENS) for prompt_ids in prompts
    ]


async def test_rows_with_their_own_adapters_in_one_batch_decode_what_peft_generates(
    tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    rows = [(None, 0), ("lora-1", 1), ("lora-2", 2), ("dora", 3), ("lora-1", 4), (None, 2), ("dora", 0)]
    async with _engine(tiny_model_dir) as (engine, steps):
        for key, path in adapters.items():
            await engine.add_adapter(key, path)
        prompts = [await engine.tokenize(prompt) for prompt in PROMPTS]
        answers = await asyncio.gather(*(_generate(engine, prompts[p], adapter) for adapter, p in rows))
    assert max(steps) == 5, "base and LoRA rows decoded together (DoRA in a batch of its own)"
    for adapter in {adapter for adapter, _ in rows}:
        model = reference_model(tiny_model_dir, adapters[adapter] if adapter else None)
        for (row_adapter, p), (tokens, _) in zip(rows, answers, strict=True):
            if row_adapter == adapter:
                assert tokens == greedy_reference(model, prompts[p], NEW_TOKENS), (adapter, PROMPTS[p])


@pytest.fixture(scope="module")
def granite_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's shapes and tokenizer as a Granite model, whose forward divides the LM head's
    logits by logits_scaling."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, GraniteConfig, GraniteForCausalLM

    dest = tmp_path_factory.mktemp("tiny-granite")
    llama = AutoConfig.from_pretrained(tiny_model_dir).to_dict()
    shapes = {key: llama[key] for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")}
    heads = {key: llama[key] for key in ("num_attention_heads", "num_key_value_heads", "head_dim")}
    tokens = {key: llama[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings")}
    config = GraniteConfig(**shapes, **heads, **tokens, initializer_range=0.1, logits_scaling=4.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        GraniteForCausalLM(config).save_pretrained(dest)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(dest)
    return dest


@pytest.mark.parametrize("architecture", ["llama", "granite"])
async def test_prompt_scores_are_the_models_own_log_probabilities(
    architecture: str, tiny_model_dir: Path, granite_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = tiny_model_dir if architecture == "llama" else granite_model_dir
    adapter_dir = make_adapter(model_dir, tmp_path / "lora", seed=5)
    rows = [(None, True, 0), ("lora", True, 2), (None, False, 1), ("lora", False, 3), (None, True, 4)]
    async with _engine(model_dir) as (engine, _):
        await engine.add_adapter("lora", adapter_dir)
        prompts = [await engine.tokenize(prompt) for prompt in PROMPTS]
        answers = await asyncio.gather(
            *(_generate(engine, prompts[p], adapter, score_prompt=scored) for adapter, scored, p in rows)
        )
    references = {adapter: reference_model(model_dir, adapter_dir if adapter else None) for adapter in (None, "lora")}
    for (adapter, scored, p), (_, last) in zip(rows, answers, strict=True):
        if not scored:
            assert last.prompt_logprob is None
            continue
        expected = _prompt_logprob_reference(references[adapter], prompts[p])
        assert last.prompt_logprob == pytest.approx(expected, rel=1e-4, abs=1e-3), (adapter, PROMPTS[p])
