"""Translation between OpenAI's chat and completions API and the inference service, in one place.

The request bodies are pydantic models of the parameters OpenAI's API documents, so FastAPI
checks types and ranges and names the parameter at fault. A parameter this replica cannot honour
(several choices, tools, top alternatives of each token, penalties) is refused with 400 naming
it rather than silently ignored; parameters OpenAI does not have but vLLM takes in `extra_body`
(top_k, min_tokens, ignore_eos) are accepted under the same names. Anything else unknown is
ignored, as vLLM does, so newer clients keep working.

The response `id` is the request id the gRPC API returns too, so an app passes it to
RecordFeedback unchanged.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from loraplane.errors import InvalidArgument
from loraplane.names import AdapterSpec, parse_adapter_spec
from serving_svc.adapters import ResolvedAdapter
from serving_svc.engines.base import ChatMessage, SamplingOptions, StructuredOutput, TokenLogprob, Usage
from serving_svc.inference import Completion, GenerationInput

OWNER = "loraplane"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's (and vLLM's) default for /v1/completions; chat answers take the replica's default."""
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""OpenAI's roles and the chat template's: `developer` is OpenAI's newer name for the system turn."""


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    role: str
    content: str | list[_TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class _Sampling(BaseModel):
    """The parameters both endpoints share."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    """vLLM's extra parameter; 0 and -1 both mean no cut."""
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: Annotated[int, Field(ge=0)] = 0
    ignore_eos: bool = False
    response_format: dict[str, Any] | None = None
    user: str | None = None
    """The end user, as OpenAI's API names it: keeps them on one version of an adapter on trial."""
    structured_outputs: dict[str, Any] | None = None
    """vLLM's extra parameter: one of json (a schema), json_object, regex or choice."""

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if any(not stop for stop in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    def include_usage_in_stream(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def _refuse_unsupported(self) -> None:
        if self.n != 1:
            raise InvalidArgument("only n = 1 is supported; send one request per answer", field="n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise InvalidArgument(f"{name} is not supported; leave it 0", field=name)

    def _structured(self) -> StructuredOutput | None:
        if self.structured_outputs is not None:
            if self.response_format is not None:
                raise InvalidArgument(
                    "give response_format or structured_outputs, not both", field="structured_outputs"
                )
            return _vllm_structured_outputs(self.structured_outputs)
        kind = (self.response_format or {}).get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            return StructuredOutput("json_object")
        if kind == "json_schema":
            schema = ((self.response_format or {}).get("json_schema") or {}).get("schema")
            if schema is None:
                raise InvalidArgument("give the schema", field="response_format.json_schema.schema")
            return StructuredOutput.from_json_schema(schema, field="response_format.json_schema.schema")
        raise InvalidArgument(f"type {kind!r} is not text, json_object or json_schema", field="response_format.type")

    def _options(self, max_tokens: int, *, logprobs: bool) -> SamplingOptions:
        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k or 0, 0),
            stop=tuple(self.stop or ()),
            seed=self.seed,
            logprobs=logprobs,
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            structured=self._structured(),
        )


def _vllm_structured_outputs(given: dict[str, Any]) -> StructuredOutput:
    chosen = {key: value for key, value in given.items() if value not in (None, False)}
    if len(chosen) != 1 or not chosen.keys() <= {"json", "json_object", "regex", "choice"}:
        raise InvalidArgument("give exactly one of json, json_object, regex or choice", field="structured_outputs")
    (key, value), field = next(iter(chosen.items())), f"structured_outputs.{next(iter(chosen))}"
    if key == "json":
        return StructuredOutput.from_json_schema(value, field=field)
    if key == "json_object":
        return StructuredOutput("json_object")
    if key == "regex":
        return StructuredOutput.from_regex(value, field=field)
    if not isinstance(value, list) or not all(isinstance(choice, str) for choice in value):
        raise InvalidArgument("give the choices as a list of strings", field=field)
    return StructuredOutput.from_choices(value, field=field)


class FeedbackRequest(BaseModel):
    """The body of `POST /v1/feedback`: RecordFeedback's fields, the label in lower case."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, description="The `id` of the completion the feedback is about.")
    score: float | None = None
    label: Literal["good", "bad"] | None = None
    correction: str | None = None
    """The answer it should have been: kept with the captured request, where the adapter's requests are."""

    def outcome(self) -> float:
        """The score in [0, 1]: given, or 1 for good and 0 for bad."""
        if (self.score is None) == (self.label is None):
            raise InvalidArgument("give the outcome as score (0 to 1) or label (good or bad), once", field="score")
        return self.score if self.score is not None else float(self.label == "good")


class ChatCompletionRequest(_Sampling):
    messages: list[_Message] = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] = 0
    tools: list[Any] | None = None

    def generation_input(self, base_model: str) -> GenerationInput:
        self._refuse_unsupported()
        if self.tools:
            raise InvalidArgument("tools are not supported", field="tools")
        if self.top_logprobs:
            raise InvalidArgument(
                "only the chosen token's log-probability is computed; leave top_logprobs 0", field="top_logprobs"
            )
        turns = []
        for index, message in enumerate(self.messages):
            if message.role not in _ROLES:
                raise InvalidArgument(
                    f"role {message.role!r} is not one of {', '.join(_ROLES)}", field=f"messages[{index}].role"
                )
            turns.append(ChatMessage(_ROLES[message.role], message.text()))
        max_tokens = self.max_completion_tokens or self.max_tokens or 0  # 0: the replica's default
        return GenerationInput(
            adapter=model_adapter(self.model, base_model),
            prompt=turns,
            sampling=self._options(max_tokens, logprobs=self.logprobs),
            input_field="messages",
            user=self.user or "",
        )


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: Annotated[int, Field(ge=1)] = COMPLETIONS_DEFAULT_MAX_TOKENS
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False
    suffix: str | None = None

    def generation_input(self, base_model: str) -> GenerationInput:
        self._refuse_unsupported()
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise InvalidArgument("give one prompt per request", field="prompt")
            prompt = self.prompt[0]
        else:
            prompt = self.prompt
        if self.logprobs:
            raise InvalidArgument(
                "only the chosen token's log-probability is computed; use logprobs 0", field="logprobs"
            )
        for name in ("echo", "suffix"):
            if getattr(self, name):
                raise InvalidArgument(f"{name} is not supported", field=name)
        return GenerationInput(
            adapter=model_adapter(self.model, base_model),
            prompt=prompt,
            sampling=self._options(self.max_tokens, logprobs=self.logprobs is not None),
            input_field="prompt",
            user=self.user or "",
        )


ADAPTER_HEADER = "X-Loraplane-Adapter"
"""The response header naming the adapter version that answered (`name@vN`); absent for the base model."""


def served_model(adapter: ResolvedAdapter | None, requested: str) -> str:
    """The `model` a response names: the version that answered (`name@vN`), so a caller of a name whose
    release is trying a candidate sees which version it got; the base model's name as requested."""
    return adapter.key if adapter is not None else requested


def served_headers(adapter: ResolvedAdapter | None) -> dict[str, str]:
    return {ADAPTER_HEADER: adapter.key} if adapter is not None else {}


def model_adapter(model: str, base_model: str) -> AdapterSpec | None:
    """The adapter `model` names (`name` or `name@vN`), or None for the base model's own name."""
    return None if model == base_model else parse_adapter_spec(model, field="model")


_PARAMETERS = {
    "adapter": "model",
    "sampling.json_schema": "response_format",
    "sampling.json_object": "response_format",
    "sampling.regex": "structured_outputs.regex",
    "sampling.choice": "structured_outputs.choice",
}


def parameter(field: str) -> str:
    """OpenAI's name for a field the inference service names in an error (sampling.max_tokens -> max_tokens)."""
    return _PARAMETERS.get(field, field.removeprefix("sampling."))


# -- responses --------------------------------------------------------------------------------


def usage(value: Usage | None) -> dict[str, int] | None:
    if value is None:
        return None
    return {
        "prompt_tokens": value.prompt_tokens,
        "completion_tokens": value.completion_tokens,
        "total_tokens": value.prompt_tokens + value.completion_tokens,
    }


def chat_logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    return {
        "content": [
            {"token": e.token, "logprob": e.logprob, "bytes": list(e.token.encode()), "top_logprobs": []}
            for e in entries
        ]
    }


def completion_logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int = 0) -> dict[str, Any]:
    offsets, position = [], offset
    for entry in entries:
        offsets.append(position)
        position += len(entry.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": None,
        "text_offset": offsets,
    }


def _whole(completion: Completion, model: str, kind: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": completion.request_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, **choice, "finish_reason": completion.finish_reason}],
        "usage": usage(completion.usage),
    }


def chat_completion(completion: Completion, model: str, *, logprobs: bool) -> dict[str, Any]:
    message = {"role": "assistant", "content": completion.text}
    return _whole(
        completion,
        model,
        "chat.completion",
        {"message": message, "logprobs": chat_logprobs(completion.logprobs) if logprobs else None},
    )


def text_completion(completion: Completion, model: str, *, logprobs: bool) -> dict[str, Any]:
    return _whole(
        completion,
        model,
        "text_completion",
        {"text": completion.text, "logprobs": completion_logprobs(completion.logprobs) if logprobs else None},
    )


def model_card(model_id: str, created: int, *, parent: str | None = None, root: str | None = None) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": OWNER,
        "root": root or model_id,
        "parent": parent,
    }


def adapter_cards(adapters: list[ResolvedAdapter], base_model: str) -> list[dict[str, Any]]:
    """One card per adapter version: the newest of each name under its bare name, others as name@vN."""
    newest: dict[str, int] = {}
    for adapter in adapters:
        newest[adapter.manifest.name] = max(newest.get(adapter.manifest.name, 0), adapter.manifest.version)
    cards = []
    for adapter in sorted(adapters, key=lambda a: (a.manifest.name, -a.manifest.version)):
        manifest = adapter.manifest
        model_id = manifest.name if newest[manifest.name] == manifest.version else adapter.key
        cards.append(model_card(model_id, int(manifest.created_at.timestamp()), parent=base_model, root=adapter.key))
    return cards


def _chunk(request_id: str, model: str, created: int, kind: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": kind,
        "created": created,
        "model": model,
        "choices": [{"index": 0, **choice, "logprobs": None, "finish_reason": None}],
    }


def chat_chunk(request_id: str, model: str, created: int, delta: dict[str, Any]) -> dict[str, Any]:
    return _chunk(request_id, model, created, "chat.completion.chunk", {"delta": delta})


def completion_chunk(request_id: str, model: str, created: int, text: str) -> dict[str, Any]:
    return _chunk(request_id, model, created, "text_completion", {"text": text})
