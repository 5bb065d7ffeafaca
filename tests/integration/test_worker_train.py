from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState

from trainer_svc.progress import EvalEvent, ProgressEvent
from trainer_svc.spec import TrainingParameters
from trainer_svc.worker.train import EventReporter, planned_steps, run_outcome, training_arguments


@pytest.mark.parametrize(
    ("params", "has_validation", "eval_strategy", "keeps_best", "eval_steps"),
    [
        (TrainingParameters(), False, "no", False, 12),
        (TrainingParameters(), True, "steps", True, 12),  # early stopping on by default: ten evaluations
        (TrainingParameters(early_stopping_patience=0), True, "steps", False, 12),
        (TrainingParameters(eval_every_steps=5), True, "steps", True, 5),
        (TrainingParameters(max_steps=7), True, "steps", True, 1),
    ],
)
def test_evaluation_and_checkpoints_follow_the_spec(
    params: TrainingParameters,
    has_validation: bool,
    eval_strategy: str,
    keeps_best: bool,
    eval_steps: int,
    tmp_path: Path,
) -> None:
    # 320 examples in batches of 8: 40 steps an epoch, 120 over the default 3 epochs.
    args = training_arguments(params, tmp_path, train_examples=320, has_validation=has_validation)
    assert args.eval_strategy == eval_strategy
    assert args.eval_steps == eval_steps
    # Every run saves a resumable checkpoint as often as it evaluates, early stopping or not.
    assert args.save_strategy == "steps" and args.save_steps == eval_steps and not args.save_only_model
    assert args.restore_callback_states_from_checkpoint
    assert args.load_best_model_at_end == keeps_best
    assert args.metric_for_best_model == ("selection" if keeps_best else None)  # validation loss, lost facts first
    assert args.report_to == [] or args.report_to == "none"


def test_planned_steps_count_as_the_trainer_does() -> None:
    assert planned_steps(TrainingParameters(), 320) == 120
    assert planned_steps(TrainingParameters(epochs=1.5, batch_size=3), 10) == 6  # 4 batches an epoch
    assert planned_steps(TrainingParameters(batch_size=4, gradient_accumulation_steps=2), 16) == 6
    assert planned_steps(TrainingParameters(max_steps=7), 10_000) == 7


def test_training_parameters_reach_the_trainer(tmp_path: Path) -> None:
    params = TrainingParameters(epochs=2, max_steps=7, batch_size=3, learning_rate=1e-3, seed=5, warmup_ratio=0.1)
    args = training_arguments(params, tmp_path, train_examples=30, has_validation=False)
    assert (args.num_train_epochs, args.max_steps, args.per_device_train_batch_size) == (2, 7, 3)
    assert (args.learning_rate, args.seed, args.warmup_steps) == (1e-3, 5, 0.1)
    assert training_arguments(TrainingParameters(), tmp_path, train_examples=30, has_validation=False).max_steps == -1


def test_run_metrics_name_the_published_step_and_the_gaps() -> None:
    history = [
        *({"step": step, "loss": 2.0} for step in (1, 2)),
        {"step": 2, "eval_loss": 2.5},
        *({"step": step, "loss": 1.0} for step in (3, 4)),
        {"step": 4, "eval_loss": 1.5},  # the best
        *({"step": step, "loss": loss} for step, loss in ((5, 0.2), (6, 0.4))),
        {"step": 6, "eval_loss": 1.8},
    ]
    outcome = run_outcome(history, global_step=6, max_steps=20, best_step=4)
    metrics = outcome.metrics
    assert metrics["best_step"] == 4 and metrics["steps_saved"] == 14 and metrics["stopped_early"] == 1.0
    assert metrics["train_loss"] == 0.4
    assert metrics["best_generalization_gap"] == pytest.approx(0.5)  # 1.5 - mean(1.0, 1.0)
    assert metrics["final_generalization_gap"] == pytest.approx(1.5)  # 1.8 - mean(0.2, 0.4): overfitting
    assert [(c.step, c.validation_loss, c.published) for c in outcome.checkpoints] == [
        (2, 2.5, False),
        (4, 1.5, True),
        (6, 1.8, False),
    ]
    assert [c.train_loss for c in outcome.checkpoints] == pytest.approx([2.0, 1.0, 0.3])

    without_validation = run_outcome(history[:2], global_step=2, max_steps=2, best_step=None)
    assert without_validation.metrics["best_step"] == 2 and without_validation.metrics["steps_saved"] == 0
    assert "final_generalization_gap" not in without_validation.metrics and not without_validation.checkpoints


def test_reporter_turns_logs_into_events(tmp_path: Path) -> None:
    events = []
    reporter = EventReporter(events.append)
    args = training_arguments(TrainingParameters(), tmp_path, train_examples=30, has_validation=True)
    state, control = TrainerState(), TrainerControl()
    state.max_steps = 10
    reporter.on_train_begin(args, state, control)
    state.global_step, state.epoch = 4, 0.8
    reporter.on_log(args, state, control, logs={"loss": 1.5, "learning_rate": 2e-4, "epoch": 0.8})
    reporter.on_log(args, state, control, logs={"train_loss": 1.2, "train_runtime": 3.0})
    reporter.on_evaluate(args, state, control, metrics={"eval_loss": 1.1})
    progress, evaluation = events
    assert isinstance(progress, ProgressEvent)
    assert (progress.step, progress.total_steps, progress.epoch, progress.loss) == (4, 10, 0.8, 1.5)
    assert progress.eta_seconds == pytest.approx(progress.elapsed_seconds * 6 / 4)
    assert evaluation == EvalEvent(step=4, validation_loss=1.1)


def test_a_resumed_run_estimates_its_time_left_from_its_own_steps(tmp_path: Path) -> None:
    events = []
    reporter = EventReporter(events.append)
    args = training_arguments(TrainingParameters(), tmp_path, train_examples=30, has_validation=True)
    state, control = TrainerState(), TrainerControl()
    state.max_steps, state.global_step = 10, 4  # resumed from the checkpoint at step 4
    reporter.on_train_begin(args, state, control)
    state.global_step = 6
    reporter.on_log(args, state, control, logs={"loss": 1.5})
    [progress] = events
    assert progress.eta_seconds == pytest.approx(progress.elapsed_seconds / 2 * 4)
