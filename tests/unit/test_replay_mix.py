"""Replay that rises when facts go: the mix of task and replay examples, and the callback that raises it."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from trainer_svc.progress import PhaseEvent
from trainer_svc.worker.replay_mix import MAX_RISES, RaiseReplayWhenFactsGo, ReplayMix

TASK = [{"input_ids": [n]} for n in range(40)]
REPLAY = [{"input_ids": [-n - 1]} for n in range(4)]


def _epoch(mix: ReplayMix) -> list[int]:
    return [mix[index]["input_ids"][0] for index in range(len(mix))]


def test_before_any_rise_each_example_is_drawn_once() -> None:
    mix = ReplayMix(TASK, REPLAY)
    assert _epoch(mix) == list(range(40)) + [-1, -2, -3, -4]


@pytest.mark.parametrize("task_count", [40, 38, 9])
def test_a_rise_gives_each_replay_example_one_more_draw_an_epoch_taking_task_draws_in_turn(task_count: int) -> None:
    mix = ReplayMix(TASK[:task_count], REPLAY)
    assert mix.rise()
    left_out: list[set[int]] = []
    for epoch in range(10):
        mix.start_epoch(epoch)
        drawn = _epoch(mix)
        assert len(drawn) == task_count + 4, "the run's length stays as planned"
        assert sorted(n for n in drawn if n < 0) == sorted([-1, -2, -3, -4] * 2)
        left_out.append(set(range(task_count)) - set(drawn))
    assert len(left_out[0]) == 4 and left_out[0] != left_out[1]
    assert not set.intersection(*left_out), "no task example is left out of every epoch"


def test_replay_rises_at_most_max_rises_and_never_past_half_the_task_draws() -> None:
    mix = ReplayMix(TASK, REPLAY)
    assert [mix.rise() for _ in range(MAX_RISES + 1)] == [True] * MAX_RISES + [False]
    assert not ReplayMix(TASK, []).rise()
    assert not ReplayMix(TASK[:7], REPLAY).rise(), "replay would take over half the task's draws"


def _evaluated(callback: RaiseReplayWhenFactsGo, state: TrainerState, lost: float) -> None:
    args: Any = TrainingArguments(output_dir="unused", report_to="none")
    callback.on_evaluate(args, state, TrainerControl(), metrics={"eval_loss": 1.0, "eval_facts_lost": lost})


def test_an_evaluation_that_finds_facts_lost_raises_replay_once_an_epoch() -> None:
    mix, events = ReplayMix(TASK, REPLAY), []
    callback = RaiseReplayWhenFactsGo(mix, events.append)
    state = TrainerState(global_step=10, epoch=0.5)
    _evaluated(callback, state, 0)
    assert mix.rises == 0 and events == []
    _evaluated(callback, state, 2)
    _evaluated(callback, state, 2)
    assert mix.rises == 1
    assert events == [
        PhaseEvent(
            phase="training",
            message="step 10: the adapter answers 2 of its base model's general facts wrong; replay examples now "
            "get 2 draws an epoch",
        )
    ]
    args: Any = TrainingArguments(output_dir="unused", report_to="none")
    callback.on_epoch_begin(args, TrainerState(epoch=1.0), TrainerControl())
    _evaluated(callback, state, 1)
    assert mix.rises == 2 and mix.epoch == 1
