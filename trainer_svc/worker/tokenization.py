"""Examples to token ids and labels: the model learns only what the assistant (or completion) says.

Every token the model should not learn to produce (prompt, system and user turns, chat markup
before an assistant turn) gets the label -100, which the loss ignores. Prompt/completion
examples go through the base model's chat template as one user turn and its answer when the job
trains in chat format (the default on a chat model), so the adapter learns the format its
callers, and serving, put prompts in.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from loraplane.errors import FailedPrecondition, InvalidArgument
from loraplane.training import PromptFormat, PromptFormatChoice
from trainer_svc.dataset import (
    ChatExample,
    ChatTurn,
    Example,
    PreferenceExample,
    PromptCompletion,
    SourcedExample,
    TextExample,
)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    # Tokens before the final response: what a serving request would send as its prompt.
    prompt_length: int

    def features(self) -> dict[str, list[int]]:
        """The fields the model and the padding collator take."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": [1] * len(self.input_ids),
            "labels": self.labels,
        }


def _tokenize_prompt_completion(example: PromptCompletion, tokenizer: PreTrainedTokenizerBase) -> TokenizedExample:
    # The prompt is tokenized alone, with the tokenizer's special tokens (BOS where it adds one),
    # exactly as a serving request's prompt is; the completion follows and ends in EOS, so the
    # model learns to stop.
    prompt_ids = tokenizer(example.prompt)["input_ids"]
    completion_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    completion_ids = [*completion_ids, tokenizer.eos_token_id]
    return TokenizedExample(
        input_ids=prompt_ids + completion_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids,
        prompt_length=len(prompt_ids),
    )


def _tokenize_text(example: TextExample, tokenizer: PreTrainedTokenizerBase) -> TokenizedExample:
    # Every token is learnt, and EOS after the text, so the model learns where a document ends.
    input_ids = [*tokenizer(example.text)["input_ids"], tokenizer.eos_token_id]
    return TokenizedExample(input_ids=input_ids, labels=list(input_ids), prompt_length=0)


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise FailedPrecondition(
            "the base model has no chat template, so conversations (messages, or a preference prompt given as "
            "messages) cannot be rendered; give prompts as text, or choose a base model with a chat template",
            field="spec.base_model",
        )
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))


def _assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], text: str) -> list[range]:
    """Character ranges of `text` each assistant turn fills, from its content through its end markup.

    Found by rendering the conversation up to each assistant turn, with and without the turn, so
    it works with any chat template that renders a conversation as a prefix of its continuation
    (which serving relies on too), without special markers in the template.
    """
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1], generation_prompt=False)
        if not (through.startswith(before) and text.startswith(through)):
            raise FailedPrecondition(
                "the base model's chat template does not render a conversation as a prefix of its "
                "continuation, so assistant turns cannot be located; use prompt/completion examples",
                field="spec.base_model",
            )
        spans.append(range(len(before), len(through)))
    return spans


def _tokenize_chat(example: ChatExample, tokenizer: PreTrainedTokenizerBase) -> TokenizedExample:
    messages = [turn.model_dump() for turn in example.messages]
    text = _render(tokenizer, messages, generation_prompt=False)
    spans = _assistant_spans(tokenizer, messages, text)
    # The template writes its own special tokens (BOS, turn markers) into the text.
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = encoding["input_ids"]
    starts = [start for start, _ in encoding["offset_mapping"]]
    labels = [
        token if any(start in span for span in spans) else IGNORE_INDEX
        for token, start in zip(input_ids, starts, strict=True)
    ]
    final_response = spans[-1].start
    prompt_length = next((i for i, start in enumerate(starts) if start >= final_response), len(input_ids))
    return TokenizedExample(input_ids=input_ids, labels=labels, prompt_length=prompt_length)


def resolve_prompt_format(choice: PromptFormatChoice, tokenizer: PreTrainedTokenizerBase) -> PromptFormat:
    """The format prompt/completion examples train in: auto is chat wherever the tokenizer has a template."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if choice == "auto":
        return "chat" if has_template else "raw"
    if choice == "chat" and not has_template:
        raise FailedPrecondition(
            "the base model has no chat template, so examples cannot train in chat format; "
            "set spec.prompt_format to raw (or auto)",
            field="spec.prompt_format",
        )
    return choice


def as_chat(example: PromptCompletion) -> ChatExample:
    return ChatExample(
        messages=[ChatTurn(role="user", content=example.prompt), ChatTurn(role="assistant", content=example.completion)]
    )


def tokenize_example(
    example: Example, tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat
) -> TokenizedExample:
    """The example as the model is trained on it; a preference pair as its prompt and chosen answer (how
    its lengths, its drift profile and the answers it is scored on see it)."""
    if isinstance(example, PreferenceExample):
        example = example.answered(chosen=True)
    if isinstance(example, PromptCompletion) and prompt_format == "chat":
        example = as_chat(example)
    if isinstance(example, ChatExample):
        return _tokenize_chat(example, tokenizer)
    if isinstance(example, TextExample):
        return _tokenize_text(example, tokenizer)
    return _tokenize_prompt_completion(example, tokenizer)


def tokenize_examples(
    examples: list[SourcedExample],
    tokenizer: PreTrainedTokenizerBase,
    *,
    prompt_format: PromptFormat,
    max_seq_length: int,
    field: str,
) -> list[TokenizedExample]:
    """Tokenize every example; InvalidArgument naming `field` and the line of one that is too long.

    Too long is an error, not a silent truncation: a truncated example teaches the model to stop
    mid-answer, or teaches it nothing when the cut falls in the prompt.
    """
    if tokenizer.eos_token_id is None:
        raise FailedPrecondition("the base model's tokenizer has no EOS token", field="spec.base_model")
    tokenized = []
    for sourced in examples:
        item = tokenize_example(sourced.example, tokenizer, prompt_format)
        if len(item.input_ids) > max_seq_length:
            raise InvalidArgument(
                f"line {sourced.line}: the example is {len(item.input_ids)} tokens long, more than "
                f"spec.training.max_seq_length ({max_seq_length}); shorten it or raise the limit",
                field=field,
            )
        tokenized.append(item)
    return tokenized
