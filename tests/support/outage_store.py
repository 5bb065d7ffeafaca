"""A store that can be made unreachable, and a clock a test moves by hand: for TTL and outage tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from loraplane.artifact import MANIFEST
from loraplane.errors import Unavailable
from loraplane.storage import FileStore
from loraplane.storage.base import ObjectStore


class FakeOutageStore(ObjectStore):
    """The file store, unreachable while `down` is set (every call raises Unavailable); counts manifest reads."""

    def __init__(self, store: FileStore) -> None:
        self._store = store
        self.down = False
        self.manifest_reads = 0

    def _reachable(self) -> FileStore:
        if self.down:
            raise Unavailable("cannot reach the store")
        return self._store

    @property
    def uri(self) -> str:
        return self._store.uri

    def put_bytes(self, key: str, data: bytes) -> None:
        self._reachable().put_bytes(key, data)

    def put_file(self, key: str, path: Path) -> None:
        self._reachable().put_file(key, path)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        return self._reachable().put_bytes_if_absent(key, data)

    def get_bytes(self, key: str) -> bytes:
        store = self._reachable()
        self.manifest_reads += key.endswith(MANIFEST)
        return store.get_bytes(key)

    def download_file(self, key: str, dest: Path) -> None:
        self._reachable().download_file(key, dest)

    def exists(self, key: str) -> bool:
        return self._reachable().exists(key)

    def size(self, key: str) -> int:
        return self._reachable().size(key)

    def list_keys(self, prefix: str) -> Iterator[str]:
        return self._reachable().list_keys(prefix)

    def list_children(self, prefix: str) -> list[str]:
        return self._reachable().list_children(prefix)

    def delete(self, key: str) -> None:
        self._reachable().delete(key)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
