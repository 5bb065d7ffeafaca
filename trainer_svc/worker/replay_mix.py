"""Replay that rises when facts start to go: the training set's replay share grows during the run once an
evaluation finds the adapter answering wrong a general fact its base model knew.

The knowledge probe at each evaluation (knowledge_probe.ProbeEachEvaluation) says when facts go. The
replay examples then take the place of some task examples in the batches that follow: after each rise
one more replay draw for each replay example an epoch, at most MAX_RISES times, with the task examples
they displace changing from epoch to epoch so none is left out for the rest of the run. The set's length
(and so the run's steps) stays as planned, and the change applies to the batches made after the rise
(the data loader reads one batch ahead), not from the next epoch.
A run resumed from a checkpoint starts again at the planned share.
"""

from __future__ import annotations

import math
from typing import Any

from torch.utils.data import Dataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainer_svc.progress import PhaseEvent
from trainer_svc.worker.events import Emit

Features = dict[str, list[int]]
MAX_RISES = 2
"""Rises at most: the replay share goes up to three times the planned one."""


class ReplayMix(Dataset[Features]):
    """The task's examples followed by the replay examples; after `rises` rises, `rises` task slots per
    replay example, spread evenly and shifted each epoch, hold replay examples instead.

    The set is read one index at a time as batches are made (the Trainer's loader has no worker
    processes: `training_settings`), so a rise shows in the batches made after it.
    """

    def __init__(self, task: list[Features], replay: list[Features]) -> None:
        self._task, self._replay = task, replay
        self.rises = 0
        self.epoch = 0
        self._displaced: dict[int, int] = {}
        """Task slot -> the replay example it holds, for the current rises and epoch."""

    def __len__(self) -> int:
        return len(self._task) + len(self._replay)

    def __getitem__(self, index: int) -> Features:
        if index >= len(self._task):
            return self._replay[index - len(self._task)]
        if index in self._displaced:
            return self._replay[self._displaced[index]]
        return self._task[index]

    def rise(self) -> bool:
        """Give each replay example one more draw an epoch; False once at MAX_RISES, where replay would take
        over half the task's draws, or without replay."""
        if not self._replay or self.rises >= MAX_RISES or 2 * len(self._replay) * (self.rises + 1) > len(self._task):
            return False
        self.rises += 1
        self._spread()
        return True

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._spread()

    def _spread(self) -> None:
        extra = len(self._replay) * self.rises
        task = len(self._task)
        self._displaced = {(k * task // extra + self.epoch) % task: k % len(self._replay) for k in range(extra)}


class RaiseReplayWhenFactsGo(TrainerCallback):
    """Raises the mix's replay share at an evaluation that finds facts lost (the probe's `eval_facts_lost`,
    added by a callback listed before this one), at most once an epoch, and says so in an event."""

    def __init__(self, mix: ReplayMix, emit: Emit) -> None:
        self._mix = mix
        self._emit = emit
        self._raised_in_epoch: int | None = None

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._mix.start_epoch(math.floor(state.epoch or 0))

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        lost = int((metrics or {}).get("eval_facts_lost", 0))
        if not lost or self._raised_in_epoch == self._mix.epoch or not self._mix.rise():
            return
        self._raised_in_epoch = self._mix.epoch
        self._emit(
            PhaseEvent(
                phase="training",
                message=f"step {state.global_step}: the adapter answers {lost} of its base model's general facts "
                f"wrong; replay examples now get {1 + self._mix.rises} draws an epoch",
            )
        )
