"""Which examples each phase of a job reads: early stopping, and the drift reference."""

from __future__ import annotations

from loraplane.training import HeldOutSet
from trainer_svc.dataset import PromptCompletion, SourcedExample
from trainer_svc.worker.tokenization import TokenizedExample
from trainer_svc.worker.training_run import MIN_DRIFT_REFERENCE_EXAMPLES, Examples, TrainingSets


def _examples(labels: list[HeldOutSet]) -> Examples:
    sourced = [
        SourcedExample(line=n, example=PromptCompletion(prompt=f"q{n}", completion="a"), held_out=label)
        for n, label in enumerate(labels, start=1)
    ]
    tokenized = [TokenizedExample([n, 1], [-100, 1], 1) for n in range(len(labels))]
    return Examples(sourced, tokenized, [], "spec.validation_data")


def _sets(validation: Examples) -> TrainingSets:
    empty = Examples([], [], [], "spec.training_data")
    return TrainingSets(train=empty, validation=validation, test=empty, replayed=[], prompt_format="raw")


def test_the_drift_reference_is_the_rows_held_out_at_random_not_the_unseen_groups() -> None:
    rows = MIN_DRIFT_REFERENCE_EXAMPLES
    validation = _examples([HeldOutSet.UNSEEN_GROUPS] * 20 + [HeldOutSet.IN_DISTRIBUTION] * rows)
    reference = _sets(validation).drift_reference
    assert [example.held_out for example in reference.sourced] == [HeldOutSet.IN_DISTRIBUTION] * rows


def test_too_few_random_rows_or_the_callers_own_validation_data_make_the_whole_reference() -> None:
    few = _examples([HeldOutSet.UNSEEN_GROUPS] * 20 + [HeldOutSet.IN_DISTRIBUTION] * (MIN_DRIFT_REFERENCE_EXAMPLES - 1))
    assert _sets(few).drift_reference == few
    callers = _examples([HeldOutSet.VALIDATION] * 12)
    assert _sets(callers).drift_reference == callers


def test_the_examples_as_sent_repeat_each_as_often_as_the_dataset_held_it() -> None:
    examples = _examples([HeldOutSet.VALIDATION] * 3)
    sourced = [examples.sourced[0].model_copy(update={"repeats": 3}), *examples.sourced[1:]]
    repeated = Examples(sourced, examples.tokenized, [], examples.field)
    first, second, third = examples.tokenized
    assert repeated.as_sent() == [first, first, first, second, third]
    assert examples.as_sent() == examples.tokenized
