from pathlib import Path

import pytest

from loraplane.errors import FailedPrecondition, InvalidArgument
from trainer_svc.dataset import ChatExample, ChatTurn, PreferenceExample, PromptCompletion, SourcedExample, TextExample
from trainer_svc.worker.model import load_tokenizer
from trainer_svc.worker.tokenization import (
    IGNORE_INDEX,
    as_chat,
    resolve_prompt_format,
    tokenize_example,
    tokenize_examples,
)

CHAT = ChatExample(
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(tiny_model_dir)


def _learned_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([token for token, label in zip(input_ids, labels, strict=True) if label != IGNORE_INDEX])


def test_prompt_completion_learns_completion_and_eos_only(tokenizer) -> None:
    item = tokenize_example(PromptCompletion(prompt="What colour is the sky?", completion=" Blue."), tokenizer, "raw")
    prompt_ids = tokenizer("What colour is the sky?")["input_ids"]
    assert item.input_ids[: len(prompt_ids)] == prompt_ids
    assert item.prompt_length == len(prompt_ids)
    assert item.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert item.labels[len(prompt_ids) :] == item.input_ids[len(prompt_ids) :]
    assert item.input_ids[-1] == tokenizer.eos_token_id
    assert _learned_text(tokenizer, item.input_ids, item.labels) == " Blue.<|im_end|>"


def test_prompt_completion_in_chat_format_is_a_user_turn_and_its_answer(tokenizer) -> None:
    example = PromptCompletion(prompt="What colour is the sky?", completion="Blue.")
    item = tokenize_example(example, tokenizer, "chat")
    assert item == tokenize_example(as_chat(example), tokenizer, "chat")
    request = tokenizer.apply_chat_template(
        [{"role": "user", "content": example.prompt}], tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(item.input_ids[: item.prompt_length]) == request  # what serving sends a plain prompt as
    assert _learned_text(tokenizer, item.input_ids, item.labels) == "Blue.<|im_end|>\n"


def test_text_learns_every_token_and_eos_in_either_format(tokenizer) -> None:
    for prompt_format in ("chat", "raw"):
        item = tokenize_example(TextExample(text="Once upon a time."), tokenizer, prompt_format)
        assert item.labels == item.input_ids and item.prompt_length == 0
        assert item.input_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(item.input_ids, skip_special_tokens=True) == "Once upon a time."


def test_auto_trains_in_chat_format_where_the_model_has_a_template(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    assert resolve_prompt_format("auto", tokenizer) == "chat"
    assert resolve_prompt_format("raw", tokenizer) == "raw"
    tokenizer.chat_template = None
    assert resolve_prompt_format("auto", tokenizer) == "raw"
    with pytest.raises(FailedPrecondition, match="no chat template") as caught:
        resolve_prompt_format("chat", tokenizer)
    assert caught.value.field == "spec.prompt_format"


def test_chat_learns_every_assistant_turn_and_nothing_else(tokenizer) -> None:
    item = tokenize_example(CHAT, tokenizer, "chat")
    assert tokenizer.decode(item.input_ids) == tokenizer.apply_chat_template(
        [turn.model_dump() for turn in CHAT.messages], tokenize=False
    )
    assert _learned_text(tokenizer, item.input_ids, item.labels) == "Hello!<|im_end|>\nGoodbye.<|im_end|>\n"


def test_chat_prompt_is_what_a_serving_request_would_send(tokenizer) -> None:
    item = tokenize_example(CHAT, tokenizer, "chat")
    request = tokenizer.apply_chat_template(
        [turn.model_dump() for turn in CHAT.messages[:-1]], tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(item.input_ids[: item.prompt_length]) == request
    assert tokenizer.decode(item.input_ids[item.prompt_length :]) == "Goodbye.<|im_end|>\n"


def test_overlong_example_names_its_line_and_field(tokenizer) -> None:
    examples = [
        SourcedExample(line=3, example=PromptCompletion(prompt="Hi", completion=" there")),
        SourcedExample(line=7, example=PromptCompletion(prompt="A long prompt " * 20, completion=" ok")),
    ]
    with pytest.raises(InvalidArgument) as caught:
        tokenize_examples(examples, tokenizer, prompt_format="raw", max_seq_length=16, field="spec.training_data")
    assert caught.value.field == "spec.training_data"
    assert "line 7" in caught.value.message and "max_seq_length (16)" in caught.value.message
    assert len(tokenize_examples(examples[:1], tokenizer, prompt_format="raw", max_seq_length=16, field="x")) == 1


def test_chat_template_that_reorders_turns_is_refused(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = (
        "{% for message in messages | reverse %}{{ message['role'] + ': ' + message['content'] + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    with pytest.raises(FailedPrecondition, match="chat template"):
        tokenize_example(CHAT, tokenizer, "chat")


def test_a_conversation_on_a_model_without_a_chat_template_is_a_failed_precondition(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = None
    pair = PreferenceExample(prompt=[ChatTurn(role="user", content="2+2?")], chosen="4", rejected="5")
    for example in (CHAT, pair):
        with pytest.raises(FailedPrecondition, match="no chat template") as info:
            tokenize_example(example, tokenizer, "raw")
        assert info.value.field == "spec.base_model"
