"""The output processor turns each row of logits into its sequence's next token, text and finish reason:
end tokens stop (not before min_tokens), max_tokens and the context length end with length, a stop
string ends the text before it; the last delta carries usage and the prompt's score."""

from __future__ import annotations

from typing import Any

import torch

from serving_svc.engines.base import GenerationDelta, GenerationRequest, SamplingOptions
from serving_svc.engines.model_runner import PromptMeasures
from serving_svc.engines.output_processor import OutputProcessor
from serving_svc.engines.sampler import RowSampler
from serving_svc.engines.scheduler import Sequence

PIECES = ["</s>", "Hello", " world", "!", " STOP", " again"]
END, HELLO, WORLD, BANG, STOP, AGAIN = range(len(PIECES))


class FakePieceDecoder:
    """Token id i is PIECES[i]; token 0 is the special end token."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(PIECES[i] for i in token_ids if not (skip_special_tokens and i == END))


class Caller:
    """What one sequence's caller received."""

    def __init__(self) -> None:
        self.deltas: list[GenerationDelta] = []

    def emit(self, item: GenerationDelta | BaseException) -> None:
        assert isinstance(item, GenerationDelta), item
        self.deltas.append(item)

    @property
    def text(self) -> str:
        return "".join(delta.text for delta in self.deltas)


def _setup(prompt_tokens: int = 2, max_model_len: int = 64, **options: Any) -> tuple[OutputProcessor, Sequence, Caller]:
    sampling = SamplingOptions(**{"max_tokens": 16, "temperature": 0.0, **options})
    sequence = Sequence(GenerationRequest("r", tuple(range(prompt_tokens)), sampling), "__base__", "")
    processor, caller = OutputProcessor(FakePieceDecoder(), [END], max_model_len), Caller()
    processor.add(sequence, caller.emit, RowSampler.for_options(sampling))
    return processor, sequence, caller


def _logits_for(token: int) -> torch.Tensor:
    """Logits whose argmax is `token`, and whose runner-up (chosen where `token` is barred) is HELLO."""
    logits = torch.zeros((1, len(PIECES)))
    logits[0, HELLO] = 4.0
    logits[0, token] = 5.0
    return logits


def _run(processor: OutputProcessor, sequence: Sequence, tokens: list[int]) -> list[Sequence]:
    finished: list[Sequence] = []
    for token in tokens:
        finished = processor.process([sequence], _logits_for(token))
        if finished:
            break
    return finished


def test_an_end_token_stops_the_answer_and_the_last_delta_carries_usage() -> None:
    processor, sequence, caller = _setup(prompt_tokens=3)
    assert _run(processor, sequence, [HELLO, WORLD, END, BANG]) == [sequence]
    assert caller.text == "Hello world"
    assert [d.token_ids for d in caller.deltas] == [(HELLO,), (WORLD,), (END,)]
    assert [d.finish_reason for d in caller.deltas] == [None, None, "stop"]
    usage = caller.deltas[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (3, 3)


def test_max_tokens_and_the_context_length_end_the_answer_with_length() -> None:
    processor, sequence, caller = _setup(max_tokens=2)
    _run(processor, sequence, [HELLO, WORLD, BANG])
    assert (caller.text, caller.deltas[-1].finish_reason) == ("Hello world", "length")

    processor, sequence, caller = _setup(prompt_tokens=10, max_model_len=11)
    _run(processor, sequence, [HELLO, WORLD])
    assert (caller.text, caller.deltas[-1].finish_reason) == ("Hello", "length")


def test_min_tokens_bars_the_end_token_and_stop_strings_until_it_is_reached() -> None:
    processor, sequence, caller = _setup(min_tokens=3, stop=(" STOP",))
    # The end token is barred (HELLO comes instead), and the first " STOP" is generated before min_tokens.
    assert _run(processor, sequence, [END, STOP, AGAIN, STOP, BANG]) == [sequence]
    assert [d.token_ids[0] for d in caller.deltas] == [HELLO, STOP, AGAIN, STOP]
    assert (caller.text, caller.deltas[-1].finish_reason) == ("Hello STOP again", "stop")


def test_a_stop_string_ends_the_text_before_it() -> None:
    processor, sequence, caller = _setup(stop=("d!",))
    assert _run(processor, sequence, [HELLO, WORLD, BANG, AGAIN]) == [sequence]
    assert (caller.text, caller.deltas[-1].finish_reason) == ("Hello worl", "stop")


def test_logprobs_name_each_token_and_the_prompt_score_comes_on_the_last_delta_only() -> None:
    processor, sequence, caller = _setup(max_tokens=2, logprobs=True)
    processor.process([sequence], _logits_for(HELLO), prompt_measures={sequence: PromptMeasures(-7.5, (0.5, -0.5))})
    assert processor.last_token(sequence) == HELLO
    processor.process([sequence], _logits_for(END))
    assert [d.prompt_logprob for d in caller.deltas] == [None, -7.5]
    assert [d.prompt_embedding for d in caller.deltas] == [None, (0.5, -0.5)]
    assert [d.logprobs[0].token for d in caller.deltas] == ["Hello", "</s>"]
    expected = torch.log_softmax(_logits_for(HELLO)[0], dim=-1)[HELLO].item()
    assert caller.deltas[0].token_logprob_sum is not None
    assert abs(caller.deltas[0].token_logprob_sum - expected) < 1e-6


def test_a_failed_sequence_gets_the_error_once_and_is_forgotten() -> None:
    processor, sequence, _ = _setup()
    errors: list[GenerationDelta | BaseException] = []
    processor.add(sequence, errors.append, RowSampler.for_options(sequence.request.sampling))
    failure = RuntimeError("the step failed")
    processor.fail([sequence, sequence], failure)
    assert errors == [failure]
