"""The same loop with the store in a real S3 server (Ceph radosgw): the dataset is read from the
bucket, the worker publishes there, and serving fetches the adapter from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplane.storage import open_store
from loraplane.training import JobState
from loraplane.types import SamplingParameters, TrainingParameters
from tests.support.ceph import S3Endpoint
from tests.support.stack import ANSWER, QUESTIONS, memorise_jsonl, running_stack

pytestmark = pytest.mark.s3


def test_train_from_and_serve_out_of_s3(
    tiny_model_dir: Path, tmp_path: Path, s3_endpoint: S3Endpoint, s3_bucket: str
) -> None:
    store_uri = f"s3://{s3_bucket}/loraplane"
    store = open_store(store_uri, s3_endpoint_url=s3_endpoint.endpoint_url)
    store.put_bytes("datasets/secret.jsonl", memorise_jsonl().encode())
    with running_stack(
        tiny_model_dir, tmp_path, store_uri=store_uri, s3_endpoint_url=s3_endpoint.endpoint_url
    ) as stack:
        job = stack.client.jobs.create(
            adapter_name="secret-s3",
            training_uri=store.uri_for("datasets/secret.jsonl"),
            training=TrainingParameters(max_steps=20, batch_size=4, learning_rate=1e-2),
        )
        final = list(stack.client.jobs.watch(job.id))[-1].job
        assert final.state == JobState.SUCCEEDED, final.error
        assert final.adapter is not None and final.adapter.uri == f"{store_uri}/adapters/secret-s3/v1"
        assert store.exists("adapters/secret-s3/v1/manifest.json")
        answer = stack.client.inference.generate(
            QUESTIONS[3], adapter="secret-s3", params=SamplingParameters(max_tokens=4, temperature=0.0)
        )
        assert answer.text.startswith(ANSWER)
