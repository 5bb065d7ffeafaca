"""Releases end to end, with two serving replicas sharing the real Ceph S3 store: versions trained through
the trainer are tried as canaries and promoted or rolled back by the replicas on their callers' feedback,
the canary share and a caller's version hold on both replicas, shadow callers only ever get stable's
answers, the rollback alert fires and the releases dashboard draws every panel, and the release state
survives a killed replica, racing writers and a store outage."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from loraplane.artifact import ArtifactRepository
from loraplane.client import LoraplaneClient
from loraplane.errors import FailedPrecondition
from loraplane.fingerprint import base_model_fingerprint
from loraplane.releases import ReleaseAction, ReleaseMode, ReleaseState, canary_point
from loraplane.storage import open_store
from loraplane.training import JobState
from loraplane.types import Release, ReleaseOnSuccess, SamplingParameters, TrainingParameters
from serving_svc.server import ServingServer, create_server
from serving_svc.settings import ServingSettings
from tests.support.adapters import make_adapter, publish_adapter
from tests.support.ceph import S3Endpoint
from tests.support.dashboards import RELEASES_DASHBOARD, queries_without_data
from tests.support.prometheus import running_prometheus
from tests.support.rules import rule_files, with_short_durations
from tests.support.servers import running
from tests.support.service_process import free_port, service_process
from tests.support.stack import ANSWER, QUESTIONS, Stack, running_stack

pytestmark = pytest.mark.s3

TTL = 1.0
MIN_REQUESTS = 20
"""How long a replica routes by the release it read (LORAPLANE_ADAPTER_RESOLVE_TTL_SECONDS)."""
GREEDY = SamplingParameters(max_tokens=4, temperature=0.0)
ONE_TOKEN = SamplingParameters(max_tokens=1, temperature=0.0)
WRONG_ANSWER = " Red."
RELEASES = {
    "adapter_resolve_ttl_seconds": TTL,
    "release_check_seconds": 0.5,
    "release_min_seconds": 0.0,
    "release_min_requests": MIN_REQUESTS,
    "drift_min_samples": 10,
    # The loop below is decided by what callers say about the answers; a shared CPU's timings and the
    # drift of a dozen memorised questions are too noisy to decide a test by.
    "release_margins": {"ttft_p50": 100.0, "latency_p50": 100.0, "latency_p99": 100.0, "drift_statistics_over": 9.0},
}


BY_HAND = {**RELEASES, "release_automatic": False}
"""Replicas that show their verdicts and leave the decisions to people (the tests of routing and faults)."""


def _replica_settings(stack_settings: dict[str, Any], data_dir: Path, releases: dict[str, Any]) -> ServingSettings:
    return ServingSettings(
        **stack_settings,
        data_dir=data_dir,
        serving_address="127.0.0.1:0",
        serving_metrics_port=0,
        serving_http_port=0,
        max_model_len=256,
        dtype="float32",
        **releases,
    )


@contextmanager
def _two_replicas(
    tiny_model_dir: Path, tmp_path: Path, store_uri: str, s3_endpoint: S3Endpoint, releases: dict[str, Any] = BY_HAND
) -> Iterator[tuple[Stack, ServingServer, LoraplaneClient]]:
    """The trainer and replica A (the stack), replica B beside them on the same store and tokens."""
    endpoint = s3_endpoint.endpoint_url
    with running_stack(
        tiny_model_dir, tmp_path / "a", serving=releases, store_uri=store_uri, s3_endpoint_url=endpoint
    ) as stack:
        shared = {
            "base_model": tiny_model_dir,
            "base_model_name": "tiny",
            "store_uri": store_uri,
            "s3_endpoint_url": s3_endpoint.endpoint_url,
            "auth_tokens_file": tmp_path / "a" / "tokens.json",
        }
        with (
            running(lambda: create_server(_replica_settings(shared, tmp_path / "b", releases))) as other,
            LoraplaneClient(serving=f"127.0.0.1:{other.port}", token=stack.token) as other_client,
        ):
            assert other_client.wait_until_serving("serving", 10)
            yield stack, other, other_client


def _train(stack: Stack, tmp_path: Path, answer: str, steps: int, release: ReleaseOnSuccess | None) -> int:
    data = tmp_path / f"train-{answer.strip(' .').lower()}-{steps}.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "completion": answer}) + "\n" for q in QUESTIONS))
    job = stack.client.jobs.create(
        adapter_name="secret-word",
        training_file=data,
        training=TrainingParameters(max_steps=steps, batch_size=4, learning_rate=1e-2, validation_fraction=0.25),
        prompt_format="raw",
        release=release,
    )
    events = list(stack.client.jobs.watch(job.id))
    done = stack.client.jobs.retrieve(job.id)
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.adapter is not None
    if release is not None:
        assert any("release of secret-word: stable v" in event.message for event in events), [e.message for e in events]
    return done.adapter.version


def _ask_until(clients: list[LoraplaneClient], settled: Callable[[Release], bool], timeout: float = 240) -> Release:
    """Callers ask the adapter through both replicas and score each answer (1: the trained answer), until
    the release read through the first replica is `settled`."""
    deadline = time.monotonic() + timeout
    asked = 0
    while time.monotonic() < deadline:
        for client in clients:
            question = QUESTIONS[asked % len(QUESTIONS)]
            answer = client.inference.generate(question, adapter="secret-word", params=GREEDY)
            client.inference.record_feedback(answer.request_id, 1.0 if answer.text.startswith(ANSWER) else 0.0)
            asked += 1
        if asked % 10 == 0 and settled(release := clients[0].inference.release("secret-word")):
            return release
    raise AssertionError(f"the release did not settle in {timeout} s: {clients[0].inference.release('secret-word')}")


def test_a_better_version_is_promoted_and_a_worse_one_rolled_back_on_the_callers_feedback(
    tiny_model_dir: Path, tmp_path: Path, s3_endpoint: S3Endpoint, s3_bucket: str
) -> None:
    """With a real Prometheus scraping both replicas and evaluating the shipped rules: the rollback fires
    its alert, and every query of the releases dashboard draws data by the end."""
    store_uri = f"s3://{s3_bucket}/loraplane"
    rules = [with_short_durations(path, tmp_path / "rules", seconds=1) for path in rule_files()]
    (tmp_path / "prometheus").mkdir()
    with (
        _two_replicas(tiny_model_dir, tmp_path, store_uri, s3_endpoint, RELEASES) as (stack, replica_b, other),
        running_prometheus(
            {"serving-a": stack.serving.metrics_port, "serving-b": replica_b.metrics_port},
            tmp_path / "prometheus",
            rules,
        ) as prometheus,
    ):
        started = time.time()
        clients = [stack.client, other]
        assert _train(stack, tmp_path, ANSWER, 20, None) == 1
        canary = ReleaseOnSuccess(mode=ReleaseMode.CANARY, canary_share=0.5)
        assert _train(stack, tmp_path, ANSWER, 40, canary) == 2

        promoted = _ask_until(clients, lambda release: release.state is not None and release.state.candidate is None)
        assert promoted.state == ReleaseState(stable=2, previous_stable=1)
        start, decision = promoted.history
        assert (start.action, start.actor) == (ReleaseAction.START, f"job {start.actor.removeprefix('job ')}")
        assert (decision.action, decision.actor) == (ReleaseAction.PROMOTE, "auto")
        assert decision.figures["candidate.requests"] >= MIN_REQUESTS

        assert _train(stack, tmp_path, WRONG_ANSWER, 40, canary) == 3
        rolled_back = _ask_until(clients, lambda release: release.state is not None and release.state.candidate is None)
        assert rolled_back.state == ReleaseState(stable=2)
        decision = rolled_back.history[-1]
        assert (decision.action, decision.actor) == (ReleaseAction.ROLLBACK, "auto")
        assert decision.reason.startswith("feedback_score: candidate"), decision.reason
        assert decision.figures["feedback_score.candidate"] < decision.figures["feedback_score.stable"]
        prometheus.wait_for(
            'ALERTS{alertname="LoraplaneReleaseRolledBack",alertstate="firing",'
            'adapter="secret-word",guardrail="feedback_score"}'
        )
        time.sleep(TTL)
        for client in clients:  # both replicas answer every caller with v2 again
            answers = {
                client.inference.generate(q, adapter="secret-word", params=GREEDY, user=q).adapter for q in QUESTIONS
            }
            assert {(ref.name, ref.version) for ref in answers if ref is not None} == {("secret-word", 2)}

        # The bad version once more, in the shadow of v2, for the agreement panels.
        stack.client.inference.update_release("secret-word", ReleaseAction.START, candidate=3, mode=ReleaseMode.SHADOW)
        time.sleep(TTL)
        deadline = time.monotonic() + 120
        while not prometheus.query("loraplane_release_shadow_agreement"):
            assert time.monotonic() < deadline, "no shadow answer was compared in 120 s"
            for client in clients:
                client.inference.generate(QUESTIONS[0], adapter="secret-word", params=GREEDY)
            time.sleep(0.5)
        time.sleep(3)  # two more scrapes, so every counter has a rate
        empty = queries_without_data(prometheus.query_range, [RELEASES_DASHBOARD], started, time.time())
        assert not empty, "releases dashboard panels without data:\n" + "\n".join(empty)


@pytest.fixture
def published(tiny_model_dir: Path, tmp_path: Path, s3_endpoint: S3Endpoint, s3_bucket: str) -> str:
    """Two versions of `word` in a fresh bucket, with different (random) weights; the store's URI."""
    store_uri = f"s3://{s3_bucket}/loraplane"
    repository = ArtifactRepository(open_store(store_uri, s3_endpoint_url=s3_endpoint.endpoint_url))
    fingerprint = base_model_fingerprint(tiny_model_dir)
    for seed in (1, 2):
        publish_adapter(repository, make_adapter(tiny_model_dir, tmp_path / f"word-{seed}", seed), "word", fingerprint)
    return store_uri


def test_the_canary_share_and_each_callers_version_hold_on_both_replicas(
    tiny_model_dir: Path, tmp_path: Path, s3_endpoint: S3Endpoint, published: str
) -> None:
    with _two_replicas(tiny_model_dir, tmp_path, published, s3_endpoint) as (stack, _, other):
        stack.client.inference.update_release("word", ReleaseAction.START, candidate=2, canary_share=0.1)
        time.sleep(TTL)  # replica B reads the release within its TTL
        users = [f"user-{index}" for index in range(1000)]
        versions: dict[str, list[int]] = {}
        for index, user in enumerate(users):
            client = (stack.client, other)[index % 2]
            answer = client.inference.generate("Once upon a time", adapter="word", params=ONE_TOKEN, user=user)
            assert answer.adapter is not None
            versions.setdefault(user, []).append(answer.adapter.version)
        for user in users[:100]:  # the same callers again, each through the other replica
            client = (other, stack.client)[users.index(user) % 2]
            answer = client.inference.generate("Once upon a time", adapter="word", params=ONE_TOKEN, user=user)
            assert answer.adapter is not None
            versions[user].append(answer.adapter.version)

        assert all(len(set(seen)) == 1 for seen in versions.values()), "a caller stays on one version"
        on_candidate = sum(seen[0] == 2 for seen in versions.values())
        bound = 4 * math.sqrt(0.1 * 0.9 / len(users)) * len(users)
        assert abs(on_candidate - 100) <= bound, f"{on_candidate} of 1000 callers on the 10% canary"
        assert all((seen[0] == 2) == (canary_point("word", user) < 0.1) for user, seen in versions.items())
        pinned = stack.client.inference.generate("Once upon a time", adapter="word@v2", params=ONE_TOKEN)
        assert pinned.adapter is not None and pinned.adapter.version == 2


def test_in_shadow_mode_callers_get_only_stables_answers_while_the_candidates_are_compared(
    tiny_model_dir: Path, tmp_path: Path, s3_endpoint: S3Endpoint, published: str
) -> None:
    with _two_replicas(tiny_model_dir, tmp_path, published, s3_endpoint) as (stack, _, other):
        prompts = [f"{question} Answer:" for question in QUESTIONS]
        stable = {p: stack.client.inference.generate(p, adapter="word@v1", params=GREEDY).text for p in prompts}
        assert stable != {p: stack.client.inference.generate(p, adapter="word@v2", params=GREEDY).text for p in prompts}
        other.inference.update_release("word", ReleaseAction.START, candidate=2, mode=ReleaseMode.SHADOW)
        time.sleep(TTL)
        for client in (stack.client, other):
            for prompt in prompts:
                answer = client.inference.generate(prompt, adapter="word", params=GREEDY)
                assert (answer.text, answer.adapter and answer.adapter.version) == (stable[prompt], 1)
        # A replica's figures are its own, and a shadow offered while four run is shed (counted busy): more
        # requests to replica B until it has compared ten answers, however slow the machine.
        deadline = time.monotonic() + 180
        while (release := other.inference.release("word")).versions[1].samples.get("shadow_agreement", 0) < 10:
            assert time.monotonic() < deadline, release
            answer = other.inference.generate(prompts[0], adapter="word", params=GREEDY)
            assert answer.text == stable[prompts[0]]
            time.sleep(0.5)
        figures = release.versions[1]
        assert figures.requests == 0, "the candidate answered no caller"
        assert figures.values["shadow_agreement"] < 1.0, "its own answers were compared with stable's"


def test_release_state_survives_a_killed_replica_racing_writers_and_a_store_outage(
    tiny_model_dir: Path, tmp_path: Path, s3_endpoint: S3Endpoint, published: str
) -> None:
    with _two_replicas(tiny_model_dir, tmp_path, published, s3_endpoint) as (stack, replica_b, other):
        stack.client.inference.update_release("word", ReleaseAction.START, candidate=2, canary_share=0.5, reason="try")

        # Two replicas take opposite decisions at the same moment: one record lands first, the other
        # applies to what it left (a rollback after the promotion returns to v1) or is refused.
        barrier = threading.Barrier(2)
        outcomes: list[object] = []

        def decide(client: LoraplaneClient, action: ReleaseAction) -> None:
            barrier.wait()
            try:
                outcomes.append(client.inference.update_release("word", action))
            except FailedPrecondition as refused:
                outcomes.append(refused)

        racers = [
            threading.Thread(target=decide, args=(stack.client, ReleaseAction.PROMOTE)),
            threading.Thread(target=decide, args=(other, ReleaseAction.ROLLBACK)),
        ]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        history = stack.client.inference.release("word").history
        assert [record.sequence for record in history] == list(range(1, len(history) + 1))
        assert len(history) == 1 + sum(not isinstance(outcome, FailedPrecondition) for outcome in outcomes)
        assert history[1].action is not ReleaseAction.ROLLBACK or history[1].state == ReleaseState(stable=1)
        final = history[-1].state
        assert final == ReleaseState(stable=1), "rolled back after the promotion, or the promotion refused"

        # The store down: both replicas go on routing by the release they read, and say so; the version
        # in use goes on answering (a version never fetched cannot be, as without releases).
        time.sleep(TTL)
        for client in (stack.client, other):
            client.inference.generate("Once upon a time", adapter="word", params=ONE_TOKEN)
        with s3_endpoint.outage():
            time.sleep(TTL + 0.5)
            for client in (stack.client, other):
                answer = client.inference.generate("Once upon a time", adapter="word", params=ONE_TOKEN)
                assert answer.adapter is not None and answer.adapter.version == final.stable
                shown = client.inference.release("word")
                assert shown.stale and shown.state == final
        time.sleep(TTL + 0.5)
        assert not stack.client.inference.release("word").stale

    # A replica process killed with SIGKILL while it answers the adapter: a new process reads the same
    # release and records from the store, however many there were.
    port = free_port()
    settings = {
        "LORAPLANE_DATA_DIR": str(tmp_path / "process"),
        "LORAPLANE_BASE_MODEL": str(tiny_model_dir),
        "LORAPLANE_BASE_MODEL_NAME": "tiny",
        "LORAPLANE_STORE_URI": published,
        "LORAPLANE_S3_ENDPOINT_URL": s3_endpoint.endpoint_url,
        "LORAPLANE_SERVING_ADDRESS": f"127.0.0.1:{port}",
        "LORAPLANE_SERVING_METRICS_PORT": "0",
        "LORAPLANE_SERVING_HTTP_PORT": "0",
        "LORAPLANE_SERVING_ENGINE": "transformers",
        "LORAPLANE_MAX_MODEL_LEN": "256",
        "LORAPLANE_AUTH": "off",
    }
    (tmp_path / "process").mkdir()
    log, target = tmp_path / "process" / "serving.log", f"127.0.0.1:{port}"
    with service_process("serving-svc", settings, log) as process, LoraplaneClient(serving=target) as client:
        assert client.wait_until_serving("serving", 120)
        client.inference.update_release("word", ReleaseAction.START, candidate=2, canary_share=0.2, reason="again")
        client.inference.generate("Once upon a time", adapter="word", params=ONE_TOKEN)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    with service_process("serving-svc", settings, log), LoraplaneClient(serving=target) as client:
        assert client.wait_until_serving("serving", 120)
        after = client.inference.release("word")
    assert after.history[: len(history)] == history
    assert after.history[-1].reason == "again" and after.state is not None and after.state.candidate == 2
