"""The engine reproduces an LM head only where a probe shows it equals the model's own: plain heads and
Gemma's soft-capping are, while heads whose forward scales the logits further (Granite's
`logits_scaling`, Cohere's `logit_scale`) are told apart, so their prompts are scored by their own forward."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from serving_svc.engines import compat

TINY = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "max_position_embeddings": 64,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 2,
}


def _model(model_class: Any, config: Any) -> Any:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return model_class(config).eval()


@pytest.mark.parametrize(
    ("model_class", "config"),
    [
        (LlamaForCausalLM, LlamaConfig(**TINY)),
        (Gemma2ForCausalLM, Gemma2Config(**TINY, final_logit_softcapping=0.05)),
        (GraniteForCausalLM, GraniteConfig(**TINY, logits_scaling=1.0)),
    ],
    ids=["llama", "gemma2-softcapped", "granite-unscaled"],
)
def test_a_head_the_engine_reproduces_passes_the_probe(model_class: Any, config: Any) -> None:
    assert compat.head_reproduced(_model(model_class, config))


@pytest.mark.parametrize(
    ("model_class", "config"),
    [
        (GraniteForCausalLM, GraniteConfig(**TINY, logits_scaling=4.0)),
        (CohereForCausalLM, CohereConfig(**TINY, logit_scale=0.5)),
    ],
    ids=["granite-logits-scaling", "cohere-logit-scale"],
)
def test_a_head_whose_forward_scales_the_logits_fails_the_probe(model_class: Any, config: Any) -> None:
    assert not compat.head_reproduced(_model(model_class, config))


def test_the_soft_cap_matters_in_the_probe() -> None:
    """Without its soft-capping the Gemma head above would not pass: the cap changes its logits."""
    model = _model(Gemma2ForCausalLM, Gemma2Config(**TINY, final_logit_softcapping=0.05))
    input_ids = torch.tensor([[3, 4, 5]])
    mask, positions = torch.ones_like(input_ids), torch.arange(3)[None]
    with torch.inference_mode():
        own, hidden = compat.forward(model, input_ids, mask, positions, None, every_position=True, hidden_of=[0])
        assert hidden is not None
        uncapped = model.get_output_embeddings()(hidden)
        torch.testing.assert_close(compat.head_logits(model, hidden), own)
    assert (uncapped - own).abs().max() > 0.01
