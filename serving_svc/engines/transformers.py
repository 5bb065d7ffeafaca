"""The transformers engine: transformers + peft, continuous batching with a different adapter per row.

transformers' own continuous batching (`generate_batch`, 5.x) has no notion of a per-request
adapter, and its paged attention targets GPUs; peft's mixed-adapter batches (`adapter_names`)
have no scheduler. This engine adds one: `Scheduler` batches requests continuously and each
forward pass applies every row's own adapter, as stacked LoRA weights (`StackedLora`) when they
are plain LoRA; peft's own `adapter_names` loop cost 3.4x per step at 32 adapters. Plain LoRA adapters are read straight
from their safetensors into the stacks (`lora_weights`), because peft's `load_adapter` takes
seconds once many adapters are resident; peft loads and applies the others (DoRA), each in
batches of its own.

What it does not do: prefix caching, paged KV memory, speculative decoding, tensor parallelism.
On a CPU, where weights dominate each step, batching is what pays; on a GPU, vLLM is the engine.
Only `serving_svc.engines.create_engine` imports this module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import warnings
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from loraplane.errors import FailedPrecondition, InternalError, StartupError, Unavailable
from loraplane.models import end_token_ids
from loraplane.training import Method
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
from serving_svc.engines.batch import Forward
from serving_svc.engines.detokenizer import IncrementalDetokenizer
from serving_svc.engines.grammar import GrammarConstraint, Grammars
from serving_svc.engines.lora_weights import LoraModule, read_adapter
from serving_svc.engines.packed_linear import pack_linear_weights
from serving_svc.engines.sampler import RowSampler
from serving_svc.engines.scheduler import MIXED, Scheduler, Sequence
from serving_svc.engines.stacked_lora import BASE, StackedLora

log = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class TransformersEngine(Engine):
    name = "transformers"
    supported_methods = frozenset(Method)
    scores_prompts = True

    def __init__(self, config: EngineConfig, on_step: Callable[[int], None] = lambda rows: None) -> None:
        self._config = config
        self._on_step = on_step
        self._model: PreTrainedModel | None = None
        self._peft: PeftModel | None = None
        self._tokenizer: Any = None
        self._scheduler: Scheduler | None = None
        self._max_model_len = config.max_model_len
        self._adapters: dict[str, tuple[str, str]] = {}  # key -> (adapter name in the model, batch key)
        # Offloaded adapters: key -> (name, stacked weights in host memory; None: resident in peft).
        self._host_copies: dict[str, tuple[str, dict[str, LoraModule] | None]] = {}
        self._adapter_numbers = 0
        # All torch work (loading, adapters, every step) runs on this one thread: a second thread
        # running torch ops gets an OpenMP team of its own, and the two halve each other's speed
        # on a small CPU (measured 2x slower decode steps).
        self._torch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transformers-engine")
        self._loop_done: concurrent.futures.Future[None] | None = None
        self._stacked: StackedLora | None = None
        self._peft_layers_enabled: bool | None = None
        self._grammars: Grammars | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._torch_thread, self._load)
        self._loop_done = self._torch_thread.submit(self.scheduler.run)

    def _load(self) -> None:
        path = self._config.model_path
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=_DTYPES[self._config.dtype], attn_implementation=register_grouped_sdpa()
            )
        except OSError as exc:
            raise StartupError(
                f"cannot load the base model from {path} ({exc}); set LORAPLANE_BASE_MODEL to a Hugging Face "
                "model folder (or run `loraplane prepare-model`)"
            ) from None
        model.eval()
        packed = pack_linear_weights(model, expected_rows=self._config.max_batch_size)
        longest = int(getattr(model.config, "max_position_embeddings", 0) or self._config.max_model_len)
        if self._config.max_model_len > longest:
            raise StartupError(
                f"LORAPLANE_MAX_MODEL_LEN={self._config.max_model_len} exceeds the model's context length "
                f"({longest}); set it to at most {longest}"
            )
        self._model = model
        self._stacked = StackedLora(model, model.dtype, expected_adapters=self._config.max_loaded_adapters)
        ends = end_token_ids(model, self._tokenizer)
        self._grammars = Grammars(self._tokenizer, int(model.config.vocab_size), ends)
        self._scheduler = Scheduler(
            self._forward_for,
            max_batch_size=self._config.max_batch_size,
            max_model_len=self._max_model_len,
            end_token_ids=ends,
            on_step=self._on_step,
            # Its own copy: a fast tokenizer is not meant to be shared between threads.
            decoder=copy.deepcopy(self._tokenizer),
        )
        log.info(
            "transformers engine: %s in %s, up to %d rows a step, %d linear layers on oneDNN-packed weights",
            path,
            model.dtype,
            self._config.max_batch_size,
            packed,
        )

    async def close(self) -> None:
        if self._scheduler is not None:
            scheduler, self._scheduler = self._scheduler, None
            scheduler.stop()
            if self._loop_done is not None:
                await asyncio.wrap_future(self._loop_done)
        self._torch_thread.shutdown(wait=False)
        self._model = self._peft = None

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            raise Unavailable("the transformers engine is not started")
        return self._scheduler

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise Unavailable("the transformers engine is not started")
        return self._tokenizer  # type: ignore[no-any-return]

    def stats(self) -> EngineStats:
        if self._scheduler is None:
            return EngineStats(running=0, waiting=0)
        return self._scheduler.stats()

    # -- generation -------------------------------------------------------------------------

    def _forward_for(self, batch_key: str) -> Forward:
        """The forward pass of one batch; runs on the engine thread only."""

        def forward(
            input_ids: torch.Tensor,
            mask: torch.Tensor,
            positions: torch.Tensor,
            cache: Any,
            adapter_names: list[str],
            *,
            prefill: bool,
            every_position_of: list[int] | None = None,
        ) -> tuple[torch.Tensor, torch.Tensor | None]:
            model: Any = self._model
            applied: AbstractContextManager[None]
            if batch_key == MIXED:
                self._use_peft_layers(False)
                assert self._stacked is not None
                applied = self._stacked.rows(adapter_names, running=not prefill)
            else:  # an adapter that is not stacked: peft applies it to its batch alone
                self._use_peft_layers(True)
                assert self._peft is not None
                self._peft.set_adapter(self._adapters[batch_key][0])
                applied = nullcontext()
            hidden: list[torch.Tensor] = []
            capture = (
                model.get_decoder().register_forward_hook(lambda m, a, out: hidden.append(out.last_hidden_state))
                if every_position_of
                else None
            )
            try:
                with applied:
                    output = model(
                        input_ids=input_ids,
                        attention_mask=mask,
                        position_ids=positions,
                        past_key_values=cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
            finally:
                if capture is not None:
                    capture.remove()
            every_position = self._logits(model, hidden[0][every_position_of]) if hidden else None
            return output.logits[:, -1, :], every_position

        return forward

    @staticmethod
    def _logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
        """The model's logits for these hidden states, as its own forward computes them from the last ones."""
        logits: torch.Tensor = model.get_output_embeddings()(hidden)
        cap = getattr(model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def _use_peft_layers(self, enabled: bool) -> None:
        """Switch peft's own LoRA layers on (unstacked adapters) or off (stacked ones add their deltas)."""
        if self._peft is not None and self._peft_layers_enabled != enabled:
            tuner: Any = self._peft.base_model
            if enabled:
                tuner.enable_adapter_layers()
            else:
                tuner.disable_adapter_layers()
            self._peft_layers_enabled = enabled

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationDelta, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationDelta | BaseException] = asyncio.Queue()
        adapter_name, batch_key = BASE, MIXED
        if request.adapter_key is not None:
            if request.adapter_key not in self._adapters:
                raise InternalError(f"adapter {request.adapter_key} was used without being added to the engine")
            adapter_name, batch_key = self._adapters[request.adapter_key]

        def emit(item: GenerationDelta | BaseException) -> None:  # called on the scheduler thread
            loop.call_soon_threadsafe(queue.put_nowait, item)

        sequence = Sequence(
            request=request,
            adapter_name=adapter_name,
            batch_key=batch_key,
            emit=emit,
            detokenizer=IncrementalDetokenizer(self.scheduler.decoder, request.sampling.stop),
            sampler=RowSampler.for_options(request.sampling, await self._constraint(request.sampling.structured)),
        )
        self.scheduler.submit(sequence)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise Unavailable(f"the transformers engine failed the request ({item}); retry it") from item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self.scheduler.abort(sequence)  # the caller left early: the row leaves its batch at the next step

    async def _constraint(self, structured: StructuredOutput | None) -> GrammarConstraint | None:
        """The row's grammar, compiled off the event loop (a new JSON schema takes milliseconds to compile)."""
        if structured is None:
            return None
        assert self._grammars is not None, "start() the engine first"
        return await asyncio.to_thread(self._grammars.constraint, structured)

    # -- adapters ---------------------------------------------------------------------------

    async def add_adapter(self, key: str, path: Path) -> None:
        # peft names become module keys, which cannot hold the "." an adapter name may have.
        self._adapter_numbers += 1
        name = f"adapter_{self._adapter_numbers}"

        # On the engine thread, which owns the adapter tables: a caller who leaves once it started loses nothing.
        def load() -> None:
            model, stacked = self._model, self._stacked
            assert model is not None and stacked is not None
            if key in self._adapters:  # loaded by an earlier call whose caller left before it finished
                return
            if (host_copy := self._host_copies.pop(key, None)) is not None:
                kept_name, kept = host_copy  # offloaded: weights back into a slot, or peft's adapter back in use
                if kept is not None:
                    stacked.add(kept_name, kept)
                self._adapters[key] = (kept_name, MIXED if kept is not None else key)
                return
            modules = read_adapter(path, model, model.dtype)
            if isinstance(modules, str):  # more than plain LoRA: peft applies it, in a batch of its own
                log.info("adapter %s goes through peft and decodes in batches of its own: %s", key, modules)
                self._load_into_peft(name, path)
                self._adapters[key] = (name, key)
            else:
                stacked.add(name, modules)
                self._adapters[key] = (name, MIXED)

        try:
            await asyncio.wrap_future(self.scheduler.call(load))
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            raise FailedPrecondition(f"the transformers engine cannot load adapter {key}: {exc}") from None

    def _load_into_peft(self, name: str, path: Path) -> None:
        if self._peft is None:
            assert self._model is not None
            self._peft = PeftModel.from_pretrained(self._model, path, adapter_name=name, is_trainable=False)
            self._peft.eval()
        else:
            self._peft.load_adapter(path, adapter_name=name, is_trainable=False)
        self._peft_layers_enabled = None  # layers peft just added start enabled

    async def offload_adapter(self, key: str) -> None:
        """Stacked weights move out of their slot into host memory; a peft adapter stays resident in
        peft (no request names it, so no batch applies it), since loading one into peft is the slow part."""

        def offload() -> None:
            entry = self._adapters.pop(key, None)
            if entry is not None:
                name, batch_key = entry
                assert self._stacked is not None
                self._host_copies[key] = (name, self._stacked.take(name) if batch_key == MIXED else None)

        await asyncio.wrap_future(self.scheduler.call(offload))

    async def remove_adapter(self, key: str) -> None:
        def delete() -> None:
            entry = self._adapters.pop(key, None)
            host_copy = self._host_copies.pop(key, None)  # stacked weights held there just go with it
            if entry is not None and entry[1] == MIXED:
                assert self._stacked is not None
                self._stacked.remove(entry[0])
                return
            # Not stacked: a peft adapter, in use or resident for its host copy.
            peft_name = entry[0] if entry is not None else host_copy[0] if host_copy and host_copy[1] is None else None
            if peft_name is not None and self._peft is not None:
                with warnings.catch_warnings():  # "was active, now deleted": rows name their adapter anyway
                    warnings.simplefilter("ignore", UserWarning)
                    self._peft.delete_adapter(peft_name)

        await asyncio.wrap_future(self.scheduler.call(delete))
