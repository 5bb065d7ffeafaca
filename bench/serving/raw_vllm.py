"""Baseline worker: vLLM's AsyncLLM in-process, no gRPC and no adapter manager in front.

What our server adds on top of vLLM (gRPC, admission, store, verification) shows as the gap
between this and ours-vllm. Run by the benchmark as `python -m bench.serving.raw_vllm JOB RESULTS`;
the `__main__` guard matters because vLLM spawns its engine core, which re-imports this module.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from typing import Any

from bench.serving.measure import RequestResult, RowRun
from bench.serving.traffic import PlannedRequest, chat_token_ids, prompt_for
from bench.serving.workers import WARMUP_ROUNDS, WARMUP_TOKENS, WorkerJob, append_row, worker_args
from bench.serving.workspace import RANK

MAX_MODEL_LEN = 512
GPU_MEMORY_UTILIZATION = 0.2


class RawVllm:
    """One AsyncLLM with every adapter of the job registered under a fixed LoRA id."""

    def __init__(self, job: WorkerJob) -> None:
        from vllm import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        self.job = job
        args = AsyncEngineArgs(
            model=job.model_dir,
            dtype="float32",
            enforce_eager=True,
            enable_lora=True,
            max_loras=max(job.max_loras, 1),
            max_cpu_loras=max(job.max_loras, 1),
            max_lora_rank=RANK,
            max_num_seqs=job.batch_size,
            max_model_len=MAX_MODEL_LEN,
            gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
            disable_log_stats=True,
        )
        self.llm = AsyncLLM.from_engine_args(args)
        self.tokenizer: Any = self.llm.get_tokenizer()
        self.loras = {
            name: LoRARequest(lora_name=name, lora_int_id=index, lora_path=job.adapter_dirs[name])
            for index, name in enumerate(job.adapters_needed, start=1)
        }
        self._ids = itertools.count()

    def sampling(self, max_tokens: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            temperature=0,
            max_tokens=max_tokens,
            min_tokens=max_tokens,
            ignore_eos=True,
            output_kind=RequestOutputKind.DELTA,
        )

    def prepare(self, planned: PlannedRequest) -> tuple[Any, Any]:
        """The engine's prompt (token ids from the chat template) and LoRA request for `planned`."""
        from vllm.inputs import tokens_input

        prompt = tokens_input(chat_token_ids(self.tokenizer, planned.messages()))
        return prompt, self.loras[planned.adapter] if planned.adapter else None

    async def one(self, prompt: Any, lora: Any, sampling: Any) -> RequestResult:
        """One request; TTFT is the first output that carries text, as for our server."""
        start = time.perf_counter()
        result = RequestResult()
        try:
            async for output in self.llm.generate(prompt, sampling, f"r{next(self._ids)}", lora_request=lora):
                completion = output.outputs[0]
                if result.ttft_s is None and completion.text:
                    result.ttft_s = time.perf_counter() - start
                result.tokens += len(completion.token_ids)
        except Exception as exc:  # noqa: BLE001 - a failed request is a result, not the end of the row
            result.error = f"{type(exc).__name__}: {exc}"
            return result
        result.latency_s = time.perf_counter() - start
        return result

    async def drive(self, requests: list[PlannedRequest], max_tokens: int) -> tuple[list[RequestResult], float]:
        """All requests at once, at most the job's concurrency in flight; prompts are tokenized first."""
        gate = asyncio.Semaphore(self.job.concurrency)
        sampling = self.sampling(max_tokens)
        prepared = [self.prepare(planned) for planned in requests]

        async def gated(prompt: Any, lora: Any) -> RequestResult:
            async with gate:
                return await self.one(prompt, lora, sampling)

        start = time.perf_counter()
        results = await asyncio.gather(*(gated(prompt, lora) for prompt, lora in prepared))
        return list(results), time.perf_counter() - start

    async def warm_up(self) -> None:
        """Register every adapter, then run each (and the base model) a few times, untimed."""
        for lora in self.loras.values():
            await self.llm.add_lora(lora)
        requests = [PlannedRequest(name, prompt_for(i)) for i, name in enumerate([None, *self.loras])]
        for _ in range(WARMUP_ROUNDS):
            results, _ = await self.drive(requests, min(WARMUP_TOKENS, self.job.max_tokens))
            errors = [r.error for r in results if r.error]
            if errors:
                raise RuntimeError(f"warm-up failed: {errors[0]}")


async def _main() -> None:
    job, results_path = worker_args()
    engine = RawVllm(job)
    try:
        await engine.warm_up()
        for row in job.rows:
            results, wall = await engine.drive(list(row.requests), job.max_tokens)
            append_row(results_path, RowRun(row.adapters, row.traffic, wall, results))
    finally:
        engine.llm.shutdown()
        # Drop the engine now: left to interpreter exit, vLLM's __del__ shuts down again after the
        # modules it needs are gone and prints a traceback.
        del engine
        gc.collect()


if __name__ == "__main__":
    asyncio.run(_main())
