"""The ObjectStore contract on a real S3 server (Ceph radosgw), plus what only S3 has."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from loraplane.errors import FailedPrecondition
from loraplane.storage import open_store
from loraplane.storage.s3 import S3Store
from tests.support.ceph import S3Endpoint
from tests.support.store_contract import ObjectStoreContract

pytestmark = pytest.mark.s3


class TestS3Store(ObjectStoreContract):
    @pytest.fixture(params=["", "team/loraplane"], ids=["bucket-root", "prefixed"])
    def store(self, request: pytest.FixtureRequest, s3_endpoint: S3Endpoint, s3_bucket: str) -> S3Store:
        uri = f"s3://{s3_bucket}/{request.param}"
        return S3Store.from_uri(uri, endpoint_url=s3_endpoint.endpoint_url)


def test_open_store_picks_s3(s3_endpoint: S3Endpoint, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/p", s3_endpoint_url=s3_endpoint.endpoint_url)
    store.put_bytes("k", b"v")
    assert s3_endpoint.client().get_object(Bucket=s3_bucket, Key="p/k")["Body"].read() == b"v"


def test_prefixes_are_separate_stores(s3_endpoint: S3Endpoint, s3_bucket: str) -> None:
    one = S3Store.from_uri(f"s3://{s3_bucket}/one", endpoint_url=s3_endpoint.endpoint_url)
    one_more = S3Store.from_uri(f"s3://{s3_bucket}/one-more", endpoint_url=s3_endpoint.endpoint_url)
    one.put_bytes("adapters/a/v1/m", b"1")
    one_more.put_bytes("adapters/b/v1/m", b"2")
    assert one.list_children("adapters/") == ["a"]
    assert list(one_more.list_keys("")) == ["adapters/b/v1/m"]
    assert not one.exists("adapters/b/v1/m")


def test_missing_bucket_says_to_create_it(s3_endpoint: S3Endpoint, s3_bucket: str) -> None:
    store = S3Store.from_uri(f"s3://{s3_bucket}-absent", endpoint_url=s3_endpoint.endpoint_url)
    for operation in (
        lambda: store.put_bytes("k", b"v"),
        lambda: store.put_bytes_if_absent("k", b"v"),
        lambda: store.get_bytes("k"),
        lambda: store.list_children(""),
    ):
        with pytest.raises(FailedPrecondition, match="create it"):
            operation()


def test_wrong_credentials_are_a_failed_precondition(
    s3_endpoint: S3Endpoint, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = S3Store.from_uri(f"s3://{s3_bucket}", endpoint_url=s3_endpoint.endpoint_url)
    with pytest.raises(FailedPrecondition, match="credentials"):
        store.put_bytes("k", b"v")


def test_list_children_pages(s3_endpoint: S3Endpoint, s3_bucket: str) -> None:
    """More children than one ListObjectsV2 page (1000) holds."""
    store = S3Store.from_uri(f"s3://{s3_bucket}", endpoint_url=s3_endpoint.endpoint_url)
    client = s3_endpoint.client()
    names = [f"n{i:04d}" for i in range(1005)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: client.put_object(Bucket=s3_bucket, Key=f"adapters/{name}/v1/m"), names))
    assert store.list_children("adapters/") == names
    assert len(list(store.list_keys("adapters/"))) == len(names)


def test_a_large_file_goes_up_in_parts_and_comes_back_whole(
    s3_endpoint: S3Endpoint, s3_bucket: str, tmp_path: Path
) -> None:
    store = S3Store.from_uri(f"s3://{s3_bucket}", endpoint_url=s3_endpoint.endpoint_url)
    source = tmp_path / "adapter_model.safetensors"
    source.write_bytes(os.urandom(20 << 20))  # past boto3's 8 MiB multipart threshold
    store.put_file("adapters/big/v1/adapter_model.safetensors", source)
    head = s3_endpoint.client().head_object(Bucket=s3_bucket, Key="adapters/big/v1/adapter_model.safetensors")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag counts its parts (8 + 8 + 4 MiB)
    store.download_file("adapters/big/v1/adapter_model.safetensors", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == source.read_bytes()
