"""Scaled dot-product attention that leaves grouped key/value heads grouped, with a padding mask too.

transformers' `sdpa` attention repeats each key/value head for its group of query heads (a copy
of the whole cache, every layer, every step) whenever an attention mask is given, because CUDA's
fast kernels cannot take both. A continuous batch always has a mask (its rows are left-padded to
one length), and on a CPU PyTorch's kernel takes `enable_gqa` with a mask: the same attention
without the copy, to the same greedy tokens, and a faster decode step for every model whose
key/value heads are grouped. Registered under its own name through transformers' attention
interface, with sdpa's masks (`compat.register_attention`).
"""

from __future__ import annotations

from typing import Any

import torch

from serving_svc.engines.compat import register_attention

GROUPED_SDPA = "loraplane_grouped_sdpa"
"""The `attn_implementation` name to load a model with this attention."""


def grouped_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: [batch, heads, tokens, dim] in, [batch, tokens, heads, dim] out."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if causal and attention_mask is None and query.shape[2] > 1 and query.shape[2] != key.shape[2]:
        raise ValueError("a causal prefill onto cached tokens needs an attention mask")
    output = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        # Without a mask, sdpa's own causal mask (a prefill of an empty cache: as many keys as queries).
        is_causal=bool(causal and attention_mask is None and query.shape[2] > 1),
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return output.transpose(1, 2).contiguous(), None


def register_grouped_sdpa() -> str:
    """Make GROUPED_SDPA loadable (idempotent) and return the name."""
    register_attention(GROUPED_SDPA, grouped_sdpa_attention)
    return GROUPED_SDPA
