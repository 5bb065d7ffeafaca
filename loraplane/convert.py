"""Translation between the API's protobuf messages and the client's typed objects (`loraplane.types`),
in one place.

Most fields are copied by name (`_build`); what needs more than a copy is written out per type: the
domain enums (through `loraplane.wire`), times, nested messages. A value the client has no meaning for
(an enum value from a newer server) raises ValueError rather than passing through untyped.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast, get_args

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from loraplane import types, wire
from loraplane.captures import Capture, CapturedFeedback, CapturedRequest, CapturedTurn, CapturePolicy
from loraplane.proto import common_pb2, serving_pb2, trainer_pb2
from loraplane.releases import ReleaseRecord, ReleaseState
from loraplane.training import Method, PromptFormat

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")
M = TypeVar("M", bound=Message)


def _build(cls: type[T], message: Message, **converted: Any) -> T:
    """`cls` from the same-named fields of `message`: a scalar with presence is None when unset, a repeated
    field a tuple; `converted` gives every field that needs more than a copy."""
    descriptors = message.DESCRIPTOR.fields_by_name
    values: dict[str, Any] = {}
    for name in (f.name for f in dataclasses.fields(cls) if f.name not in converted and f.name != "proto"):
        descriptor = descriptors[name]
        if descriptor.message_type is not None:
            raise TypeError(f"{cls.__name__}.{name} is a message: convert it explicitly")
        if descriptor.is_repeated:
            values[name] = tuple(getattr(message, name))
        elif descriptor.has_presence and not message.HasField(name):
            values[name] = None
        else:
            values[name] = getattr(message, name)
    return cls(**values, **converted)


def _message(cls: type[M], value: DataclassInstance) -> M:
    """The message of the same-named fields; None leaves a field unset."""
    fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return cls(**{name: field for name, field in fields.items() if field is not None})


def _time(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _optional_time(message: Message, name: str) -> datetime | None:
    return _time(getattr(message, name)) if message.HasField(name) else None


def adapter_ref(message: common_pb2.AdapterRef) -> types.AdapterRef:
    return _build(types.AdapterRef, message)


def _optional_adapter_ref(message: Message) -> types.AdapterRef | None:
    return adapter_ref(message.adapter) if message.HasField("adapter") else None  # type: ignore[attr-defined]


# ---- training ----


def lora_parameters(value: types.LoraParameters) -> trainer_pb2.LoraParameters:
    return _message(trainer_pb2.LoraParameters, value)


def training_parameters(value: types.TrainingParameters) -> trainer_pb2.TrainingParameters:
    return _message(trainer_pb2.TrainingParameters, value)


def dpo_parameters(value: types.DpoParameters) -> trainer_pb2.DpoParameters:
    return _message(trainer_pb2.DpoParameters, value)


def worker_resources(value: types.WorkerResources) -> trainer_pb2.WorkerResources:
    return _message(trainer_pb2.WorkerResources, value)


def _dataset(message: trainer_pb2.JobSpec, name: Literal["validation_data", "test_data"]) -> types.Dataset | None:
    return dataset(getattr(message, name)) if message.HasField(name) else None


def dataset(message: trainer_pb2.Dataset) -> types.Dataset:
    captures = None
    if message.HasField("captures"):
        since = _optional_time(message.captures, "since")
        captures = _build(types.CaptureSource, message.captures, since=since)
    return _build(types.Dataset, message, captures=captures)


class CaptureSelection(Protocol):
    """What names captured requests as training data: the client's CaptureSource and the trainer's alike."""

    @property
    def adapter(self) -> str: ...
    @property
    def since(self) -> datetime | None: ...
    @property
    def good_score(self) -> float | None: ...
    @property
    def held_out_share(self) -> float | None: ...
    @property
    def parent_data_share(self) -> float | None: ...


def capture_source(value: CaptureSelection) -> trainer_pb2.CaptureSource:
    message = trainer_pb2.CaptureSource(
        adapter=value.adapter,
        good_score=value.good_score,
        held_out_share=value.held_out_share,
        parent_data_share=value.parent_data_share,
    )
    if value.since is not None:
        message.since.FromDatetime(value.since)
    return message


def job_spec(message: trainer_pb2.JobSpec) -> types.JobSpec:
    return _build(
        types.JobSpec,
        message,
        training_data=dataset(message.training_data),
        validation_data=_dataset(message, "validation_data"),
        test_data=_dataset(message, "test_data"),
        method=wire.METHOD.decode(message.method),
        prompt_format=wire.PROMPT_FORMAT.decode(message.prompt_format),
        lora=_build(types.LoraParameters, message.lora),
        training=_build(types.TrainingParameters, message.training),
        dpo=_build(types.DpoParameters, message.dpo),
        resources=_build(types.WorkerResources, message.resources),
        labels=dict(message.labels),
        task_metrics=tuple(wire.TASK_METRIC.decode(metric) for metric in message.task_metrics),
        release=(
            _build(types.ReleaseOnSuccess, message.release, mode=wire.RELEASE_MODE.decode(message.release.mode))
            if message.HasField("release")
            else None
        ),
    )


def release_on_success(release: types.ReleaseOnSuccess) -> trainer_pb2.ReleaseOnSuccess:
    return trainer_pb2.ReleaseOnSuccess(mode=wire.RELEASE_MODE.encode(release.mode), canary_share=release.canary_share)


def _metrics(message: trainer_pb2.JobMetrics) -> types.JobMetrics:
    return _build(
        types.JobMetrics,
        message,
        task_scores=tuple(
            _build(
                types.TaskScore,
                score,
                metric=wire.TASK_METRIC.decode(score.metric),
                held_out=wire.HELD_OUT_SET.decode_optional(score.held_out),
            )
            for score in message.task_scores
        ),
        checkpoints=tuple(_build(types.Checkpoint, checkpoint) for checkpoint in message.checkpoints),
    )


def job(message: trainer_pb2.Job) -> types.Job:
    return _build(
        types.Job,
        message,
        spec=job_spec(message.spec),
        state=wire.JOB_STATE.decode(message.state),
        progress=_build(types.JobProgress, message.progress),
        metrics=_metrics(message.metrics),
        adapter=_optional_adapter_ref(message),
        error=_build(types.JobError, message.error) if message.HasField("error") else None,
        created_at=_time(message.created_at),
        started_at=_optional_time(message, "started_at"),
        finished_at=_optional_time(message, "finished_at"),
        proto=message,
    )


def job_event(message: trainer_pb2.JobEvent) -> types.JobEvent:
    return _build(types.JobEvent, message, time=_time(message.time), job=job(message.job), proto=message)


# ---- serving ----


def sampling_parameters(value: types.SamplingParameters) -> serving_pb2.SamplingParameters:
    params = serving_pb2.SamplingParameters(
        max_tokens=value.max_tokens,
        temperature=value.temperature,
        top_p=value.top_p,
        top_k=value.top_k,
        stop=value.stop,
        seed=value.seed,
        logprobs=value.logprobs,
        min_tokens=value.min_tokens,
        ignore_eos=value.ignore_eos,
    )
    if value.json_schema is not None:
        params.json_schema = json.dumps(value.json_schema)
    if value.json_object:
        params.json_object = True
    if value.regex is not None:
        params.regex = value.regex
    if value.choices is not None:
        params.choice.CopyFrom(serving_pb2.Choices(choices=value.choices))  # set even when empty: refused, not ignored
    return params


def _logprobs(
    message: serving_pb2.GenerateResponse | serving_pb2.GenerateStreamResponse,
) -> tuple[types.TokenLogprob, ...]:
    return tuple(_build(types.TokenLogprob, entry) for entry in message.logprobs)


def completion(message: serving_pb2.GenerateResponse) -> types.Completion:
    return _build(
        types.Completion,
        message,
        finish_reason=wire.FINISH_REASON.decode_optional(message.finish_reason),
        usage=_build(types.Usage, message.usage),
        logprobs=_logprobs(message),
        adapter=_optional_adapter_ref(message),
        proto=message,
    )


def completion_chunk(message: serving_pb2.GenerateStreamResponse) -> types.CompletionChunk:
    return _build(
        types.CompletionChunk,
        message,
        finish_reason=wire.FINISH_REASON.decode_optional(message.finish_reason),
        usage=_build(types.Usage, message.usage) if message.HasField("usage") else None,
        logprobs=_logprobs(message),
        adapter=_optional_adapter_ref(message),
        proto=message,
    )


def model_info(message: serving_pb2.ModelInfoResponse) -> types.ModelInfo:
    return _build(types.ModelInfo, message, proto=message)


def _prompt_format(text: str) -> PromptFormat:
    if text not in get_args(PromptFormat):
        raise ValueError(f"prompt format {text!r} has no meaning here")
    return cast(PromptFormat, text)


def adapter(message: serving_pb2.AdapterInfo) -> types.Adapter:
    return _build(
        types.Adapter,
        message,
        ref=adapter_ref(message.ref),
        method=Method(message.method),
        created_at=_time(message.created_at),
        prompt_format=_prompt_format(message.prompt_format),
        tier=wire.ADAPTER_TIER.decode(message.tier),
        last_used_at=_optional_time(message, "last_used_at"),
        proto=message,
    )


def adapter_stats(message: serving_pb2.AdapterStats) -> types.AdapterStats:
    return _build(
        types.AdapterStats,
        message,
        reference=_build(types.ProfileSummary, message.reference),
        live=_build(types.ProfileSummary, message.live),
        statistics=tuple(_build(types.DriftStatisticValue, entry) for entry in message.statistics),
        proto=message,
    )


def release_state(message: serving_pb2.ReleaseState) -> ReleaseState:
    return ReleaseState(
        stable=message.stable_version,
        candidate=message.candidate_version or None,
        mode=wire.RELEASE_MODE.decode_optional(message.mode),
        canary_share=message.canary_share,
        paused=message.paused,
        previous_stable=message.previous_stable_version or None,
        trial=message.trial or None,
    )


def release_record(message: serving_pb2.ReleaseRecord, adapter: str) -> ReleaseRecord:
    return ReleaseRecord(
        adapter=adapter,
        sequence=message.sequence,
        action=wire.RELEASE_ACTION.decode(message.action),
        state=release_state(message.state),
        actor=message.actor,
        reason=message.reason,
        figures=dict(message.figures),
        at=_time(message.time),
    )


def release(message: serving_pb2.Release) -> types.Release:
    return types.Release(
        adapter=message.adapter,
        state=release_state(message.state) if message.HasField("state") else None,
        history=tuple(release_record(record, message.adapter) for record in message.history),
        stale=message.stale,
        versions=tuple(
            _build(types.VersionFigures, figures, values=dict(figures.values), samples=dict(figures.samples))
            for figures in message.versions
        ),
        checks=tuple(_build(types.GuardrailCheck, check) for check in message.checks),
        verdict=message.verdict,
        proto=message,
    )


def capture_policy(message: serving_pb2.CapturePolicy) -> CapturePolicy:
    return CapturePolicy(
        enabled=message.enabled,
        sample_share=message.sample_share,
        retention_days=message.retention_days,
        retention_bytes=message.retention_bytes,
        actor=message.actor,
        at=_optional_time(message, "updated_at"),
    )


def capture(message: serving_pb2.CapturedRequest, adapter: str) -> Capture:
    """A captured request of `adapter` with the feedback on it."""
    at = _time(message.time)
    prompt: str | list[CapturedTurn] = message.prompt
    if message.WhichOneof("input") == "messages":
        prompt = [CapturedTurn(role=turn.role, content=turn.content) for turn in message.messages.messages]
    request = CapturedRequest(
        request_id=message.request_id,
        adapter=adapter,
        version=message.version,
        at=at,
        prompt=prompt,
        answer=message.answer,
        finish_reason=message.finish_reason,
    )
    feedback = None
    if message.HasField("feedback_score"):
        correction = message.correction if message.HasField("correction") else None
        feedback = CapturedFeedback(
            request_id=message.request_id,
            adapter=adapter,
            version=message.version,
            at=at,
            score=message.feedback_score,
            correction=correction,
        )
    return Capture(request=request, feedback=feedback)


def retrain(message: trainer_pb2.RetrainResponse) -> types.Retrain:
    return types.Retrain(
        adapter=message.adapter,
        outcome=wire.RETRAIN_OUTCOME.decode(message.outcome),
        job=job(message.job) if message.HasField("job") else None,
        message=message.message,
    )


def retrain_policy(message: trainer_pb2.RetrainPolicy) -> types.RetrainPolicy:
    training = _build(types.TrainingParameters, message.training)
    return _build(types.RetrainPolicy, message, training=training, updated_at=_optional_time(message, "updated_at"))
