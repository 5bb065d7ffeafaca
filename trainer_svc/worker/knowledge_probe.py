"""The forgetting probe by generation: general questions the base model answers right, asked again of
the adapter.

The probe's loss (evaluate.py) shows general language ability degrading; this shows facts going
missing, which is what a caller of the adapter notices. Each question is put to the model the way
the adapter was trained (the chat template's user turn, or a plain question and answer cue), the
answer decoded greedily, and counted right when it names an accepted answer. A fact is lost when
the base model got it right and the adapter does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from loraplane.training import PromptFormat
from trainer_svc.worker import generation

QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the capital of Italy?", ("rome",)),
    ("How many days are there in a week?", ("seven", "7")),
    ("What is the largest planet in our solar system?", ("jupiter",)),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("What is the chemical formula of water?", ("h2o", "h₂o")),
    ("How many legs does a spider have?", ("eight", "8")),
    ("What gas do plants take in from the air to make their food?", ("carbon dioxide", "co2", "co₂")),
    ("What is the freezing point of water in degrees Celsius?", ("zero", "0")),
    ("Which planet is known as the Red Planet?", ("mars",)),
    ("What is the opposite of hot?", ("cold",)),
)
"""Questions and their accepted answers (lower case, matched as whole words)."""
MAX_ANSWER_TOKENS = 32
FACTS_LOST_WARNING = 1
"""Lost facts from which the job reports a warning: any fact the base knew and the adapter lost is news."""


@dataclass(frozen=True)
class ProbeResult:
    known: list[str]
    """Questions the base model answers right."""
    lost: list[str]
    """Of those, the ones the adapter gets wrong."""


def _names_an_answer(text: str, accepted: tuple[str, ...]) -> bool:
    lowered = text.lower()
    return any(re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", lowered) for answer in accepted)


def question_prompt(tokenizer: PreTrainedTokenizerBase, question: str, prompt_format: PromptFormat) -> list[int]:
    if prompt_format == "chat":
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])
    return list(tokenizer(f"Question: {question}\nAnswer:")["input_ids"])


class KnowledgeProbe:
    """The questions put the job's way, asked of a model: which it answers right, and which facts it lost."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat, *, batch_size: int) -> None:
        self._tokenizer = tokenizer
        self._prompts = {question: question_prompt(tokenizer, question, prompt_format) for question, _ in QUESTIONS}
        self._batch_size = batch_size

    def answered_right(self, model: PeftModel, questions: list[str] | None = None) -> list[str]:
        """Of `questions` (every one by default), those `model` answers right, in the probe's order."""
        asked = [(question, accepted) for question, accepted in QUESTIONS if questions is None or question in questions]
        if not asked:
            return []
        answers = generation.greedy_texts(
            model,
            self._tokenizer,
            [self._prompts[question] for question, _ in asked],
            max_new_tokens=MAX_ANSWER_TOKENS,
            batch_size=self._batch_size,
        )
        return [
            question
            for (question, accepted), answer in zip(asked, answers, strict=True)
            if _names_an_answer(answer, accepted)
        ]

    def lost(self, model: PeftModel, known: list[str]) -> list[str]:
        """The facts of `known` (the base model's) that the adapter of `model` now answers wrong."""
        right = set(self.answered_right(model, known))
        return [question for question in known if question not in right]


def knowledge_probe(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat, *, batch_size: int
) -> ProbeResult:
    """What the base model knows, and which of it the adapter lost."""
    probe = KnowledgeProbe(tokenizer, prompt_format, batch_size=batch_size)
    with model.disable_adapter():
        known = probe.answered_right(model)
    return ProbeResult(known=known, lost=probe.lost(model, known))


FACT_WEIGHT = 1000.0
"""What one lost fact weighs against validation loss (nats per token) in the score checkpoints are chosen
by: more than any loss, so the published checkpoint is one that loses the fewest facts, and of those
the one with the lowest validation loss."""
SELECTION_METRIC = "selection"


class ProbeEachEvaluation(TrainerCallback):
    """Puts the probe to the adapter at each evaluation: the evaluation's metrics get `eval_facts_lost` and
    `eval_selection` (validation loss plus FACT_WEIGHT per lost fact), the score the best checkpoint is
    chosen by and early stopping watches. Listed before the callbacks that read those metrics. The
    facts lost also go into the evaluation's entry of the run's log, which checkpoints keep, so a
    resumed run still reports them."""

    def __init__(self, probe: KnowledgeProbe) -> None:
        self._probe = probe
        self._known: list[str] = []

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs["model"]
        with model.disable_adapter():
            self._known = self._probe.answered_right(model)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        model = kwargs["model"]
        lost = _most_across_ranks(len(self._probe.lost(model, self._known)) if self._known else 0, model)
        if metrics is not None and "eval_loss" in metrics:
            metrics["eval_facts_lost"] = float(lost)
            metrics[f"eval_{SELECTION_METRIC}"] = metrics["eval_loss"] + FACT_WEIGHT * lost
            if state.log_history and "eval_loss" in state.log_history[-1]:  # the entry `evaluate` just logged
                state.log_history[-1]["eval_facts_lost"] = float(lost)


def _most_across_ranks(lost: int, model: PeftModel) -> int:
    """The most facts any rank found lost (a run under torchrun): every rank must choose the same checkpoint
    and stop at the same step, whatever its own greedy answers."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return lost
    count = torch.tensor([lost], device=next(model.parameters()).device)
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
    return int(count.item())
