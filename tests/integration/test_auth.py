"""Authentication, roles, job isolation and per-request limits on both live services, called with our
client, raw gRPC stubs and the official `openai` client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from loraplane.artifact import ArtifactRepository
from loraplane.auth import Role, add_token, revoke_token
from loraplane.client import LoraplaneClient
from loraplane.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unauthenticated
from loraplane.fingerprint import base_model_fingerprint
from loraplane.storage import FileStore
from loraplane.training import JobState
from loraplane.types import SamplingParameters
from serving_svc.server import ServingServer
from serving_svc.server import create_server as create_serving
from tests.support.adapters import make_adapter, publish_adapter
from tests.support.servers import running
from tests.support.serving_settings import tiny_serving_settings
from tests.support.trainer_settings import tiny_trainer_settings
from trainer_svc.server import TrainerServer
from trainer_svc.server import create_server as create_trainer

MAX_MESSAGE_BYTES = 64 << 10
TRAINING_LINE = '{"prompt": "ping", "completion": "pong"}\n'
ROLES = {"gen": [Role.GENERATE], "alice": [Role.TRAIN], "bob": [Role.TRAIN], "ops": [Role.ADMIN]}


@dataclass
class Secured:
    serving: ServingServer
    trainer: TrainerServer
    tokens: dict[str, str]
    tokens_file: Path

    def client(self, name: str | None) -> LoraplaneClient:
        return LoraplaneClient(
            trainer=f"127.0.0.1:{self.trainer.port}",
            serving=f"127.0.0.1:{self.serving.port}",
            token=self.tokens[name] if name else "",
        )

    def openai(self, api_key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.serving.http.port}/v1", api_key=api_key, max_retries=0)


@pytest.fixture(scope="module")
def secured(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    data_dir = tmp_path_factory.mktemp("secured")
    tokens_file = data_dir / "tokens.json"
    tokens = {name: add_token(tokens_file, name, roles) for name, roles in ROLES.items()}
    repository = ArtifactRepository(FileStore(data_dir / "store"))
    adapter = make_adapter(tiny_model_dir, tmp_path_factory.mktemp("auth-adapter") / "alpha", 1)
    publish_adapter(repository, adapter, "alpha", base_model_fingerprint(tiny_model_dir))
    serving_settings = tiny_serving_settings(
        tiny_model_dir,
        data_dir,
        auth="tokens",
        max_prompt_tokens=32,
        max_tokens_limit=24,
        default_max_tokens=8,
        max_message_bytes=MAX_MESSAGE_BYTES,
    )
    trainer_settings = tiny_trainer_settings(
        tiny_model_dir,
        data_dir,
        auth="tokens",
        auth_reflection_open=False,
        trainer_max_dataset_rows=50,
        trainer_max_unfinished_jobs_per_caller=1,
        max_message_bytes=MAX_MESSAGE_BYTES,
    )
    with (
        running(lambda: create_trainer(trainer_settings)) as trainer,
        running(lambda: create_serving(serving_settings)) as serving,
    ):
        yield Secured(serving, trainer, tokens, tokens_file)


def test_each_grpc_call_needs_a_token_holding_its_role(secured: Secured) -> None:
    greedy = SamplingParameters(max_tokens=4, temperature=0, ignore_eos=True)
    with secured.client(None) as anonymous:
        assert anonymous.wait_until_serving("serving", 5) and anonymous.wait_until_serving("trainer", 5)  # health
        with pytest.raises(Unauthenticated, match="send the header `authorization: Bearer <token>`"):
            anonymous.inference.generate("hello", params=greedy)
        with pytest.raises(Unauthenticated):
            list(anonymous.jobs.list())
    forged = LoraplaneClient(serving=f"127.0.0.1:{secured.serving.port}", token="lp_forged")
    with forged, pytest.raises(Unauthenticated, match="not valid"):
        forged.inference.list_adapters()
    wrong_role = "needs the admin or generate role; the token of 'alice' has train"
    with secured.client("alice") as trainer_only, pytest.raises(PermissionDenied, match=wrong_role):
        trainer_only.inference.generate("hello", params=greedy)
    with secured.client("gen") as generator:
        assert generator.inference.generate("hello", adapter="alpha", params=greedy).usage.completion_tokens == 4
        with pytest.raises(PermissionDenied, match="needs the admin role"):
            generator.inference.load_adapter("alpha", pin=True)
        with pytest.raises(PermissionDenied, match="needs the admin or train role"):
            list(generator.jobs.list())
        for turn_on_or_read_captures in (
            lambda: generator.inference.update_capture_policy("alpha", enabled=True),
            lambda: generator.inference.capture_policy("alpha"),
            lambda: list(generator.inference.captures("alpha")),
        ):
            with pytest.raises(PermissionDenied, match="needs the admin role"):
                turn_on_or_read_captures()
    with secured.client("ops") as admin:
        assert admin.inference.update_capture_policy("alpha", enabled=False).actor == "ops"
        assert list(admin.inference.captures("alpha")) == []
        assert admin.inference.load_adapter("alpha", pin=True).pinned
        admin.inference.unload_adapter("alpha")
        assert admin.inference.generate("hello", params=greedy).text


def _list_services(port: int, token: str = "") -> list[str]:
    """Reflection's list_services, with grpc's own stub: the call grpcurl makes first."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        metadata = [("authorization", f"Bearer {token}")] if token else None
        replies = stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=10)
        return [service.name for reply in replies for service in reply.list_services_response.service]


def test_reflection_is_open_unless_closed_by_the_setting(secured: Secured) -> None:
    assert "loraplane.v1.Inference" in _list_services(secured.serving.port)
    with pytest.raises(grpc.RpcError) as refused:
        _list_services(secured.trainer.port)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "loraplane.v1.Trainer" in _list_services(secured.trainer.port, secured.tokens["gen"])  # any valid token


def test_the_http_api_takes_the_token_as_the_openai_api_key(secured: Secured) -> None:
    with pytest.raises(openai.AuthenticationError) as unknown:
        secured.openai("not-a-token").models.list()
    assert unknown.value.status_code == 401 and unknown.value.response.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        secured.openai(secured.tokens["alice"]).completions.create(model="alpha", prompt="hi", max_tokens=2)
    assert forbidden.value.status_code == 403
    assert forbidden.value.body["type"] == "permission_error"  # type: ignore[index]
    client = secured.openai(secured.tokens["gen"])
    assert "alpha" in {model.id for model in client.models.list()}
    answer = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    base = f"http://127.0.0.1:{secured.serving.http.port}"
    generating = {"authorization": f"Bearer {secured.tokens['gen']}"}
    for method, path in (("PUT", "/v1/captures/alpha/policy"), ("GET", "/v1/captures/alpha")):
        refused = httpx.request(method, base + path, headers=generating, json={"enabled": True})
        assert refused.status_code == 403, "captures hold what users wrote: admins only"
    assert httpx.get(f"{base}/health").status_code == 200  # probes carry no token
    assert "loraplane_serving_requests_total" in httpx.get(f"{base}/metrics").text


def test_the_trainers_http_api_and_alert_webhook_need_a_train_token(secured: Secured) -> None:
    base = f"http://127.0.0.1:{secured.trainer.http.port}"
    webhook = {"alerts": []}
    assert httpx.post(f"{base}/v1/alerts", json=webhook).status_code == 401
    generating = {"authorization": f"Bearer {secured.tokens['gen']}"}
    assert httpx.post(f"{base}/v1/alerts", json=webhook, headers=generating).status_code == 403
    training = {"authorization": f"Bearer {secured.tokens['alice']}"}
    assert httpx.post(f"{base}/v1/alerts", json=webhook, headers=training).json() == {"retrains": []}
    policy = {"enabled": True}
    assert httpx.put(f"{base}/v1/retraining/alpha/policy", json=policy, headers=training).status_code == 403
    with secured.client("alice") as trainer, pytest.raises(PermissionDenied, match="needs the admin role"):
        trainer.jobs.update_retrain_policy("alpha", enabled=True)
    assert httpx.get(f"{base}/health").status_code == 200


def test_jobs_are_seen_and_cancelled_by_their_owner_and_admins_only(secured: Secured, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(TRAINING_LINE * 8)
    with secured.client("alice") as alice, secured.client("bob") as bob, secured.client("ops") as ops:
        job = alice.jobs.create(adapter_name="alices", training_file=data)
        assert job.owner == "alice"
        with pytest.raises(NotFound, match=f"job '{job.id}' does not exist"):
            bob.jobs.retrieve(job.id)
        with pytest.raises(NotFound):
            bob.jobs.cancel(job.id)
        with pytest.raises(NotFound):
            list(bob.jobs.watch(job.id))
        assert job.id not in {listed.id for listed in bob.jobs.list()}
        with pytest.raises(ResourceExhausted, match="caller 'alice' has 1 jobs queued or running"):
            alice.jobs.create(adapter_name="alices-second", training_file=data)
        bobs = bob.jobs.create(adapter_name="bobs", training_file=data, request_id=job.request_id)
        assert bobs.id != job.id and bobs.owner == "bob"  # the same idempotency key from another caller
        assert {job.id, bobs.id} <= {listed.id for listed in ops.jobs.list()}
        assert ops.jobs.retrieve(job.id).owner == "alice"
        for job_id in (job.id, bobs.id):
            assert ops.jobs.cancel(job_id).state == JobState.CANCELLED
        assert alice.jobs.retrieve(job.id).state == JobState.CANCELLED


def test_requests_over_the_limits_are_refused_naming_what_to_change(secured: Secured, tmp_path: Path) -> None:
    with secured.client("gen") as generator:
        with pytest.raises(InvalidArgument, match="this server's limit is 32") as long_prompt:
            generator.inference.generate("word " * 40, params=SamplingParameters(max_tokens=2))
        assert long_prompt.value.field == "prompt"
        with pytest.raises(InvalidArgument, match="exceeds this server's limit of 24") as many_tokens:
            generator.inference.generate("hello", params=SamplingParameters(max_tokens=25))
        assert many_tokens.value.field == "sampling.max_tokens"
        with pytest.raises(ResourceExhausted):
            generator.inference.generate("x" * MAX_MESSAGE_BYTES, params=SamplingParameters(max_tokens=2))
        assert generator.inference.generate("hello", params=SamplingParameters(max_tokens=2)).text is not None
    too_big = httpx.post(
        f"http://127.0.0.1:{secured.serving.http.port}/v1/completions",
        headers={"authorization": f"Bearer {secured.tokens['gen']}"},
        json={"model": "tiny", "prompt": "x" * MAX_MESSAGE_BYTES, "max_tokens": 2},
    )
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    rows = tmp_path / "rows.jsonl"
    rows.write_text(TRAINING_LINE * 51)
    with secured.client("bob") as bob, pytest.raises(InvalidArgument, match="51 lines; the limit is 50") as refused:
        bob.jobs.create(adapter_name="many-rows", training_file=rows)
    assert refused.value.field == "spec.training_data"


def test_a_token_added_while_running_is_accepted_and_revoked_refused(secured: Secured) -> None:
    late = add_token(secured.tokens_file, "late", [Role.GENERATE])
    with LoraplaneClient(serving=f"127.0.0.1:{secured.serving.port}", token=late) as client:
        assert _eventually(lambda: _accepted(client))
        revoke_token(secured.tokens_file, "late")
        assert _eventually(lambda: not _accepted(client))


def _accepted(client: LoraplaneClient) -> bool:
    try:
        client.inference.model_info()
    except Unauthenticated:
        return False
    return True


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """True once `check` is: token files are looked at again at most once a second."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
