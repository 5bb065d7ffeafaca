"""OpenAI request bodies to the inference service's input: roles, defaults, and every parameter this
replica refuses rather than ignores, named as OpenAI names it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from loraplane.errors import InvalidArgument
from loraplane.names import AdapterSpec
from serving_svc.engines.base import ChatMessage, StructuredOutput
from serving_svc.openai_convert import ChatCompletionRequest, CompletionRequest, model_adapter, parameter


def _chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_the_base_models_name_is_no_adapter_and_others_are_adapter_specs() -> None:
    assert model_adapter("smollm2", "smollm2") is None
    assert model_adapter("support@v3", "smollm2") == AdapterSpec("support", 3)
    with pytest.raises(InvalidArgument) as info:
        model_adapter("Support Bot", "smollm2")
    assert info.value.field == "model"


def test_service_fields_are_named_as_openai_parameters() -> None:
    assert [parameter(f) for f in ("adapter", "sampling.max_tokens", "messages", "prompt")] == [
        "model",
        "max_tokens",
        "messages",
        "prompt",
    ]


def test_chat_turns_roles_and_token_limits() -> None:
    request = _chat(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "two "}, {"type": "text", "text": "parts"}]},
        ],
        max_tokens=5,
        max_completion_tokens=7,
        temperature=0,
        stop="END",
        extra_field_from_a_newer_client=True,
    )
    generation = request.generation_input("base")
    assert generation.prompt == [ChatMessage("system", "Be brief."), ChatMessage("user", "two parts")]
    assert generation.sampling.max_tokens == 7, "max_completion_tokens supersedes max_tokens"
    assert (generation.sampling.temperature, generation.sampling.stop) == (0, ("END",))
    assert generation.input_field == "messages"
    assert _chat().generation_input("base").sampling.max_tokens == 0, "the replica's default"


def test_completions_default_to_16_tokens_and_logprobs_0_gives_the_chosen_tokens() -> None:
    request = CompletionRequest.model_validate({"model": "m", "prompt": ["one"], "logprobs": 0})
    generation = request.generation_input("base")
    assert (generation.prompt, generation.sampling.max_tokens, generation.sampling.logprobs) == ("one", 16, True)
    plain = CompletionRequest.model_validate({"model": "m", "prompt": "one"}).generation_input("base")
    assert plain.sampling.logprobs is False


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"logprobs": True, "top_logprobs": 2}, "top_logprobs"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema.schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": [1]}}},
            "response_format.json_schema.schema",
        ),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_chat_parameters_that_cannot_be_honoured_are_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        _chat(**fields).generation_input("base")
    assert info.value.field == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"prompt": ["a", "b"]}, "prompt"), ({"logprobs": 2}, "logprobs"), ({"echo": True}, "echo")],
)
def test_completion_parameters_that_cannot_be_honoured_are_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        CompletionRequest.model_validate({"model": "m", "prompt": "p", **fields}).generation_input("base")
    assert info.value.field == param


def test_structured_output_from_response_format_or_vllms_structured_outputs() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert _chat(response_format=fmt).generation_input("b").sampling.structured == StructuredOutput(
        "json_schema", json.dumps(schema)
    )
    assert _chat(response_format={"type": "json_object"}).generation_input("b").sampling.structured == StructuredOutput(
        "json_object"
    )
    assert _chat(response_format={"type": "text"}).generation_input("b").sampling.structured is None
    completion = CompletionRequest.model_validate({"model": "m", "prompt": "p", "structured_outputs": {"regex": "a+"}})
    assert completion.generation_input("b").sampling.structured == StructuredOutput("regex", "a+")


def test_empty_stop_strings_are_invalid() -> None:
    with pytest.raises(ValueError, match="stop strings must not be empty"):
        _chat(stop=["ok", ""])
