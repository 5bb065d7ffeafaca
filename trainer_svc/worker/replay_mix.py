"""Replay that rises when facts start to go: the training set's replay share grows during the run once an
evaluation finds the adapter answering wrong a general fact its base model knew.

The knowledge probe at each evaluation (knowledge_probe.ProbeEachEvaluation) says when facts go. The
replay examples then take the place of some task examples in the batches that follow: after each rise
one more replay draw for each replay example an epoch, at most MAX_RISES times, with the task examples
they displace changing from epoch to epoch so none is left out for the rest of the run. The set's length
(and so the run's steps) stays as planned, and the change applies from the next batch, not the next epoch.
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
    """The task's examples followed by the replay examples, with `rises` more replay draws per epoch in
    the task's slots."""

    def __init__(self, task: list[Features], replay: list[Features]) -> None:
        self._task, self._replay = task, replay
        self._period = math.ceil(len(task) / len(replay)) if replay else 0
        self.rises = 0
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._task) + len(self._replay)

    def __getitem__(self, index: int) -> Features:
        if index >= len(self._task):
            return self._replay[index - len(self._task)]
        if self.rises and (index + self.epoch) % self._period < self.rises:
            return self._replay[(index // self._period + self.epoch) % len(self._replay)]
        return self._task[index]

    def rise(self) -> bool:
        """Give replay one more draw per replay example an epoch; False once at MAX_RISES, where replay would
        take over half the task's draws, or without replay."""
        if not self._replay or self.rises >= MAX_RISES or 2 * (self.rises + 1) > self._period:
            return False
        self.rises += 1
        return True


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
        self._mix.epoch = math.floor(state.epoch or 0)

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
                message=f"step {state.global_step}: the adapter answers {lost} general facts of its base model "
                f"wrong; replay examples now get {1 + self._mix.rises} draws an epoch",
            )
        )
