"""The drift reference profile: held-out prompts and what the trained adapter generates for them.

Serving profiles live traffic from the prompts it receives and the tokens it generates, with the
log-probabilities the engine reports for them. So the reference is built the same way: each
held-out prompt is answered by the adapter (greedy decoding), its generated tokens give the
response length and the output confidence (raw log-probabilities of the generated tokens, end
token included, as the engines count them), and the prompt's own log-probability gives the
prompt surprise. Prompt lengths and tokens are counted without the chat template's frame, which
serving strips the same way. Scoring the dataset's reference answers by teacher forcing would measure
something live traffic never can.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from loraplane.drift import Profile, ProfileBuilder, Sample, template_frame
from trainer_svc.worker.generation import batched_greedy_answers
from trainer_svc.worker.scoring import token_logprobs
from trainer_svc.worker.tokenization import TokenizedExample

MAX_REFERENCE_PROMPTS = 64
"""Held-out prompts answered for the reference; enough for stable means at seconds of CPU time."""
MAX_REFERENCE_TOKENS = 256
"""Tokens generated per reference prompt, at most; a little past the longest held-out answer."""


def reference_profile(
    model: PreTrainedModel | torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    held_out: list[TokenizedExample],
    *,
    batch_size: int,
    generation_batch_size: int,
) -> Profile:
    """The profile serving compares the adapter's live traffic with (see the module docstring); prompts are
    scored `batch_size` at a time and answered `generation_batch_size` at a time."""
    examples = [example for example in held_out if example.prompt_length > 0][:MAX_REFERENCE_PROMPTS]
    builder = ProfileBuilder(template_frame(tokenizer))
    if not examples:
        return builder.build()
    prompts = [example.input_ids[: example.prompt_length] for example in examples]
    longest_answer = max(len(example.input_ids) - example.prompt_length for example in examples)
    max_new_tokens = min(MAX_REFERENCE_TOKENS, 2 * longest_answer + 8)
    prompt_scores = token_logprobs(model, prompts, batch_size=batch_size)
    answers = batched_greedy_answers(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=generation_batch_size
    )
    for prompt, (answer, answer_logprob), scores in zip(prompts, answers, prompt_scores, strict=True):
        builder.add(Sample(prompt, answer, answer_logprob, float(scores.sum())))
    return builder.build()
