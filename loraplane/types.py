"""The client's typed view of the API: one frozen object per resource, as the OpenAI SDK's `types`.

Fields keep the proto's names and meanings (a zero still means "the default" or "not reported" where the
proto says so); enums are the domain's (`JobState`, `Method`, `AdapterTier`, ...), times are aware UTC
datetimes, and a field the server may leave unset is None. Each resource a call returns keeps the
message it came from in `.proto`, for a caller who wants to forward it or read a field added to the
proto after this client. `loraplane.convert` builds these from the messages, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loraplane.proto import serving_pb2, trainer_pb2
from loraplane.releases import ReleaseMode, ReleaseRecord, ReleaseState
from loraplane.serving import AdapterTier, FinishReason
from loraplane.training import (
    HeldOutSet,
    JobState,
    Method,
    PromptFormat,
    PromptFormatChoice,
    RetrainOutcome,
    TaskMetric,
)


def _proto_field() -> Any:
    """The message a resource came from: left out of its repr and its equality."""
    return field(repr=False, compare=False)


@dataclass(frozen=True, kw_only=True)
class AdapterRef:
    """A published adapter version."""

    name: str
    version: int
    uri: str
    manifest_sha256: str


# ---- training: what a job asks for (also the arguments of client.jobs.create) ----


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """One of: the JSONL text itself (an accepted job shows its digest instead), a URI in the trainer's store, or
    an adapter's captured requests."""

    inline_jsonl: str | None = None
    uri: str | None = None
    captures: CaptureSource | None = None


@dataclass(frozen=True, kw_only=True)
class CaptureSource:
    """An adapter's captured requests made into a job's training data (docs/loop.md); None takes the trainer's
    default for the figure."""

    adapter: str
    since: datetime | None = None
    good_score: float | None = None
    """The feedback score from which an uncorrected answer is kept as an example (0.75)."""
    held_out_share: float | None = None
    """The share of corrected captures held out as the job's test set (0.2)."""
    parent_data_share: float | None = None
    """The share of training examples drawn from the parent version's own data (0.3)."""


@dataclass(frozen=True, kw_only=True)
class LoraParameters:
    """Zero or empty = the trainer's default (rank 16, alpha 2 * rank, no dropout, all linear layers)."""

    rank: int = 0
    alpha: float = 0.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TrainingParameters:
    """Zero = the trainer's default; None (fields where 0 means something) = the default too."""

    epochs: float = 0.0
    max_steps: int = 0
    batch_size: int = 0
    learning_rate: float = 0.0
    max_seq_length: int = 0
    eval_every_steps: int = 0
    early_stopping_patience: int | None = None
    """0 turns early stopping off."""
    validation_fraction: float = 0.0
    seed: int = 0
    gradient_accumulation_steps: int = 0
    warmup_ratio: float = 0.0
    early_stopping_min_delta: float | None = None
    replay_fraction: float | None = None
    """0 adds no replayed answers."""


@dataclass(frozen=True, kw_only=True)
class DpoParameters:
    beta: float = 0.0
    """0 = the trainer's default (0.1)."""


@dataclass(frozen=True, kw_only=True)
class WorkerResources:
    """What a Kubernetes worker asks for; empty = the trainer's defaults."""

    cpu: str = ""
    memory: str = ""
    gpus: int | None = None
    """0 asks for no GPU."""
    nodes: int | None = None


@dataclass(frozen=True, kw_only=True)
class ReleaseOnSuccess:
    """Start a job's published version as its adapter's release candidate."""

    mode: ReleaseMode = ReleaseMode.CANARY
    canary_share: float | None = None
    """In canary mode: the version's share of the name's requests; None: the trainer's default (0.1)."""


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """A job's specification as the trainer accepted it, every default filled in."""

    base_model: str
    adapter_name: str
    training_data: Dataset
    validation_data: Dataset | None
    test_data: Dataset | None
    method: Method
    prompt_format: PromptFormatChoice
    lora: LoraParameters
    training: TrainingParameters
    dpo: DpoParameters
    resources: WorkerResources
    labels: Mapping[str, str]
    task_metrics: tuple[TaskMetric, ...]
    refuse_leakage: bool
    release: ReleaseOnSuccess | None
    """How the published version is started as its adapter's release candidate; None: published only."""
    parent: str = ""
    """The version (`name@vN`) the job continues from; "": a fresh adapter."""


# ---- training: a job and what it reports ----


@dataclass(frozen=True, kw_only=True)
class JobProgress:
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    elapsed_seconds: float
    eta_seconds: float
    """0 when unknown."""


@dataclass(frozen=True, kw_only=True)
class TaskScore:
    """A task metric of greedy answers to the test prompts, from the base model and from the adapter."""

    metric: TaskMetric
    base: float
    adapter: float
    examples: int
    held_out: HeldOutSet | None
    """Which prompts: the caller's test or validation data, or the trainer's unseen groups or in-distribution
    rows; None from a trainer that did not say."""


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    step: int
    validation_loss: float
    train_loss: float
    published: bool
    facts_lost: int | None
    """General facts the base model knew that this checkpoint answers wrong; None where the probe did not run
    during training (preference tuning)."""


@dataclass(frozen=True, kw_only=True)
class JobMetrics:
    """What a job measured; 0 = not (yet) measured. trainer.proto's JobMetrics says what each one is."""

    train_loss: float
    validation_loss: float
    validation_perplexity: float
    forgetting_probe_base_loss: float
    forgetting_probe_adapter_loss: float
    train_examples: int
    validation_examples: int
    steps: int
    stopped_early: bool
    best_step: int
    steps_saved: int
    final_generalization_gap: float
    best_generalization_gap: float
    duplicates_removed: int
    leaked_examples: int
    train_tokens: int
    example_tokens_p50: int
    example_tokens_p90: int
    example_tokens_max: int
    task_scores: tuple[TaskScore, ...]
    probe_facts_known: int
    probe_facts_lost: int
    checkpoints: tuple[Checkpoint, ...]
    preference_accuracy_base: float | None
    """This and the other preference_* figures: preference (DPO) jobs only."""
    preference_accuracy_adapter: float | None
    preference_margin_base: float | None
    preference_margin_adapter: float | None
    replay_examples: int
    held_out_near_copy_share: float | None
    """Share of the caller's scored held-out prompts that near-copy a training prompt; None without any."""
    capture_corrected: int = 0
    """This and the next three: a job whose training data was made from captures (docs/loop.md)."""
    capture_rated_good: int = 0
    capture_left_out: int = 0
    parent_examples: int = 0
    gate_passed: bool | None = None
    """A job that continued a version: whether the new version passed its gate against the parent; the
    gate_* figures are the parent's and the new version's (None where a check had no examples)."""
    gate_parent_task_parent: float | None = None
    gate_parent_task_candidate: float | None = None
    gate_new_traffic_parent: float | None = None
    gate_new_traffic_candidate: float | None = None
    gate_facts_parent: float | None = None
    gate_facts_candidate: float | None = None


@dataclass(frozen=True, kw_only=True)
class JobError:
    """Why a job failed: a gRPC status code name, a message, and the request field at fault ("" if none)."""

    code: str
    message: str
    field: str


@dataclass(frozen=True, kw_only=True)
class Job:
    id: str
    request_id: str
    owner: str
    spec: JobSpec
    state: JobState
    progress: JobProgress
    metrics: JobMetrics
    adapter: AdapterRef | None
    """Set once the adapter is published."""
    error: JobError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    proto: trainer_pb2.Job = _proto_field()


@dataclass(frozen=True, kw_only=True)
class JobEvent:
    sequence: int
    time: datetime
    job: Job
    """The job as it stood after this event."""
    message: str
    proto: trainer_pb2.JobEvent = _proto_field()


# ---- serving ----


@dataclass(frozen=True, kw_only=True)
class SamplingParameters:
    """How an answer is sampled (None = the replica's default; max_tokens 0 = its default). At most one of
    json_schema, json_object, regex and choices constrains the answer, token by token."""

    max_tokens: int = 0
    temperature: float | None = None
    """0 = greedy; None = 1.0."""
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    min_tokens: int = 0
    ignore_eos: bool = False
    json_schema: Mapping[str, Any] | None = None
    json_object: bool = False
    regex: str | None = None
    choices: tuple[str, ...] | None = None
    """An empty tuple is sent (and refused), not dropped."""

    def __post_init__(self) -> None:
        constraints = (self.json_schema is not None, self.json_object, self.regex is not None, self.choices is not None)
        if sum(constraints) > 1:
            raise ValueError("give at most one of json_schema, json_object, regex and choices")


@dataclass(frozen=True, kw_only=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True, kw_only=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, kw_only=True)
class Completion:
    request_id: str
    """Names this answer in record_feedback."""
    text: str
    finish_reason: FinishReason | None
    usage: Usage
    logprobs: tuple[TokenLogprob, ...]
    """Filled when the sampling parameters ask for logprobs."""
    adapter: AdapterRef | None
    """The version that answered; None for the base model."""
    proto: serving_pb2.GenerateResponse = _proto_field()


@dataclass(frozen=True, kw_only=True)
class CompletionChunk:
    """One message of a streamed answer: request_id and adapter on the first, finish_reason and usage on
    the last."""

    delta: str
    logprobs: tuple[TokenLogprob, ...]
    finish_reason: FinishReason | None
    usage: Usage | None
    adapter: AdapterRef | None
    request_id: str
    proto: serving_pb2.GenerateStreamResponse = _proto_field()


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    base_model: str
    base_model_fingerprint: str
    engine: str
    max_model_length: int
    max_loaded_adapters: int
    max_lora_rank: int
    max_cpu_adapters: int
    proto: serving_pb2.ModelInfoResponse = _proto_field()


@dataclass(frozen=True, kw_only=True)
class Adapter:
    """An adapter version as a serving replica sees it."""

    ref: AdapterRef
    base_model: str
    method: Method
    rank: int
    created_at: datetime
    loaded: bool
    prompt_format: PromptFormat
    tier: AdapterTier
    size_bytes: int
    last_used_at: datetime | None
    """None if no request has used it since the replica started."""
    requests: int
    pinned: bool
    proto: serving_pb2.AdapterInfo = _proto_field()


@dataclass(frozen=True, kw_only=True)
class ProfileSummary:
    sample_count: int
    """Answered prompts: the window's requests, or the reference's held-out prompts."""
    output_confidence: float | None
    prompt_surprise: float | None
    prompt_length_histogram: tuple[int, ...]
    response_length_histogram: tuple[int, ...]
    answer_form_share: float | None
    """Share of answers in the trained form; None where the training answers share none."""
    prompt_count: int
    """Prompts the prompt statistics count (a reference: every prompt of the job, up to 1000)."""


@dataclass(frozen=True, kw_only=True)
class DriftStatisticValue:
    statistic: str
    """A `loraplane.drift.DriftStatistic` value, kept as text so a newer replica's statistics still list."""
    value: float | None
    """None while the window holds fewer than min_samples requests, or a side lacks the data."""
    p_value: float | None
    """Share of windows of unchanged traffic, of this window's size, reading at least `value`."""
    threshold: float | None
    """A raw threshold the statistic is judged by instead of its p-value; None: calibrated."""
    over: bool
    samples: int


@dataclass(frozen=True, kw_only=True)
class AdapterStats:
    """One adapter version's drift on a replica: its training reference and live window, statistic by statistic."""

    adapter: str
    version: int
    reference: ProfileSummary
    live: ProfileSummary
    statistics: tuple[DriftStatisticValue, ...]
    min_samples: int
    feedback_count: int
    feedback_score: float | None
    feedback_score_floor: float
    requests_total: int
    false_alarm_rate: float
    p_value_threshold: float | None
    answer_form: str
    proto: serving_pb2.AdapterStats = _proto_field()


@dataclass(frozen=True, kw_only=True)
class VersionFigures:
    """One version's figures on a replica's traffic during a trial."""

    version: int
    requests: int
    errors: int
    values: Mapping[str, float]
    """By guardrail name; absent where nothing is measured yet."""
    samples: Mapping[str, int]


@dataclass(frozen=True, kw_only=True)
class GuardrailCheck:
    """One guardrail, the candidate against stable."""

    guardrail: str
    stable: float | None
    candidate: float | None
    margin: float
    judged: bool
    excess: float
    worse: bool


@dataclass(frozen=True, kw_only=True)
class Release:
    """An adapter's release: which version answers its name, which is on trial and how, and its records."""

    adapter: str
    state: ReleaseState | None
    """None: no release; the name answers with its newest version."""
    history: tuple[ReleaseRecord, ...]
    """Oldest first."""
    stale: bool
    """The replica could not read the store at its last refresh and routes by the state it had."""
    versions: tuple[VersionFigures, ...]
    """During a trial: stable's and the candidate's figures on the replica's traffic."""
    checks: tuple[GuardrailCheck, ...]
    verdict: str
    """What the figures decide now on the replica."""
    proto: serving_pb2.Release = _proto_field()


@dataclass(frozen=True, kw_only=True)
class Retrain:
    """What a retrain request did: its outcome, the job it started (or the unfinished one that kept a new one
    from starting) and why."""

    adapter: str
    outcome: RetrainOutcome
    job: Job | None
    message: str


@dataclass(frozen=True, kw_only=True)
class RetrainPolicy:
    """Whether alerts retrain an adapter, how often at most, and the canary share of its passing versions."""

    adapter: str
    enabled: bool
    cooldown_seconds: float
    canary_share: float
    training: TrainingParameters
    """How retrain jobs train (zero fields: the trainer's defaults)."""
    actor: str
    updated_at: datetime | None
