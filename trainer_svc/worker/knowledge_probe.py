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

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from loraplane.training import PromptFormat
from trainer_svc.worker.generation import base_and_adapter_texts

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


def knowledge_probe(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat, *, batch_size: int
) -> ProbeResult:
    prompts = [question_prompt(tokenizer, question, prompt_format) for question, _ in QUESTIONS]
    base_answers, adapter_answers = base_and_adapter_texts(
        model, tokenizer, prompts, max_new_tokens=MAX_ANSWER_TOKENS, batch_size=batch_size
    )
    known = [
        question
        for (question, accepted), answer in zip(QUESTIONS, base_answers, strict=True)
        if _names_an_answer(answer, accepted)
    ]
    adapter_right = {
        question
        for (question, accepted), answer in zip(QUESTIONS, adapter_answers, strict=True)
        if _names_an_answer(answer, accepted)
    }
    return ProbeResult(known=known, lost=[question for question in known if question not in adapter_right])
