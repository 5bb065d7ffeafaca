"""A store in an S3 bucket (AWS, Ceph radosgw, MinIO), through boto3.

Create-only writes use S3 conditional writes (`PutObject` with `If-None-Match: *`): the server
refuses the second writer with 412, so two publishers can never both claim a version. AWS has
honoured this since 2024-08; Ceph radosgw honours it too (verified on 16.2: exactly one of 16
racing writers wins, the rest get 412 PreconditionFailed).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from loraplane.errors import FailedPrecondition, InternalError, InvalidArgument, NotFound, Unavailable
from loraplane.storage.base import ObjectStore, check_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_DENIED_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
# AWS answers 409 while another conditional write to the same key is in flight; the retry then
# gets 412 (the other writer won) or 200 (it failed). Bounded, with a short backoff.
_CONFLICT_RETRIES = 5


class S3Store(ObjectStore):
    """Objects under `s3://{bucket}/{prefix}`. The boto3 client is built on first use."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url or None  # an empty LORAPLANE_S3_ENDPOINT_URL means AWS
        self._client_lock = threading.Lock()
        self._client_instance: S3Client | None = None

    @classmethod
    def from_uri(cls, uri: str, *, endpoint_url: str | None = None) -> S3Store:
        """Open `s3://bucket[/prefix]`; `endpoint_url` selects a non-AWS server such as Ceph."""
        parts = urlsplit(uri)
        if parts.scheme != "s3" or parts.query or parts.fragment or not _BUCKET_RE.fullmatch(parts.netloc):
            raise InvalidArgument(
                f"S3 store URI {uri!r} is invalid: use s3://bucket or s3://bucket/prefix with a bucket "
                "name of 3-63 characters a-z, 0-9, '.' or '-'"
            )
        prefix = parts.path.strip("/")
        if prefix:
            check_key(prefix)
            prefix += "/"
        return cls(parts.netloc, prefix, endpoint_url=endpoint_url)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def _client(self) -> S3Client:
        """One client per store, built once: boto3's default session is not thread-safe, a client is."""
        with self._client_lock:
            if self._client_instance is None:
                self._client_instance = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint_url, config=self._config()
                )
            return self._client_instance

    def _config(self) -> Config:
        # Servers other than AWS are reached by address, where bucket-named hosts do not resolve.
        addressing: Literal["path", "auto"] = "path" if self.endpoint_url else "auto"
        return Config(
            retries={"mode": "standard", "max_attempts": 5},
            s3={"addressing_style": addressing},
            max_pool_connections=32,
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _folder(self, prefix: str) -> str:
        """The full S3 prefix of a folder-like `prefix`, ending in '/' so 'a/x' never matches 'a/xy'."""
        if not prefix:
            return self.prefix
        return self.prefix + check_key(prefix.rstrip("/")) + "/"

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Translate boto3 failures into the domain errors callers act on."""
        where = f"{key!r} in {self.uri}"
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code == "NoSuchBucket":
                raise FailedPrecondition(
                    f"S3 bucket {self.bucket!r} does not exist at {self._endpoint_name()}: create it "
                    f"(e.g. `aws s3 mb s3://{self.bucket}`) before using the store"
                ) from None
            if code in _NOT_FOUND_CODES:
                raise NotFound(f"no object {where}") from None
            if code in _DENIED_CODES:
                raise FailedPrecondition(
                    f"S3 refused access to {where} ({code}): check the credentials (AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY) and the bucket policy"
                ) from None
            detail = f"S3 failed on {where}: {code} {error.get('Message') or ''}".rstrip()
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500 or code in ("SlowDown", "RequestTimeout"):
                raise Unavailable(detail) from exc
            raise InternalError(detail) from exc
        except NoCredentialsError:
            raise FailedPrecondition(
                "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or any source of the boto3 credential chain)"
            ) from None
        except EndpointConnectionError as exc:
            raise Unavailable(f"cannot reach S3 at {self._endpoint_name()}: {exc}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"S3 failed on {where}: {exc}") from exc

    def _endpoint_name(self) -> str:
        return self.endpoint_url or "the default AWS endpoint"

    def put_bytes(self, key: str, data: bytes) -> None:
        full_key = self._key(key)
        with self._errors(key):
            self._client.put_object(Bucket=self.bucket, Key=full_key, Body=data)

    def put_file(self, key: str, path: Path) -> None:
        """Upload `path`; large files go up in parallel parts and appear only once complete."""
        full_key = self._key(key)
        with self._errors(key), path.open("rb") as src:
            self._client.upload_fileobj(src, self.bucket, full_key)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Create-only PutObject. If boto3 retried a write whose first response was lost, the retry
        sees that write and this returns False: the caller moves on, and nothing is overwritten."""
        full_key = self._key(key)
        for attempt in range(_CONFLICT_RETRIES):
            with self._errors(key):
                try:
                    self._client.put_object(Bucket=self.bucket, Key=full_key, Body=data, IfNoneMatch="*")
                    return True
                except ClientError as exc:
                    code = exc.response.get("Error", {}).get("Code")
                    if code == "PreconditionFailed":
                        return False
                    if code != "ConditionalRequestConflict":
                        raise
            time.sleep(0.05 * 2**attempt)
        raise Unavailable(f"S3 kept reporting concurrent writes to {key!r} in {self.uri}; try again")

    def get_bytes(self, key: str) -> bytes:
        full_key = self._key(key)
        with self._errors(key):
            body: bytes = self._client.get_object(Bucket=self.bucket, Key=full_key)["Body"].read()
        return body

    def download_file(self, key: str, dest: Path) -> None:
        full_key = self._key(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, self._errors(key):
                self._client.download_fileobj(self.bucket, full_key, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            os.unlink(tmp)
            raise

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except NotFound:
            return False
        return True

    def size(self, key: str) -> int:
        with self._errors(key):
            return int(self._client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def list_keys(self, prefix: str) -> Iterator[str]:
        folder = self._folder(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        with self._errors(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self.prefix) :]

    def list_children(self, prefix: str) -> list[str]:
        folder = self._folder(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        children = []
        with self._errors(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=folder, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    children.append(common["Prefix"][len(folder) :].rstrip("/"))
        return sorted(children)

    def delete(self, key: str) -> None:
        full_key = self._key(key)
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=full_key)
