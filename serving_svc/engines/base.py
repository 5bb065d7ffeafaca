"""The engine interface the servicer talks to, and the value objects that cross it.

The servicer never learns which engine it has: every engine takes token ids and an adapter
key, and streams back deltas. Tokenization lives here once, on the engine's own tokenizer,
so `Tokenize` and `Generate` always agree. Nothing in this module imports torch or vLLM.
"""

from __future__ import annotations

import abc
import asyncio
import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from jinja2 import TemplateError

from loraplane.errors import FailedPrecondition, InvalidArgument
from loraplane.serving import FinishReason
from loraplane.training import Method

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
"""Weight and activation dtype; auto is the model config's (resolved to float32 on a CPU)."""
EngineName = Literal["vllm", "transformers"]
"""The engines; each maps to one module in serving_svc.engines."""
EngineChoice = Literal["auto"] | EngineName
"""What a replica can ask for: an engine, or auto (vLLM on a GPU, transformers on a CPU)."""


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


Prompt = str | Sequence[ChatMessage]
"""Raw text passed to the model as is, or chat turns rendered with the model's chat template."""


StructuredKind = Literal["json_schema", "json_object", "regex", "choice"]


@dataclass(frozen=True)
class StructuredOutput:
    """What every answer must match, enforced token by token while it is generated."""

    kind: StructuredKind
    spec: str | tuple[str, ...] = ""
    """json_schema: the schema as JSON text; regex: the pattern; choice: the strings allowed;
    json_object: nothing (any JSON object)."""

    @classmethod
    def from_json_schema(cls, schema: str | dict[str, Any], *, field: str) -> StructuredOutput:
        """A schema given as text (gRPC) or as an object (HTTP); InvalidArgument unless it is a JSON object."""
        try:
            parsed = json.loads(schema) if isinstance(schema, str) else schema
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"the JSON schema is not valid JSON ({exc})", field=field) from None
        if not isinstance(parsed, dict):
            raise InvalidArgument("a JSON schema is a JSON object", field=field)
        return cls("json_schema", json.dumps(parsed))

    @classmethod
    def from_regex(cls, pattern: object, *, field: str) -> StructuredOutput:
        if not isinstance(pattern, str) or not pattern:
            raise InvalidArgument("give the regular expression as a non-empty string", field=field)
        return cls("regex", pattern)

    @classmethod
    def from_choices(cls, choices: list[str], *, field: str) -> StructuredOutput:
        if not choices or any(not choice for choice in choices):
            raise InvalidArgument("give at least one choice, none of them empty", field=field)
        return cls("choice", tuple(choices))


GREEDY_BELOW_TEMPERATURE = 1e-5
"""Temperatures under this decode greedily, as in vLLM: dividing logits by a near-zero temperature
overflows to infinities, whose softmax is not a distribution."""


@dataclass(frozen=True)
class SamplingOptions:
    """Validated sampling settings; temperature 0 (or under GREEDY_BELOW_TEMPERATURE) is greedy, top_k 0 is
    no cut."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    min_tokens: int = 0
    """End-of-sequence tokens and stop strings cannot end the answer before this many tokens."""
    ignore_eos: bool = False
    """Generate past end-of-sequence tokens, until max_tokens or a stop string."""
    structured: StructuredOutput | None = None
    """The answer's required form; once it is complete the answer ends, min_tokens and ignore_eos
    notwithstanding."""

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingOptions
    adapter_key: str | None = None
    """The key an adapter was added under (`add_adapter`); None for the base model."""
    score_prompt: bool = False
    """Also compute the log-probability of the prompt (drift's prompt surprise), at the cost of its
    logits; engines whose `scores_prompts` is false ignore it."""
    embed_prompt: bool = False
    """Also give the prompt's drift embedding (`loraplane.drift.prompt_embedding` of the decoder's output at
    its last token, which the prefill computes anyway); engines whose `embeds_prompts` is false ignore it."""


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class GenerationDelta:
    """What one step of generation added; the last delta carries finish_reason and usage."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    token_logprob_sum: float | None = None
    """Sum of the log-probabilities of `token_ids` under the raw model distribution, asked for or not
    (drift's output confidence); None when the engine did not compute them."""
    prompt_logprob: float | None = None
    """On the last delta of a request with `score_prompt`: the sum of the log-probabilities of prompt
    tokens 1..n-1, each given those before it."""
    prompt_embedding: tuple[float, ...] | None = None
    """On the last delta of a request with `embed_prompt`: the prompt's drift embedding."""


@dataclass(frozen=True)
class EngineConfig:
    """What an engine needs from the replica's settings (`serving_svc.engine_config` maps them)."""

    model_path: Path
    served_model_name: str
    dtype: Dtype
    """auto reaches an engine on GPUs only: on a CPU `create_engine` resolves it to float32."""
    max_model_len: int
    max_batch_size: int
    """Sequences decoded together in one step; more wait in the engine's queue."""
    max_loaded_adapters: int
    max_cpu_adapters: int
    """Adapters kept in host memory besides those in engine slots (`offload_adapter`)."""
    max_lora_rank: int
    gpu_memory_utilization: float


@dataclass(frozen=True)
class EngineStats:
    running: int
    """Requests generating tokens now."""
    waiting: int
    """Requests handed to the engine that have no token yet (queued or in prefill)."""


class Tokenizer(Protocol):
    """The slice of a Hugging Face tokenizer the engines share; called from worker threads, so an
    engine hands out one that is safe there (vLLM's is a pool of copies)."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...


class Engine(abc.ABC):
    """One base model, adapters added and removed by key, generation as a stream of deltas."""

    name: ClassVar[str]
    supported_methods: ClassVar[frozenset[Method]]
    """Adapter methods (manifest `method`) this engine can apply."""
    scores_prompts: ClassVar[bool]
    """Whether the engine honours `GenerationRequest.score_prompt` (drift's prompt surprise)."""
    embeds_prompts: ClassVar[bool]
    """Whether the engine honours `GenerationRequest.embed_prompt` (drift's prompt meaning)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the base model; generation and tokenization work once this returns."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the model and any worker processes; the engine is not used afterwards."""

    @property
    @abc.abstractmethod
    def max_model_len(self) -> int:
        """Longest prompt plus completion, in tokens, that the started engine accepts."""

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Tokenizer:
        """The base model's tokenizer, as the engine itself uses it."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Requests running and waiting in the engine now."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationDelta, None]:
        """Stream the completion; closing the generator early (aclose) aborts the request."""

    @abc.abstractmethod
    async def add_adapter(self, key: str, path: Path) -> None:
        """Load the verified adapter folder at `path` so requests can name it by `key`; from the
        host copy `offload_adapter` kept, when there is one, without reading the folder again."""

    @property
    def keeps_host_copies(self) -> bool:
        """Whether `offload_adapter` can keep adapters out of the engine's slots; when not, the replica
        keeps no CPU tier and an adapter leaving the engine is removed."""
        return True

    @abc.abstractmethod
    async def offload_adapter(self, key: str) -> None:
        """Free the engine slot of the adapter added under `key`, keeping its weights in host memory
        so that adding it again is a copy rather than a read and parse of its files."""

    @abc.abstractmethod
    async def remove_adapter(self, key: str) -> None:
        """Drop the adapter under `key`: its engine slot if it holds one, and its host copy."""

    async def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids of a raw prompt, or of chat turns rendered for the assistant's next answer.

        Runs in a thread: a prompt can be megabytes long, and the event loop serves every stream.
        """
        return await asyncio.to_thread(self._tokenize, prompt)

    def _tokenize(self, prompt: Prompt) -> list[int]:
        # The chat text already holds the template's special tokens, so it is encoded without
        # adding them again (as vLLM's own chat path does).
        if isinstance(prompt, str):
            return list(self.tokenizer.encode(prompt))
        conversation = [{"role": m.role, "content": m.content} for m in prompt]
        try:
            text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        except TemplateError as exc:  # the template's raise_exception(): e.g. a role it does not allow
            raise InvalidArgument(f"the chat template rejected the messages: {exc}", field="messages") from None
        except ValueError as exc:  # transformers raises ValueError when the tokenizer has no template
            raise FailedPrecondition(
                f"the base model cannot render chat messages ({exc}); send a raw prompt instead",
                field="messages",
            ) from None
        return list(self.tokenizer.encode(text, add_special_tokens=False))
