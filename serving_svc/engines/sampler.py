"""Choosing each row's next token from one step's logits, with that row's own sampling options.

Rows of one batch differ in everything (greedy or not, temperature, top-k/top-p, seed, min_tokens),
so the batch is processed as a whole where it can be (log-probabilities, the greedy argmax) and
row by row only for rows that sample. Log-probabilities are those of the model's raw
distribution, before temperature or truncation, as vLLM reports them by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from serving_svc.engines.base import SamplingOptions


class TokenConstraint(Protocol):
    """Structured output's hold on one row: which tokens may come next, and the one that came."""

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits ([1, vocabulary]) of the tokens not allowed next to -inf, in place."""

    def accept(self, token: int) -> None: ...


@dataclass
class RowSampler:
    """One sequence's sampling state: its options, its own random generator when seeded, and its
    structured-output constraint if it has one."""

    options: SamplingOptions
    generator: torch.Generator | None = None
    constraint: TokenConstraint | None = None

    @classmethod
    def for_options(cls, options: SamplingOptions, constraint: TokenConstraint | None = None) -> RowSampler:
        generator = None
        if options.seed is not None and not options.greedy:
            generator = torch.Generator().manual_seed(options.seed)
        return cls(options, generator, constraint)

    def end_token_allowed(self, generated: int) -> bool:
        """Whether an end token may end the answer now; under a constraint, the grammar decides."""
        if self.constraint is not None:
            return True
        return not self.options.ignore_eos and generated >= self.options.min_tokens


def select_tokens(
    logits: torch.Tensor, samplers: list[RowSampler], generated: list[int], end_token_ids: torch.Tensor
) -> tuple[list[int], list[float]]:
    """The next token of every row and its log-probability; end tokens are barred where a row's
    min_tokens or ignore_eos says so, and a constrained row chooses among the tokens its grammar allows."""
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    barred = [i for i, (s, n) in enumerate(zip(samplers, generated, strict=True)) if not s.end_token_allowed(n)]
    constrained = [(i, s.constraint) for i, s in enumerate(samplers) if s.constraint is not None]
    if barred or constrained:
        logits = logits.clone()
    if barred:
        rows = torch.tensor(barred)
        logits[rows.unsqueeze(1), end_token_ids.unsqueeze(0)] = float("-inf")
    for i, constraint in constrained:
        constraint.mask(logits[i : i + 1])
    tokens = logits.argmax(dim=-1).tolist()
    for i, sampler in enumerate(samplers):
        if not sampler.options.greedy:
            tokens[i] = _sample(logits[i], sampler)
    for i, constraint in constrained:
        constraint.accept(tokens[i])
    chosen = logprobs.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1).tolist()
    return tokens, chosen


def _sample(logits: torch.Tensor, sampler: RowSampler) -> int:
    options = sampler.options
    scaled = logits / options.temperature
    if options.top_k > 0 and options.top_k < scaled.numel():
        kth = torch.topk(scaled, options.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the likeliest token).
        outside = (sorted_probs.cumsum(0) - sorted_probs) >= options.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=sampler.generator).item())
