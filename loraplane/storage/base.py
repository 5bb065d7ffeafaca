"""The ObjectStore interface: flat keys ("adapters/x/v1/manifest.json") over a root URI."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path

from loraplane.errors import InvalidArgument

_FORBIDDEN_SEGMENTS = {"", ".", ".."}


def check_key(key: str) -> str:
    """Reject keys that could escape the store root or alias another key."""
    if key.startswith("/") or any(seg in _FORBIDDEN_SEGMENTS for seg in key.split("/")):
        raise InvalidArgument(f"object key {key!r} is invalid: use relative, '/'-separated names")
    return key


class ObjectStore(abc.ABC):
    """A blob store with create-only puts, so concurrent publishers never overwrite each other.

    Every write is all-or-nothing: a reader sees the old object, the new one, or none.
    """

    @property
    @abc.abstractmethod
    def uri(self) -> str:
        """The store's root URI."""

    def uri_for(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{check_key(key)}"

    def key_for_uri(self, uri: str) -> str:
        """The key of `uri` in this store; InvalidArgument when it points outside it."""
        root = self.uri.rstrip("/") + "/"
        if not uri.startswith(root):
            raise InvalidArgument(f"URI {uri!r} is outside the store {self.uri!r}")
        return check_key(uri[len(root) :])

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write `data` at `key`, replacing what was there."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Upload the local file at `path` to `key`."""

    @abc.abstractmethod
    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` with `data` unless it exists; True when this call created it."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's content; NotFound when there is none."""

    @abc.abstractmethod
    def download_file(self, key: str, dest: Path) -> None:
        """Copy the object to `dest` via a temporary name, so `dest` is never partial."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes, without reading it; NotFound when there is none."""

    @abc.abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every key under `prefix` (a folder-like prefix ending in '/')."""

    @abc.abstractmethod
    def list_children(self, prefix: str) -> list[str]:
        """Names of the immediate 'folders' under `prefix`, sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object if it exists."""
