"""The gate a continued version passes before automation may release it: the new version against its parent.

Both versions answer the same prompts greedily in the same process (the parent loaded as a second adapter
next to the trained one), scored by one task metric:

1. `parent_task`: the parent's own held-out examples (kept with the parent): the new version may fall at
   most `margin` below the parent;
2. `new_traffic`: the job's held-out examples (for a job made from captures, the corrected captures held
   out): the new version must score above the parent;
3. `facts`: the knowledge probe's questions the parent answers right: the new version must lose none.

A check without examples is not judged and does not fail the gate; the verdict says so.
"""

from __future__ import annotations

from collections.abc import Callable

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from loraplane.artifact import GateCheck, GateCheckName, GateVerdict
from loraplane.training import PromptFormat, TaskMetric
from trainer_svc.spec import JobSpec
from trainer_svc.worker.generation import greedy_texts
from trainer_svc.worker.knowledge_probe import KnowledgeProbe
from trainer_svc.worker.parent_weights import Parent
from trainer_svc.worker.task_metrics import (
    MAX_ANSWER_TOKENS,
    MAX_TASK_EXAMPLES,
    SCORERS,
    not_applicable,
    reference_answer,
)
from trainer_svc.worker.tokenization import TokenizedExample, tokenize_example
from trainer_svc.worker.training_run import TrainingSets

DEFAULT_MARGIN = 0.02
"""How far below its parent, on the parent's own task, a new version may score."""
PARENT_ADAPTER = "parent"
TRAINED_ADAPTER = "default"
PREFERRED_METRICS: tuple[TaskMetric, ...] = ("json_exact_match", "normalized_exact_match", "exact_match")
"""The metric the gate judges by: the first of these that applies to both sets' answers and that the job asked
for, else the first metric the job asked for."""


def gate_metric(asked: list[TaskMetric], references: list[str]) -> TaskMetric:
    for metric in PREFERRED_METRICS:
        if metric in asked and not (references and not_applicable(metric, references)):
            return metric
    return asked[0]


class Gate:
    """Judges the trained adapter of `model` against `parent`, loaded beside it."""

    def __init__(
        self,
        model: PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        parent: Parent,
        prompt_format: PromptFormat,
        *,
        batch_size: int,
        margin: float = DEFAULT_MARGIN,
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._parent = parent
        self._prompt_format = prompt_format
        self._batch_size = batch_size
        self._margin = margin

    def judge(
        self, parent_task: list[TokenizedExample], new_traffic: list[TokenizedExample], asked: list[TaskMetric]
    ) -> GateVerdict:
        parent_task, new_traffic = _answerable(parent_task), _answerable(new_traffic)
        references = [reference_answer(self._tokenizer, example) for example in parent_task + new_traffic]
        metric = gate_metric(asked, references)
        self._model.load_adapter(str(self._parent.folder), adapter_name=PARENT_ADAPTER)
        try:
            old = self._compare(parent_task, metric)
            new = self._compare(new_traffic, metric)
            known, lost = self._facts()
        finally:
            self._model.set_adapter(TRAINED_ADAPTER)
            self._model.delete_adapter(PARENT_ADAPTER)
        checks = [
            _check("parent_task", old, f"within {self._margin:g} of the parent", lambda p, c: c >= p - self._margin),
            _check("new_traffic", new, "above the parent", lambda p, c: c > p),
            GateCheck(
                name="facts",
                parent=float(len(known)),
                candidate=float(len(known) - len(lost)),
                examples=len(known),
                passed=not lost,
                rule="none of the parent's facts lost" + (f" (lost: {'; '.join(lost)})" if lost else ""),
            ),
        ]
        return GateVerdict(
            parent=self._parent.name, metric=metric, passed=all(check.passed for check in checks), checks=checks
        )

    def _answers(self, adapter: str, examples: list[TokenizedExample]) -> list[str]:
        self._model.set_adapter(adapter)
        prompts = [example.input_ids[: example.prompt_length] for example in examples]
        longest = max(len(example.input_ids) - example.prompt_length for example in examples)
        return greedy_texts(
            self._model,
            self._tokenizer,
            prompts,
            max_new_tokens=min(MAX_ANSWER_TOKENS, 2 * longest + 8),
            batch_size=self._batch_size,
        )

    def _compare(self, examples: list[TokenizedExample], metric: TaskMetric) -> tuple[float, float, int] | None:
        """The parent's and the trained adapter's score on `examples`; None without examples."""
        if not examples:
            return None
        references = [reference_answer(self._tokenizer, example) for example in examples]
        parent, candidate = (
            SCORERS[metric](self._answers(adapter, examples), references)
            for adapter in (PARENT_ADAPTER, TRAINED_ADAPTER)
        )
        return parent, candidate, len(examples)

    def _facts(self) -> tuple[list[str], list[str]]:
        """The probe's questions the parent answers right, and which of them the trained adapter gets wrong."""
        probe = KnowledgeProbe(self._tokenizer, self._prompt_format, batch_size=self._batch_size)
        self._model.set_adapter(PARENT_ADAPTER)
        known = probe.answered_right(self._model)
        self._model.set_adapter(TRAINED_ADAPTER)
        return known, probe.lost(self._model, known)


def judge_against_parent(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    parent: Parent,
    data: TrainingSets,
    spec: JobSpec,
    *,
    batch_size: int,
) -> GateVerdict:
    """The gate's verdict on the job's trained adapter: the parent's kept held-out examples (those that fit
    the job's max_seq_length) as its task, the job's test examples (else its validation examples) as the new
    traffic."""
    old_task = [tokenize_example(example.example, tokenizer, data.prompt_format) for example in parent.held_out]
    old_task = [example for example in old_task if len(example.input_ids) <= spec.training.max_seq_length]
    new_traffic = data.test.tokenized or data.validation.tokenized
    gate = Gate(model, tokenizer, parent, data.prompt_format, batch_size=batch_size)
    return gate.judge(old_task, new_traffic, spec.task_metrics)


def gate_figures(verdict: GateVerdict) -> dict[str, float]:
    """The verdict as the job's metrics: `gate_passed` (1 or 0) and each check's two figures."""
    figures = {"gate_passed": float(verdict.passed)}
    for check in verdict.checks:
        if check.parent is not None and check.candidate is not None:
            figures[f"gate_{check.name}_parent"] = check.parent
            figures[f"gate_{check.name}_candidate"] = check.candidate
    return figures


def _answerable(examples: list[TokenizedExample]) -> list[TokenizedExample]:
    return [example for example in examples if example.prompt_length > 0][:MAX_TASK_EXAMPLES]


def _check(
    name: GateCheckName,
    compared: tuple[float, float, int] | None,
    rule: str,
    passes: Callable[[float, float], bool],
) -> GateCheck:
    if compared is None:
        return GateCheck(name=name, passed=True, rule=f"{rule}; not judged: no examples")
    parent, candidate, examples = compared
    return GateCheck(
        name=name, parent=parent, candidate=candidate, examples=examples, passed=passes(parent, candidate), rule=rule
    )
