"""The transformers engine's scheduler: a loop that admits, prefills, decodes and retires sequences.

`run` occupies the engine's one torch thread, and every model call happens there, so adapters
are added and removed between steps (as calls queued with `call`) and never under a running
forward pass. Requests that arrive while others decode are prefilled at the next step and join
the running batch; finished and aborted rows are freed at once, for the next request to take
their place (see `DecodeBatch`). Rows whose adapters can be
stacked share one batch; an adapter that cannot (DoRA) decodes in a batch of its own, stepped
in turn with the others.

The asyncio side hands in a `Sequence` with an `emit` callback that is safe to call from this
thread (it posts onto the event loop), and marks it aborted when its caller leaves.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from serving_svc.engines.base import EngineStats, FinishReason, GenerationDelta, GenerationRequest, TokenLogprob, Usage
from serving_svc.engines.batch import DecodeBatch, Forward
from serving_svc.engines.detokenizer import Decoder, IncrementalDetokenizer
from serving_svc.engines.sampler import RowSampler, select_tokens

log = logging.getLogger(__name__)

T = TypeVar("T")

MIXED = ""
"""The batch key of rows whose adapters are applied stacked in one forward pass (LoRA, and the base model)."""


@dataclass(eq=False)
class Sequence:
    """One request on its way through the scheduler."""

    request: GenerationRequest
    adapter_name: str
    """peft's name for the row's adapter; "__base__" for the base model."""
    batch_key: str
    emit: Callable[[GenerationDelta | BaseException], None]
    detokenizer: IncrementalDetokenizer
    sampler: RowSampler
    generated: list[int] = field(default_factory=list)
    aborted: bool = False
    next_token: int = -1
    prompt_logprob: float | None = None


class Scheduler:
    def __init__(
        self,
        forward_for: Callable[[str], Forward],
        *,
        max_batch_size: int,
        max_model_len: int,
        end_token_ids: list[int],
        decoder: Decoder,
        on_step: Callable[[int], None] = lambda rows: None,
    ) -> None:
        self._forward_for = forward_for
        self.decoder = decoder
        """Turns generated tokens into text; used on this thread only."""
        self._max_batch_size = max_batch_size
        self._max_model_len = max_model_len
        self._end_token_ids = torch.tensor(sorted(set(end_token_ids)), dtype=torch.long)
        self._end_token_set = frozenset(end_token_ids)
        self._on_step = on_step
        self._waiting: deque[Sequence] = deque()
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._batches: dict[str, tuple[DecodeBatch, list[Sequence | None]]] = {}  # None: a free row
        self._wake = threading.Condition()
        self._stopping = False
        self._running = 0

    # -- the asyncio side -------------------------------------------------------------------

    def stop(self) -> None:
        """Make `run` return after the current step; what has not finished fails."""
        with self._wake:
            self._stopping = True
            self._wake.notify()

    def submit(self, sequence: Sequence) -> None:
        with self._wake:
            self._waiting.append(sequence)
            self._wake.notify()

    def abort(self, sequence: Sequence) -> None:
        """Stop decoding `sequence` (it leaves its batch at the next step); no-op once it has finished."""
        sequence.aborted = True

    def call(self, function: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `function` on the scheduler thread between two steps."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._wake:
            self._calls.append((function, future))
            self._wake.notify()
        return future

    def stats(self) -> EngineStats:
        """Safe from any thread: the engine thread publishes the running count after each change."""
        return EngineStats(running=self._running, waiting=len(self._waiting))

    def _count_running(self) -> int:
        self._running = sum(len(batch.live) for batch, _ in self._batches.values())
        return self._running

    # -- the engine thread ------------------------------------------------------------------

    def run(self) -> None:
        """The loop, until `stop`; call it on the thread that loaded the model."""
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not (self._stopping or self._calls or self._waiting or self._batches):
                        self._wake.wait()
                    if self._stopping:
                        break
                    calls, self._calls = list(self._calls), deque()
                for function, future in calls:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(function())
                        except BaseException as exc:  # noqa: BLE001 - handed to the caller
                            future.set_exception(exc)
                try:
                    self._admit()
                    self._decode()
                    self._count_running()
                except Exception as exc:  # noqa: BLE001 - a failed step fails its rows, not the replica
                    log.exception("engine step failed")
                    self._fail_all(exc)
        self._fail_all(RuntimeError("the engine is shutting down"))

    def _admit(self) -> None:
        """Prefill waiting sequences, as many as free rows allow, and put them into their batches."""
        free = self._max_batch_size - self._count_running()
        admitted: dict[str, list[Sequence]] = {}
        with self._wake:
            while self._waiting and free > 0:
                sequence = self._waiting.popleft()
                if not sequence.aborted:
                    admitted.setdefault(sequence.batch_key, []).append(sequence)
                    free -= 1
        for key, sequences in admitted.items():
            try:
                self._prefill(key, sequences)
            except Exception as exc:  # noqa: BLE001 - they are in no batch yet: fail them, not the others
                log.exception("prefill failed")
                for sequence in sequences:
                    sequence.emit(exc)

    def _prefill(self, key: str, sequences: list[Sequence]) -> None:
        """Run the prompts of `sequences` (one batch key) and add those that go on to that key's batch."""
        forward = self._forward_for(key)
        prompts = [s.request.prompt_token_ids for s in sequences]
        scored = [row for row, s in enumerate(sequences) if s.request.score_prompt]
        batch, logits, scores = DecodeBatch.prefill(forward, prompts, [s.adapter_name for s in sequences], scored)
        for row, prompt_logprob in scores.items():
            sequences[row].prompt_logprob = prompt_logprob
        candidates: list[Sequence | None] = list(sequences)
        finished = set(self._advance(candidates, logits))
        going_on = [row for row in range(len(sequences)) if row not in finished]
        if not going_on:
            return
        batch.keep(going_on)
        if key in self._batches:
            running, rows = self._batches[key]
            for row, index in zip(going_on, running.join(batch), strict=True):
                rows.extend([None] * (index + 1 - len(rows)))
                rows[index] = sequences[row]
        else:
            self._batches[key] = (batch, [sequences[row] for row in going_on])

    def _decode(self) -> None:
        for key, (batch, rows) in list(self._batches.items()):
            aborted = [i for i, s in enumerate(rows) if s is not None and s.aborted]
            self._release(batch, rows, aborted)
            live = batch.live
            if not live:
                del self._batches[key]
                continue
            if batch.needs_compacting():
                batch.keep(live)
                rows = [rows[i] for i in live]
                self._batches[key] = (batch, rows)
            self._on_step(len(batch.live))
            logits = batch.step(self._forward_for(key), [s.next_token if s is not None else 0 for s in rows])
            self._release(batch, rows, self._advance(rows, logits))
            if not batch.live:
                del self._batches[key]

    @staticmethod
    def _release(batch: DecodeBatch, rows: list[Sequence | None], finished: list[int]) -> None:
        batch.release(finished)
        for row in finished:
            rows[row] = None

    def _advance(self, rows: list[Sequence | None], logits: torch.Tensor) -> list[int]:
        """Choose every live row's next token and send what it adds; the rows that have finished."""
        live = [(row, s) for row, s in enumerate(rows) if s is not None]
        index = [row for row, _ in live]
        tokens, logprobs = select_tokens(
            logits[index], [s.sampler for _, s in live], [len(s.generated) for _, s in live], self._end_token_ids
        )
        finished: list[int] = []
        for (row, sequence), token, logprob in zip(live, tokens, logprobs, strict=True):
            sequence.generated.append(token)
            reason = self._finish_reason(sequence, token)
            stop_allowed = len(sequence.generated) >= sequence.request.sampling.min_tokens
            text = sequence.detokenizer.add(token, final=reason is not None, stop_allowed=stop_allowed)
            if sequence.detokenizer.stopped:
                reason = "stop"
            sequence.emit(self._delta(sequence, token, logprob, text, reason))
            if reason is None:
                sequence.next_token = token
            else:
                finished.append(row)
        return finished

    def _finish_reason(self, sequence: Sequence, token: int) -> FinishReason | None:
        generated = len(sequence.generated)
        if token in self._end_token_set and sequence.sampler.end_token_allowed(generated - 1):
            return "stop"
        if generated >= sequence.request.sampling.max_tokens:
            return "length"
        if len(sequence.request.prompt_token_ids) + generated >= self._max_model_len:
            return "length"
        return None

    @staticmethod
    def _delta(
        sequence: Sequence, token: int, logprob: float, text: str, reason: FinishReason | None
    ) -> GenerationDelta:
        request = sequence.request
        logprobs: tuple[TokenLogprob, ...] = ()
        if request.sampling.logprobs:
            logprobs = (TokenLogprob(token, sequence.detokenizer.token_text(token), logprob),)
        usage = Usage(len(request.prompt_token_ids), len(sequence.generated)) if reason else None
        return GenerationDelta(
            text=text,
            token_ids=(token,),
            logprobs=logprobs,
            finish_reason=reason,
            usage=usage,
            token_logprob_sum=logprob,
            prompt_logprob=sequence.prompt_logprob if reason else None,
        )

    def _fail_all(self, exc: BaseException) -> None:
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
        batches, self._batches = self._batches, {}
        self._running = 0
        for sequence in [*waiting, *(s for _, rows in batches.values() for s in rows if s is not None)]:
            sequence.emit(exc)
