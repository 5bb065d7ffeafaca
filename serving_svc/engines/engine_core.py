"""The transformers engine's loop, on its one torch thread: schedule, execute, process outputs.

As vLLM's `EngineCore.step`, each step runs named phases: the scheduler decides (`scheduler.py`),
the model runner executes (`model_runner.py`), the output processor samples, detokenizes and finishes
(`output_processor.py`), and the scheduler learns which sequences finished. Prompts admitted in a
step are prefilled first, so that their first token goes out as soon as it can, and join their
running batch before it decodes, so that they take their second token in the same step.

Every model call happens on this thread, so adapters are added and removed between steps (as
calls queued with `call`) and never under a running forward pass. The asyncio side hands in
sequences with an `emit` callback that is safe to call from this thread (it posts onto the event
loop), and marks a sequence aborted when its caller leaves.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from serving_svc.engines.base import EngineStats
from serving_svc.engines.model_runner import ModelRunner
from serving_svc.engines.output_processor import Emit, OutputProcessor
from serving_svc.engines.sampler import RowSampler
from serving_svc.engines.scheduler import Scheduler, Sequence

log = logging.getLogger(__name__)

T = TypeVar("T")


class EngineCore:
    def __init__(
        self,
        scheduler: Scheduler,
        runner: ModelRunner,
        outputs: OutputProcessor,
        on_step: Callable[[int], None] = lambda rows: None,
    ) -> None:
        self._runner = runner
        self._scheduler = scheduler
        self._outputs = outputs
        self._on_step = on_step
        self._inbox: deque[tuple[Sequence, Emit, RowSampler]] = deque()
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._wake = threading.Condition()
        self._stopping = False

    # -- any thread ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Make `run` return after the current step; what has not finished fails."""
        with self._wake:
            self._stopping = True
            self._wake.notify()

    def submit(self, sequence: Sequence, emit: Emit, sampler: RowSampler) -> None:
        with self._wake:
            self._inbox.append((sequence, emit, sampler))
            self._wake.notify()

    @staticmethod
    def abort(sequence: Sequence) -> None:
        """Stop `sequence` (it leaves its batch at the next step); no-op once it has finished."""
        sequence.aborted = True

    def call(self, function: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `function` on the engine thread between two steps."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._wake:
            self._calls.append((function, future))
            self._wake.notify()
        return future

    def stats(self) -> EngineStats:
        """Safe from any thread: the scheduler publishes its counts as they change."""
        waiting = len(self._inbox) + self._scheduler.waiting_count
        return EngineStats(running=self._scheduler.running_count, waiting=waiting)

    # -- the engine thread --------------------------------------------------------------------

    def run(self) -> None:
        """The loop, until `stop`; call it on the thread that loaded the model."""
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not (self._stopping or self._calls or self._inbox or self._scheduler.has_work):
                        self._wake.wait()
                    if self._stopping:
                        break
                    calls, self._calls = list(self._calls), deque()
                    arrived, self._inbox = list(self._inbox), deque()
                for function, future in calls:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(function())
                        except BaseException as exc:  # noqa: BLE001 - handed to the caller
                            future.set_exception(exc)
                for sequence, emit, sampler in arrived:
                    self._outputs.add(sequence, emit, sampler)
                    self._scheduler.add(sequence)
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001 - a failed step fails its rows, not the replica
                    log.exception("engine step failed")
                    self._fail_all(exc)
        self._fail_all(RuntimeError("the engine is shutting down"))

    def _step(self) -> None:
        """Schedule; release who left; prefill, send the first tokens and join the running batches; decode
        every running batch and send its tokens."""
        plan = self._scheduler.schedule()
        self._retire(plan.released)
        done: set[Sequence] = set()
        for key, sequences in plan.prefills.items():
            done |= self._prefill(key, sequences)
        for key, sequences in plan.decodes.items():
            if going_on := [s for s in sequences if s not in done]:
                self._decode(key, going_on)

    def _prefill(self, key: str, sequences: list[Sequence]) -> set[Sequence]:
        """Run the prompts of `sequences`, send their first tokens and put those that go on into their
        running batch; the sequences that finished (or failed) instead."""
        try:
            prefilled = self._runner.prefill(key, sequences)
            finished = set(self._outputs.process(sequences, prefilled.logits, prefilled.prompt_measures))
        except Exception as exc:  # noqa: BLE001 - they are in no batch yet: fail them, not the others
            log.exception("prefill failed")
            self._outputs.fail(sequences, exc)
            self._scheduler.finish(sequences)
            return set(sequences)
        self._scheduler.finish(finished)
        self._runner.admit(prefilled, [s for s in sequences if s not in finished])
        return finished

    def _decode(self, key: str, sequences: list[Sequence]) -> None:
        self._on_step(len(sequences))
        tokens = [self._outputs.last_token(s) for s in sequences]
        logits = self._runner.decode(key, sequences, tokens)
        self._retire(self._outputs.process(sequences, logits))

    def _retire(self, sequences: list[Sequence]) -> None:
        """Sequences that left (finished, or their caller left): out of the runner's batches, the
        scheduler's rows and the output processor's streams."""
        self._runner.release(sequences)
        self._scheduler.finish(sequences)
        self._outputs.drop(sequences)

    def _fail_all(self, exc: BaseException) -> None:
        with self._wake:
            arrived, self._inbox = list(self._inbox), deque()
        self._runner.clear()
        self._outputs.fail(self._scheduler.take_all(), exc)
        for _, emit, _ in arrived:
            emit(exc)
