"""The grouped-heads attention computes what transformers' own sdpa attention does (which repeats
the key/value heads), with a padding mask and without one, and refuses what it cannot align."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from serving_svc.engines.attention import grouped_sdpa_attention, register_grouped_sdpa

HEADS, KV_HEADS, DIM = 6, 2, 16


def _attention_inputs(rows: int, queries: int, keys: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn((rows, HEADS, queries, DIM), generator=generator),
        torch.randn((rows, KV_HEADS, keys, DIM), generator=generator),
        torch.randn((rows, KV_HEADS, keys, DIM), generator=generator),
    )


def _padding_mask(rows: int, queries: int, keys: int) -> torch.Tensor:
    """Row r left-padded by r columns, causal over the last `queries` keys."""
    mask = torch.ones((rows, 1, queries, keys), dtype=torch.bool).tril(keys - queries)
    for row in range(rows):
        mask[row, :, :, :row] = False
    return mask


MODULE = SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, is_causal=True)


@pytest.mark.parametrize(
    ("queries", "keys", "masked"),
    [(1, 9, True), (5, 5, True), (5, 5, False), (1, 9, False)],
    ids=["decode-masked", "prefill-masked", "prefill-causal", "decode-unmasked"],
)
def test_grouped_attention_equals_transformers_sdpa(queries: int, keys: int, masked: bool) -> None:
    query, key, value = _attention_inputs(3, queries, keys)
    mask = _padding_mask(3, queries, keys) if masked else None
    expected, _ = sdpa_attention_forward(MODULE, query, key, value, mask, scaling=0.25)  # type: ignore[arg-type]
    actual, _ = grouped_sdpa_attention(MODULE, query, key, value, mask, scaling=0.25)  # type: ignore[arg-type]
    torch.testing.assert_close(actual, expected)


def test_an_unmasked_prefill_onto_cached_keys_is_refused() -> None:
    query, key, value = _attention_inputs(1, 3, 7)
    with pytest.raises(ValueError, match="needs an attention mask"):
        grouped_sdpa_attention(MODULE, query, key, value, None)  # type: ignore[arg-type]


def test_registration_is_idempotent_and_loadable_by_name() -> None:
    from transformers import AttentionInterface

    name = register_grouped_sdpa()
    assert register_grouped_sdpa() == name
    assert AttentionInterface()[name] is grouped_sdpa_attention
