"""The wire form of the domain's enums: each domain value and its protobuf enum value, written out once.

The trainer's and the replica's converters, the client and the CLI all translate through these maps,
so no enum name is ever built by string formatting, and tests/unit/test_wire.py fails until a value
added on either side (the domain vocabulary or the proto) has its counterpart here.

The proto's 0 (UNSPECIFIED) is not in the maps: where the proto gives it a meaning (a job of method 0
trains LoRA) that meaning is `unspecified`; elsewhere it decodes to None or is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar, cast

from google.protobuf.descriptor import EnumDescriptor

from loraplane.errors import InvalidArgument
from loraplane.proto import common_pb2, serving_pb2, trainer_pb2
from loraplane.releases import ReleaseAction, ReleaseMode
from loraplane.serving import AdapterTier, FinishReason
from loraplane.training import HeldOutSet, JobState, Method, PromptFormatChoice, RetrainOutcome, TaskMetric

D = TypeVar("D", bound=str)
W = TypeVar("W", bound=int)


class WireEnum(Generic[D, W]):
    """One domain enum D (a StrEnum or a Literal of strings) and the proto enum that carries it (W, its
    generated ValueType)."""

    def __init__(self, descriptor: EnumDescriptor, to_wire: Mapping[D, W], *, unspecified: D | None = None) -> None:
        self.descriptor = descriptor
        self.to_wire: dict[D, W] = dict(to_wire)
        self.from_wire: dict[int, D] = {value: domain for domain, value in self.to_wire.items()}
        self.unspecified = unspecified
        if len(self.from_wire) != len(self.to_wire) or 0 in self.from_wire:
            raise ValueError(f"{self.name}: each domain value needs its own non-zero wire value")

    @property
    def name(self) -> str:
        return str(self.descriptor.name)

    def encode(self, value: D) -> W:
        return self.to_wire[value]

    def encode_optional(self, value: D | None) -> W:
        """None travels as 0 (UNSPECIFIED): 'any state' in a filter, 'not finished yet' in a stream."""
        return cast(W, 0) if value is None else self.to_wire[value]

    def decode(self, value: int) -> D:
        """The domain value; ValueError for a value this side gives no meaning (a newer proto's, or 0
        where the proto leaves it unspecified)."""
        if value == 0 and self.unspecified is not None:
            return self.unspecified
        if value not in self.from_wire:
            raise ValueError(f"{self.name} {value} has no meaning here")
        return self.from_wire[value]

    def decode_optional(self, value: int) -> D | None:
        """None for 0 (UNSPECIFIED), else `decode`."""
        return None if value == 0 else self.decode(value)

    def parse(self, value: int, *, field: str) -> D:
        """`decode` for a server reading a request: an unknown value is the caller's InvalidArgument."""
        try:
            return self.decode(value)
        except ValueError:
            raise InvalidArgument(f"unknown {self.name} {value}", field=field) from None


METHOD: WireEnum[Method, trainer_pb2.Method.ValueType] = WireEnum(
    trainer_pb2.Method.DESCRIPTOR,
    {
        Method.LORA: trainer_pb2.METHOD_LORA,
        Method.QLORA: trainer_pb2.METHOD_QLORA,
        Method.DORA: trainer_pb2.METHOD_DORA,
        Method.DPO: trainer_pb2.METHOD_DPO,
    },
    unspecified=Method.LORA,
)
JOB_STATE: WireEnum[JobState, trainer_pb2.JobState.ValueType] = WireEnum(
    trainer_pb2.JobState.DESCRIPTOR,
    {
        JobState.VALIDATING: trainer_pb2.JOB_STATE_VALIDATING,
        JobState.QUEUED: trainer_pb2.JOB_STATE_QUEUED,
        JobState.RUNNING: trainer_pb2.JOB_STATE_RUNNING,
        JobState.SUCCEEDED: trainer_pb2.JOB_STATE_SUCCEEDED,
        JobState.FAILED: trainer_pb2.JOB_STATE_FAILED,
        JobState.CANCELLED: trainer_pb2.JOB_STATE_CANCELLED,
    },
)
PROMPT_FORMAT: WireEnum[PromptFormatChoice, trainer_pb2.PromptFormat.ValueType] = WireEnum(
    trainer_pb2.PromptFormat.DESCRIPTOR,
    {
        "auto": trainer_pb2.PROMPT_FORMAT_AUTO,
        "chat": trainer_pb2.PROMPT_FORMAT_CHAT,
        "raw": trainer_pb2.PROMPT_FORMAT_RAW,
    },
    unspecified="auto",
)
TASK_METRIC: WireEnum[TaskMetric, trainer_pb2.TaskMetric.ValueType] = WireEnum(
    trainer_pb2.TaskMetric.DESCRIPTOR,
    {
        "exact_match": trainer_pb2.TASK_METRIC_EXACT_MATCH,
        "rouge_l": trainer_pb2.TASK_METRIC_ROUGE_L,
        "bleu": trainer_pb2.TASK_METRIC_BLEU,
        "chrf": trainer_pb2.TASK_METRIC_CHRF,
        "normalized_exact_match": trainer_pb2.TASK_METRIC_NORMALIZED_EXACT_MATCH,
        "json_exact_match": trainer_pb2.TASK_METRIC_JSON_EXACT_MATCH,
        "field_accuracy": trainer_pb2.TASK_METRIC_FIELD_ACCURACY,
    },
)
HELD_OUT_SET: WireEnum[HeldOutSet, trainer_pb2.HeldOutSet.ValueType] = WireEnum(
    trainer_pb2.HeldOutSet.DESCRIPTOR,
    {
        HeldOutSet.TEST: trainer_pb2.HELD_OUT_SET_TEST,
        HeldOutSet.VALIDATION: trainer_pb2.HELD_OUT_SET_VALIDATION,
        HeldOutSet.UNSEEN_GROUPS: trainer_pb2.HELD_OUT_SET_UNSEEN_GROUPS,
        HeldOutSet.IN_DISTRIBUTION: trainer_pb2.HELD_OUT_SET_IN_DISTRIBUTION,
    },
)
ADAPTER_TIER: WireEnum[AdapterTier, serving_pb2.AdapterTier.ValueType] = WireEnum(
    serving_pb2.AdapterTier.DESCRIPTOR,
    {
        "store": serving_pb2.ADAPTER_TIER_STORE,
        "disk": serving_pb2.ADAPTER_TIER_DISK,
        "cpu": serving_pb2.ADAPTER_TIER_CPU,
        "engine": serving_pb2.ADAPTER_TIER_ENGINE,
    },
)
FINISH_REASON: WireEnum[FinishReason, serving_pb2.FinishReason.ValueType] = WireEnum(
    serving_pb2.FinishReason.DESCRIPTOR,
    {"stop": serving_pb2.FINISH_REASON_STOP, "length": serving_pb2.FINISH_REASON_LENGTH},
)
RELEASE_MODE: WireEnum[ReleaseMode, common_pb2.ReleaseMode.ValueType] = WireEnum(
    common_pb2.ReleaseMode.DESCRIPTOR,
    {ReleaseMode.CANARY: common_pb2.RELEASE_MODE_CANARY, ReleaseMode.SHADOW: common_pb2.RELEASE_MODE_SHADOW},
    unspecified=ReleaseMode.CANARY,
)
RELEASE_ACTION: WireEnum[ReleaseAction, serving_pb2.ReleaseAction.ValueType] = WireEnum(
    serving_pb2.ReleaseAction.DESCRIPTOR,
    {
        ReleaseAction.START: serving_pb2.RELEASE_ACTION_START,
        ReleaseAction.PROMOTE: serving_pb2.RELEASE_ACTION_PROMOTE,
        ReleaseAction.ROLLBACK: serving_pb2.RELEASE_ACTION_ROLLBACK,
        ReleaseAction.PAUSE: serving_pb2.RELEASE_ACTION_PAUSE,
        ReleaseAction.RESUME: serving_pb2.RELEASE_ACTION_RESUME,
    },
)
RETRAIN_OUTCOME: WireEnum[RetrainOutcome, trainer_pb2.RetrainOutcome.ValueType] = WireEnum(
    trainer_pb2.RetrainOutcome.DESCRIPTOR,
    {
        RetrainOutcome.STARTED: trainer_pb2.RETRAIN_OUTCOME_STARTED,
        RetrainOutcome.IN_FLIGHT: trainer_pb2.RETRAIN_OUTCOME_IN_FLIGHT,
        RetrainOutcome.COOLING_DOWN: trainer_pb2.RETRAIN_OUTCOME_COOLING_DOWN,
        RetrainOutcome.POLICY_OFF: trainer_pb2.RETRAIN_OUTCOME_POLICY_OFF,
        RetrainOutcome.REFUSED: trainer_pb2.RETRAIN_OUTCOME_REFUSED,
    },
)
