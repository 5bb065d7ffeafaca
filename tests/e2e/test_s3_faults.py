"""S3 faults, with the real Ceph radosgw killed mid-test and started again: a job that cannot publish
fails saying why and leaves no version behind, serving refuses only what it cannot fetch, and both
services recover once the store is back, without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loraplane.artifact import ArtifactRepository
from loraplane.errors import FailedPrecondition, Unavailable
from loraplane.fingerprint import base_model_fingerprint
from loraplane.storage import ObjectStore, open_store
from loraplane.training import JobState
from loraplane.types import SamplingParameters, TrainingParameters
from tests.support.adapters import make_adapter, publish_adapter
from tests.support.ceph import S3Endpoint
from tests.support.stack import ANSWER, QUESTIONS, Stack, memorise_jsonl, running_stack

pytestmark = pytest.mark.s3

GREEDY = SamplingParameters(max_tokens=4, temperature=0.0)
TRAINING = TrainingParameters(max_steps=20, batch_size=4, learning_rate=1e-2)


@pytest.fixture
def s3_stack(
    tiny_model_dir: Path, tmp_path: Path, s3_endpoint: S3Endpoint, s3_bucket: str
) -> Iterator[tuple[Stack, ObjectStore]]:
    store_uri = f"s3://{s3_bucket}/loraplane"
    # A name is resolved again on every request, so the test covers what happens when it cannot be.
    with running_stack(
        tiny_model_dir,
        tmp_path,
        serving={"adapter_resolve_ttl_seconds": 0},
        store_uri=store_uri,
        s3_endpoint_url=s3_endpoint.endpoint_url,
    ) as stack:
        yield stack, open_store(store_uri, s3_endpoint_url=s3_endpoint.endpoint_url)


def test_a_job_that_cannot_publish_fails_with_the_reason_and_leaves_no_version(
    s3_stack: tuple[Stack, ObjectStore], s3_endpoint: S3Endpoint, tmp_path: Path
) -> None:
    stack, store = s3_stack
    data = tmp_path / "train.jsonl"
    data.write_text(memorise_jsonl())
    with s3_endpoint.outage():  # down from before training to after the worker has given up
        job = stack.client.jobs.create(adapter_name="outage", training_file=data, training=TRAINING)
        failed = list(stack.client.jobs.watch(job.id))[-1].job
    assert failed.state == JobState.FAILED
    assert failed.error is not None and failed.error.code == "UNAVAILABLE"
    assert "could not publish outage: cannot reach S3" in failed.error.message
    assert "No version was made visible" in failed.error.message
    assert list(store.list_keys("adapters/")) == []  # not a manifest, not a reserved version, not a file

    # The store is back: the same job succeeds on the same trainer, as version 1.
    job = stack.client.jobs.create(adapter_name="outage", training_file=data, training=TRAINING)
    done = list(stack.client.jobs.watch(job.id))[-1].job
    assert done.state == JobState.SUCCEEDED, done.error
    assert done.adapter.version == 1
    assert stack.client.inference.generate(QUESTIONS[2], adapter="outage", params=GREEDY).text.startswith(ANSWER)


def test_during_an_outage_loaded_adapters_answer_and_a_cold_one_is_unavailable_until_the_store_is_back(
    s3_stack: tuple[Stack, ObjectStore], s3_endpoint: S3Endpoint, tiny_model_dir: Path, tmp_path: Path
) -> None:
    stack, store = s3_stack
    repository = ArtifactRepository(store)
    fingerprint = base_model_fingerprint(tiny_model_dir)
    for name, seed in (("warm", 1), ("cold", 2)):
        publish_adapter(repository, make_adapter(tiny_model_dir, tmp_path / name, seed), name, fingerprint)
    warm = stack.client.inference.generate(QUESTIONS[0], adapter="warm", params=GREEDY)

    with s3_endpoint.outage():
        with pytest.raises(Unavailable, match="cannot reach S3"):
            stack.client.inference.generate(QUESTIONS[0], adapter="cold", params=GREEDY)
        again = stack.client.inference.generate(QUESTIONS[0], adapter="warm", params=GREEDY)
        assert (again.text, again.adapter.version) == (warm.text, 1)
        assert stack.client.wait_until_serving("serving", 1)

    cold = stack.client.inference.generate(QUESTIONS[0], adapter="cold", params=GREEDY)
    assert (cold.adapter.name, cold.adapter.version) == ("cold", 1)
    assert cold.text != warm.text


def test_an_adapter_whose_bytes_changed_in_the_bucket_is_refused_and_never_loaded(
    s3_stack: tuple[Stack, ObjectStore], s3_endpoint: S3Endpoint, s3_bucket: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    stack, store = s3_stack
    source = make_adapter(tiny_model_dir, tmp_path / "tampered", seed=3)
    publish_adapter(ArtifactRepository(store), source, "tampered", base_model_fingerprint(tiny_model_dir))
    key = "loraplane/adapters/tampered/v1/adapter_model.safetensors"
    weights = bytearray((source / "adapter_model.safetensors").read_bytes())
    weights[-1] ^= 0xFF  # one bit pattern changed behind the store's back, same size
    s3_endpoint.client().put_object(Bucket=s3_bucket, Key=key, Body=bytes(weights))

    with pytest.raises(FailedPrecondition, match="sha256"):
        stack.client.inference.generate(QUESTIONS[0], adapter="tampered", params=GREEDY)
    listed = {status.ref.name: status for status in stack.client.inference.list_adapters()}
    assert listed["tampered"].tier == "store"  # neither loaded nor kept on disk
