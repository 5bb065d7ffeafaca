"""A scripted stand-in for an inference engine, and fake adapters to publish, for unit tests of the serving replica.

`FakeEngine` runs no model and reads no weights (it only checks that an adapter folder has its
config): it records the adapters added and removed, can hold a load or a generation until the
test sets an event, and streams a fixed answer, recording whether the consumer read it to the
end or closed the stream early. Where the `Engine` interface leaves room, it does what the real
engines do, and tests/support/engine_contract.py holds it to that: max_tokens, ignore_eos,
min_tokens and max_model_len bound the answer; an adapter key never added is refused with
InternalError; adding a key twice, offloading one not in a slot or removing one not added is a
no-op.
`publish_fake_adapter` puts a version in a real `ArtifactRepository` whose weights are
arbitrary bytes; `build_adapter_manager` wires a manager over a file store in a temp folder.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import tempfile
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraplane.artifact import ArtifactRepository, BaseModelInfo, DatasetInfo, Manifest, ManifestDraft
from loraplane.drift import Profile, PromptFrame, Sample, observe
from loraplane.errors import FailedPrecondition, InternalError
from loraplane.storage import FileStore
from loraplane.training import Method
from serving_svc.adapters import AdapterManager, AdapterPolicy
from serving_svc.engines.base import (
    Engine,
    EngineStats,
    FinishReason,
    GenerationDelta,
    GenerationRequest,
    TokenLogprob,
    Usage,
)
from serving_svc.metrics import ServingMetrics

FINGERPRINT = "sha256:" + "a" * 64
OTHER_FINGERPRINT = "sha256:" + "b" * 64
FIRST_TOKEN_ID = 1000
"""The fake answer's token ids count up from here, one token per scripted piece."""
ANSWER = ("Hel", "lo", "!")
TOKEN_LOGPROB = -0.2
"""The raw log-probability the fake engine reports for every token it generates."""
PROMPT_LOGPROB_PER_TOKEN = -1.5
"""The fake engine's log-probability of each scored prompt token after the first."""


class FakeTokenizer:
    """One token per character, its code point as the id."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any:
        text = "".join(f"<{m['role']}>{m['content']}" for m in conversation)
        return text + "<assistant>" if kwargs.get("add_generation_prompt") else text


class FakeEngine(Engine):
    name = "fake"
    supported_methods = frozenset({Method.LORA, Method.QLORA})
    scores_prompts = True
    embeds_prompts = False

    def __init__(
        self,
        *,
        max_model_len: int = 64,
        answer: Sequence[str] = ANSWER,
        finish_reason: FinishReason = "stop",
    ) -> None:
        self._max_model_len = max_model_len
        self.answer = list(answer)
        """Text of each generated token, in turn; the last delta carries finish reason and usage."""
        self.finish_reason: FinishReason = finish_reason
        """Why the answer ends after its last piece ("length": as if max_tokens had cut it there)."""
        self.add_calls: list[tuple[str, Path]] = []
        self.remove_calls: list[str] = []
        self.adapters: set[str] = set()
        """Keys in a slot: added and not offloaded or removed since."""
        self.offloaded: set[str] = set()
        """Keys whose host copy is kept: offloaded and not added or removed since."""
        self.restored: list[str] = []
        """Keys added again from their host copy."""
        self.load_gate: asyncio.Event | None = None
        """When set to an Event, add_adapter waits for it (after recording the call)."""
        self.load_started = asyncio.Event()
        self.add_error: Exception | None = None
        """Raised by the next add_adapter calls, after the gate, until cleared."""
        self.generation_gate: asyncio.Event | None = None
        """When set to an Event, generate waits for it before its first delta."""
        self.generation_started = asyncio.Event()
        self.requests: list[GenerationRequest] = []
        self.finished: list[str] = []
        """Request ids whose whole answer was read."""
        self.aborted: list[str] = []
        """Request ids whose stream was closed or cancelled before the end."""
        self.max_running = 0
        """The most generations open at once."""

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer()

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self.requests) - len(self.finished) - len(self.aborted), waiting=0)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationDelta, None]:
        if request.adapter_key is not None and request.adapter_key not in self.adapters:
            raise InternalError(f"adapter {request.adapter_key} was used without being added to the engine")
        self.requests.append(request)
        self.max_running = max(self.max_running, self.stats().running)
        self.generation_started.set()
        try:
            if self.generation_gate is not None:
                await self.generation_gate.wait()
            for index in itertools.count():
                delta = self._delta(request, index)
                yield delta
                if delta.finish_reason is not None:
                    break
        except (GeneratorExit, asyncio.CancelledError):
            self.aborted.append(request.request_id)
            raise
        self.finished.append(request.request_id)

    def _delta(self, request: GenerationRequest, index: int) -> GenerationDelta:
        """Token `index` of the answer: its pieces in turn, ending after the last piece once an end is
        allowed (ignore_eos and min_tokens keep it going round), or at max_tokens or max_model_len."""
        sampling = request.sampling
        generated = index + 1
        reason: FinishReason | None = None
        if generated % len(self.answer) == 0 and not sampling.ignore_eos and generated >= sampling.min_tokens:
            reason = self.finish_reason
        elif generated >= min(sampling.max_tokens, self._max_model_len - len(request.prompt_token_ids)):
            reason = "length"
        token, text = FIRST_TOKEN_ID + index, self.answer[index % len(self.answer)]
        return GenerationDelta(
            text=text,
            token_ids=(token,),
            logprobs=(TokenLogprob(token, text, -0.1 * generated),) if sampling.logprobs else (),
            finish_reason=reason,
            usage=Usage(len(request.prompt_token_ids), generated) if reason else None,
            token_logprob_sum=TOKEN_LOGPROB,
            prompt_logprob=PROMPT_LOGPROB_PER_TOKEN * (len(request.prompt_token_ids) - 1)
            if reason and request.score_prompt
            else None,
        )

    async def add_adapter(self, key: str, path: Path) -> None:
        self.add_calls.append((key, path))
        self.load_started.set()
        if self.load_gate is not None:
            await self.load_gate.wait()
        if self.add_error is not None:
            raise self.add_error
        if not (path / "adapter_config.json").is_file():
            raise FailedPrecondition(f"the fake engine cannot load adapter {key}: {path} has no adapter_config.json")
        if key in self.adapters:  # as the real engines: a caller who left mid-load may add it again
            return
        if key in self.offloaded:
            self.restored.append(key)
            self.offloaded.remove(key)
        self.adapters.add(key)

    async def offload_adapter(self, key: str) -> None:
        if key in self.adapters:
            self.adapters.remove(key)
            self.offloaded.add(key)

    async def remove_adapter(self, key: str) -> None:
        self.remove_calls.append(key)
        self.adapters.discard(key)
        self.offloaded.discard(key)

    @property
    def added_keys(self) -> list[str]:
        return [key for key, _ in self.add_calls]


def publish_fake_adapter(
    repository: ArtifactRepository,
    workdir: Path,
    name: str,
    *,
    rank: int = 8,
    config_rank: int | None = None,
    rank_pattern: dict[str, int] | None = None,
    method: str = "lora",
    fingerprint: str = FINGERPRINT,
    profile: Profile | None = None,
    config_fields: dict[str, Any] | None = None,
) -> Manifest:
    """Publish the next version of `name`: `rank` in the manifest, `config_rank` (default: rank) in
    adapter_config.json (with `config_fields` over peft's usual ones), random bytes as weights and `profile`
    (default: `reference_profile()`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = Path(tempfile.mkdtemp(dir=workdir, prefix=f"src-{name}-"))
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank if config_rank is None else config_rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "v_proj"],
        "megatron_core": "megatron.core",
        **(config_fields or {}),
    }
    if rank_pattern is not None:
        config["rank_pattern"] = rank_pattern
    (source / "adapter_config.json").write_text(json.dumps(config))
    (source / "adapter_model.safetensors").write_bytes(os.urandom(64))
    (profile or reference_profile()).save(source / "profile.json")
    draft = ManifestDraft(
        name=name,
        base_model=BaseModelInfo(name="tiny", fingerprint=fingerprint),
        method=method,  # type: ignore[arg-type]
        hyperparameters={"rank": rank, "alpha": 2 * rank},
        metrics={"train_loss": 1.0},
        dataset=DatasetInfo(fingerprint="sha256:test", train_examples=1, validation_examples=0),
        job_id=f"test-{name}",
    )
    return repository.publish(source, draft)[0]


def reference_profile(prompt_tokens: int = 3, samples: int = 10) -> Profile:
    """The profile of `samples` requests shaped like what FakeEngine answers to a prompt of that length."""
    records = []
    for _ in range(samples):
        prompt = list(range(10, 10 + prompt_tokens))
        answer = [FIRST_TOKEN_ID + i for i in range(len(ANSWER))]
        logprobs = (TOKEN_LOGPROB * len(ANSWER), PROMPT_LOGPROB_PER_TOKEN * (prompt_tokens - 1))
        records.append(observe(Sample(prompt, answer, *logprobs, "".join(ANSWER)), PromptFrame(), None))
    return Profile(prompts=[record.prompt for record in records], answers=records)


@dataclass
class AdapterParts:
    repository: ArtifactRepository
    engine: FakeEngine
    metrics: ServingMetrics
    manager: AdapterManager
    workdir: Path
    cache_dir: Path

    def publish(self, name: str, **kwargs: Any) -> Manifest:
        return publish_fake_adapter(self.repository, self.workdir / "sources", name, **kwargs)


def build_adapter_manager(
    tmp_path: Path,
    engine: FakeEngine | None = None,
    *,
    max_loaded: int = 2,
    max_rank: int = 16,
    resolve_ttl_seconds: float = 3600.0,
    adapter_labels: int = 8,
    max_cache_bytes: int = 0,
    max_cpu: int = 0,
    clock: Callable[[], float] = time.monotonic,
) -> AdapterParts:
    repository = ArtifactRepository(FileStore(tmp_path / "store"))
    engine = engine or FakeEngine()
    metrics = ServingMetrics(adapter_labels=adapter_labels)
    policy = AdapterPolicy(
        base_model_name="tiny",
        base_model_fingerprint=FINGERPRINT,
        max_loaded=max_loaded,
        max_rank=max_rank,
        resolve_ttl_seconds=resolve_ttl_seconds,
        max_cache_bytes=max_cache_bytes,
        max_cpu=max_cpu,
    )
    cache_dir = tmp_path / "cache"
    manager = AdapterManager(repository, engine, cache_dir, policy, metrics, clock=clock)
    return AdapterParts(repository, engine, metrics, manager, tmp_path, cache_dir)


def sample(metrics: ServingMetrics, name: str, **labels: str) -> float | None:
    """One sample's value from the replica's registry; None when the series does not exist."""
    return metrics.registry.get_sample_value(name, labels)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the loop run until `predicate()` holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)
