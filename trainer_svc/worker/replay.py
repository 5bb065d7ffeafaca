"""Replay: the base model's own answers to general questions, mixed into a supervised run so the
adapter keeps answering them as the base model did.

A narrow dataset teaches more than its task: trained on dates, SmolLM2-135M starts dating
everything ("The Red Planet is the planet designated ... as 2018-01-01").
Rehearsing what the base model already says, in its own words (self-distillation, as in
"Self-Distillation Bridges Distribution Gap in Language Model Fine-Tuning", Yang et al. 2024),
costs a round of greedy generation and about `replay_fraction` more training steps, and
shows the adapter that a question outside its task gets the base model's answer. On our date
task it kept every fact the base knew at no cost in exact match (docs/training.md, Replay).
The questions are general instructions shipped with the project, none of them a question of the
knowledge probe, which would otherwise measure its own training data.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from loraplane.models import end_token_ids
from loraplane.training import PromptFormat
from trainer_svc.worker.generation import batched_greedy_answers
from trainer_svc.worker.knowledge_probe import question_prompt
from trainer_svc.worker.tokenization import IGNORE_INDEX, TokenizedExample

REPLAY_QUESTIONS: tuple[str, ...] = (
    "Give me three tips for staying healthy.",
    "Explain what a computer program is in one sentence.",
    "What does a doctor do?",
    "Suggest a name for a small bakery.",
    "Why do people exercise?",
    "Describe the colour of the sky on a clear day.",
    "What is the sum of 12 and 30?",
    "Write one sentence about the ocean.",
    "What is a noun? Give an example.",
    "How do you make a cup of tea?",
    "What is the main job of the heart?",
    "Name two musical instruments.",
    "What is an umbrella used for?",
    "Give a synonym for happy.",
    "What does a library lend to people?",
    "Explain why sleep is important.",
    "Write a short greeting for a birthday card.",
    "What is the difference between a cat and a dog?",
    "How many minutes are in an hour?",
    "What is recycling?",
    "Translate 'thank you' into Spanish.",
    "What do bees make?",
    "Give an example of a fruit that is yellow.",
    "What is the largest ocean on Earth?",
    "Why do leaves change colour in autumn?",
    "What is a verb?",
    "Describe a bicycle.",
    "What is 9 times 7?",
    "Who was Albert Einstein?",
    "What is the boiling point of water at sea level in degrees Celsius?",
    "Write a sentence using the word 'river'.",
    "What does a firefighter do?",
    "What is the tallest mountain in the world?",
    "Name three colours of the rainbow.",
    "What is the opposite of up?",
    "What language is spoken in Brazil?",
    "Explain what a map is.",
    "How many continents are there?",
    "What is a triangle?",
    "Give one reason to read books.",
)
MAX_REPLAY_TOKENS = 96
"""Longest base answer kept; one still going on at this length is left out rather than cut short,
since a cut answer would teach the adapter to stop mid-sentence."""


def replay_count(train_examples: int, fraction: float) -> int:
    """Replay examples for a training set of `train_examples`: `fraction` of it, at most one per question."""
    return min(len(REPLAY_QUESTIONS), round(fraction * train_examples))


def replay_examples(
    base: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat,
    count: int,
    *,
    max_seq_length: int,
    batch_size: int,
) -> list[TokenizedExample]:
    """The base model's greedy answers to the first `count` questions, put the way the job's examples
    are (the chat template's user turn, or a plain question and answer cue), as training examples
    that learn the answer only. Call it before the adapter is attached: `base` answers as itself."""
    prompts = [question_prompt(tokenizer, question, prompt_format) for question in REPLAY_QUESTIONS[:count]]
    end_ids = set(end_token_ids(base, tokenizer))
    answers = batched_greedy_answers(base, tokenizer, prompts, max_new_tokens=MAX_REPLAY_TOKENS, batch_size=batch_size)
    return [
        TokenizedExample(
            input_ids=[*prompt, *answer], labels=[IGNORE_INDEX] * len(prompt) + answer, prompt_length=len(prompt)
        )
        for prompt, (answer, _) in zip(prompts, answers, strict=True)
        if answer[-1] in end_ids and len(prompt) + len(answer) <= max_seq_length
    ]
