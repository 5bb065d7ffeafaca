"""The training loop: transformers' Trainer, reporting progress and evaluations as events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import (
    DataCollatorForSeq2Seq,
    EarlyStoppingCallback,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from trainer_svc.progress import EvalEvent, ProgressEvent
from trainer_svc.spec import TrainingParameters
from trainer_svc.worker.events import Emit
from trainer_svc.worker.model import compute_dtype
from trainer_svc.worker.tokenization import IGNORE_INDEX, TokenizedExample


class EventReporter(TrainerCallback):
    """Turns the Trainer's logs into ProgressEvents and its evaluations into EvalEvents."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._started = time.monotonic()

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._started = time.monotonic()

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
        step = max(state.global_step, 1)
        self._emit(
            ProgressEvent(
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=state.epoch or 0.0,
                loss=logs["loss"],
                learning_rate=logs.get("learning_rate", 0.0),
                elapsed_seconds=elapsed,
                eta_seconds=elapsed / step * max(state.max_steps - state.global_step, 0),
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


def training_arguments(params: TrainingParameters, output_dir: Path, *, has_validation: bool) -> TrainingArguments:
    """Trainer settings from the job's parameters.

    Evaluation runs every `eval_every_steps` steps, or once per epoch. Checkpoints are written only
    when early stopping needs them to restore the best adapter, and then only the model.
    """
    if not has_validation:
        eval_strategy = "no"
    elif params.eval_every_steps:
        eval_strategy = "steps"
    else:
        eval_strategy = "epoch"
    keep_best = has_validation and params.early_stopping_patience > 0
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps or -1,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        learning_rate=params.learning_rate,
        warmup_steps=params.warmup_ratio,  # a float below 1 is a ratio of the total steps
        eval_strategy=eval_strategy,
        eval_steps=params.eval_every_steps or None,
        save_strategy=eval_strategy if keep_best else "no",
        save_steps=params.eval_every_steps or 500,  # only read when saving by steps
        save_total_limit=1 if keep_best else None,
        save_only_model=True,
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best else None,
        greater_is_better=False if keep_best else None,
        logging_strategy="steps",
        logging_steps=1,
        seed=params.seed,
        bf16=compute_dtype() == torch.bfloat16,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=True,
    )


def train(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    train_set: list[TokenizedExample],
    validation_set: list[TokenizedExample],
    params: TrainingParameters,
    output_dir: Path,
    emit: Emit,
) -> dict[str, float]:
    """Train the adapter in place; return the training metrics that go into the manifest."""
    args = training_arguments(params, output_dir, has_validation=bool(validation_set))
    callbacks: list[TrainerCallback] = [EventReporter(emit)]
    if args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=params.early_stopping_patience))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=[example.features() for example in train_set],
        eval_dataset=[example.features() for example in validation_set] or None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX),
        callbacks=callbacks,
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "train_loss": losses[-1],
        "steps": float(trainer.state.global_step),
        "epochs": float(trainer.state.epoch or 0.0),
        "stopped_early": float(trainer.state.global_step < trainer.state.max_steps),
    }
