"""Baseline worker: plain transformers + peft `generate`, what a team writes without a server.

Two ways to serve many adapters with peft alone:

- mixed: every adapter loaded into one PeftModel, requests in fixed batches of `batch_size` in
  arrival order, each row with its own adapter through `adapter_names`;
- sequential: one adapter active at a time (`set_adapter`), each adapter's requests in batches.

Every request of the row is present at the start, so a request's latency is the time from the
start of the row to the end of its batch; a batch's first token is not observable, so TTFT is
None. Run as `python -m bench.serving.peft_baseline JOB RESULTS`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from bench.serving.measure import RequestResult, RowRun
from bench.serving.traffic import PlannedRequest, RowPlan, chat_token_ids, prompt_for
from bench.serving.workers import WARMUP_TOKENS, WorkerJob, append_row, worker_args

BASE = "__base__"
"""peft's `adapter_names` entry for a row without an adapter."""


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class PeftBaseline:
    """The base model in float32 with every adapter of the job loaded, and a left-padding tokenizer."""

    def __init__(self, job: WorkerJob) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.job = job
        self.torch = torch
        self.tokenizer: Any = AutoTokenizer.from_pretrained(job.model_dir)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        model: Any = AutoModelForCausalLM.from_pretrained(job.model_dir, dtype=torch.float32)
        names = job.adapters_needed
        if names:
            model = PeftModel.from_pretrained(model, job.adapter_dirs[names[0]], adapter_name=names[0])
            for name in names[1:]:
                model.load_adapter(job.adapter_dirs[name], adapter_name=name)
        self.model = model.eval()
        self.is_peft = bool(names)

    def _generate(self, prompts: list[list[int]], max_tokens: int, adapter_names: list[str] | None) -> int:
        """One left-padded batch; returns the tokens generated per row (all rows get the same count)."""
        torch = self.torch
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts])
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        extra = {"adapter_names": adapter_names} if adapter_names is not None else {}
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
                **extra,
            )
        return int(output.shape[1] - width)

    def _adapter_context(self, adapter: str | None) -> AbstractContextManager[Any]:
        """Make `adapter` the only active one; the base model runs with adapters disabled."""
        if not self.is_peft:
            return nullcontext()
        if adapter is None:
            return self.model.disable_adapter()  # type: ignore[no-any-return]
        self.model.set_adapter(adapter)
        return nullcontext()

    def run_mixed(self, requests: list[PlannedRequest], max_tokens: int) -> tuple[list[RequestResult], float]:
        """Fixed batches in arrival order, one adapter per row through `adapter_names`."""
        prompts = [chat_token_ids(self.tokenizer, r.messages()) for r in requests]
        results = [RequestResult() for _ in requests]
        start = time.perf_counter()
        for batch in _chunks(list(range(len(requests))), self.job.batch_size):
            names = [requests[i].adapter or BASE for i in batch] if self.is_peft else None
            tokens = self._generate([prompts[i] for i in batch], max_tokens, names)
            done = time.perf_counter() - start
            for i in batch:
                results[i].latency_s, results[i].tokens = done, tokens
        return results, time.perf_counter() - start

    def run_sequential(self, requests: list[PlannedRequest], max_tokens: int) -> tuple[list[RequestResult], float]:
        """Adapters one at a time, in order of first arrival; each adapter's requests in batches."""
        prompts = [chat_token_ids(self.tokenizer, r.messages()) for r in requests]
        by_adapter: dict[str | None, list[int]] = {}
        for index, planned in enumerate(requests):
            by_adapter.setdefault(planned.adapter, []).append(index)
        results = [RequestResult() for _ in requests]
        start = time.perf_counter()
        for adapter, indices in by_adapter.items():
            with self._adapter_context(adapter):
                for batch in _chunks(indices, self.job.batch_size):
                    tokens = self._generate([prompts[i] for i in batch], max_tokens, None)
                    done = time.perf_counter() - start
                    for i in batch:
                        results[i].latency_s, results[i].tokens = done, tokens
        return results, time.perf_counter() - start

    def run(self, row: RowPlan, max_tokens: int) -> RowRun:
        runner = self.run_sequential if self.job.system == "peft-sequential" else self.run_mixed
        results, wall = runner(list(row.requests), max_tokens)
        return RowRun(row.adapters, row.traffic, wall, results)

    def warm_up(self) -> None:
        """Short untimed batches over every adapter, by the path the timed rows take, so the first
        timed batch pays no first-call costs."""
        names: list[str | None] = [None, *self.job.adapters_needed]
        row = RowPlan(0, "warm-up", tuple(PlannedRequest(name, prompt_for(i)) for i, name in enumerate(names)))
        self.run(row, min(WARMUP_TOKENS, self.job.max_tokens))


def main() -> None:
    job, results_path = worker_args()
    baseline = PeftBaseline(job)
    baseline.warm_up()
    for row in job.rows:
        append_row(results_path, baseline.run(row, job.max_tokens))


if __name__ == "__main__":
    main()
