"""select_tokens and RowSampler: greedy, barred end tokens, seeds, top-k/top-p, raw log-probabilities."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch

from serving_svc.engines.base import SamplingOptions
from serving_svc.engines.sampler import RowSampler, select_tokens

END_TOKENS = torch.tensor([0, 1])
VOCAB = 32


def _row(**options: Any) -> RowSampler:
    return RowSampler.for_options(SamplingOptions(max_tokens=16, **options))


def _random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def _draw(logits: torch.Tensor, sampler: RowSampler, times: int) -> Counter[int]:
    drawn: Counter[int] = Counter()
    for _ in range(times):
        tokens, _ = select_tokens(logits, [sampler], [0], END_TOKENS)
        drawn[tokens[0]] += 1
    return drawn


def test_greedy_takes_the_argmax_and_reports_its_raw_logprob() -> None:
    logits = _random_logits(6)
    tokens, logprobs = select_tokens(logits, [_row(temperature=0.0) for _ in range(6)], [5] * 6, END_TOKENS)
    assert tokens == logits.argmax(dim=-1).tolist()
    expected = torch.log_softmax(logits, dim=-1)[torch.arange(6), torch.tensor(tokens)]
    assert logprobs == pytest.approx(expected.tolist())


@pytest.mark.parametrize("temperature", [2.8026e-45, 1e-30, 9e-6])
def test_a_temperature_too_small_to_divide_by_decodes_greedily(temperature: float) -> None:
    logits = _random_logits(3)
    samplers = [_row(temperature=temperature, seed=7) for _ in range(3)]
    tokens, _ = select_tokens(logits, samplers, [5] * 3, END_TOKENS)  # no inf/nan distribution, no error
    assert tokens == logits.argmax(dim=-1).tolist()


def _end_favoured() -> torch.Tensor:
    logits = torch.zeros(1, VOCAB)
    logits[0, 1] = 10.0  # an end token is by far the likeliest
    logits[0, 7] = 5.0  # then token 7
    return logits


@pytest.mark.parametrize(
    ("min_tokens", "ignore_eos", "generated", "end_allowed"),
    [
        (0, False, 0, True),
        (3, False, 0, False),
        (3, False, 2, False),
        (3, False, 3, True),
        (3, False, 9, True),
        (0, True, 0, False),
        (0, True, 50, False),
        (3, True, 9, False),
    ],
)
@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.0, "top_k": 1, "seed": 3}])
def test_min_tokens_and_ignore_eos_bar_every_end_token(
    min_tokens: int, ignore_eos: bool, generated: int, end_allowed: bool, sampling: dict[str, Any]
) -> None:
    sampler = _row(min_tokens=min_tokens, ignore_eos=ignore_eos, **sampling)
    assert sampler.end_token_allowed(generated) == end_allowed
    tokens, _ = select_tokens(_end_favoured(), [sampler], [generated], END_TOKENS)
    assert tokens == [1 if end_allowed else 7]


def test_barred_end_tokens_are_never_sampled() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, :2] = 20.0  # both end tokens hold nearly all the mass
    drawn = _draw(logits, _row(temperature=1.0, min_tokens=1, seed=0), 200)
    assert not drawn.keys() & {0, 1}
    assert len(drawn) > 5  # the rest is sampled, not argmax'd


def test_barring_is_per_row_and_leaves_the_callers_logits_alone() -> None:
    logits = _end_favoured().repeat(2, 1)
    before = logits.clone()
    samplers = [_row(temperature=0.0, min_tokens=2), _row(temperature=0.0, min_tokens=2)]
    tokens, logprobs = select_tokens(logits, samplers, [0, 2], END_TOKENS)
    assert tokens == [7, 1]
    assert torch.equal(logits, before)
    raw = torch.log_softmax(before[0], dim=-1)
    assert logprobs == pytest.approx([raw[7].item(), raw[1].item()])  # of the raw distribution, not renormalized


def test_same_seed_gives_the_same_samples_and_another_seed_others() -> None:
    logits = torch.zeros(1, 1000)

    def run(seed: int) -> list[int]:
        sampler = _row(temperature=1.0, seed=seed)
        return [select_tokens(logits, [sampler], [0], END_TOKENS)[0][0] for _ in range(20)]

    assert run(42) == run(42)
    assert run(42) != run(43)


@pytest.mark.parametrize(
    ("options", "has_generator"),
    [
        ({"seed": 1, "temperature": 0.7}, True),
        ({"seed": 1, "temperature": 0.0}, False),
        ({"temperature": 0.7}, False),
    ],
)
def test_a_row_gets_its_own_generator_only_when_seeded_and_sampling(
    options: dict[str, Any], has_generator: bool
) -> None:
    assert (_row(**options).generator is not None) == has_generator


@pytest.mark.parametrize(
    "options",
    [{"top_k": 1}, {"top_p": 1e-6}, {"top_k": 1, "top_p": 0.5}],
    ids=["top-k-1", "tiny-top-p", "both"],
)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_truncation_to_one_token_equals_greedy(options: dict[str, Any], temperature: float) -> None:
    logits = _random_logits(8, seed=5)
    samplers = [_row(temperature=temperature, seed=i, **options) for i in range(8)]
    tokens, _ = select_tokens(logits, samplers, [4] * 8, END_TOKENS)
    assert tokens == logits.argmax(dim=-1).tolist()


@pytest.mark.parametrize(
    ("top_p", "support"),
    [(0.3, {2}), (0.45, {2, 3}), (0.65, {2, 3}), (0.75, {2, 3, 4}), (0.95, {2, 3, 4, 5}), (1.0, {2, 3, 4, 5})],
)
def test_top_p_keeps_the_smallest_prefix_that_reaches_it(top_p: float, support: set[int]) -> None:
    logits = torch.full((1, VOCAB), float("-inf"))
    logits[0, 2:6] = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    drawn = _draw(logits, _row(temperature=1.0, top_p=top_p, seed=11), 300)
    assert set(drawn) == support


@pytest.mark.parametrize(("top_k", "support"), [(1, {9}), (2, {9, 8}), (3, {9, 8, 7})])
def test_top_k_keeps_the_k_likeliest(top_k: int, support: set[int]) -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, 7:10] = torch.tensor([1.0, 1.5, 2.0])
    drawn = _draw(logits, _row(temperature=1.0, top_k=top_k, seed=2), 300)
    assert set(drawn) == support


@pytest.mark.parametrize(
    ("temperature", "shares"),
    [(0.05, (1.0, 0.0, 0.0)), (1.0, (0.665, 0.245, 0.090)), (100.0, (0.337, 0.333, 0.330))],
)
def test_temperature_sharpens_or_flattens_the_distribution(temperature: float, shares: tuple[float, ...]) -> None:
    logits = torch.full((1, VOCAB), float("-inf"))
    logits[0, 2:5] = torch.tensor([2.0, 1.0, 0.0])
    draws = 600
    drawn = _draw(logits, _row(temperature=temperature, seed=8), draws)
    assert [drawn[token] / draws for token in (2, 3, 4)] == pytest.approx(shares, abs=0.06)


def test_temperature_does_not_change_the_reported_logprobs() -> None:
    logits = _random_logits(1, seed=9)
    raw = torch.log_softmax(logits[0], dim=-1)
    for temperature in (0.0, 0.3, 2.0):
        sampler = _row(temperature=temperature, seed=4)
        tokens, logprobs = select_tokens(logits, [sampler], [3], END_TOKENS)
        assert logprobs == pytest.approx([raw[tokens[0]].item()])


def test_half_precision_logits_are_sampled_in_float32() -> None:
    logits = _random_logits(3, seed=1).to(torch.bfloat16)
    samplers = [_row(temperature=0.0), _row(temperature=0.8, seed=1), _row(temperature=0.8, top_k=4, seed=2)]
    tokens, logprobs = select_tokens(logits, samplers, [1, 1, 1], END_TOKENS)
    assert tokens[0] == logits[0].float().argmax().item()
    assert all(isinstance(lp, float) and lp <= 0 for lp in logprobs)
