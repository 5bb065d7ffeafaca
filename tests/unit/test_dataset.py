import pytest

from loraplane.errors import InvalidArgument
from trainer_svc.dataset import ChatExample, PromptCompletion, fingerprint, parse_jsonl, split_validation


def test_both_formats_parse_and_blank_lines_are_skipped() -> None:
    text = (
        '{"prompt": "2+2=", "completion": "4"}\n\n'
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    )
    examples = parse_jsonl(text, field="spec.training_data")
    assert isinstance(examples[0], PromptCompletion)
    assert isinstance(examples[1], ChatExample)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no examples"),
        ("\n  \n", "no examples"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b"\n', "line 2 is not valid JSON"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', "line 2: completion"),
        ('{"prompt": "a", "completion": ""}\n', "line 1: completion"),
        ('{"text": "a"}\n', 'line 1: expected an object with "prompt"'),
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


def test_validation_split_is_deterministic_and_disjoint() -> None:
    examples = parse_jsonl("".join(f'{{"prompt": "{i}", "completion": "x"}}\n' for i in range(20)), field="f")
    train, held_out = split_validation(examples, 0.1, seed=7)
    assert (len(train), len(held_out)) == (18, 2)
    assert split_validation(examples, 0.1, seed=7) == (train, held_out)
    assert not {e.prompt for e in held_out} & {e.prompt for e in train}  # type: ignore[union-attr]
    assert fingerprint(train) != fingerprint(held_out)
