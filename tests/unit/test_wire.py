"""Every domain enum maps to its proto enum and back, value for value, and every proto enum has a map."""

from typing import Any, get_args

import pytest

from loraplane import wire
from loraplane.errors import InvalidArgument
from loraplane.proto import common_pb2, serving_pb2, trainer_pb2
from loraplane.releases import ReleaseAction, ReleaseMode
from loraplane.serving import AdapterTier, FinishReason
from loraplane.training import HeldOutSet, JobState, Method, PromptFormatChoice, RetrainOutcome, TaskMetric


def _values(literal: Any) -> set[str]:
    """The strings a Literal (or a union of Literals) admits."""
    return {value for arg in get_args(literal) for value in (_values(arg) if get_args(arg) else {arg})}


DOMAINS: dict[str, tuple[wire.WireEnum[Any, Any], set[str]]] = {
    "Method": (wire.METHOD, set(Method)),
    "JobState": (wire.JOB_STATE, set(JobState)),
    "PromptFormat": (wire.PROMPT_FORMAT, _values(PromptFormatChoice)),
    "TaskMetric": (wire.TASK_METRIC, _values(TaskMetric)),
    "HeldOutSet": (wire.HELD_OUT_SET, set(HeldOutSet)),
    "AdapterTier": (wire.ADAPTER_TIER, _values(AdapterTier)),
    "FinishReason": (wire.FINISH_REASON, _values(FinishReason)),
    "ReleaseMode": (wire.RELEASE_MODE, set(ReleaseMode)),
    "ReleaseAction": (wire.RELEASE_ACTION, set(ReleaseAction)),
    "RetrainOutcome": (wire.RETRAIN_OUTCOME, set(RetrainOutcome)),
}
WIRE_ONLY = {"FeedbackLabel"}
"""Proto enums with no domain enum: a feedback label is a score on the wire (serving_svc/convert.py)."""

WIRE_ENUMS = [value for value in vars(wire).values() if isinstance(value, wire.WireEnum)]


def test_every_proto_enum_has_a_map_and_every_map_is_listed_here() -> None:
    proto_enums = {
        name for module in (common_pb2, trainer_pb2, serving_pb2) for name in module.DESCRIPTOR.enum_types_by_name
    } - WIRE_ONLY
    assert proto_enums == set(DOMAINS)
    assert sorted(enum.name for enum in WIRE_ENUMS) == sorted(DOMAINS)


@pytest.mark.parametrize("proto_name", sorted(DOMAINS))
def test_the_map_covers_both_sides_and_round_trips(proto_name: str) -> None:
    enum, domain = DOMAINS[proto_name]
    assert enum.name == proto_name
    assert set(enum.to_wire) == domain, "every domain value has a wire value"
    wire_values = {value.number for value in enum.descriptor.values} - {0}
    assert set(enum.from_wire) == wire_values, "every non-zero wire value has a domain value"
    for value in domain:
        assert enum.decode(enum.encode(value)) == value
    for number in wire_values:
        assert enum.encode(enum.decode(number)) == number
        assert enum.descriptor.values_by_number[number].name.endswith(enum.decode(number).upper())


def test_zero_is_the_meaning_the_proto_gives_it_or_none() -> None:
    assert wire.METHOD.decode(trainer_pb2.METHOD_UNSPECIFIED) is Method.LORA
    assert wire.PROMPT_FORMAT.decode(trainer_pb2.PROMPT_FORMAT_UNSPECIFIED) == "auto"
    assert wire.JOB_STATE.decode_optional(trainer_pb2.JOB_STATE_UNSPECIFIED) is None
    assert wire.FINISH_REASON.decode_optional(serving_pb2.FINISH_REASON_UNSPECIFIED) is None
    assert wire.RELEASE_MODE.decode(common_pb2.RELEASE_MODE_UNSPECIFIED) is ReleaseMode.CANARY
    assert wire.FINISH_REASON.encode_optional(None) == serving_pb2.FINISH_REASON_UNSPECIFIED
    assert wire.FINISH_REASON.encode_optional("length") == serving_pb2.FINISH_REASON_LENGTH
    with pytest.raises(ValueError, match="TaskMetric 0"):
        wire.TASK_METRIC.decode(trainer_pb2.TASK_METRIC_UNSPECIFIED)


def test_a_value_from_a_newer_proto_is_refused_and_a_request_names_its_field() -> None:
    with pytest.raises(ValueError, match="JobState 99"):
        wire.JOB_STATE.decode(99)
    with pytest.raises(InvalidArgument) as info:
        wire.METHOD.parse(99, field="spec.method")
    assert info.value.field == "spec.method"


def test_two_domain_values_cannot_share_a_wire_value() -> None:
    with pytest.raises(ValueError, match="its own non-zero wire value"):
        wire.WireEnum(serving_pb2.FinishReason.DESCRIPTOR, {"stop": 1, "length": 1})
