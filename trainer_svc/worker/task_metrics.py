"""Task metrics by generation: how much better the adapter answers held-out prompts than its base.

Loss says how likely the reference answers are; a caller wants to know whether the answers the
adapter gives are right. After training, the base model and the adapter each answer the test
prompts (the validation prompts when the job has no test set) greedily, as serving would, and
both are scored against the dataset's answers: the answer comparisons of `loraplane.answers` (the
benchmarks score with the same ones), and maintained implementations of the similarity scores:
sacrebleu for BLEU and chrF, rouge-score for ROUGE-L. A comparison that does not apply to the
references (JSON metrics on answers that are not JSON) is left out of the report, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import sacrebleu
from peft import PeftModel
from rouge_score import rouge_scorer
from transformers import PreTrainedTokenizerBase

from loraplane import answers
from loraplane.answers import ANSWER_METRICS
from loraplane.training import HeldOutSet, TaskMetric
from trainer_svc.progress import TaskScore
from trainer_svc.worker.generation import base_and_adapter_texts
from trainer_svc.worker.tokenization import TokenizedExample

MAX_TASK_EXAMPLES = 200
"""Test prompts answered, at most: enough to tell a few points of exact match apart, in seconds to minutes."""
MAX_ANSWER_TOKENS = 256


def _rouge_l(predictions: list[str], references: list[str]) -> float:
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores)


def _bleu(predictions: list[str], references: list[str]) -> float:
    return float(sacrebleu.corpus_bleu(predictions, [references]).score) / 100


def _chrf(predictions: list[str], references: list[str]) -> float:
    return float(sacrebleu.corpus_chrf(predictions, [references]).score) / 100


SCORERS: dict[TaskMetric, Callable[[list[str], list[str]], float]] = {
    **{metric: partial(answers.score, metric) for metric in ANSWER_METRICS},
    "rouge_l": _rouge_l,
    "bleu": _bleu,
    "chrf": _chrf,
}


def not_applicable(metric: TaskMetric, references: list[str]) -> str | None:
    """Why the metric cannot score answers against these references (None: it can); only the JSON
    comparisons have conditions."""
    return answers.not_applicable(metric, references) if answers.is_answer_metric(metric) else None


def reference_answer(tokenizer: PreTrainedTokenizerBase, example: TokenizedExample) -> str:
    """The example's final answer as text: its tokens after the prompt, markup and end token left out."""
    return str(tokenizer.decode(example.input_ids[example.prompt_length :], skip_special_tokens=True)).strip()


def _answerable(examples: list[TokenizedExample]) -> list[TokenizedExample]:
    """Up to MAX_TASK_EXAMPLES examples that have a prompt (text examples have none: nothing to answer)."""
    return [example for example in examples if example.prompt_length > 0][:MAX_TASK_EXAMPLES]


def _reasons_left_out(metrics: list[TaskMetric], references: list[str]) -> dict[TaskMetric, str]:
    return {metric: reason for metric in metrics if (reason := not_applicable(metric, references))}


def metrics_left_out(
    tokenizer: PreTrainedTokenizerBase, examples: list[TokenizedExample], metrics: list[TaskMetric]
) -> dict[TaskMetric, str]:
    """The metrics asked for that do not apply to these examples' answers, each with why: `task_scores`
    leaves them out of the report rather than report a 0 that would read as a wrong adapter."""
    references = [reference_answer(tokenizer, example) for example in _answerable(examples)]
    return _reasons_left_out(metrics, references) if references else {}


def task_scores(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[TokenizedExample],
    metrics: list[TaskMetric],
    held_out: HeldOutSet,
    *,
    batch_size: int,
) -> list[TaskScore]:
    """Each metric that applies (see `metrics_left_out`), for the base model and the adapter, on the
    answerable examples."""
    answerable = _answerable(examples)
    references = [reference_answer(tokenizer, example) for example in answerable]
    left_out = _reasons_left_out(metrics, references)
    applicable = [metric for metric in metrics if metric not in left_out]
    if not answerable or not applicable:
        return []
    prompts = [example.input_ids[: example.prompt_length] for example in answerable]
    longest = max(len(example.input_ids) - example.prompt_length for example in answerable)
    base_answers, adapter_answers = base_and_adapter_texts(
        model, tokenizer, prompts, max_new_tokens=min(MAX_ANSWER_TOKENS, 2 * longest + 8), batch_size=batch_size
    )
    return [
        TaskScore(
            metric=metric,
            base=SCORERS[metric](base_answers, references),
            adapter=SCORERS[metric](adapter_answers, references),
            examples=len(answerable),
            held_out=held_out,
        )
        for metric in applicable
    ]
