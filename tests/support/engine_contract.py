"""The behaviour every `Engine` promises the servicer, as one suite.

A test module subclasses `EngineContract` and supplies two fixtures: `new_engine`, a function that
builds an engine of its kind, not started, and `adapter_dir`, the folder of an adapter that engine
can load. The same tests then run against tests/support/fake_engine.py's fake in the unit tier and
against a real engine on the tiny model in the integration tier, so the fake the unit tests lean on
cannot drift from what the real engines do.

Only the interface in serving_svc/engines/base.py is used: no test reaches into an engine.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from loraplane.errors import FailedPrecondition, InternalError
from serving_svc.engines.base import (
    ChatMessage,
    Engine,
    EngineStats,
    GenerationDelta,
    GenerationRequest,
    SamplingOptions,
)
from tests.support.fake_engine import until

PROMPT = "The capital of France is"
IDLE = EngineStats(running=0, waiting=0)
_request_ids = itertools.count()


def ask(
    prompt_token_ids: list[int],
    adapter_key: str | None = None,
    *,
    max_tokens: int = 4,
    score_prompt: bool = False,
    **sampling: Any,
) -> GenerationRequest:
    """A greedy request under a fresh request id; `sampling`: more of SamplingOptions' fields."""
    options = SamplingOptions(max_tokens=max_tokens, temperature=0.0, **sampling)
    return GenerationRequest(
        f"contract-{next(_request_ids)}", tuple(prompt_token_ids), options, adapter_key, score_prompt
    )


async def answer(engine: Engine, generation: GenerationRequest) -> list[GenerationDelta]:
    """Every delta of the request, read to the end."""
    async with aclosing(engine.generate(generation)) as deltas:
        return [delta async for delta in deltas]


def generated_ids(deltas: list[GenerationDelta]) -> list[int]:
    return [token for delta in deltas for token in delta.token_ids]


async def idle(engine: Engine) -> None:
    """Wait until the engine counts no request: it publishes its counts a moment after the last delta."""
    await until(lambda: engine.stats() == IDLE, timeout=10.0)


class EngineContract:
    """Subclass with a `new_engine` fixture (a function returning an engine, not started) and an
    `adapter_dir` fixture (a folder that engine loads as an adapter), both class-scoped or wider."""

    @pytest.fixture(scope="class")
    @classmethod
    async def engine(cls, new_engine: Callable[[], Engine]) -> AsyncIterator[Engine]:
        engine = new_engine()
        await engine.start()
        try:
            yield engine
        finally:
            await engine.close()

    @pytest.fixture
    async def prompt_ids(self, engine: Engine) -> list[int]:
        return await engine.tokenize(PROMPT)

    async def test_a_started_engine_is_ready_and_idle(self, engine: Engine, prompt_ids: list[int]) -> None:
        assert engine.max_model_len > len(prompt_ids) + 16
        await idle(engine)
        assert engine.supported_methods, "an engine applies at least one adapter method"
        deltas = await answer(engine, ask(prompt_ids, max_tokens=1))
        assert len(generated_ids(deltas)) == 1
        await idle(engine)

    async def test_tokenize_is_the_engines_own_tokenizer(self, engine: Engine, prompt_ids: list[int]) -> None:
        """Raw text as the tokenizer encodes it; chat turns rendered by the template for the assistant's
        answer, encoded without adding special tokens twice."""
        assert prompt_ids == list(engine.tokenizer.encode(PROMPT)) and prompt_ids
        turns = [ChatMessage("system", "Be brief."), ChatMessage("user", PROMPT)]
        rendered = engine.tokenizer.apply_chat_template(
            [{"role": t.role, "content": t.content} for t in turns], tokenize=False, add_generation_prompt=True
        )
        chat_ids = await engine.tokenize(turns)
        assert chat_ids == list(engine.tokenizer.encode(rendered, add_special_tokens=False))
        assert len(chat_ids) > len(prompt_ids), "the template's markup surrounds the turns"

    async def test_generation_counts_the_tokenized_prompt(self, engine: Engine, prompt_ids: list[int]) -> None:
        chat_ids = await engine.tokenize([ChatMessage("user", PROMPT)])
        for ids in (prompt_ids, chat_ids):
            last = (await answer(engine, ask(ids)))[-1]
            assert last.usage is not None and last.usage.prompt_tokens == len(ids)

    async def test_deltas_end_with_a_finish_reason_and_usage(self, engine: Engine, prompt_ids: list[int]) -> None:
        deltas = await answer(engine, ask(prompt_ids, max_tokens=8, logprobs=True))
        *middle, last = deltas
        assert all(d.finish_reason is None and d.usage is None for d in middle)
        assert last.finish_reason in ("stop", "length") and last.usage is not None
        tokens = generated_ids(deltas)
        assert 1 <= len(tokens) == last.usage.completion_tokens <= 8
        assert all(isinstance(d.text, str) for d in deltas)
        assert [entry.token_id for d in deltas for entry in d.logprobs] == tokens, "one log-probability a token"
        assert all(entry.logprob <= 0 for d in deltas for entry in d.logprobs)
        unasked = await answer(engine, ask(prompt_ids, max_tokens=8))
        assert not any(d.logprobs for d in unasked)
        assert generated_ids(unasked) == tokens, "greedy answers do not depend on asking for log-probabilities"

    @pytest.mark.parametrize("max_tokens", [1, 5])
    async def test_max_tokens_is_honoured(self, engine: Engine, prompt_ids: list[int], max_tokens: int) -> None:
        free = await answer(engine, ask(prompt_ids, max_tokens=max_tokens))
        assert 1 <= len(generated_ids(free)) <= max_tokens
        if len(generated_ids(free)) < max_tokens:
            assert free[-1].finish_reason == "stop"
        forced = await answer(engine, ask(prompt_ids, max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True))
        assert len(generated_ids(forced)) == max_tokens and forced[-1].finish_reason == "length"

    async def test_the_context_length_bounds_the_answer(self, engine: Engine, prompt_ids: list[int]) -> None:
        room = engine.max_model_len - len(prompt_ids)  # the servicer lets max_tokens reach max_model_len
        deltas = await answer(engine, ask(prompt_ids, max_tokens=engine.max_model_len, ignore_eos=True))
        assert len(generated_ids(deltas)) == room and deltas[-1].finish_reason == "length"

    async def test_a_scored_prompt_has_its_log_probability_on_the_last_delta(
        self, engine: Engine, prompt_ids: list[int]
    ) -> None:
        if not engine.scores_prompts:
            pytest.skip(f"the {engine.name} engine does not score prompts")
        scored = await answer(engine, ask(prompt_ids, score_prompt=True))
        assert all(d.prompt_logprob is None for d in scored[:-1])
        assert scored[-1].prompt_logprob is not None and scored[-1].prompt_logprob < 0
        assert all(d.prompt_logprob is None for d in await answer(engine, ask(prompt_ids)))

    async def test_closing_the_stream_stops_the_ask(self, engine: Engine, prompt_ids: list[int]) -> None:
        long = ask(prompt_ids, max_tokens=engine.max_model_len, ignore_eos=True)
        stream = engine.generate(long)
        first = await anext(stream)
        assert first.finish_reason is None
        await until(lambda: engine.stats().running == 1, timeout=10.0)
        await stream.aclose()
        await idle(engine)
        assert (await answer(engine, ask(prompt_ids)))[-1].finish_reason is not None, "the engine serves on"

    async def test_an_adapter_serves_once_added_until_removed(
        self, engine: Engine, prompt_ids: list[int], adapter_dir: Path
    ) -> None:
        key = "contract-lifecycle@v1"
        await engine.add_adapter(key, adapter_dir)
        await engine.add_adapter(key, adapter_dir)  # a caller who left mid-load may add it again: no harm
        served = await answer(engine, ask(prompt_ids, key))
        assert served[-1].finish_reason is not None

        await engine.offload_adapter(key)
        await engine.add_adapter(key, adapter_dir)  # back from host memory, or loaded anew
        assert generated_ids(await answer(engine, ask(prompt_ids, key))) == generated_ids(served)

        await engine.remove_adapter(key)
        with pytest.raises(InternalError, match=key):
            await answer(engine, ask(prompt_ids, key))
        await engine.remove_adapter(key)  # removing what is gone is not an error
        await engine.offload_adapter(key)  # nor is offloading it

    async def test_an_unknown_adapter_is_refused(self, engine: Engine, prompt_ids: list[int], tmp_path: Path) -> None:
        with pytest.raises(InternalError, match="never-added"):
            await answer(engine, ask(prompt_ids, "never-added@v1"))
        (tmp_path / "not-an-adapter").mkdir()
        with pytest.raises(FailedPrecondition, match="broken@v1"):
            await engine.add_adapter("broken@v1", tmp_path / "not-an-adapter")
        with pytest.raises(InternalError):
            await answer(engine, ask(prompt_ids, "broken@v1"))
        assert (await answer(engine, ask(prompt_ids)))[-1].finish_reason is not None, "the engine serves on"
