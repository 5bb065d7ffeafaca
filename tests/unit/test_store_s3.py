"""S3 store URIs, checked without a server."""

from __future__ import annotations

import pytest

from loraplane.errors import InvalidArgument
from loraplane.storage.s3 import S3Store


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("s3://loraplane", "loraplane", ""),
        ("s3://loraplane/", "loraplane", ""),
        ("s3://loraplane/team/adapters", "loraplane", "team/adapters/"),
        ("s3://my.bucket-1/p/", "my.bucket-1", "p/"),
    ],
)
def test_from_uri(uri: str, bucket: str, prefix: str) -> None:
    store = S3Store.from_uri(uri, endpoint_url="http://127.0.0.1:1")
    assert (store.bucket, store.prefix, store.endpoint_url) == (bucket, prefix, "http://127.0.0.1:1")
    assert store.uri == f"s3://{bucket}/{prefix}"


@pytest.mark.parametrize(
    "uri",
    [
        "s3://",
        "s3:///prefix",
        "s3://Upper/x",
        "s3://ab",
        "s3://under_score",
        "s3://bucket/../x",
        "s3://bucket/a//b",
        "s3://bucket/p?versionId=1",
        "file:///tmp/store",
    ],
)
def test_bad_uri_is_invalid_argument(uri: str) -> None:
    with pytest.raises(InvalidArgument):
        S3Store.from_uri(uri)


def test_opening_builds_no_client() -> None:
    """Opening a store must stay cheap and work offline: the client comes with the first call."""
    store = S3Store.from_uri("s3://loraplane")
    assert store._client_instance is None


def test_empty_endpoint_means_aws() -> None:
    """An empty LORAPLANE_S3_ENDPOINT_URL reaches the store as ''; boto3 needs None for AWS."""
    assert S3Store.from_uri("s3://loraplane", endpoint_url="").endpoint_url is None
