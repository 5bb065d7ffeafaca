"""The training loop: transformers' Trainer, reporting progress and evaluations as events."""

from __future__ import annotations

import math
import signal
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from peft import get_peft_model
from transformers import (
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from trainer_svc.progress import Checkpoint, EvalEvent, ProgressEvent
from trainer_svc.spec import TrainingParameters
from trainer_svc.worker.collate import training_collator
from trainer_svc.worker.events import Emit
from trainer_svc.worker.generation import generation_batch_size
from trainer_svc.worker.knowledge_probe import SELECTION_METRIC, KnowledgeProbe, ProbeEachEvaluation
from trainer_svc.worker.model import compute_dtype
from trainer_svc.worker.replay_mix import RaiseReplayWhenFactsGo, ReplayMix
from trainer_svc.worker.training_run import ModelToTrain, TrainedAdapter, TrainingOutcome, TrainingRun, TrainingSets
from trainer_svc.worker_input import PREEMPT_SIGNAL


class CheckpointWhenPreempted(TrainerCallback):
    """On PREEMPT_SIGNAL during training, save a checkpoint at the end of the current step and stop, so
    that the job resumes from this step, not from its last periodic checkpoint, when the trainer starts
    again. Outside training the worker's own handler applies (it exits at once)."""

    def __init__(self) -> None:
        self.step: int | None = None
        self._requested = False

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self._requested = True

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._previous = signal.signal(PREEMPT_SIGNAL, self._request)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._requested:
            control.should_save = True
            control.should_training_stop = True
            self.step = state.global_step

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        signal.signal(PREEMPT_SIGNAL, self._previous)
        if self._requested and self.step is None:  # asked for between the last step and the end
            self.step = state.global_step


class EventReporter(TrainerCallback):
    """Turns the Trainer's logs into ProgressEvents and its evaluations into EvalEvents."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._started = time.monotonic()
        self._first_step = 0  # past zero when the run resumed from a checkpoint

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._started = time.monotonic()
        self._first_step = state.global_step

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs or "loss" not in logs:  # evaluation and end-of-training summaries log too
            return
        elapsed = time.monotonic() - self._started
        steps_here = max(state.global_step - self._first_step, 1)
        self._emit(
            ProgressEvent(
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=state.epoch or 0.0,
                loss=logs["loss"],
                learning_rate=logs.get("learning_rate", 0.0),
                elapsed_seconds=elapsed,
                eta_seconds=elapsed / steps_here * max(state.max_steps - state.global_step, 0),
            )
        )

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if metrics and "eval_loss" in metrics:
            self._emit(EvalEvent(step=state.global_step, validation_loss=metrics["eval_loss"]))


EVALUATIONS_PER_RUN = 10
"""Evaluations over a run when the spec gives no frequency: early stopping with the default
patience (3) then gives up after 30% of the planned steps without improvement."""


def planned_steps(params: TrainingParameters, train_examples: int) -> int:
    """Optimizer steps the run is set for: max_steps, or the epochs over the data (as the Trainer counts)."""
    if params.max_steps:
        return params.max_steps
    per_epoch = max(math.ceil(train_examples / params.batch_size) // params.gradient_accumulation_steps, 1)
    return max(math.ceil(params.epochs * per_epoch), 1)


def training_arguments(
    params: TrainingParameters, output_dir: Path, *, train_examples: int, has_validation: bool
) -> TrainingArguments:
    """The Trainer's settings for a supervised run (`training_settings`), checkpoints chosen by the
    knowledge probe's selection score (knowledge_probe.ProbeEachEvaluation)."""
    settings = training_settings(params, output_dir, train_examples=train_examples, has_validation=has_validation)
    if settings["load_best_model_at_end"]:
        settings["metric_for_best_model"] = SELECTION_METRIC
    return TrainingArguments(**settings)


def training_settings(
    params: TrainingParameters, output_dir: Path, *, train_examples: int, has_validation: bool
) -> dict[str, Any]:
    """Trainer settings from the job's parameters, as keyword arguments of TrainingArguments or of a
    subclass that a trainer of another objective takes (TRL's DPOConfig).

    Validation runs every `eval_every_steps` steps, or EVALUATIONS_PER_RUN times over the run, and
    a checkpoint is saved as often: the adapter with its optimizer, schedule, RNG and callback
    states, so that a run cut short resumes where it was (`resume.py`). With early stopping on (the
    default), the best checkpoint by validation loss is restored at the end and published (a supervised
    run chooses by the knowledge probe's selection score instead: `training_arguments`); the best and
    the newest are kept.
    """
    eval_every = params.eval_every_steps or max(planned_steps(params, train_examples) // EVALUATIONS_PER_RUN, 1)
    eval_strategy = "steps" if has_validation else "no"
    keep_best = has_validation and params.early_stopping_patience > 0
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps or -1,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        learning_rate=params.learning_rate,
        warmup_steps=params.warmup_ratio,  # a float below 1 is a ratio of the total steps
        eval_strategy=eval_strategy,
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every,
        save_total_limit=1,
        restore_callback_states_from_checkpoint=True,  # early stopping's patience counter goes on too
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best else None,
        prediction_loss_only=True,  # validation loss is all an evaluation is for: no logits gathered
        greater_is_better=False if keep_best else None,
        logging_strategy="steps",
        logging_steps=1,
        dataloader_num_workers=0,  # the replay mix changes as the run goes (replay_mix.py): read it in this process
        seed=params.seed,
        bf16=compute_dtype() == torch.bfloat16,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=True,
    )


def checkpoints_of(log_history: list[dict[str, float]], published_step: int) -> list[Checkpoint]:
    """Every evaluation of the run, with the mean training loss over the steps since the one before (one
    batch's loss is too noisy to compare with validation loss) and the facts lost where the probe ran."""
    losses = {int(entry["step"]): entry["loss"] for entry in log_history if "loss" in entry}
    checkpoints: list[Checkpoint] = []
    since = 0
    for entry in log_history:
        if "eval_loss" not in entry:
            continue
        step = int(entry["step"])
        window = [loss for at, loss in losses.items() if since < at <= step]
        train_loss = sum(window) / len(window) if window else float("nan")
        checkpoints.append(
            Checkpoint(
                step=step,
                validation_loss=entry["eval_loss"],
                train_loss=train_loss,
                published=step == published_step,
                facts_lost=int(entry["eval_facts_lost"]) if "eval_facts_lost" in entry else None,
            )
        )
        since = step
    return checkpoints


def run_outcome(
    log_history: list[dict[str, float]],
    *,
    global_step: int,
    max_steps: int,
    best_step: int | None,
) -> TrainingOutcome:
    """What the run's logs say; the published step is the best one when early stopping restored it, else the last."""
    published_step = best_step if best_step is not None else global_step
    checkpoints = checkpoints_of(log_history, published_step)
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    metrics = {
        "train_loss": losses[-1],
        "steps": float(global_step),
        "stopped_early": float(global_step < max_steps),
        "steps_saved": float(max_steps - global_step),
        "best_step": float(published_step),
    }
    if checkpoints:
        last = checkpoints[-1]
        published = next((checkpoint for checkpoint in checkpoints if checkpoint.published), last)
        metrics["final_generalization_gap"] = last.validation_loss - last.train_loss
        metrics["best_generalization_gap"] = published.validation_loss - published.train_loss
    return TrainingOutcome(metrics, checkpoints)


def callbacks(
    args: TrainingArguments, params: TrainingParameters, emit: Emit, probe: ProbeEachEvaluation | None = None
) -> list[TrainerCallback]:
    """The knowledge probe at each evaluation (first: the others read what it adds), progress events, and
    early stopping where the run keeps its best checkpoint."""
    chosen: list[TrainerCallback] = [*([probe] if probe else []), EventReporter(emit), CheckpointWhenPreempted()]
    if args.load_best_model_at_end:
        chosen.append(
            EarlyStoppingCallback(
                early_stopping_patience=params.early_stopping_patience,
                early_stopping_threshold=params.early_stopping_min_delta,
            )
        )
    return chosen


def fit(trainer: Trainer, resume_from: Path | None) -> TrainingOutcome:
    """Run `trainer` from the start or from the checkpoint `resume_from`; the metrics that go into the
    manifest, and the checkpoints."""
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    state = trainer.state
    outcome = run_outcome(
        state.log_history,
        global_step=state.global_step,
        max_steps=state.max_steps,
        best_step=state.best_global_step if trainer.args.load_best_model_at_end else None,
    )
    outcome.metrics["epochs"] = float(state.epoch or 0.0)
    preempted = [c.step for c in trainer.callback_handler.callbacks if isinstance(c, CheckpointWhenPreempted)]
    return replace(outcome, preempted_at=preempted[0] if preempted else None)


def train(model: ModelToTrain, data: TrainingSets, run: TrainingRun) -> TrainedAdapter:
    """Give the base model its adapter (fresh, or the parent's) and train it on examples of the answer
    (supervised), the replayed answers among them, from the start or from the checkpoint `run.resume_from`."""
    adapted = get_peft_model(model.base, model.adapter)
    model.start_adapter(adapted)
    mix = ReplayMix([example.features() for example in data.train.tokenized], [r.features() for r in data.replayed])
    validation_set = data.early_stopping.tokenized
    args = training_arguments(run.params, run.output_dir, train_examples=len(mix), has_validation=bool(validation_set))
    probe = KnowledgeProbe(model.tokenizer, data.prompt_format, batch_size=generation_batch_size(run.params.batch_size))
    trainer = Trainer(
        model=adapted,
        args=args,
        train_dataset=mix,
        eval_dataset=[example.features() for example in validation_set] or None,
        data_collator=training_collator(adapted, model.tokenizer),
        callbacks=callbacks(args, run.params, run.emit, ProbeEachEvaluation(probe) if validation_set else None),
    )
    if validation_set:  # the probe runs at each evaluation: replay can rise when it finds facts lost
        trainer.add_callback(RaiseReplayWhenFactsGo(mix, run.emit))
    outcome = fit(trainer, run.resume_from)
    outcome.metrics["replay_rises"] = float(mix.rises)
    return TrainedAdapter(adapted, outcome)
