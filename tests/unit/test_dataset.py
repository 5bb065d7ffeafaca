import pytest

from loraplane.errors import InvalidArgument
from trainer_svc.dataset import (
    ChatExample,
    ChatTurn,
    PreferenceExample,
    PromptCompletion,
    TextExample,
    deduplicate,
    leaked,
    parse_jsonl,
    read_examples,
    write_examples,
)


def test_both_formats_parse_and_blank_lines_are_skipped() -> None:
    text = (
        '{"prompt": "2+2=", "completion": "4"}\n\n'
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    )
    examples = parse_jsonl(text, field="spec.training_data")
    assert isinstance(examples[0].example, PromptCompletion)
    assert isinstance(examples[1].example, ChatExample)
    assert [e.line for e in examples] == [1, 3]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no examples"),
        ("\n  \n", "no examples"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b"\n', "line 2 is not valid JSON"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', "line 2: completion"),
        ('{"prompt": "a", "completion": ""}\n', "line 1: completion"),
        ('{"prompt": "a", "completion": "b", "text": "c"}\n', "line 1: the object fits two formats"),
        ('{"messages": [], "text": "c"}\n', "line 1: .*fits two formats \\(messages and text\\)"),
        ('{"input": "a", "output": "b"}\n', 'line 1: expected an object with "prompt"'),
        ('{"text": ""}\n', "line 1: text"),
        ("[1, 2]\n", "line 1: expected"),
        ('{"messages": [{"role": "user", "content": "q"}]}\n', "line 1: .*last message must be"),
        ('{"messages": [{"role": "robot", "content": "q"}]}\n', "line 1: messages.0.role"),
        ('{"prompt": "a", "completion": "b", "extra": 1}\n', "line 1: extra"),
    ],
)
def test_malformed_datasets_name_the_line(text: str, expected: str) -> None:
    with pytest.raises(InvalidArgument, match=expected) as info:
        parse_jsonl(text, field="spec.training_data")
    assert info.value.field == "spec.training_data"


def test_examples_round_trip_through_the_worker_file_with_their_lines(tmp_path) -> None:
    examples = parse_jsonl('\n{"prompt": "a", "completion": "b"}\n', field="f")
    write_examples(tmp_path / "train.jsonl", examples)
    assert read_examples(tmp_path / "train.jsonl") == examples
    assert examples[0].line == 2


def test_unicode_line_separators_inside_json_strings_are_not_line_breaks() -> None:
    text = '{"prompt": "a\u2028b\u0085c", "completion": "d"}\n{"prompt": "e", "completion": "f"}\r\n'
    examples = parse_jsonl(text, field="f")
    assert [e.line for e in examples] == [1, 2]
    assert examples[0].example.prompt == "a\u2028b\u0085c"  # type: ignore[union-attr]


def test_text_examples_parse() -> None:
    (example,) = parse_jsonl('{"text": "Once upon a time."}\n', field="spec.training_data")
    assert example.example == TextExample(text="Once upon a time.")


def test_repeats_are_removed_after_case_and_whitespace_are_normalised_and_counted() -> None:
    text = (
        '{"prompt": "What is 2+2?", "completion": "4"}\n'
        '{"prompt": "what is  2+2? ", "completion": "4"}\n'
        '{"prompt": "What is 3+3?", "completion": "6"}\n'
        '{"text": "Hello   World"}\n'
        '{"text": "hello world"}\n'
    )
    kept, removed = deduplicate(parse_jsonl(text, field="f"))
    assert removed == 2
    assert [sourced.line for sourced in kept] == [1, 3, 4]  # the first of each kept, with its line
    assert [sourced.repeats for sourced in kept] == [2, 1, 2]  # how often each was sent, for the drift reference


def test_leaked_names_the_held_out_lines_that_are_in_training() -> None:
    train = parse_jsonl('{"prompt": "Q1", "completion": "A1"}\n{"prompt": "Q2", "completion": "A2"}\n', field="f")
    held_out = parse_jsonl('{"prompt": "q2", "completion": "a2"}\n{"prompt": "Q3", "completion": "A3"}\n', field="f")
    assert leaked(held_out, train) == [1]
    assert leaked(held_out[1:], train) == []


PAIR = '{"prompt": "2+2=", "chosen": "4", "rejected": "5"}\n'
CONVERSATION_PAIR = (
    '{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], '
    '"chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}\n'
)


def test_preference_pairs_parse_as_text_or_as_conversations() -> None:
    text, conversation = (s.example for s in parse_jsonl(PAIR + CONVERSATION_PAIR, field="f", preferences=True))
    assert text == PreferenceExample(prompt="2+2=", chosen="4", rejected="5")
    assert isinstance(conversation, PreferenceExample)
    assert (conversation.chosen, conversation.rejected) == ("4", "5")  # one assistant message is its text
    assert [turn.role for turn in conversation.prompt] == ["system", "user"]  # type: ignore[union-attr]
    # As a supervised example, a pair is its prompt with one of its answers.
    assert text.answered(chosen=False) == PromptCompletion(prompt="2+2=", completion="5")
    assert conversation.answered(chosen=True) == ChatExample(
        messages=[*conversation.prompt, ChatTurn(role="assistant", content="4")]  # type: ignore[misc]
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"prompt": "a", "chosen": "b"}\n', "line 1: rejected: Field required"),
        ('{"prompt": "a"}\n', "line 1: chosen: Field required"),
        ('{"prompt": "a", "chosen": "b", "rejected": "b"}\n', "line 1: .*the same answer"),
        ('{"prompt": "a", "chosen": "", "rejected": "c"}\n', "line 1: chosen: String should have at least 1"),
        ('{"prompt": 5, "chosen": "b", "rejected": "c"}\n', "line 1: prompt: .*as text, or as a list of messages"),
        ('{"prompt": [], "chosen": "b", "rejected": "c"}\n', "line 1: prompt: List should have at least 1"),
        (
            '{"prompt": [{"role": "usr", "content": "a"}], "chosen": "b", "rejected": "c"}\n',
            "line 1: prompt.0.role: Input should be",
        ),
        (
            '{"prompt": [{"role": "assistant", "content": "a"}], "chosen": "b", "rejected": "c"}\n',
            "line 1: .*must end with a user message",
        ),
        (
            '{"prompt": "a", "chosen": [{"role": "user", "content": "b"}], "rejected": "c"}\n',
            "line 1: chosen: .*one assistant message",
        ),
        (PAIR + '{"prompt": "a", "completion": "b"}\n', "line 2: this line is a prompt/completion example, but"),
        (PAIR + '{"text": "a"}\n', "line 2: this line is a text example"),
        (PAIR + '{"prompt": "a", "chosen": "b", "rejected": "c", "score": 1}\n', "line 2: score: Extra inputs"),
    ],
)
def test_malformed_preference_pairs_name_the_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(InvalidArgument, match=expected) as info:
        parse_jsonl(text, field="spec.training_data", preferences=True)
    assert info.value.field == "spec.training_data"


def test_a_preference_pair_in_a_supervised_job_says_which_method_takes_it() -> None:
    with pytest.raises(InvalidArgument, match='line 2: this line is a preference example.*method "dpo"'):
        parse_jsonl('{"prompt": "a", "completion": "b"}\n' + PAIR, field="f")


def test_repeated_preference_pairs_are_removed_but_the_same_prompt_with_other_answers_is_kept() -> None:
    text = (
        PAIR
        + '{"prompt": "2+2=  ", "chosen": "4", "rejected": "5"}\n{"prompt": "2+2=", "chosen": "4", "rejected": "22"}\n'
    )
    kept, removed = deduplicate(parse_jsonl(text, field="f", preferences=True))
    assert ([s.line for s in kept], removed) == ([1, 3], 1)
