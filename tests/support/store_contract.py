"""The behaviour every ObjectStore backend promises, as one suite.

A backend's test module subclasses `ObjectStoreContract` and supplies a `store` fixture that
returns an empty store; the same tests then run against the file system and real S3.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from loraplane.errors import InvalidArgument, NotFound
from loraplane.storage import ObjectStore

BAD_KEYS = ["../x", "a/../../x", "/abs", "a//b", "a/./b", "", "a/"]

# One call per store method that takes a key, for the key-validation test.
KEY_OPERATIONS: dict[str, Callable[[ObjectStore, str, Path], object]] = {
    "put_bytes": lambda store, key, _: store.put_bytes(key, b"x"),
    "put_file": lambda store, key, tmp: store.put_file(key, tmp / "src"),
    "put_bytes_if_absent": lambda store, key, _: store.put_bytes_if_absent(key, b"x"),
    "get_bytes": lambda store, key, _: store.get_bytes(key),
    "download_file": lambda store, key, tmp: store.download_file(key, tmp / "dest"),
    "exists": lambda store, key, _: store.exists(key),
    "delete": lambda store, key, _: store.delete(key),
    "uri_for": lambda store, key, _: store.uri_for(key),
}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class ObjectStoreContract:
    """Subclass with a `store` fixture returning an empty store."""

    def test_put_then_get(self, store: ObjectStore) -> None:
        store.put_bytes("a/b/c.bin", b"\x00\x01binary\xff")
        store.put_bytes("empty", b"")
        assert store.get_bytes("a/b/c.bin") == b"\x00\x01binary\xff"
        assert store.get_bytes("empty") == b""
        assert store.exists("a/b/c.bin")
        assert (store.size("a/b/c.bin"), store.size("empty")) == (9, 0)

    def test_put_replaces(self, store: ObjectStore) -> None:
        store.put_bytes("k", b"old")
        store.put_bytes("k", b"new")
        assert store.get_bytes("k") == b"new"

    def test_missing_object_is_not_found(self, store: ObjectStore) -> None:
        assert not store.exists("nope")
        with pytest.raises(NotFound):
            store.get_bytes("nope")
        with pytest.raises(NotFound):
            store.get_bytes("a/nope")
        with pytest.raises(NotFound):
            store.size("nope")

    def test_put_file_then_download(self, store: ObjectStore, tmp_path: Path) -> None:
        # 9 MiB: above boto3's 8 MiB threshold, so S3 takes the multipart path.
        data = os.urandom(9 * 1024 * 1024)
        src = tmp_path / "src.bin"
        src.write_bytes(data)
        store.put_file("files/big.bin", src)
        dest = tmp_path / "out" / "nested" / "big.bin"
        store.download_file("files/big.bin", dest)
        assert dest.read_bytes() == data
        assert _leftovers(dest.parent) == ["big.bin"]

    def test_download_replaces_destination_whole(self, store: ObjectStore, tmp_path: Path) -> None:
        store.put_bytes("k", b"fresh")
        dest = tmp_path / "downloads" / "dest.bin"
        dest.parent.mkdir()
        dest.write_bytes(b"stale content that is longer")
        store.download_file("k", dest)
        assert dest.read_bytes() == b"fresh"
        assert _leftovers(dest.parent) == ["dest.bin"]

    def test_failed_download_leaves_destination_alone(self, store: ObjectStore, tmp_path: Path) -> None:
        dest = tmp_path / "downloads" / "dest.bin"
        dest.parent.mkdir()
        dest.write_bytes(b"previous")
        with pytest.raises(NotFound):
            store.download_file("nope", dest)
        with pytest.raises(NotFound):
            store.download_file("nope", dest.parent / "new.bin")
        assert dest.read_bytes() == b"previous"
        assert _leftovers(dest.parent) == ["dest.bin"]

    def test_put_if_absent_creates_only_once(self, store: ObjectStore) -> None:
        assert store.put_bytes_if_absent("claims/v1", b"first")
        assert not store.put_bytes_if_absent("claims/v1", b"second")
        assert store.get_bytes("claims/v1") == b"first"

    def test_put_if_absent_refuses_over_a_plain_put(self, store: ObjectStore) -> None:
        store.put_bytes("k", b"plain")
        assert not store.put_bytes_if_absent("k", b"conditional")
        assert store.get_bytes("k") == b"plain"

    @pytest.mark.parametrize("round_", range(3))
    def test_concurrent_put_if_absent_has_one_winner(self, store: ObjectStore, round_: int) -> None:
        writers = 12
        start = threading.Barrier(writers)
        key = f"race/{round_}"

        def claim(i: int) -> bool:
            start.wait()
            return store.put_bytes_if_absent(key, f"writer-{i}".encode())

        with ThreadPoolExecutor(writers) as pool:
            won = list(pool.map(claim, range(writers)))
        assert won.count(True) == 1
        assert store.get_bytes(key) == f"writer-{won.index(True)}".encode()

    def test_list_keys(self, store: ObjectStore) -> None:
        for key in ("a/x/1", "a/x/deep/2", "a/xy/3", "a/top", "b/4"):
            store.put_bytes(key, b".")
        assert sorted(store.list_keys("a/x/")) == ["a/x/1", "a/x/deep/2"]
        assert sorted(store.list_keys("a/")) == ["a/top", "a/x/1", "a/x/deep/2", "a/xy/3"]
        assert sorted(store.list_keys("")) == ["a/top", "a/x/1", "a/x/deep/2", "a/xy/3", "b/4"]
        assert list(store.list_keys("missing/")) == []

    def test_list_children(self, store: ObjectStore) -> None:
        for key in ("adapters/b/v1/m", "adapters/a/v2/m", "adapters/a/v10/m", "adapters/readme", "other/x"):
            store.put_bytes(key, b".")
        assert store.list_children("adapters/") == ["a", "b"]
        assert store.list_children("adapters/a/") == ["v10", "v2"]
        assert store.list_children("") == ["adapters", "other"]
        assert store.list_children("adapters/a/v2/") == []
        assert store.list_children("missing/") == []

    def test_delete(self, store: ObjectStore) -> None:
        store.put_bytes("d/k", b".")
        store.delete("d/k")
        assert not store.exists("d/k")
        assert list(store.list_keys("d/")) == []
        store.delete("d/k")  # deleting what is gone is not an error

    @pytest.mark.parametrize("operation", sorted(KEY_OPERATIONS))
    def test_bad_keys_are_refused(self, store: ObjectStore, tmp_path: Path, operation: str) -> None:
        (tmp_path / "src").write_bytes(b"x")
        for key in BAD_KEYS:
            with pytest.raises(InvalidArgument):
                KEY_OPERATIONS[operation](store, key, tmp_path)

    def test_uri_round_trip(self, store: ObjectStore) -> None:
        uri = store.uri_for("adapters/a/v1/manifest.json")
        assert uri.startswith(store.uri)
        assert store.key_for_uri(uri) == "adapters/a/v1/manifest.json"

    def test_uri_outside_the_store_is_refused(self, store: ObjectStore) -> None:
        root = store.uri.rstrip("/")
        for uri in (f"{root}-sibling/x", f"{root}/../x", "file:///etc/passwd", "s3://elsewhere/x", root):
            with pytest.raises(InvalidArgument):
                store.key_for_uri(uri)
