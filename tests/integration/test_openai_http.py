"""The OpenAI-compatible HTTP API of a real serving replica on loopback, called with the official
`openai` client (and httpx for what a client library hides: raw bodies, a caller that leaves).

The HTTP layer only translates to the inference service the gRPC API uses, whichever engine
runs; so these tests run the transformers engine (the CPU default) and check answers against
the gRPC API's answer to the same request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loraplane.artifact import ArtifactRepository
from loraplane.client import LoraplaneClient
from loraplane.fingerprint import base_model_fingerprint
from loraplane.releases import ReleaseAction, ReleaseState, canary_point
from loraplane.storage import FileStore
from loraplane.types import SamplingParameters
from serving_svc.server import ServingServer, create_server
from tests.support.adapters import make_adapter, publish_adapter
from tests.support.servers import running
from tests.support.serving_settings import tiny_serving_settings

QUESTION = [{"role": "user", "content": "Name a colour."}]
PROMPT = "The capital of France is"


@dataclass
class Replica:
    server: ServingServer
    openai: openai.OpenAI
    grpc: LoraplaneClient
    publish: Callable[[str, int], None]
    """Publish the next version of an adapter, its weights drawn from a seed."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http.port}"


@pytest.fixture(scope="module")
def replica(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    data_dir = tmp_path_factory.mktemp("http")
    repository = ArtifactRepository(FileStore(data_dir / "store"))
    fingerprint = base_model_fingerprint(tiny_model_dir)
    sources = tmp_path_factory.mktemp("http-adapters")

    def publish(name: str, seed: int) -> None:
        publish_adapter(repository, make_adapter(tiny_model_dir, sources / f"{name}-{seed}", seed), name, fingerprint)

    for seed, name in enumerate(("alpha", "alpha", "beta"), start=1):
        publish(name, seed)
    settings = tiny_serving_settings(tiny_model_dir, data_dir, default_max_tokens=16, capture_flush_seconds=0.1)
    with (
        running(lambda: create_server(settings)) as server,
        LoraplaneClient(serving=f"127.0.0.1:{server.port}") as grpc_client,
    ):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.http.port}/v1", api_key="unused", max_retries=0)
        yield Replica(server, client, grpc_client, publish)
        client.close()


def test_models_lists_the_base_model_each_adapter_and_loaded_older_versions(replica: Replica) -> None:
    replica.openai.completions.create(model="alpha@v1", prompt=PROMPT, max_tokens=1)  # loads an older version
    models = {model.id: model for model in replica.openai.models.list()}
    assert set(models) == {"tiny", "alpha", "beta", "alpha@v1"}
    assert models["alpha"].model_dump()["root"] == "alpha@v2"
    assert models["alpha"].model_dump()["parent"] == "tiny"
    assert replica.openai.models.retrieve("alpha@v2").id == "alpha"
    with pytest.raises(openai.NotFoundError):
        replica.openai.models.retrieve("nobody")


@pytest.mark.parametrize("model", ["tiny", "alpha", "beta@v1", "alpha@v1"])
def test_chat_answers_equal_the_grpc_answers(replica: Replica, model: str) -> None:
    adapter = "" if model == "tiny" else model
    expected = replica.grpc.inference.generate(
        messages=QUESTION, adapter=adapter, params=SamplingParameters(max_tokens=12, temperature=0)
    )
    answer = replica.openai.chat.completions.create(model=model, messages=QUESTION, max_tokens=12, temperature=0)
    choice = answer.choices[0]
    assert choice.message.content == expected.text
    assert choice.message.role == "assistant"
    # The random tiny model may end its answer before max_tokens: whichever way, as over gRPC.
    assert expected.finish_reason is not None and choice.finish_reason == expected.finish_reason
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        expected.usage.prompt_tokens,
        expected.usage.completion_tokens,
    )
    served = model if expected.adapter is None else f"{expected.adapter.name}@v{expected.adapter.version}"
    assert answer.model == served, "the model field names the version that answered"


def test_adapters_change_the_answer(replica: Replica) -> None:
    def answer(model: str) -> str | None:
        reply = replica.openai.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
        return reply.choices[0].text

    assert len({answer("tiny"), answer("alpha"), answer("beta")}) == 3


def test_streamed_chat_equals_the_whole_answer_and_ends_with_usage(replica: Replica) -> None:
    whole = replica.openai.chat.completions.create(model="beta", messages=QUESTION, max_tokens=12, temperature=0)
    chunks = list(
        replica.openai.chat.completions.create(
            model="beta",
            messages=QUESTION,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({chunk.id for chunk in chunks}) == 1


def test_completions_with_logprobs_stop_and_streaming(replica: Replica) -> None:
    whole = replica.openai.completions.create(model="alpha", prompt=PROMPT, max_tokens=10, temperature=0, logprobs=0)
    choice = whole.choices[0]
    assert choice.logprobs is not None and whole.usage is not None
    assert len(choice.logprobs.token_logprobs or []) == whole.usage.completion_tokens
    assert 0 < whole.usage.completion_tokens <= 10  # the random tiny model may end early
    # Token texts include special tokens, which the answer's text leaves out.
    assert choice.logprobs.text_offset == [0, *accumulate(len(t) for t in (choice.logprobs.tokens or [])[:-1])]
    assert all(lp is not None and lp <= 0 for lp in choice.logprobs.token_logprobs or [])

    streamed = list(
        replica.openai.completions.create(
            model="alpha", prompt=PROMPT, max_tokens=10, temperature=0, stream=True, logprobs=0
        )
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == choice.text
    tokens = [t for chunk in streamed if chunk.choices[0].logprobs for t in chunk.choices[0].logprobs.tokens or []]
    assert tokens == choice.logprobs.tokens
    offsets = [
        o for chunk in streamed if chunk.choices[0].logprobs for o in chunk.choices[0].logprobs.text_offset or []
    ]
    assert offsets == choice.logprobs.text_offset, "offsets count from the start of the whole answer"

    stop = choice.text[len(choice.text) // 2 :][:3]
    if stop.strip():
        stopped = replica.openai.completions.create(
            model="alpha", prompt=PROMPT, max_tokens=10, temperature=0, stop=[stop]
        )
        assert stopped.choices[0].finish_reason == "stop"
        assert stop not in stopped.choices[0].text


def test_structured_output_by_response_format_and_by_structured_outputs(replica: Replica) -> None:
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"city": {"enum": ["Lisbon", "Porto"]}, "port": {"type": "boolean"}},
        "required": ["city", "port"],
        "additionalProperties": False,
    }
    answer = replica.openai.chat.completions.create(
        model="beta",
        messages=QUESTION,
        max_tokens=48,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), schema)
    chosen = replica.openai.completions.create(
        model="alpha",
        prompt=PROMPT,
        max_tokens=8,
        temperature=0,
        extra_body={"structured_outputs": {"choice": ["Paris", "Rome"]}},
    )
    assert chosen.choices[0].text in {"Paris", "Rome"}
    streamed = replica.openai.chat.completions.create(
        model="beta",
        messages=QUESTION,
        max_tokens=48,
        temperature=0,
        stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in streamed if c.choices)), schema)
    # Any JSON object: a random model may write a key longer than max_tokens, but never anything else.
    free = replica.openai.chat.completions.create(
        model="beta", messages=QUESTION, max_tokens=48, temperature=0, response_format={"type": "json_object"}
    ).choices[0]
    assert (free.message.content or "").startswith("{")
    if free.finish_reason == "stop":
        assert isinstance(json.loads(free.message.content or ""), dict)


def test_the_response_id_takes_feedback(replica: Replica) -> None:
    answer = replica.openai.chat.completions.create(model="beta", messages=QUESTION, max_tokens=4)
    assert replica.grpc.inference.record_feedback(answer.id, 1.0) == "beta"


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"model": "nobody"}, openai.NotFoundError, "model"),
        ({"model": "Not A Name"}, openai.BadRequestError, "model"),
        ({"model": "beta", "temperature": 5}, openai.BadRequestError, "temperature"),
        ({"model": "beta", "n": 2}, openai.BadRequestError, "n"),
        ({"model": "beta", "max_tokens": 100_000}, openai.BadRequestError, "max_tokens"),
        ({"model": "beta", "messages": [{"role": "tool", "content": "x"}]}, openai.BadRequestError, "messages[0].role"),
        ({"model": "beta", "messages": []}, openai.BadRequestError, "messages"),
        ({"model": "beta", "messages": [{"role": "user", "content": "x " * 400}]}, openai.BadRequestError, "messages"),
        ({"model": "beta", "top_logprobs": 3, "logprobs": True}, openai.BadRequestError, "top_logprobs"),
        ({"model": "beta", "response_format": {"type": "xml"}}, openai.BadRequestError, "response_format.type"),
        (
            {"model": "beta", "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            openai.BadRequestError,
            "response_format.json_schema.schema",
        ),
        (
            {"model": "beta", "extra_body": {"structured_outputs": {"regex": "[a-"}}},
            openai.BadRequestError,
            "structured_outputs.regex",
        ),
    ],
    ids=[
        "unknown",
        "bad-name",
        "temperature",
        "n",
        "max-tokens",
        "role",
        "no-messages",
        "too-long",
        "top",
        "format-type",
        "no-schema",
        "bad-regex",
    ],
)
def test_bad_requests_get_openai_errors_naming_the_parameter(
    replica: Replica, kwargs: dict[str, Any], error: type[openai.APIStatusError], param: str
) -> None:
    request = {"messages": QUESTION, "max_tokens": 4, **kwargs}
    with pytest.raises(error) as info:
        replica.openai.chat.completions.create(**request)
    body = info.value.body
    assert isinstance(body, dict), body
    assert body["param"] == param, body
    assert body["message"], body
    assert replica.openai.models.list().data, "the replica still answers"


def test_the_api_port_serves_the_metrics_an_endpoint_picker_scrapes(replica: Replica) -> None:
    replica.openai.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    reply = httpx.get(f"{replica.base_url}/metrics")
    assert reply.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(reply.text)}
    [info] = families["vllm:lora_requests_info"].samples
    assert "alpha" in info.labels["running_lora_adapters"].split(",")
    assert "loraplane_serving_requests" in families  # the same registry as the metrics port


def test_a_body_that_is_not_json_is_a_400(replica: Replica) -> None:
    reply = httpx.post(
        f"{replica.base_url}/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400
    assert "not valid JSON" in reply.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "kind"),
    [
        ("POST", "/v1/completions", b"\x00\xff\xfe", 400, "invalid_request_error"),  # not even text
        ("GET", "/v1/embeddings", b"", 404, "not_found_error"),
        ("PUT", "/v1/models", b"", 405, "invalid_request_error"),
    ],
)
def test_what_the_framework_refuses_is_in_openais_shape_too(
    replica: Replica, method: str, path: str, content: bytes, status: int, kind: str
) -> None:
    headers = {"content-type": "application/json"}
    reply = httpx.request(method, f"{replica.base_url}{path}", content=content, headers=headers)
    assert reply.status_code == status
    assert reply.json()["error"]["type"] == kind and reply.json()["error"]["message"]


def test_a_caller_who_leaves_stops_the_engine(replica: Replica) -> None:
    """Streaming and not: the connection closes long before max_tokens, and the engine stops
    generating for it (counted by the replica's generated-token metric)."""
    body = {"model": "alpha", "prompt": PROMPT, "max_tokens": 200, "min_tokens": 200, "ignore_eos": True}

    def generated() -> float:
        _wait_until_idle(replica.server.engine)
        return sum(
            sample.value
            for family in replica.server.metrics.registry.collect()
            for sample in family.samples
            if sample.name == "loraplane_serving_generated_tokens_total" and sample.labels["adapter"] == "alpha"
        )

    before = generated()
    with httpx.stream("POST", f"{replica.base_url}/v1/completions", json={**body, "stream": True}) as reply:
        assert reply.status_code == 200
        next(reply.iter_lines())  # the dropped iterator closes the connection
    streamed = generated() - before
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{replica.base_url}/v1/completions", json=body, timeout=0.1)
    whole = generated() - before - streamed
    assert 0 < streamed < 100 and 0 <= whole < 100, (streamed, whole)


def _wait_until_idle(engine: Any) -> None:
    deadline = time.monotonic() + 10
    while engine.stats().running or engine.stats().waiting:
        assert time.monotonic() < deadline, "the engine kept generating"
        time.sleep(0.02)


def test_over_the_limits_is_429_with_retry_after(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = tiny_serving_settings(
        tiny_model_dir, tmp_path, max_concurrent_requests=1, max_queued_requests=0, max_model_len=512
    )
    long = {"model": "tiny", "prompt": PROMPT, "max_tokens": 480, "min_tokens": 480, "ignore_eos": True}
    with running(lambda: create_server(settings)) as server:
        base_url = f"http://127.0.0.1:{server.http.port}"
        with httpx.stream("POST", f"{base_url}/v1/completions", json={**long, "stream": True}) as first:
            lines = first.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)  # generating: the one place is taken
            refused = httpx.post(f"{base_url}/v1/completions", json=long)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "resource_exhausted"
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
        assert client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2).choices[0].text is not None


def test_a_canary_splits_callers_by_user_and_each_answer_names_its_version(replica: Replica) -> None:
    for seed in (11, 12):
        replica.publish("gamma", seed)
    replica.grpc.inference.update_release(
        "gamma", ReleaseAction.START, candidate=2, canary_share=0.5, reason="try v2 on half the users"
    )
    served: dict[str, set[str]] = {}
    for index in range(40):
        user = f"user-{index % 20}"
        raw = replica.openai.chat.completions.with_raw_response.create(
            model="gamma", messages=QUESTION, max_tokens=1, user=user
        )
        answer = raw.parse()
        assert raw.headers["x-loraplane-adapter"] == answer.model
        served.setdefault(user, set()).add(answer.model)
    assert all(len(models) == 1 for models in served.values()), "a user stays on one version"
    assert set().union(*served.values()) == {"gamma@v1", "gamma@v2"}
    expected = {user: "gamma@v2" if canary_point("gamma", user) < 0.5 else "gamma@v1" for user in served}
    assert {user: next(iter(models)) for user, models in served.items()} == expected

    release = replica.grpc.inference.update_release("gamma", ReleaseAction.PROMOTE, reason="looks good")
    assert release.state == ReleaseState(stable=2, previous_stable=1)
    assert [record.action for record in release.history] == [ReleaseAction.START, ReleaseAction.PROMOTE]
    assert release.history[0].reason == "try v2 on half the users" and release.history[0].actor == "anonymous"
    stream = replica.openai.completions.with_raw_response.create(
        model="gamma", prompt=PROMPT, max_tokens=1, stream=True
    )
    assert stream.headers["x-loraplane-adapter"] == "gamma@v2"
    assert {chunk.model for chunk in stream.parse()} == {"gamma@v2"}


def test_releases_are_read_and_changed_over_http_in_the_grpc_messages_json(replica: Replica) -> None:
    for seed in (21, 22):
        replica.publish("delta", seed)
    url = f"{replica.base_url}/v1/releases/delta"
    started = httpx.post(url, json={"action": "start", "candidate": 2, "canary_share": 0.25, "reason": "try v2"})
    assert started.status_code == 200, started.text
    body = started.json()
    assert body["state"] == {
        "stable_version": 1,
        "candidate_version": 2,
        "mode": "RELEASE_MODE_CANARY",
        "canary_share": 0.25,
        "trial": "1",  # a uint64, which the proto's JSON mapping writes as a string
    }
    [record] = body["history"]
    assert (record["action"], record["reason"], record["actor"]) == ("RELEASE_ACTION_START", "try v2", "anonymous")
    assert [figures["version"] for figures in body["versions"]] == [1, 2]
    assert body["verdict"].startswith("trying: 0 of")
    assert httpx.get(url).json()["history"] == body["history"]

    for payload, param in (
        ({"action": "start"}, "candidate"),
        ({"action": "start", "candidate": 2, "canary_share": 2}, "canary_share"),
        ({"action": "launch"}, "action"),
    ):
        refused = httpx.post(url, json=payload)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
    stale = httpx.post(url, json={"action": "promote", "expected_candidate": 3})
    assert stale.status_code == 400 and "no longer the candidate" in stale.json()["error"]["message"]
    assert httpx.post(f"{replica.base_url}/v1/releases/delta@v2", json={"action": "pause"}).status_code == 400


def _captured(replica: Replica, adapter: str, count: int) -> list[dict[str, Any]]:
    """The adapter's captures over HTTP, once `count` of them (and their feedback) are written."""
    deadline = time.monotonic() + 10
    while True:
        response = httpx.get(f"{replica.base_url}/v1/captures/{adapter}")
        assert response.status_code == 200 and response.headers["content-type"] == "application/jsonl"
        lines = [json.loads(line) for line in response.text.splitlines()]
        if len(lines) >= count and all("feedback_score" in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_captured_requests_keep_the_correction_sent_as_feedback_over_either_api(replica: Replica) -> None:
    assert httpx.get(f"{replica.base_url}/v1/captures/beta/policy").json() == {
        "adapter": "beta",
        "sample_share": 1.0,
        "retention_days": 30,
        "retention_bytes": str(1 << 30),
    }, "off until an admin turns it on (proto3 JSON leaves false and empty fields out)"
    turned_on = httpx.put(f"{replica.base_url}/v1/captures/beta/policy", json={"enabled": True, "sample_share": 1})
    assert turned_on.status_code == 200 and turned_on.json()["enabled"] is True
    messages = [{"role": "user", "content": "Mail bo@example.com the answer."}]
    chat = replica.openai.chat.completions.create(model="beta", messages=messages, max_tokens=4)
    feedback = httpx.post(
        f"{replica.base_url}/v1/feedback", json={"request_id": chat.id, "label": "bad", "correction": "Done, bo."}
    )
    assert feedback.status_code == 200 and feedback.json() == {"adapter": "beta"}
    text = replica.grpc.inference.generate("Say hi", adapter="beta", params=SamplingParameters(max_tokens=3))
    replica.grpc.inference.record_feedback(text.request_id, 1.0, correction="Hi!")
    over_http = _captured(replica, "beta", 2)
    assert [line["request_id"] for line in over_http] == [chat.id, text.request_id]
    assert over_http[0]["messages"]["messages"] == [{"role": "user", "content": "Mail [email] the answer."}]
    assert over_http[0]["answer"] == chat.choices[0].message.content and over_http[0]["correction"] == "Done, bo."
    assert (over_http[0]["feedback_score"], over_http[1]["feedback_score"]) == (0.0, 1.0)
    over_grpc = list(replica.grpc.inference.captures("beta"))
    assert [(c.request.prompt, c.feedback.correction if c.feedback else None) for c in over_grpc][1] == (
        "Say hi",
        "Hi!",
    )
    stamp = over_grpc[1].request.at.isoformat()
    since = httpx.get(f"{replica.base_url}/v1/captures/beta", params={"since": stamp}).text.splitlines()
    assert [json.loads(line)["request_id"] for line in since] == [text.request_id]


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("PUT", "/v1/captures/beta/policy", {"enabled": True, "sample_share": 2}, "sample_share"),
        ("PUT", "/v1/captures/beta@v1/policy", {"enabled": True}, "model"),  # the adapter is a model here
        ("POST", "/v1/feedback", {"request_id": "x", "score": 1, "label": "good"}, "score"),
        ("POST", "/v1/feedback", {"request_id": "never-answered", "score": 1}, "request_id"),
    ],
    ids=["share", "version", "score-and-label", "unknown-request"],
)
def test_capture_and_feedback_mistakes_name_the_field(
    replica: Replica, method: str, path: str, body: dict[str, Any], param: str
) -> None:
    response = httpx.request(method, replica.base_url + path, json=body)
    assert response.status_code in (400, 404) and response.json()["error"]["param"] == param
