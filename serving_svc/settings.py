"""The serving service's settings: `LORAPLANE_*` environment variables, read once at start-up."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from loraplane.drift import DriftStatistic
from loraplane.releases import DEFAULT_MARGINS, Guardrail
from loraplane.settings import CommonSettings
from serving_svc.engines.base import Dtype, EngineChoice


class ServingSettings(CommonSettings):
    serving_address: str = Field("127.0.0.1:50052", description="gRPC listen address; port 0 picks a free one.")
    serving_metrics_port: int = Field(
        9102, ge=0, le=65535, description="Prometheus /metrics port, on the gRPC address's host; 0 = free."
    )
    serving_http_port: int = Field(
        8000,
        ge=0,
        le=65535,
        description="OpenAI-compatible HTTP API port (/v1/chat/completions, /v1/completions, /v1/models), on the "
        "gRPC address's host; 0 = free.",
    )
    serving_engine: EngineChoice = Field(
        "auto",
        description="Inference engine: vllm (AsyncLLM), transformers (transformers + peft, mixed-adapter "
        "continuous batching, DoRA too) or auto: vllm on a GPU, transformers on a CPU, where it is faster.",
    )
    adapter_cache_dir: Path = Field(
        Path(""), description="Verified local copies of adapter versions. Default: {data_dir}/adapter-cache."
    )
    adapter_cache_max_bytes: int = Field(
        16 * 2**30,
        ge=0,
        description="Bytes of verified adapter copies kept on disk; past this the least recently used copies "
        "of versions not in the engine are deleted (and fetched again when next needed). 0 = no bound.",
    )
    max_loaded_adapters: int = Field(
        8,
        ge=1,
        le=512,
        description="Adapters held in the engine at once (its LoRA slots: vLLM's max_loras); the least recently "
        "used is moved to host memory.",
    )
    max_cpu_adapters: int = Field(
        16,
        ge=0,
        le=4096,
        description="Adapters kept in host memory after leaving the engine (vLLM's CPU LoRA cache; parsed "
        "weights or resident peft adapters on the transformers engine), so loading one again copies "
        "rather than reads its files; past this the least recently used is dropped. 0 = none kept.",
    )
    max_lora_rank: int = Field(
        16,
        ge=1,
        le=512,
        description="Largest LoRA rank accepted (the trainer's default is 16); vLLM sizes every adapter slot "
        "for it, so a higher one costs memory and time on every request.",
    )
    max_batch_size: int = Field(
        32,
        ge=1,
        le=1024,
        description="Sequences decoded together in one engine step (vLLM's max_num_seqs); more requests wait "
        "in the engine's queue.",
    )
    max_concurrent_requests: int = Field(
        256,
        ge=1,
        description="Generation requests handed to the engine at once; more wait in this replica's queue.",
    )
    max_queued_requests: int = Field(
        256,
        ge=0,
        description="Generation requests waiting for a place in the engine; past this, RESOURCE_EXHAUSTED.",
    )
    max_requests_per_caller: int = Field(
        256,
        ge=1,
        description="Generation requests one token may have generating or waiting; past this, RESOURCE_EXHAUSTED "
        "(HTTP 429) for that token only. With auth off only the replica's limits apply.",
    )
    shadow_max_in_flight: int = Field(
        4,
        ge=0,
        description="Shadow requests (a release's candidate run on stable's requests) generating at once; more "
        "are dropped and counted, as are all while real requests wait. 0 = no shadow requests.",
    )
    max_prompt_tokens: int = Field(
        0,
        ge=0,
        description="Longest prompt accepted, in tokens; longer ones get INVALID_ARGUMENT. 0 = as long as "
        "max_model_len leaves room for.",
    )
    max_tokens_limit: int = Field(
        0,
        ge=0,
        description="Largest max_tokens a request may ask for; more gets INVALID_ARGUMENT. 0 = max_model_len.",
    )
    metrics_adapter_labels: int = Field(
        16,
        ge=1,
        le=1000,
        description="Adapters with their own `adapter` label in the metrics: the busiest this many; the rest "
        'are summed under adapter="_other".',
    )
    max_model_len: int = Field(
        2048,
        ge=16,
        description="Prompt plus generated tokens per request; at most the model's context length.",
    )
    dtype: Dtype = Field(
        "auto",
        description="Weight and activation dtype; auto is float32 on a CPU (faster there than bfloat16) and "
        "the model config's on a GPU.",
    )
    gpu_memory_utilization: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Share of accelerator memory for weights and KV cache; on CPU, of the NUMA node's memory "
        "(0.1-0.3 fits a node that reports 10 GiB).",
    )
    default_max_tokens: int = Field(256, ge=1, description="Tokens generated when a request leaves max_tokens 0.")
    adapter_resolve_ttl_seconds: float = Field(
        5.0,
        ge=0,
        description="How long an unpinned adapter name keeps resolving to the version last found in the "
        "store; a newer version is served within this time, without a restart.",
    )

    drift_monitoring: bool = Field(
        True, description="Compare every adapter's live traffic with its training profile (metrics, GetAdapterStats)."
    )
    drift_window_requests: int = Field(500, ge=1, description="Requests in each adapter's drift window, at most.")
    drift_window_seconds: float = Field(3600.0, gt=0, description="Age of the oldest request a drift window keeps.")
    drift_min_samples: int = Field(
        30,
        ge=1,
        description="Fewest requests (and feedback scores) in a window for its drift figures to be reported; "
        "fewer give noise.",
    )
    drift_prompt_scoring_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Share of requests whose prompt is scored for prompt surprise (it costs the prompt's logits).",
    )
    drift_false_alarm_rate: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Share of windows of unchanged traffic in which an adapter may read drifted (any statistic "
        "over): each statistic is over when its p-value is at most this rate over the number of statistics "
        "judged (Bonferroni), so with nine statistics each false-alarms in at most 0.56% of windows.",
    )
    drift_thresholds: dict[DriftStatistic, float] = Field(
        default_factory=dict,
        description="Raw thresholds of the statistics to judge by value instead of by p-value, as JSON: "
        '{"prompt_token_jsd": 0.2}; the false-alarm rate is then shared among the others.',
    )
    feedback_score_floor: float = Field(
        0.5, ge=0, le=1, description="Mean feedback score under which an adapter is alerted on."
    )

    release_automatic: bool = Field(
        True,
        description="Promote a release's candidate, or roll it back, when its figures on this replica's traffic "
        "decide; off: the figures and verdicts are shown (GetRelease) and people decide.",
    )
    release_min_requests: int = Field(
        100, ge=1, description="Requests a candidate answers on this replica (compared, in shadow) before a promotion."
    )
    release_min_seconds: float = Field(60.0, ge=0, description="Age of a candidate's trial before a promotion.")
    release_margins: dict[Guardrail, float] = Field(
        default_factory=lambda: dict(DEFAULT_MARGINS),
        description="How much worse than stable a candidate may be on each guardrail before it is rolled back, "
        "as JSON; guardrails left out keep their defaults: " + json.dumps(DEFAULT_MARGINS) + ".",
    )
    release_check_seconds: float = Field(
        5.0, gt=0, description="How often this replica judges the candidates it routes to."
    )

    capture_queue_records: int = Field(
        10_000,
        ge=1,
        description="Captured requests and feedback waiting to be written, at most; past it they are dropped and "
        "counted (requests never wait for capture). Capture itself is turned on per adapter, by an admin.",
    )
    capture_flush_seconds: float = Field(
        5.0, gt=0, description="How long a captured request waits, at most, before its batch is written."
    )
    capture_pause_seconds: float = Field(
        60.0, gt=0, description="After the store refuses a capture write, how long capture drops records."
    )
    capture_redaction_patterns: dict[str, str] = Field(
        default_factory=dict,
        description="Regular expressions redacted from captures besides the defaults (secrets, e-mail addresses, "
        'phone numbers, long digit runs), as JSON: {"order_id": "ORD-[0-9]+"}; each match becomes [name].',
    )
    capture_redaction_hook: str = Field(
        "",
        description="A function module:function that takes a captured text and returns it redacted, run after "
        "the patterns.",
    )

    @field_validator("release_margins")
    @classmethod
    def _keep_default_margins(cls, margins: dict[Guardrail, float]) -> dict[Guardrail, float]:
        if any(margin < 0 for margin in margins.values()):
            raise ValueError("a guardrail's margin must be >= 0")
        return {**DEFAULT_MARGINS, **margins}

    @model_validator(mode="after")
    def _fill_serving_paths(self) -> ServingSettings:
        if self.adapter_cache_dir == Path(""):
            self.adapter_cache_dir = self.data_dir / "adapter-cache"
        self.adapter_cache_dir = self.adapter_cache_dir.expanduser()
        return self

    @model_validator(mode="after")
    def _check_token_limits(self) -> ServingSettings:
        if self.default_max_tokens > self.max_model_len:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must not exceed max_model_len ({self.max_model_len})"
            )
        return self
