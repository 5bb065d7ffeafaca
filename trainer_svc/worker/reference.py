"""The drift reference: every prompt the job saw, and held-out prompts answered by the trained adapter.

Serving records live traffic from the prompts it receives and the tokens it generates, with the
log-probabilities the engine reports for them. So the reference is built the same way: each
held-out prompt is answered by the adapter (greedy decoding), its generated tokens give the
response length and the output confidence (raw log-probabilities of the generated tokens, end
token included, as the engines count them), and its text whether it keeps the trained form or
refuses. Generation statistics stay on held-out prompts, since an adapter is surer of answers it was
trained on; prompt statistics use every prompt of the job (up to MAX_PROMPT_RECORDS), a prompt the data
repeated counted as often as it was sent (deduplicated, the reference would under-weigh the short, common
prompts traffic repeats most and read unchanged traffic as drifted): lengths and
tokens, which training does not change, and the prompt surprise (a prompt's own log-probability),
since training scores the answers only, never the prompt's tokens. A held-out set made of whole
templates stands for a few phrasings; every prompt stands for the task's many. Scoring the
dataset's reference answers by teacher forcing would measure something live traffic never can.
"""

from __future__ import annotations

import random

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from loraplane.answer_form import AnswerForm
from loraplane.drift import Profile, Record, Sample, observe, prompt_embedding, prompt_record, template_frame
from loraplane.models import end_token_ids
from trainer_svc.worker.generation import batched_greedy_answers
from trainer_svc.worker.scoring import prompt_scores
from trainer_svc.worker.tokenization import TokenizedExample

MAX_REFERENCE_PROMPTS = 128
"""Held-out prompts answered for the reference, at most."""
MAX_PROMPT_RECORDS = 1000
"""Prompts the prompt statistics are compared with, at most (a seeded sample of the job's)."""
MAX_SCORED_PROMPTS = 256
"""Of those, the prompts scored for prompt surprise and embedded for prompt meaning (a forward pass each)."""
MAX_REFERENCE_TOKENS = 256
"""Tokens generated per reference prompt, at most; a little past the longest held-out answer."""


def _prompts(examples: list[TokenizedExample]) -> list[list[int]]:
    return [example.input_ids[: example.prompt_length] for example in examples if example.prompt_length > 0]


def reference_profile(
    model: PreTrainedModel | torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    seen: list[TokenizedExample],
    held_out: list[TokenizedExample],
    form: AnswerForm | None,
    *,
    batch_size: int,
    generation_batch_size: int,
) -> Profile:
    """The profile serving compares the adapter's live traffic with (see the module docstring): the prompts
    of `seen` (every example of the job, as often as it was sent), and those of `held_out` answered; `form`
    is the one the training answers share. Prompts are scored `batch_size` at a time and answered
    `generation_batch_size` at a time."""
    frame = template_frame(tokenizer)
    every_prompt = _prompts(seen)
    every_prompt = random.Random(0).sample(every_prompt, min(len(every_prompt), MAX_PROMPT_RECORDS))
    scored = every_prompt[:MAX_SCORED_PROMPTS]
    scores = prompt_scores(model, scored, batch_size=batch_size) if scored else []
    prompts = [
        prompt_record(prompt, frame, logprob, prompt_embedding(hidden))
        for prompt, (logprob, hidden) in zip(scored, scores, strict=True)
    ]
    prompts += [prompt_record(prompt, frame) for prompt in every_prompt[len(scored) :]]
    answered = [e for e in held_out if e.prompt_length > 0][:MAX_REFERENCE_PROMPTS]
    if not answered:
        return Profile(prompts=prompts, form=form)
    longest_answer = max(len(example.input_ids) - example.prompt_length for example in answered)
    records = answered_records(
        model,
        tokenizer,
        _prompts(answered),
        form,
        max_new_tokens=min(MAX_REFERENCE_TOKENS, 2 * longest_answer + 8),
        generation_batch_size=generation_batch_size,
    )
    return Profile(prompts=prompts, answers=records, form=form)


def answered_records(
    model: PreTrainedModel | torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    form: AnswerForm | None,
    *,
    max_new_tokens: int,
    generation_batch_size: int,
    score_batch_size: int = 0,
) -> list[Record]:
    """The records of `prompts` answered greedily (up to `max_new_tokens`) as serving records its requests;
    with `score_batch_size`, their prompts scored and embedded too, as serving does for the requests it
    samples for that."""
    frame = template_frame(tokenizer)
    answers = batched_greedy_answers(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=generation_batch_size
    )
    scores = prompt_scores(model, prompts, batch_size=score_batch_size) if score_batch_size else []
    ends = set(end_token_ids(model, tokenizer))
    records = []
    for index, (prompt, (answer, answer_logprob)) in enumerate(zip(prompts, answers, strict=True)):
        text = str(tokenizer.decode(answer, skip_special_tokens=True))
        truncated = len(answer) >= max_new_tokens and answer[-1] not in ends
        logprob, embedding = (scores[index][0], prompt_embedding(scores[index][1])) if scores else (None, None)
        sample = Sample(prompt, answer, answer_logprob, logprob, text, truncated, embedding)
        records.append(observe(sample, frame, form))
    return records
