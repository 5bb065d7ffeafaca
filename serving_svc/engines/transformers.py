"""The transformers engine: transformers + peft, continuous batching with a different adapter per row.

transformers' own continuous batching (`generate_batch`, 5.x) has no notion of a per-request
adapter, and its paged attention targets GPUs; peft's mixed-adapter batches (`adapter_names`)
have no scheduler, and loop over the adapters of a batch in every layer. This engine adds both,
in vLLM's seams: an engine core on one torch thread (`engine_core.py`) steps a scheduler that only
decides (`scheduler.py`), a model runner that owns the model, its caches, the stacked LoRA
adapters and the logits (`model_runner.py`), and an output processor that samples, detokenizes
and finishes (`output_processor.py`). Every touchpoint with transformers, peft and private torch
ops is in `compat.py`. This module is the asyncio side: it loads the model, hands requests to the
core and streams their deltas back.

What it does not do: prefix caching, paged KV memory, speculative decoding, tensor parallelism.
On a CPU, where weights dominate each step, batching is what pays; on a GPU, vLLM is the engine.
Only `serving_svc.engines.create_engine` imports this module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from loraplane.errors import FailedPrecondition, InternalError, StartupError, Unavailable
from loraplane.models import end_token_ids
from loraplane.training import Method
from serving_svc.engines import compat
from serving_svc.engines.attention import register_grouped_sdpa
from serving_svc.engines.base import (
    Engine,
    EngineConfig,
    EngineStats,
    GenerationDelta,
    GenerationRequest,
    StructuredOutput,
    Tokenizer,
)
from serving_svc.engines.engine_core import EngineCore
from serving_svc.engines.grammar import GrammarConstraint, Grammars
from serving_svc.engines.model_runner import ModelRunner
from serving_svc.engines.output_processor import OutputProcessor
from serving_svc.engines.packed_linear import pack_linear_weights
from serving_svc.engines.sampler import RowSampler
from serving_svc.engines.scheduler import Scheduler, Sequence

log = logging.getLogger(__name__)


class TransformersEngine(Engine):
    name = "transformers"
    supported_methods = frozenset(Method)
    scores_prompts = True
    embeds_prompts = True

    def __init__(self, config: EngineConfig, on_step: Callable[[int], None] = lambda rows: None) -> None:
        self._config = config
        self._on_step = on_step
        self._tokenizer: Any = None
        self._runner: ModelRunner | None = None
        self._core: EngineCore | None = None
        self._grammars: Grammars | None = None
        # All torch work (loading, adapters, every step) runs on this one thread: a second thread
        # running torch ops gets an OpenMP team of its own, and on a small CPU the two teams slow
        # each other's steps down.
        self._torch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transformers-engine")
        self._loop_done: concurrent.futures.Future[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._torch_thread, self._load)
        self._loop_done = self._torch_thread.submit(self.core.run)

    def _load(self) -> None:
        path = self._config.model_path
        try:
            self._tokenizer = compat.load_tokenizer(path)
            model = compat.load_model(path, self._config.dtype, attn_implementation=register_grouped_sdpa())
        except OSError as exc:
            raise StartupError(
                f"cannot load the base model from {path} ({exc}); set LORAPLANE_BASE_MODEL to a Hugging Face "
                "model folder (or run `loraplane prepare-model`)"
            ) from None
        longest = compat.context_length(model) or self._config.max_model_len
        if self._config.max_model_len > longest:
            raise StartupError(
                f"LORAPLANE_MAX_MODEL_LEN={self._config.max_model_len} exceeds the model's context length "
                f"({longest}); set it to at most {longest}"
            )
        packed = pack_linear_weights(model, expected_rows=self._config.max_batch_size)
        self._runner = ModelRunner(model, expected_adapters=self._config.max_loaded_adapters)
        ends = end_token_ids(model, self._tokenizer)
        self._grammars = Grammars(self._tokenizer, compat.vocab_size(model), ends)
        # Its own copy: a fast tokenizer is not meant to be shared between threads.
        outputs = OutputProcessor(copy.deepcopy(self._tokenizer), ends, self._config.max_model_len)
        self._core = EngineCore(Scheduler(self._config.max_batch_size), self._runner, outputs, self._on_step)
        log.info(
            "transformers engine: %s in %s, up to %d rows a step, %d linear layers on oneDNN-packed weights",
            path,
            model.dtype,
            self._config.max_batch_size,
            packed,
        )

    async def close(self) -> None:
        if self._core is not None:
            core, self._core = self._core, None
            core.stop()
            if self._loop_done is not None:
                await asyncio.wrap_future(self._loop_done)
        self._torch_thread.shutdown(wait=False)
        self._runner = None

    @property
    def core(self) -> EngineCore:
        if self._core is None:
            raise Unavailable("the transformers engine is not started")
        return self._core

    @property
    def runner(self) -> ModelRunner:
        if self._runner is None:
            raise Unavailable("the transformers engine is not started")
        return self._runner

    @property
    def max_model_len(self) -> int:
        return self._config.max_model_len

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise Unavailable("the transformers engine is not started")
        return self._tokenizer  # type: ignore[no-any-return]

    def stats(self) -> EngineStats:
        if self._core is None:
            return EngineStats(running=0, waiting=0)
        return self._core.stats()

    # -- generation -------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationDelta, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationDelta | BaseException] = asyncio.Queue()
        try:
            adapter_name, batch_key = self.runner.adapters.route(request.adapter_key)
        except KeyError:
            raise InternalError(f"adapter {request.adapter_key} was used without being added to the engine") from None

        def emit(item: GenerationDelta | BaseException) -> None:  # called on the engine thread
            loop.call_soon_threadsafe(queue.put_nowait, item)

        sequence = Sequence(request=request, adapter_name=adapter_name, batch_key=batch_key)
        sampler = RowSampler.for_options(request.sampling, await self._constraint(request.sampling.structured))
        self.core.submit(sequence, emit, sampler)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise Unavailable(f"the transformers engine failed the request ({item}); retry it") from item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self.core.abort(sequence)  # the caller left early: the row leaves its batch at the next step

    async def _constraint(self, structured: StructuredOutput | None) -> GrammarConstraint | None:
        """The row's grammar, compiled off the event loop (a new JSON schema takes milliseconds to compile)."""
        if structured is None:
            return None
        assert self._grammars is not None, "start() the engine first"
        return await asyncio.to_thread(self._grammars.constraint, structured)

    # -- adapters: on the engine thread, which owns the adapter tables, between steps -------------

    async def add_adapter(self, key: str, path: Path) -> None:
        # A caller who leaves once the load has started loses nothing: the adapter stays loaded.
        adapters = self.runner.adapters
        try:
            await asyncio.wrap_future(self.core.call(lambda: adapters.add(key, path)))
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            raise FailedPrecondition(f"the transformers engine cannot load adapter {key}: {exc}") from None

    async def offload_adapter(self, key: str) -> None:
        """Stacked weights move into host memory; a peft adapter stays resident in peft (`LoraAdapters.offload`)."""
        adapters = self.runner.adapters
        await asyncio.wrap_future(self.core.call(lambda: adapters.offload(key)))

    async def remove_adapter(self, key: str) -> None:
        adapters = self.runner.adapters
        await asyncio.wrap_future(self.core.call(lambda: adapters.remove(key)))
