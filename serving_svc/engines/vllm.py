"""The vLLM engine: AsyncLLM with LoRA enabled, streaming deltas.

Only `serving_svc.engines.create_engine` imports this module, and only when settings pick
vLLM, so the servicer, the client and the CLI never pay vLLM's import time.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import cast, get_args

from vllm import AsyncEngineArgs, SamplingParams
from vllm.config import StructuredOutputsConfig
from vllm.config.lora import MaxLoRARanks
from vllm.exceptions import VLLMValidationError
from vllm.inputs import tokens_input
from vllm.lora.request import LoRARequest
from vllm.outputs import CompletionOutput
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from loraplane.errors import Cancelled, FailedPrecondition, InternalError, InvalidArgument, StartupError, Unavailable
from loraplane.training import Method
from serving_svc.engines.base import (
    Engine,
    EngineConfig,
    EngineStats,
    FinishReason,
    GenerationDelta,
    GenerationRequest,
    SamplingOptions,
    StructuredOutput,
    Tokenizer,
    TokenLogprob,
    Usage,
)
from serving_svc.engines.grammar import grammar_for

_ENGINE_DEAD = "the vLLM engine has stopped; this replica needs a restart"


def _supported_rank(rank: int) -> MaxLoRARanks:
    """vLLM sizes LoRA slots for one of a few ranks; take the smallest that holds `rank`."""
    return cast(MaxLoRARanks, min(r for r in get_args(MaxLoRARanks) if r >= rank))


def _sampling_params(options: SamplingOptions) -> SamplingParams:
    return SamplingParams(
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        stop=list(options.stop) or None,
        seed=options.seed,
        min_tokens=options.min_tokens,
        ignore_eos=options.ignore_eos,
        # 0 = only the sampled token's log-probability. Always asked for: drift's output confidence
        # reads them, and the caller gets them only with options.logprobs.
        logprobs=0,
        output_kind=RequestOutputKind.DELTA,
        structured_outputs=_structured_outputs(options.structured),
    )


def _structured_outputs(structured: StructuredOutput | None) -> StructuredOutputsParams | None:
    """vLLM's form of the spec, checked first so that a bad one is refused naming its field."""
    if structured is None:
        return None
    grammar_for(structured)
    spec = structured.spec
    if structured.kind == "json_schema":
        return StructuredOutputsParams(json=str(spec))
    if structured.kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if structured.kind == "regex":
        return StructuredOutputsParams(regex=str(spec))
    return StructuredOutputsParams(choice=list(spec))


def _logprobs(completion: CompletionOutput) -> tuple[TokenLogprob, ...]:
    if not completion.logprobs:
        return ()
    entries = []
    for token_id, position in zip(completion.token_ids, completion.logprobs, strict=True):
        if position is not None and token_id in position:
            logprob = position[token_id]
            entries.append(TokenLogprob(token_id, logprob.decoded_token or "", logprob.logprob))
    return tuple(entries)


def _finish_reason(completion: CompletionOutput) -> FinishReason:
    reason = completion.finish_reason or ""
    if reason in get_args(FinishReason):
        return cast(FinishReason, reason)
    if reason == "abort":
        raise Cancelled("the engine aborted the request")
    raise Unavailable(f"the engine failed the request ({reason or 'no finish reason'}); retry it")


class VllmEngine(Engine):
    """vLLM's AsyncLLM; every adapter version gets its own LoRA id for the engine's lifetime."""

    name = "vllm"
    supported_methods = frozenset(Method) - {Method.DORA}  # vLLM cannot apply DoRA's magnitude vectors
    # vLLM 0.32 computes prompt log-probabilities with the batch's per-request LoRA mapping where it
    # needs a per-token one, and the engine dies (vllm-project/vllm#16668, #29955): prompts are not
    # scored here, so drift's prompt surprise comes from the transformers engine only.
    scores_prompts = False
    embeds_prompts = False  # vLLM's generate API gives no hidden states of a generation request

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._llm: AsyncLLM | None = None
        self._waiting = 0
        self._running = 0
        self._lora_ids: dict[str, int] = {}
        self._next_lora_id = itertools.count(1)
        self._loaded: dict[str, LoRARequest] = {}

    def _engine_args(self) -> AsyncEngineArgs:
        c = self._config
        return AsyncEngineArgs(
            model=str(c.model_path),
            served_model_name=c.served_model_name,
            dtype=c.dtype,
            max_model_len=c.max_model_len,
            max_num_seqs=c.max_batch_size,
            gpu_memory_utilization=c.gpu_memory_utilization,
            # CUDA graphs and torch.compile only pay off on GPUs; on CPU they cost start-up time.
            enforce_eager=current_platform.is_cpu(),
            enable_lora=True,
            max_loras=self._lora_slots(),
            # vLLM's CPU cache holds the adapters in slots and those offloaded from them. The adapter
            # manager evicts first, so vLLM's cache never has to.
            max_cpu_loras=self._lora_slots() + (c.max_cpu_adapters if self.keeps_host_copies else 0),
            max_lora_rank=_supported_rank(c.max_lora_rank),
            disable_log_stats=True,
            # Compact JSON for structured output, as on the transformers engine: vLLM's xgrammar
            # backend (named: "auto" refuses the setting) reads it engine-wide, not per request.
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True),
        )

    def _lora_slots(self) -> int:
        """LoRA slots to ask vLLM for: one per adapter the manager holds, plus, on a CPU, one left empty.

        vLLM's CPU LoRA kernels (lora/ops/torch_ops) gather each row's weights with the row's slot
        index, and a base-model row's index is -1: Python indexing turns that into the last slot.
        Kept empty (zero weights), the last slot makes base-model rows in a mixed batch exact.
        """
        return self._config.max_loaded_adapters + (1 if current_platform.is_cpu() else 0)

    @property
    def keeps_host_copies(self) -> bool:
        """Not on a CPU: vLLM would keep an offloaded adapter in a LoRA slot until another needs it, and
        so fill the last slot, whose weights base-model rows then read (see `_lora_slots`)."""
        return not current_platform.is_cpu()

    @property
    def llm(self) -> AsyncLLM:
        if self._llm is None:
            raise Unavailable("the vLLM engine is not started")
        return self._llm

    async def start(self) -> None:
        if current_platform.is_cpu():
            # vLLM's CPU worker binds its threads to all cores but one by default: one of two here.
            # Every core this process may use is what a user expects, and a core more is a step faster.
            cores = ",".join(str(core) for core in sorted(os.sched_getaffinity(0)))
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cores)
        # Building the engine loads weights and profiles memory for seconds; a thread keeps the
        # event loop (and the health service) answering meanwhile. AsyncLLM starts its output
        # loop lazily on the first request when built outside the loop.
        try:
            self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, self._engine_args())
        except (ValueError, RuntimeError) as exc:
            raise StartupError(self._explain_start_failure(exc)) from None

    def _explain_start_failure(self, exc: Exception) -> str:
        """Name the settings behind vLLM's refusal to start, rather than leave only its stack trace.

        The engine core runs in another process, so its root cause reaches this one only as
        "initialization failed"; on a CPU that is nearly always no room left for the KV cache.
        """
        c = self._config
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (
            f"the vLLM engine could not start ({text}). The usual cause is no room for its KV cache: raise "
            f"LORAPLANE_GPU_MEMORY_UTILIZATION (now {c.gpu_memory_utilization}), or lower "
            f"LORAPLANE_MAX_LOADED_ADAPTERS ({c.max_loaded_adapters}), LORAPLANE_MAX_LORA_RANK ({c.max_lora_rank}) "
            f"or LORAPLANE_MAX_MODEL_LEN ({c.max_model_len}); with LORAPLANE_DTYPE={c.dtype}, also check "
            "LORAPLANE_BASE_MODEL. vLLM's log lines above give the root cause."
        )

    async def close(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            await asyncio.to_thread(llm.shutdown)

    @property
    def max_model_len(self) -> int:
        return int(self.llm.model_config.max_model_len)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.llm.get_tokenizer()  # type: ignore[return-value]

    def stats(self) -> EngineStats:
        return EngineStats(running=self._running, waiting=self._waiting)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationDelta, None]:
        self._check_alive()
        lora = self._lora_request(request.adapter_key)
        completion_tokens = 0
        stream = self.llm.generate(
            tokens_input(list(request.prompt_token_ids)),
            _sampling_params(request.sampling),
            request.request_id,
            lora_request=lora,
        )
        waiting = True
        self._waiting += 1
        try:
            async for output in stream:
                if waiting:
                    waiting = False
                    self._waiting -= 1
                    self._running += 1
                completion = output.outputs[0]
                completion_tokens += len(completion.token_ids)
                finished = output.finished
                logprobs = _logprobs(completion)
                yield GenerationDelta(
                    text=completion.text,
                    token_ids=tuple(completion.token_ids),
                    logprobs=logprobs if request.sampling.logprobs else (),
                    finish_reason=_finish_reason(completion) if finished else None,
                    usage=Usage(len(request.prompt_token_ids), completion_tokens) if finished else None,
                    token_logprob_sum=sum(entry.logprob for entry in logprobs) if logprobs else None,
                )
        except VLLMValidationError as exc:
            raise InvalidArgument(str(exc)) from None
        except EngineDeadError:
            raise Unavailable(_ENGINE_DEAD) from None
        finally:
            if waiting:
                self._waiting -= 1
            else:
                self._running -= 1
            await stream.aclose()  # aborts the request in the engine when the caller left early

    def _lora_request(self, key: str | None) -> LoRARequest | None:
        if key is None:
            return None
        try:
            return self._loaded[key]
        except KeyError:
            raise InternalError(f"adapter {key} was used without being added to the engine") from None

    def _check_alive(self) -> None:
        """Refuse work once the engine core has died: vLLM would leave an adapter load waiting forever."""
        if self.llm.errored:
            raise Unavailable(_ENGINE_DEAD)

    async def add_adapter(self, key: str, path: Path) -> None:
        self._check_alive()
        if key in self._loaded:  # offloaded: still in vLLM's CPU cache, which puts it in a slot when used
            return
        lora_id = self._lora_ids.setdefault(key, next(self._next_lora_id))
        request = LoRARequest(lora_name=key, lora_int_id=lora_id, lora_path=str(path))
        try:
            await self.llm.add_lora(request)
        except EngineDeadError:
            raise Unavailable(_ENGINE_DEAD) from None
        # The engine core reports every load failure as a bare Exception carrying its message.
        except Exception as exc:  # noqa: BLE001
            raise FailedPrecondition(f"the vLLM engine cannot load adapter {key}: {exc}") from None
        self._loaded[key] = request

    async def offload_adapter(self, key: str) -> None:
        """Nothing to do: vLLM moves an adapter between its GPU slots and its CPU cache by itself, and
        the manager hands out at most `max_loaded_adapters` at once, so the slots suffice."""

    async def remove_adapter(self, key: str) -> None:
        request = self._loaded.pop(key, None)
        if request is not None:
            await self.llm.remove_lora(request.lora_int_id)
