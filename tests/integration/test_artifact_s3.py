"""The adapter artifact contract on a real S3 server (Ceph radosgw)."""

from __future__ import annotations

import pytest

from loraplane.storage.s3 import S3Store
from tests.support.artifact_contract import ArtifactRepositoryContract
from tests.support.ceph import S3Endpoint

pytestmark = pytest.mark.s3


class TestArtifactRepositoryOnS3(ArtifactRepositoryContract):
    @pytest.fixture
    def store(self, s3_endpoint: S3Endpoint, s3_bucket: str) -> S3Store:
        return S3Store.from_uri(f"s3://{s3_bucket}/loraplane", endpoint_url=s3_endpoint.endpoint_url)
