"""Preference tuning (DPO) through TRL's DPOTrainer, and how strongly an adapter prefers the chosen answers.

TRL tokenizes each pair itself: a conversation through the base model's chat template with the
generation prompt (as serving renders a chat request), text as it is with EOS after each answer.
Before that, the worker has tokenized both answers of every pair with its own rules, so that an
over-long pair is refused naming its line rather than cut short; TRL's `max_length` is then only a
backstop. The run shares the supervised run's schedule, evaluations, resumable checkpoints and
early stopping (on the DPO loss of the validation pairs): it is the same Trainer underneath.
"""

from __future__ import annotations

import datasets
import numpy as np
from peft import PeftModel
from trl import DPOConfig, DPOTrainer

from loraplane.errors import InvalidArgument
from loraplane.training import PromptFormat
from trainer_svc.dataset import PreferenceExample, SourcedExample
from trainer_svc.worker.evaluate import answer_logprobs
from trainer_svc.worker.tokenization import TokenizedExample
from trainer_svc.worker.train import callbacks, fit, training_settings
from trainer_svc.worker.training_run import ModelToTrain, TrainedAdapter, TrainingRun, TrainingSets


def _pair(sourced: SourcedExample) -> PreferenceExample:
    if not isinstance(sourced.example, PreferenceExample):  # the service admits pairs only to a DPO job
        raise TypeError(f"line {sourced.line} is not a preference pair")
    return sourced.example


def rejected_answers(examples: list[SourcedExample]) -> list[SourcedExample]:
    """Each pair as its prompt with the rejected answer, on the pair's line."""
    return [SourcedExample(line=s.line, example=_pair(s).answered(chosen=False)) for s in examples]


def trl_rows(examples: list[SourcedExample], prompt_format: PromptFormat, *, field: str) -> list[dict[str, object]]:
    """The pairs in TRL's preference format: conversational where the prompt is a conversation or the job
    trains in chat format (the prompt text as one user turn), else plain text.

    TRL treats a whole dataset as one or the other, so text prompts trained raw cannot sit beside
    conversations; that mix is refused naming the first conversation's line.
    """
    rows: list[dict[str, object]] = []
    for sourced in examples:
        pair = _pair(sourced)
        if isinstance(pair.prompt, str) and prompt_format == "raw":
            rows.append({"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected})
            continue
        if isinstance(pair.prompt, str):
            turns = [{"role": "user", "content": pair.prompt}]
        else:
            turns = [turn.model_dump() for turn in pair.prompt]
        rows.append(
            {
                "prompt": turns,
                "chosen": [{"role": "assistant", "content": pair.chosen}],
                "rejected": [{"role": "assistant", "content": pair.rejected}],
            }
        )
    kinds = [isinstance(row["prompt"], str) for row in rows]
    if any(kinds) and not all(kinds):
        line = next(s.line for s, text in zip(examples, kinds, strict=True) if not text)
        raise InvalidArgument(
            f"line {line}: the prompt is a conversation while other prompts are text trained in raw format; "
            "give every prompt as text or every one as a conversation, or set spec.prompt_format to chat",
            field=field,
        )
    return rows


def train_preferences(model: ModelToTrain, data: TrainingSets, run: TrainingRun) -> TrainedAdapter:
    """Give the base model its adapter (fresh, or the parent's) and train it by DPO on the pairs; the model
    with its trained adapter, and the outcome.

    TRL creates the adapter from its config: handed a model that already has one, it would keep a
    copy of it as the reference, which a resumed run restores wrongly. The reference is the model
    with its adapter switched off, so no second copy of the base is held; a job that continues a
    version starts the adapter TRL made from the version's weights, and is still judged against the
    base model.
    """
    datasets.disable_progress_bars()
    train_rows = trl_rows(data.train.sourced, data.prompt_format, field=data.train.field)
    validation_rows = trl_rows(data.early_stopping.sourced, data.prompt_format, field=data.validation.field)
    settings = training_settings(
        run.params, run.output_dir, train_examples=len(train_rows), has_validation=bool(validation_rows)
    )
    args = DPOConfig(**settings, beta=run.dpo.beta, max_length=run.params.max_seq_length)
    trainer = DPOTrainer(
        model=model.base,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(validation_rows) if validation_rows else None,
        processing_class=model.tokenizer,
        peft_config=model.adapter,
        callbacks=callbacks(args, run.params, run.emit),
    )
    model.start_adapter(trainer.model)  # type: ignore[arg-type]  # a PeftModel: TRL wrapped the base
    outcome = fit(trainer, run.resume_from)
    return TrainedAdapter(trainer.model, outcome)  # type: ignore[arg-type]  # a PeftModel: TRL wrapped the base


def preference_scores(
    model: PeftModel, chosen: list[TokenizedExample], rejected: list[TokenizedExample], *, batch_size: int
) -> dict[str, float]:
    """On held-out pairs, for the base model and the adapter: the share of pairs whose chosen answer is
    the more likely (preference accuracy), and the mean log-probability margin of chosen over rejected.

    A DPO adapter that learnt the preferences raises both above its base's.
    """

    def margins() -> np.ndarray:
        better = [float(s.sum()) for s in answer_logprobs(model, chosen, batch_size=batch_size)]
        worse = [float(s.sum()) for s in answer_logprobs(model, rejected, batch_size=batch_size)]
        return np.array(better) - np.array(worse)

    with model.disable_adapter():
        base = margins()
    adapter = margins()
    return {
        "preference_accuracy_base": float((base > 0).mean()),
        "preference_accuracy_adapter": float((adapter > 0).mean()),
        "preference_margin_base": float(base.mean()),
        "preference_margin_adapter": float(adapter.mean()),
    }
