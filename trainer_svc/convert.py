"""Translation between the trainer's protobuf messages and its domain objects, in one place."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ValidationError

from loraplane import convert as client_convert
from loraplane import wire
from loraplane.errors import InvalidArgument
from loraplane.names import whole_adapter_name
from loraplane.proto import common_pb2, trainer_pb2
from loraplane.releases import TrialPlan
from loraplane.training import TASK_METRICS, JobState
from trainer_svc.jobs import Job, JobEvent
from trainer_svc.retrain import Retrain, RetrainPolicy, RetrainPolicyChange
from trainer_svc.spec import (
    CaptureSource,
    DatasetSource,
    DpoParameters,
    JobSpec,
    LoraParameters,
    TrainingParameters,
    WorkerResources,
)


def _nonzero(message: object, names: tuple[str, ...]) -> dict[str, object]:
    """Fields the caller set: proto3 zero means 'use the default'."""
    values = {name: getattr(message, name) for name in names}
    return {k: (list(v) if not isinstance(v, str | int | float) else v) for k, v in values.items() if v}


def _dataset(message: trainer_pb2.Dataset) -> DatasetSource | None:
    source = message.WhichOneof("source")
    if source is None:
        return None
    if source == "captures":
        return DatasetSource(captures=_capture_source(message.captures))
    return DatasetSource(**{source: getattr(message, source)})


def _capture_source(message: trainer_pb2.CaptureSource) -> CaptureSource:
    figures = {
        name: getattr(message, name)
        for name in ("good_score", "held_out_share", "parent_data_share")
        if message.HasField(name)
    }
    since = message.since.ToDatetime(tzinfo=UTC) if message.HasField("since") else None
    fields = {"adapter": message.adapter, "since": since, **figures}
    return _validated(CaptureSource, "spec.training_data.captures", fields)


M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], field: str, values: dict[str, object]) -> M:
    """`model` of `values`; InvalidArgument naming `field`.<the value's path> for the first bad one."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise InvalidArgument(f"{error['msg']} (got {error.get('input')!r})", field=f"{field}.{where}") from None


_SECTIONS = {
    "LoraParameters": "lora",
    "TrainingParameters": "training",
    "DpoParameters": "dpo",
    "WorkerResources": "resources",
}
"""The spec field each nested message's validation errors belong to."""


def spec_from_proto(message: trainer_pb2.JobSpec) -> JobSpec:
    """A validated JobSpec; InvalidArgument names the first bad field as spec.<path>."""
    method = wire.METHOD.parse(message.method, field="spec.method")
    prompt_format = wire.PROMPT_FORMAT.parse(message.prompt_format, field="spec.prompt_format")
    task_metrics = [
        wire.TASK_METRIC.parse(metric, field=f"spec.task_metrics[{index}]")
        for index, metric in enumerate(message.task_metrics)
    ]
    training_data = _dataset(message.training_data)
    if training_data is None:
        raise InvalidArgument("give training data as inline_jsonl or uri", field="spec.training_data")
    try:
        return JobSpec(
            base_model=message.base_model,
            adapter_name=message.adapter_name,
            training_data=training_data,
            validation_data=_dataset(message.validation_data),
            method=method,
            lora=LoraParameters(**_nonzero(message.lora, ("rank", "alpha", "dropout", "target_modules"))),
            training=TrainingParameters(**_training_fields(message.training)),
            dpo=DpoParameters(**_nonzero(message.dpo, ("beta",))),
            resources=_resources(message.resources),
            labels=dict(message.labels),
            prompt_format=prompt_format,
            test_data=_dataset(message.test_data),
            task_metrics=task_metrics or list(TASK_METRICS),
            refuse_leakage=message.refuse_leakage,
            release=_trial_plan(message),
            parent=message.parent or None,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        section = _SECTIONS.get(exc.title, "")
        field = ".".join(p for p in ("spec", section, where) if p)
        raise InvalidArgument(f"{error['msg']} (got {error.get('input')!r})", field=field) from None


def _trial_plan(message: trainer_pb2.JobSpec) -> TrialPlan | None:
    if not message.HasField("release"):
        return None
    release = message.release
    mode = wire.RELEASE_MODE.parse(release.mode, field="spec.release.mode")
    share = release.canary_share if release.HasField("canary_share") else TrialPlan().canary_share
    if not (math.isfinite(share) and 0.0 <= share <= 1.0):
        raise InvalidArgument(f"canary_share must be in [0, 1], got {share}", field="spec.release.canary_share")
    return TrialPlan(mode=mode, canary_share=share)


def _resources(message: trainer_pb2.WorkerResources) -> WorkerResources:
    """The resources the caller asked for; gpus and nodes have presence, so an explicit 0 (no GPU) counts."""
    fields = _nonzero(message, ("cpu", "memory"))
    for name in ("gpus", "nodes"):
        if message.HasField(name):
            fields[name] = getattr(message, name)
    return WorkerResources(**fields)  # type: ignore[arg-type]


def _training_fields(message: trainer_pb2.TrainingParameters) -> dict[str, object]:
    """The training fields the caller set; the early-stopping and replay fields have presence, so an explicit 0
    counts."""
    fields = _nonzero(message, tuple(TrainingParameters.model_fields))
    for name in ("early_stopping_patience", "early_stopping_min_delta", "replay_fraction"):
        if message.HasField(name):
            fields[name] = getattr(message, name)
    return fields


def spec_to_proto(spec: JobSpec) -> trainer_pb2.JobSpec:
    def dataset(source: DatasetSource | None) -> trainer_pb2.Dataset | None:
        if source is None:
            return None
        if source.captures is not None:
            return trainer_pb2.Dataset(captures=client_convert.capture_source(source.captures))
        if source.inline_jsonl is not None:
            return trainer_pb2.Dataset(inline_jsonl=source.inline_jsonl)
        if source.inline_sha256 is not None:  # accepted jobs keep a digest, not the text
            return trainer_pb2.Dataset(inline_jsonl=f"<inline JSONL, {source.inline_sha256}>")
        return trainer_pb2.Dataset(uri=source.uri or "")

    return trainer_pb2.JobSpec(
        base_model=spec.base_model,
        adapter_name=spec.adapter_name,
        training_data=dataset(spec.training_data),
        validation_data=dataset(spec.validation_data),
        test_data=dataset(spec.test_data),
        task_metrics=[wire.TASK_METRIC.encode(m) for m in spec.task_metrics],
        refuse_leakage=spec.refuse_leakage,
        method=wire.METHOD.encode(spec.method),
        lora=trainer_pb2.LoraParameters(**spec.lora.model_dump()),
        training=trainer_pb2.TrainingParameters(**spec.training.model_dump()),
        dpo=trainer_pb2.DpoParameters(**spec.dpo.model_dump()),
        resources=trainer_pb2.WorkerResources(**spec.resources.model_dump(exclude_none=True)),
        labels=spec.labels,
        prompt_format=wire.PROMPT_FORMAT.encode(spec.prompt_format),
        release=(
            trainer_pb2.ReleaseOnSuccess(
                mode=wire.RELEASE_MODE.encode(spec.release.mode), canary_share=spec.release.canary_share
            )
            if spec.release is not None
            else None
        ),
        parent=spec.parent or "",
    )


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def state_from_proto(value: int) -> JobState | None:
    """None for UNSPECIFIED ('any state' in filters)."""
    return wire.JOB_STATE.parse(value, field="state") if value else None


def job_to_proto(job: Job) -> trainer_pb2.Job:
    """The job as the API shows it; an inline dataset appears as its digest."""
    spec = spec_to_proto(job.spec)
    message = trainer_pb2.Job(
        id=job.id,
        request_id=job.request_id,
        owner=job.owner,
        spec=spec,
        state=wire.JOB_STATE.encode(job.state),
        progress=trainer_pb2.JobProgress(**job.progress.model_dump()),
        metrics=_metrics_to_proto(job),
        created_at=_timestamp(job.created_at),
        started_at=_timestamp(job.started_at),
        finished_at=_timestamp(job.finished_at),
    )
    if job.adapter is not None:
        message.adapter.CopyFrom(common_pb2.AdapterRef(**job.adapter.model_dump()))
    if job.error is not None:
        message.error.CopyFrom(trainer_pb2.JobError(**job.error.model_dump()))
    return message


def _metrics_to_proto(job: Job) -> trainer_pb2.JobMetrics:
    """Known metrics, cast to their proto field types (others stay in the manifest only), with the task
    scores and checkpoints."""
    fields = trainer_pb2.JobMetrics.DESCRIPTOR.fields_by_name
    casts = {FieldDescriptor.TYPE_DOUBLE: float, FieldDescriptor.TYPE_UINT32: int, FieldDescriptor.TYPE_BOOL: bool}
    scalars = {
        name: casts[fields[name].type](value)
        for name, value in {**job.dataset_metrics, **job.metrics}.items()
        if name in fields and fields[name].type in casts and not fields[name].is_repeated
    }
    return trainer_pb2.JobMetrics(
        **scalars,
        task_scores=[
            trainer_pb2.TaskScore(
                metric=wire.TASK_METRIC.encode(score.metric),
                base=score.base,
                adapter=score.adapter,
                examples=score.examples,
                held_out=wire.HELD_OUT_SET.encode_optional(score.held_out),
            )
            for score in job.task_scores
        ],
        checkpoints=[trainer_pb2.Checkpoint(**checkpoint.model_dump()) for checkpoint in job.checkpoints],
    )


def event_to_proto(event: JobEvent) -> trainer_pb2.JobEvent:
    return trainer_pb2.JobEvent(
        sequence=event.sequence, time=_timestamp(event.time), job=job_to_proto(event.job), message=event.message
    )


def retrain_request(request: trainer_pb2.RetrainRequest) -> tuple[str, datetime | None]:
    name = whole_adapter_name(request.adapter, "retraining")
    return name, request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None


def retrain_response(retrain: Retrain) -> trainer_pb2.RetrainResponse:
    return trainer_pb2.RetrainResponse(
        adapter=retrain.adapter,
        outcome=wire.RETRAIN_OUTCOME.encode(retrain.outcome),
        job=job_to_proto(retrain.job) if retrain.job is not None else None,
        message=retrain.message,
    )


def retrain_policy(name: str, policy: RetrainPolicy) -> trainer_pb2.RetrainPolicy:
    message = trainer_pb2.RetrainPolicy(
        adapter=name,
        enabled=policy.enabled,
        cooldown_seconds=policy.cooldown_seconds,
        canary_share=policy.canary_share,
        actor=policy.actor,
        training=trainer_pb2.TrainingParameters(**policy.training.model_dump()),
    )
    if policy.at is not None:
        message.updated_at.FromDatetime(policy.at)
    return message


def retrain_policy_change(request: trainer_pb2.UpdateRetrainPolicyRequest) -> tuple[str, RetrainPolicyChange]:
    name = whole_adapter_name(request.adapter, "retraining policy")
    given = [field for field in ("cooldown_seconds", "canary_share") if request.HasField(field)]
    figures: dict[str, object] = {field: getattr(request, field) for field in given}
    if request.HasField("training"):
        figures["training"] = _validated(TrainingParameters, "training", _training_fields(request.training))
    return name, RetrainPolicyChange.model_validate({"enabled": request.enabled, **figures})
