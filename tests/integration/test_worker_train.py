from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState

from trainer_svc.progress import EvalEvent, ProgressEvent
from trainer_svc.spec import TrainingParameters
from trainer_svc.worker.train import EventReporter, training_arguments

pytestmark = pytest.mark.integration  # loads transformers and the tiny model


@pytest.mark.parametrize(
    ("params", "has_validation", "eval_strategy", "save_strategy"),
    [
        (TrainingParameters(), False, "no", "no"),
        (TrainingParameters(early_stopping_patience=2), False, "no", "no"),
        (TrainingParameters(), True, "epoch", "no"),
        (TrainingParameters(eval_every_steps=5), True, "steps", "no"),
        (TrainingParameters(eval_every_steps=5, early_stopping_patience=2), True, "steps", "steps"),
        (TrainingParameters(early_stopping_patience=2), True, "epoch", "epoch"),
    ],
)
def test_evaluation_and_checkpoints_follow_the_spec(
    params: TrainingParameters, has_validation: bool, eval_strategy: str, save_strategy: str, tmp_path: Path
) -> None:
    args = training_arguments(params, tmp_path, has_validation=has_validation)
    assert args.eval_strategy == eval_strategy
    assert args.save_strategy == save_strategy
    assert args.load_best_model_at_end == (save_strategy != "no")
    if args.eval_strategy == "steps":
        assert args.eval_steps == 5
    assert args.report_to == [] or args.report_to == "none"


def test_training_parameters_reach_the_trainer(tmp_path: Path) -> None:
    params = TrainingParameters(epochs=2, max_steps=7, batch_size=3, learning_rate=1e-3, seed=5, warmup_ratio=0.1)
    args = training_arguments(params, tmp_path, has_validation=False)
    assert (args.num_train_epochs, args.max_steps, args.per_device_train_batch_size) == (2, 7, 3)
    assert (args.learning_rate, args.seed, args.warmup_steps) == (1e-3, 5, 0.1)
    assert training_arguments(TrainingParameters(), tmp_path, has_validation=False).max_steps == -1


def test_reporter_turns_logs_into_events(tmp_path: Path) -> None:
    events = []
    reporter = EventReporter(events.append)
    args = training_arguments(TrainingParameters(), tmp_path, has_validation=True)
    state, control = TrainerState(), TrainerControl()
    state.max_steps, state.global_step, state.epoch = 10, 4, 0.8
    reporter.on_train_begin(args, state, control)
    reporter.on_log(args, state, control, logs={"loss": 1.5, "learning_rate": 2e-4, "epoch": 0.8})
    reporter.on_log(args, state, control, logs={"train_loss": 1.2, "train_runtime": 3.0})
    reporter.on_evaluate(args, state, control, metrics={"eval_loss": 1.1})
    progress, evaluation = events
    assert isinstance(progress, ProgressEvent)
    assert (progress.step, progress.total_steps, progress.epoch, progress.loss) == (4, 10, 0.8, 1.5)
    assert progress.eta_seconds == pytest.approx(progress.elapsed_seconds * 6 / 4)
    assert evaluation == EvalEvent(step=4, validation_loss=1.1)
