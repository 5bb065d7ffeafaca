"""Object storage behind one interface: `file://` (the embedded default) and `s3://` (boto3).

`open_store` is the one place a URI scheme picks a backend.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from loraplane.errors import InvalidArgument
from loraplane.storage.base import ObjectStore
from loraplane.storage.file import FileStore

__all__ = ["FileStore", "ObjectStore", "open_store"]


def open_store(uri: str, *, s3_endpoint_url: str | None = None) -> ObjectStore:
    """Open the store rooted at `uri`: file:///abs/dir or s3://bucket[/prefix]."""
    scheme = urlsplit(uri).scheme
    if scheme == "file":
        return FileStore.from_uri(uri)
    if scheme == "s3":
        from loraplane.storage.s3 import S3Store  # importing boto3 is slow: only a store on S3 pays for it

        return S3Store.from_uri(uri, endpoint_url=s3_endpoint_url)
    raise InvalidArgument(f"store URI {uri!r} is not supported: use file:///path or s3://bucket/prefix")
