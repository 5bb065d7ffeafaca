"""The client's typed objects carry every field of the messages they come from, and its typed arguments
every field of the messages they become: messages with every field set go through the converter and
are compared with the typed objects field by field, walking the proto's own descriptors."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from datetime import UTC
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp

from loraplane import convert, wire
from loraplane.proto import serving_pb2, trainer_pb2
from loraplane.training import JobState
from loraplane.types import DpoParameters, LoraParameters, SamplingParameters, TrainingParameters, WorkerResources

WIRE_ENUMS = {enum.descriptor.full_name: enum for enum in vars(wire).values() if isinstance(enum, wire.WireEnum)}
DOMAIN_TEXT = {"AdapterInfo.method": "dora", "AdapterInfo.prompt_format": "chat"}
"""String fields that carry a domain value, where made-up text would not convert."""


def _filled(descriptor: Descriptor, numbers: Iterator[int]) -> Any:
    """A message with every field set to a value of its own, none of them zero (of a oneof, its first member)."""
    message = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.fields[0] is not field:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(message, field.name)[f"key{next(numbers)}"] = f"value{next(numbers)}"
        elif field.is_repeated:
            getattr(message, field.name).extend(_value(field, numbers) for _ in range(2))
        elif field.message_type is not None:
            getattr(message, field.name).CopyFrom(_value(field, numbers))
        else:
            setattr(message, field.name, _value(field, numbers))
    return message


def _value(field: FieldDescriptor, numbers: Iterator[int]) -> Any:
    number = next(numbers)
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return Timestamp(seconds=1_700_000_000 + number)
        return _filled(field.message_type, numbers)
    if field.enum_type is not None:
        values = [value.number for value in field.enum_type.values if value.number]
        return values[number % len(values)]
    if field.type == FieldDescriptor.TYPE_STRING:
        return DOMAIN_TEXT.get(f"{field.containing_type.name}.{field.name}", f"text{number}")
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return number + 0.5
    return number


def _assert_carries(typed: Any, message: Message, path: str) -> None:
    """`typed` has a field per field of `message` (and no other but `proto`), each holding its value."""
    names = {field.name for field in dataclasses.fields(typed)} - {"proto"}
    assert names == set(message.DESCRIPTOR.fields_by_name), path
    for field in message.DESCRIPTOR.fields:
        value, sent = getattr(typed, field.name), getattr(message, field.name)
        where = f"{path}.{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            assert dict(value) == dict(sent), where
        elif field.is_repeated:
            assert isinstance(value, tuple) and len(value) == len(sent) > 0, where
            for index, (one, one_sent) in enumerate(zip(value, sent, strict=True)):
                _assert_same(one, one_sent, field, f"{where}[{index}]")
        elif field.has_presence and not message.HasField(field.name):
            assert value is None, where
        else:
            _assert_same(value, sent, field, where)


def _assert_same(value: Any, sent: Any, field: FieldDescriptor, where: str) -> None:
    if field.message_type is not None and field.message_type.full_name == "google.protobuf.Timestamp":
        assert value == sent.ToDatetime(tzinfo=UTC) and value.tzinfo is UTC, where
    elif field.message_type is not None:
        _assert_carries(value, sent, where)
    elif field.enum_type is not None:
        assert WIRE_ENUMS[field.enum_type.full_name].encode(value) == sent, where
    else:
        assert value == sent and sent, where


RESOURCES: list[tuple[Descriptor, Callable[[Any], Any]]] = [
    (trainer_pb2.Job.DESCRIPTOR, convert.job),
    (trainer_pb2.JobEvent.DESCRIPTOR, convert.job_event),
    (serving_pb2.GenerateResponse.DESCRIPTOR, convert.completion),
    (serving_pb2.GenerateStreamResponse.DESCRIPTOR, convert.completion_chunk),
    (serving_pb2.ModelInfoResponse.DESCRIPTOR, convert.model_info),
    (serving_pb2.AdapterInfo.DESCRIPTOR, convert.adapter),
    (serving_pb2.AdapterStats.DESCRIPTOR, convert.adapter_stats),
]


@pytest.mark.parametrize(("descriptor", "to_typed"), RESOURCES, ids=lambda item: getattr(item, "name", ""))
def test_every_field_of_a_response_reaches_its_typed_object(
    descriptor: Descriptor, to_typed: Callable[[Any], Any]
) -> None:
    message = _filled(descriptor, itertools.count(1))
    typed = to_typed(message)
    _assert_carries(typed, message, descriptor.name)
    assert typed.proto is message, "the protobuf stays at hand"


def test_fields_the_server_left_unset_are_none() -> None:
    job = convert.job(trainer_pb2.Job(id="j", state=trainer_pb2.JOB_STATE_QUEUED))
    assert (job.state, job.adapter, job.error, job.started_at, job.finished_at) == (
        JobState.QUEUED,
        None,
        None,
        None,
        None,
    )
    assert (job.spec.validation_data, job.spec.test_data, job.metrics.preference_accuracy_adapter) == (None, None, None)
    middle = convert.completion_chunk(serving_pb2.GenerateStreamResponse(delta="lo"))
    assert (middle.delta, middle.finish_reason, middle.usage, middle.adapter) == ("lo", None, None, None)


def test_a_value_from_a_newer_server_is_refused_not_passed_on_untyped() -> None:
    with pytest.raises(ValueError, match="JobState 99"):
        convert.job(trainer_pb2.Job(state=99))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompt format 'fancy'"):
        convert.adapter(serving_pb2.AdapterInfo(method="lora", prompt_format="fancy", tier=1))  # type: ignore[arg-type]


SPEC_FIELDS = {
    "LoraParameters": "lora",
    "TrainingParameters": "training",
    "DpoParameters": "dpo",
    "WorkerResources": "resources",
}
"""The JobSpec field that carries each message of job parameters."""


@pytest.mark.parametrize(
    ("descriptor", "to_message"),
    [
        (trainer_pb2.LoraParameters.DESCRIPTOR, convert.lora_parameters),
        (trainer_pb2.TrainingParameters.DESCRIPTOR, convert.training_parameters),
        (trainer_pb2.DpoParameters.DESCRIPTOR, convert.dpo_parameters),
        (trainer_pb2.WorkerResources.DESCRIPTOR, convert.worker_resources),
    ],
    ids=lambda item: getattr(item, "name", ""),
)
def test_job_parameters_go_to_the_wire_and_back_field_for_field(
    descriptor: Descriptor, to_message: Callable[[Any], Message]
) -> None:
    sent = _filled(descriptor, itertools.count(1))
    spec_field = SPEC_FIELDS[descriptor.name]
    typed = getattr(convert.job_spec(trainer_pb2.JobSpec(**{spec_field: sent})), spec_field)
    _assert_carries(typed, sent, descriptor.name)
    assert to_message(typed) == sent


def test_an_explicit_zero_travels_where_zero_means_something_and_none_is_left_unset() -> None:
    training = convert.training_parameters(TrainingParameters(early_stopping_patience=0, replay_fraction=0.0))
    assert training.HasField("early_stopping_patience") and training.HasField("replay_fraction")
    assert not training.HasField("early_stopping_min_delta")
    assert convert.worker_resources(WorkerResources(gpus=0)).HasField("gpus")
    assert not convert.worker_resources(WorkerResources()).HasField("gpus")
    assert convert.lora_parameters(LoraParameters(target_modules=("q_proj",))).target_modules == ["q_proj"]
    assert convert.dpo_parameters(DpoParameters(beta=0.25)).beta == 0.25


def test_sampling_parameters_become_the_request_message() -> None:
    params = SamplingParameters(
        max_tokens=5,
        temperature=0.0,
        top_p=0.5,
        top_k=3,
        stop=("\n",),
        seed=7,
        logprobs=True,
        min_tokens=2,
        ignore_eos=True,
        json_schema={"type": "object"},
    )
    message = convert.sampling_parameters(params)
    assert message.HasField("temperature") and message.temperature == 0.0, "greedy is sent, not left to the default"
    assert (message.max_tokens, message.top_p, message.top_k, list(message.stop), message.seed) == (
        5,
        0.5,
        3,
        ["\n"],
        7,
    )
    assert (message.logprobs, message.min_tokens, message.ignore_eos) == (True, 2, True)
    assert message.json_schema == '{"type": "object"}'
    assert not convert.sampling_parameters(SamplingParameters()).HasField("temperature")
    assert convert.sampling_parameters(SamplingParameters(regex="[a-c]")).regex == "[a-c]"
    assert convert.sampling_parameters(SamplingParameters(json_object=True)).json_object
    empty = convert.sampling_parameters(SamplingParameters(choices=()))
    assert empty.WhichOneof("structured_output") == "choice", "an empty choice is sent, for the server to refuse"
    with pytest.raises(ValueError, match="at most one of"):
        SamplingParameters(regex="a", choices=("a",))
