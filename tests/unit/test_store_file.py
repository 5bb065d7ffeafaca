"""The ObjectStore contract on the local file system, and symbolic links planted in the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplane.errors import InvalidArgument
from loraplane.storage import FileStore
from tests.support.store_contract import ObjectStoreContract


class TestFileStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FileStore:
        return FileStore(tmp_path / "store")


@pytest.fixture
def planted(tmp_path: Path) -> FileStore:
    """A store with a link planted inside it to a folder outside it (`evil -> outside/`), and one to a
    folder of its own (`alias -> datasets/`)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text("not yours\n")
    store = FileStore(tmp_path / "store")
    store.put_bytes("datasets/train.jsonl", b"{}\n")
    (store.root / "evil").symlink_to(outside, target_is_directory=True)
    (store.root / "datasets" / "escape.jsonl").symlink_to(outside / "secret.jsonl")
    (store.root / "alias").symlink_to(store.root / "datasets", target_is_directory=True)
    return store


@pytest.mark.parametrize("key", ["evil/secret.jsonl", "datasets/escape.jsonl"])
def test_a_link_out_of_the_store_is_refused_for_every_operation(planted: FileStore, key: str) -> None:
    for operation in (planted.get_bytes, planted.exists, planted.size, planted.delete):
        with pytest.raises(InvalidArgument, match="leads out of the store"):
            operation(key)
    with pytest.raises(InvalidArgument, match="leads out of the store"):
        planted.put_bytes(key, b"overwritten")
    assert (planted.root.parent / "outside" / "secret.jsonl").read_text() == "not yours\n"


def test_listings_leave_out_what_lies_outside_the_store(planted: FileStore) -> None:
    assert list(planted.list_keys("")) == ["datasets/train.jsonl"]  # not escape.jsonl, nothing under evil/
    assert list(planted.list_keys("evil/")) == []
    assert planted.list_children("") == ["alias", "datasets"]


def test_a_link_within_the_store_is_followed(planted: FileStore) -> None:
    assert planted.get_bytes("alias/train.jsonl") == b"{}\n"
