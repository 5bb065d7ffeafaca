"""The worker's data phase: the job's examples read from its input, tokenized, and the replay examples made.

Every example is tokenized before training starts (a preference pair's rejected answer too), so an
example too long for the job is refused naming its line rather than cut short mid-run.
"""

from __future__ import annotations

from functools import partial

from loraplane.training import HeldOutSet, PromptFormat
from trainer_svc.dataset import SourcedExample, read_examples
from trainer_svc.progress import PhaseEvent
from trainer_svc.spec import TrainingParameters
from trainer_svc.worker.events import Emit
from trainer_svc.worker.generation import generation_batch_size
from trainer_svc.worker.preference import rejected_answers
from trainer_svc.worker.replay import replay_count, replay_examples
from trainer_svc.worker.tokenization import (
    TokenizedExample,
    resolve_prompt_format,
    tokenize_example,
    tokenize_examples,
)
from trainer_svc.worker.training_run import Examples, ModelToTrain, TrainingSets
from trainer_svc.worker_input import WorkerInput


def load_training_sets(worker_input: WorkerInput, model: ModelToTrain, emit: Emit) -> TrainingSets:
    """The job's training, validation and test examples in both forms, and a supervised job's replay examples."""
    spec = worker_input.spec
    train = read_examples(worker_input.train_file)
    # A trainer from before the held-out sets were labelled wrote them without: its own split drew rows at random.
    unlabelled_validation = HeldOutSet.IN_DISTRIBUTION if spec.validation_data is None else HeldOutSet.VALIDATION
    validation = _labelled(read_examples(worker_input.validation_file), unlabelled_validation)
    test = _labelled(read_examples(worker_input.test_file), HeldOutSet.TEST) if worker_input.test_file else []
    prompt_format = resolve_prompt_format(spec.prompt_format, model.tokenizer)
    emit(
        PhaseEvent(
            phase="tokenizing",
            message=f"{len(train)} training and {len(validation)} validation examples, "
            f"prompts in {prompt_format} format",
        )
    )
    if spec.training_data.captures is not None:  # callers wrote them: one too long is left, not a failed job
        fits = partial(_fitting, model, prompt_format, spec.training.max_seq_length)
        (train, cut_train), (validation, cut_validation), (test, cut_test) = map(fits, (train, validation, test))
        if cut := cut_train + cut_validation + cut_test:
            message = f"{cut} examples made from captures are longer than max_seq_length and are left out"
            emit(PhaseEvent(phase="tokenizing", message=message))
    validation_field = "spec.validation_data" if spec.validation_data else "spec.training_data"
    sets = [(train, "spec.training_data"), (validation, validation_field), (test, "spec.test_data")]

    def tokenized(examples: list[SourcedExample], field: str) -> list[TokenizedExample]:
        return tokenize_examples(
            examples,
            model.tokenizer,
            prompt_format=prompt_format,
            max_seq_length=spec.training.max_seq_length,
            field=field,
        )

    chosen = [tokenized(examples, field) for examples, field in sets]
    preferences = spec.method.learns_preferences
    replayed = [] if preferences else _replay(model, prompt_format, chosen[0], spec.training)
    rejected = [tokenized(rejected_answers(examples), field) if preferences else [] for examples, field in sets]
    train_set, validation_set, test_set = (
        Examples(examples, answers, other_answers, field)
        for (examples, field), answers, other_answers in zip(sets, chosen, rejected, strict=True)
    )
    return TrainingSets(train_set, validation_set, test_set, replayed, prompt_format)


def _fitting(
    model: ModelToTrain, prompt_format: PromptFormat, max_seq_length: int, examples: list[SourcedExample]
) -> tuple[list[SourcedExample], int]:
    """The examples that fit `max_seq_length` tokens, and how many do not."""
    fit = [
        example
        for example in examples
        if len(tokenize_example(example.example, model.tokenizer, prompt_format).input_ids) <= max_seq_length
    ]
    return fit, len(examples) - len(fit)


def _labelled(examples: list[SourcedExample], label: HeldOutSet) -> list[SourcedExample]:
    return [e if e.held_out else e.model_copy(update={"held_out": label}) for e in examples]


def _replay(
    model: ModelToTrain, prompt_format: PromptFormat, train_set: list[TokenizedExample], params: TrainingParameters
) -> list[TokenizedExample]:
    """The replay examples of a supervised job (none for text examples, which have no prompts to answer)."""
    count = replay_count(len(train_set), params.replay_fraction)
    if not count or not all(example.prompt_length for example in train_set):
        return []
    return replay_examples(
        model.base,
        model.tokenizer,
        prompt_format,
        count,
        max_seq_length=params.max_seq_length,
        batch_size=generation_batch_size(params.batch_size),
    )
