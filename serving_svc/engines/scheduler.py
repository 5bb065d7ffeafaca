"""The transformers engine's scheduler: each step, it decides which sequences run, and nothing else.

As vLLM's scheduler does (`vllm/v1/core/sched/interface.py`), it hands back a plan and never
touches the model, a tensor or text (no torch here): the model runner executes the plan, the output
processor turns logits into tokens, text and finish reasons, and the engine core tells the
scheduler which sequences finished. Each step,

- sequences whose caller left are released: running ones free their rows, waiting ones are never
  admitted, and the engine forgets both;
- every running sequence decodes one token, in the batch of its batch key: rows whose adapters are
  applied stacked share one batch, and an adapter that is not stacked (DoRA) has a batch of its own;
- waiting sequences are admitted in arrival order while all batches together stay within
  `max_batch_size` rows; those of one batch key are prefilled together, and decode in the same
  step, after their prefill, with the running batch they join (in rows finished sequences left).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from serving_svc.engines.base import GenerationRequest


@dataclass(eq=False)
class Sequence:
    """One request on its way through the engine, compared by identity."""

    request: GenerationRequest
    adapter_name: str
    """The name the model knows the row's adapter by; "__base__" for the base model."""
    batch_key: str
    """Sequences of one key decode in one batch."""
    aborted: bool = False
    """Set from the caller's thread when it leaves; the scheduler releases the sequence at its next step."""


@dataclass(frozen=True)
class SchedulerOutput:
    """One step's plan: which sequences leave, which are prefilled, which decode."""

    released: list[Sequence]
    """Sequences whose caller left, running or waiting: their rows and streams are freed before anything
    runs."""
    prefills: dict[str, list[Sequence]]
    """Batch key -> the sequences admitted this step, whose prompts run together."""
    decodes: dict[str, list[Sequence]]
    """Batch key -> the sequences running in that batch, admitted ones included, one token each (a
    sequence that finishes at its prefill does not decode)."""


class Scheduler:
    """Waiting and running sequences, within a limit of rows; used on the engine thread only, but for
    the counts, which any thread may read."""

    def __init__(self, max_batch_size: int) -> None:
        self._max_batch_size = max_batch_size
        self._waiting: deque[Sequence] = deque()
        self._running: dict[str, dict[Sequence, None]] = {}  # batch key -> its sequences, in order
        self.running_count = 0
        """Sequences admitted and not finished (published for other threads)."""

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    @property
    def has_work(self) -> bool:
        return bool(self._waiting or self.running_count)

    def add(self, sequence: Sequence) -> None:
        self._waiting.append(sequence)

    def schedule(self) -> SchedulerOutput:
        released = [s for group in self._running.values() for s in group if s.aborted]
        self.finish(released)
        if any(s.aborted for s in self._waiting):
            released += [s for s in self._waiting if s.aborted]
            self._waiting = deque(s for s in self._waiting if not s.aborted)
        prefills: dict[str, list[Sequence]] = {}
        free = self._max_batch_size - self.running_count
        while self._waiting and free > 0:
            sequence = self._waiting.popleft()
            prefills.setdefault(sequence.batch_key, []).append(sequence)
            self._running.setdefault(sequence.batch_key, {})[sequence] = None
            free -= 1
        self._count()
        decodes = {key: list(group) for key, group in self._running.items()}
        return SchedulerOutput(released, prefills, decodes)

    def finish(self, sequences: Iterable[Sequence]) -> None:
        """`sequences` have finished (or failed, or were released): their rows are free for others."""
        for sequence in sequences:
            group = self._running.get(sequence.batch_key, {})
            group.pop(sequence, None)
            if not group:
                self._running.pop(sequence.batch_key, None)
        self._count()

    def take_all(self) -> list[Sequence]:
        """Every waiting and running sequence, which the scheduler forgets (the engine fails them)."""
        sequences = [*self._waiting, *(s for group in self._running.values() for s in group)]
        self._waiting.clear()
        self._running.clear()
        self._count()
        return sequences

    def _count(self) -> None:
        self.running_count = sum(len(group) for group in self._running.values())
