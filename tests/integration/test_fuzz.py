"""Fuzzing both live services with hypothesis: random and adversarial requests over gRPC (raw stubs, so
nothing in our client filters them) and over HTTP. Whatever arrives, the answer is a status a caller
can act on (never INTERNAL, UNKNOWN or a 5xx), and the servers are healthy afterwards.

Each test prints how many cases it sent; `FUZZ_EXAMPLES` scales them (the suite's default: 1,200
generation requests, 800 HTTP bodies and 800 job specs)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraplane.artifact import ArtifactRepository
from loraplane.auth import Role, add_token
from loraplane.fingerprint import base_model_fingerprint
from loraplane.proto import common_pb2, serving_pb2, serving_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from loraplane.storage import FileStore
from serving_svc.server import ServingServer
from serving_svc.server import create_server as create_serving
from tests.support.adapters import make_adapter, publish_adapter
from tests.support.servers import running
from tests.support.serving_settings import tiny_serving_settings
from tests.support.trainer_settings import tiny_trainer_settings
from trainer_svc.server import TrainerServer
from trainer_svc.server import create_server as create_trainer

SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))
ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
"""What a caller's mistake may get: never INTERNAL, UNKNOWN, UNAVAILABLE or a dropped connection."""


def _fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- strategies: odd text, numbers at and past every bound, names that try to leave their folder ------

odd_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cf", "Mn", "So", "Zs", "Lo"]), max_size=40),
    st.sampled_from(["", " ", "\x00", "../../etc/passwd", "a@v0", "a@v99999999999", "%s%n", "{{x}}", "\u202e"]),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "😀", "\n"]), st.integers(1, 5000)),
)
names = st.one_of(odd_text, st.from_regex(r"[a-z0-9][a-z0-9._-]{0,70}(@v[0-9]{1,12})?", fullmatch=True))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, -1.0, 1e30]))
uint32 = st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1))


def sane_or_wild(sane: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values a caller would send as often as values past every bound: both sides of validation get reached."""
    return st.one_of(sane, wild)


@st.composite
def sampling(draw: st.DrawFn) -> serving_pb2.SamplingParameters:
    params = serving_pb2.SamplingParameters(
        max_tokens=draw(sane_or_wild(st.integers(0, 8), uint32)),
        stop=draw(sane_or_wild(st.just([]), st.lists(odd_text, max_size=3))),
        logprobs=draw(st.booleans()),
        min_tokens=draw(sane_or_wild(st.integers(0, 2), uint32)),
        ignore_eos=draw(st.booleans()),
    )
    for name, strategy in (
        ("temperature", sane_or_wild(st.floats(0, 2), floats)),
        ("top_p", sane_or_wild(st.floats(0.05, 1), floats)),
        ("top_k", sane_or_wild(st.integers(-1, 50), st.integers(-(2**31), 2**31 - 1))),
        ("seed", st.integers(0, 2**64 - 1)),
    ):
        value = draw(st.none() | strategy)
        if value is not None:
            setattr(params, name, value)
    structured = draw(st.sampled_from(["none", "none", "none", "json_schema", "json_object", "regex", "choice"]))
    if structured == "json_schema":
        params.json_schema = draw(sane_or_wild(st.just('{"type": "object"}'), odd_text | st.just('{"type": 5}')))
    elif structured == "json_object":
        params.json_object = True
    elif structured == "regex":
        params.regex = draw(sane_or_wild(st.just("[a-z]{1,3}"), st.sampled_from(["(", "a{99999}", "\\"]) | odd_text))
    elif structured == "choice":
        choices = sane_or_wild(st.just(["yes", "no"]), st.lists(odd_text, max_size=3))
        params.choice.CopyFrom(serving_pb2.Choices(choices=draw(choices)))
    return params


@st.composite
def generate_requests(draw: st.DrawFn) -> serving_pb2.GenerateRequest:
    return draw(st.one_of(sane_generate_requests(), wild_generate_requests()))


@st.composite
def sane_generate_requests(draw: st.DrawFn) -> serving_pb2.GenerateRequest:
    """What a client would send, with its sampling parameters drawn from the sane and the wild."""
    request = serving_pb2.GenerateRequest(adapter=draw(st.sampled_from(["", "alpha", "alpha@v1"])), prompt="hello")
    request.sampling.max_tokens = draw(st.integers(1, 8))
    if draw(st.booleans()):
        request.sampling.CopyFrom(draw(sampling()))
    return request


@st.composite
def wild_generate_requests(draw: st.DrawFn) -> serving_pb2.GenerateRequest:
    request = serving_pb2.GenerateRequest(adapter=draw(sane_or_wild(st.sampled_from(["", "alpha", "alpha@v1"]), names)))
    if draw(st.booleans()):
        request.prompt = draw(sane_or_wild(st.sampled_from(["hello", "Once upon a time"]), odd_text))
    else:
        roles = sane_or_wild(st.sampled_from(["system", "user", "assistant"]), odd_text)
        turns = draw(sane_or_wild(st.just([("user", "hi")]), st.lists(st.tuples(roles, odd_text), max_size=4)))
        request.messages.messages.extend(common_pb2.ChatMessage(role=r, content=c) for r, c in turns)
    if draw(st.booleans()):
        request.sampling.CopyFrom(draw(sampling()))
    return request


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | floats | odd_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=8,
)
completion_keys = [
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop",
    "seed", "logprobs", "top_logprobs", "n", "stream", "stream_options", "response_format", "structured_outputs",
    "min_tokens", "ignore_eos", "echo", "suffix", "tools", "user",
]  # fmt: skip


@st.composite
def http_bodies(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A path and the request a client would send to it, with none to three of its parameters replaced by
    anything at all."""
    body: dict[str, Any] = {"model": draw(st.sampled_from(["tiny", "alpha", "alpha@v1"])), "max_tokens": 4}
    path = draw(st.sampled_from(["/completions", "/chat/completions"]))
    if path == "/completions":
        body["prompt"] = draw(st.sampled_from(["hello", "Once upon a time"]))
    else:
        body["messages"] = [{"role": "user", "content": "hi"}]
    some_keys = st.lists(st.sampled_from(completion_keys), min_size=1, max_size=3, unique=True)
    replaced = sane_or_wild(st.just([]), some_keys)
    for key in draw(replaced):
        body[key] = draw(json_values)
    if isinstance(body.get("max_tokens"), int):
        body["max_tokens"] = min(body["max_tokens"], 10**12)
    return path, body


jsonl_lines = st.one_of(
    st.just('{"prompt": "ping", "completion": "pong"}'),
    st.just('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'),
    st.just('{"prompt": "p", "chosen": "a", "rejected": "b"}'),
    st.just('{"text": "continued"}'),
    st.builds(json.dumps, json_values),
    odd_text,
)


@st.composite
def job_specs(draw: st.DrawFn) -> trainer_pb2.CreateJobRequest:
    return draw(st.one_of(wild_job_specs(), sane_job_specs()))


@st.composite
def sane_job_specs(draw: st.DrawFn) -> trainer_pb2.CreateJobRequest:
    """A job a client would submit (a few short steps), with none or one of its parts broken."""
    good = '{"prompt": "ping", "completion": "pong"}'
    lines = [good] * 8
    if draw(st.booleans()):
        lines[draw(st.integers(0, 7))] = draw(jsonl_lines)
    spec = trainer_pb2.JobSpec(
        adapter_name=draw(sane_or_wild(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True), names)),
        training=trainer_pb2.TrainingParameters(max_steps=draw(sane_or_wild(st.integers(1, 3), uint32))),
    )
    spec.training_data.inline_jsonl = "\n".join(lines)
    return trainer_pb2.CreateJobRequest(spec=spec)


@st.composite
def wild_job_specs(draw: st.DrawFn) -> trainer_pb2.CreateJobRequest:
    lines = draw(st.lists(jsonl_lines, max_size=12))
    spec = trainer_pb2.JobSpec(
        adapter_name=draw(names),
        base_model=draw(st.sampled_from(["", "tiny"]) | odd_text),
        method=draw(st.integers(0, 6)),
        prompt_format=draw(st.integers(0, 5)),
        refuse_leakage=draw(st.booleans()),
        lora=trainer_pb2.LoraParameters(
            rank=draw(uint32),
            alpha=draw(st.floats(allow_nan=True, allow_infinity=True)),
            dropout=draw(st.floats(allow_nan=True, allow_infinity=True)),
            target_modules=draw(st.lists(odd_text, max_size=3)),
        ),
        training=trainer_pb2.TrainingParameters(
            epochs=draw(st.floats(allow_nan=True, allow_infinity=True)),
            max_steps=draw(uint32),
            batch_size=draw(uint32),
            learning_rate=draw(st.floats(allow_nan=True, allow_infinity=True)),
            max_seq_length=draw(uint32),
            validation_fraction=draw(st.floats(allow_nan=True, allow_infinity=True)),
        ),
        labels=draw(st.dictionaries(odd_text, odd_text, max_size=2)),
    )
    if draw(st.booleans()):
        spec.training_data.inline_jsonl = "\n".join(lines)
    else:
        spec.training_data.uri = draw(st.sampled_from(["file:///etc/passwd", "s3://x/y"]) | odd_text)
    if draw(st.booleans()):
        spec.validation_data.inline_jsonl = "\n".join(draw(st.lists(jsonl_lines, max_size=4)))
    return trainer_pb2.CreateJobRequest(spec=spec, request_id=draw(st.just("") | odd_text))


# -- the servers -----------------------------------------------------------------------------------


@dataclass
class Targets:
    serving: ServingServer
    trainer: TrainerServer
    metadata: tuple[tuple[str, str], ...]


@pytest.fixture(scope="module")
def targets(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Targets]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    token = add_token(data_dir / "tokens.json", "fuzzer", [Role.TRAIN, Role.GENERATE])
    repository = ArtifactRepository(FileStore(data_dir / "store"))
    adapter = make_adapter(tiny_model_dir, tmp_path_factory.mktemp("fuzz-adapter") / "alpha", 1)
    publish_adapter(repository, adapter, "alpha", base_model_fingerprint(tiny_model_dir))
    common = {"auth": "tokens", "max_message_bytes": 1 << 20}
    serving_settings = tiny_serving_settings(tiny_model_dir, data_dir, max_tokens_limit=8, **common)
    trainer_settings = tiny_trainer_settings(
        tiny_model_dir, data_dir, trainer_max_unfinished_jobs_per_caller=2, trainer_cancel_grace_seconds=1, **common
    )
    with (
        running(lambda: create_trainer(trainer_settings)) as trainer,
        running(lambda: create_serving(serving_settings)) as serving,
    ):
        yield Targets(serving, trainer, (("authorization", f"Bearer {token}"),))
        _cancel_every_job(trainer.port, (("authorization", f"Bearer {token}"),))


def _cancel_every_job(port: int, metadata: tuple[tuple[str, str], ...]) -> None:
    """The fuzzer's valid specs became real jobs: stop them before the trainer stops."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)
        for job in stub.ListJobs(trainer_pb2.ListJobsRequest(page_size=100), metadata=metadata).jobs:
            try:
                stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=job.id), metadata=metadata, timeout=60)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION  # it had ended already


def _healthy(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class Outcomes:
    """How many cases ended in each status, and what the first of each said."""

    counts: Counter[Any] = field(default_factory=Counter)
    examples: dict[Any, str] = field(default_factory=dict)

    def add(self, status: Any, detail: str = "") -> None:
        self.counts[status] += 1
        self.examples.setdefault(status, detail[:160])

    def report(self, name: str) -> None:
        counts = ", ".join(f"{status}: {n}" for status, n in self.counts.most_common())
        print(f"\n{name}: {sum(self.counts.values())} cases; {counts}")
        for status, detail in self.examples.items():
            if detail:
                print(f"  first {status}: {detail}")


def test_fuzzed_generate_requests_get_statuses_a_caller_can_act_on(targets: Targets) -> None:
    outcomes = Outcomes()
    with grpc.insecure_channel(f"127.0.0.1:{targets.serving.port}") as channel:
        stub = serving_pb2_grpc.InferenceStub(channel)

        @_fuzz_settings(1200)
        @given(request=generate_requests(), stream=st.booleans())
        def generate(request: serving_pb2.GenerateRequest, stream: bool) -> None:
            try:
                if stream:
                    for _ in stub.GenerateStream(request, metadata=targets.metadata, timeout=60):
                        pass
                else:
                    stub.Generate(request, metadata=targets.metadata, timeout=60)
            except grpc.RpcError as exc:
                assert exc.code() in ACCEPTABLE, f"{exc.code().name}: {exc.details()} for {request}"
                outcomes.add(exc.code().name, exc.details() or "")
                return
            outcomes.add("OK")

        generate()
    outcomes.report("gRPC Generate/GenerateStream")
    assert outcomes.counts["OK"] > 100 and outcomes.counts["INVALID_ARGUMENT"] > 100  # both sides of validation
    assert _healthy(targets.serving.port)


def test_fuzzed_http_bodies_never_get_a_server_error(targets: Targets) -> None:
    outcomes = Outcomes()
    base = f"http://127.0.0.1:{targets.serving.http.port}/v1"
    headers = dict(targets.metadata)
    with httpx.Client(timeout=60, headers=headers) as http:

        @_fuzz_settings(800)
        @given(request=http_bodies(), raw=st.one_of(st.none(), st.binary(max_size=200)))
        def post(request: tuple[str, dict[str, Any]], raw: bytes | None) -> None:
            path, body = request
            url = f"{base}{path}"
            content = raw if raw is not None else json.dumps(body, allow_nan=True).encode()
            reply = http.post(url, content=content, headers={"content-type": "application/json"})
            assert reply.status_code < 500, f"{reply.status_code}: {reply.text[:300]} for {content[:300]!r}"
            if reply.status_code != 200:
                error = reply.json()["error"]
                assert error["message"] and error["type"]
                outcomes.add(reply.status_code, error["message"])
                return
            outcomes.add(reply.status_code)

        post()
    outcomes.report("HTTP /v1/completions and /v1/chat/completions")
    assert outcomes.counts[200] > 25 and outcomes.counts[400] > 25  # both sides of validation
    assert httpx.get(f"{base.removesuffix('/v1')}/health").status_code == 200


def test_fuzzed_job_specs_are_refused_with_the_field_or_accepted(targets: Targets) -> None:
    outcomes = Outcomes()
    with grpc.insecure_channel(f"127.0.0.1:{targets.trainer.port}") as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)

        @_fuzz_settings(800)
        @given(request=job_specs())
        def create(request: trainer_pb2.CreateJobRequest) -> None:
            try:
                stub.CreateJob(request, metadata=targets.metadata, timeout=60)
            except grpc.RpcError as exc:
                assert exc.code() in ACCEPTABLE, f"{exc.code().name}: {exc.details()} for {request}"
                assert exc.details()
                outcomes.add(exc.code().name, exc.details() or "")
                return
            outcomes.add("OK")

        create()
    outcomes.report("gRPC CreateJob")
    # Valid specs were accepted until the token's limit of unfinished jobs, then refused for it.
    assert outcomes.counts["OK"] >= 1 and outcomes.counts["RESOURCE_EXHAUSTED"] and outcomes.counts["INVALID_ARGUMENT"]
    assert _healthy(targets.trainer.port)
