"""From one forward pass's logits to what each caller receives: tokens, text and finish reasons.

The output processor samples every row's next token with that row's own options (`sampler.py`),
turns it into text (`detokenizer.py`, stop strings included) and decides whether the sequence has
finished: an end token where it may end, max_tokens, the context length, or a stop string. Each
token goes out as a `GenerationDelta` through the sequence's `emit`, which is safe to call from the
engine thread. vLLM splits the same work between its sampler and its frontend's output processor;
here both run on the engine thread, between forward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from serving_svc.engines.base import FinishReason, GenerationDelta, TokenLogprob, Usage
from serving_svc.engines.detokenizer import Decoder, IncrementalDetokenizer
from serving_svc.engines.model_runner import PromptMeasures
from serving_svc.engines.sampler import RowSampler, select_tokens
from serving_svc.engines.scheduler import Sequence

Emit = Callable[[GenerationDelta | BaseException], None]
"""Hands a sequence's next delta, or the error that ends it, to its caller; safe on the engine thread."""


@dataclass(eq=False)
class _Stream:
    """What one sequence has generated, and how its next token is chosen and written out."""

    emit: Emit
    sampler: RowSampler
    detokenizer: IncrementalDetokenizer
    generated: list[int] = field(default_factory=list)
    prompt: PromptMeasures = PromptMeasures()


class OutputProcessor:
    """Sampling, detokenizing and finishing for every sequence the engine runs; engine thread only."""

    def __init__(self, decoder: Decoder, end_token_ids: list[int], max_model_len: int) -> None:
        self._decoder = decoder
        """The engine thread's own tokenizer (a fast tokenizer is not meant to be shared between threads)."""
        self._end_token_ids = torch.tensor(sorted(set(end_token_ids)), dtype=torch.long)
        self._end_token_set = frozenset(end_token_ids)
        self._max_model_len = max_model_len
        self._streams: dict[Sequence, _Stream] = {}

    def add(self, sequence: Sequence, emit: Emit, sampler: RowSampler) -> None:
        detokenizer = IncrementalDetokenizer(self._decoder, sequence.request.sampling.stop)
        self._streams[sequence] = _Stream(emit, sampler, detokenizer)

    def last_token(self, sequence: Sequence) -> int:
        """The token `sequence` generated last: its input to the next decode step."""
        return self._streams[sequence].generated[-1]

    def process(
        self,
        sequences: list[Sequence],
        logits: torch.Tensor,
        prompt_measures: dict[Sequence, PromptMeasures] | None = None,
    ) -> list[Sequence]:
        """Choose each sequence's next token from its row of `logits` and send what it adds; the sequences
        that have finished, which are forgotten. `prompt_measures` come with a prefill's logits."""
        streams = [self._streams[s] for s in sequences]
        for sequence, measures in (prompt_measures or {}).items():
            self._streams[sequence].prompt = measures
        tokens, logprobs = select_tokens(
            logits, [s.sampler for s in streams], [len(s.generated) for s in streams], self._end_token_ids
        )
        finished: list[Sequence] = []
        for sequence, stream, token, logprob in zip(sequences, streams, tokens, logprobs, strict=True):
            stream.generated.append(token)
            reason = self._finish_reason(sequence, stream, token)
            stop_allowed = len(stream.generated) >= sequence.request.sampling.min_tokens
            text = stream.detokenizer.add(token, final=reason is not None, stop_allowed=stop_allowed)
            if stream.detokenizer.stopped:
                reason = "stop"
            stream.emit(self._delta(sequence, stream, token, logprob, text, reason))
            if reason is not None:
                finished.append(sequence)
        self.drop(finished)
        return finished

    def fail(self, sequences: Iterable[Sequence], exc: BaseException) -> None:
        """End `sequences` with `exc`."""
        for sequence in sequences:
            if (stream := self._streams.pop(sequence, None)) is not None:
                stream.emit(exc)

    def drop(self, sequences: Iterable[Sequence]) -> None:
        """Forget `sequences` (finished, or their caller left)."""
        for sequence in sequences:
            self._streams.pop(sequence, None)

    def _finish_reason(self, sequence: Sequence, stream: _Stream, token: int) -> FinishReason | None:
        generated = len(stream.generated)
        if token in self._end_token_set and stream.sampler.end_token_allowed(generated - 1):
            return "stop"
        if generated >= sequence.request.sampling.max_tokens:
            return "length"
        if len(sequence.request.prompt_token_ids) + generated >= self._max_model_len:
            return "length"
        return None

    @staticmethod
    def _delta(
        sequence: Sequence, stream: _Stream, token: int, logprob: float, text: str, reason: FinishReason | None
    ) -> GenerationDelta:
        request = sequence.request
        logprobs: tuple[TokenLogprob, ...] = ()
        if request.sampling.logprobs:
            logprobs = (TokenLogprob(token, stream.detokenizer.token_text(token), logprob),)
        return GenerationDelta(
            text=text,
            token_ids=(token,),
            logprobs=logprobs,
            finish_reason=reason,
            usage=Usage(len(request.prompt_token_ids), len(stream.generated)) if reason else None,
            token_logprob_sum=logprob,
            prompt_logprob=stream.prompt.logprob if reason else None,
            prompt_embedding=stream.prompt.embedding if reason else None,
        )
