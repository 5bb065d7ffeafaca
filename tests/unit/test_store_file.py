"""The ObjectStore contract on the local file system."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplane.storage import FileStore
from tests.support.store_contract import ObjectStoreContract


class TestFileStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FileStore:
        return FileStore(tmp_path / "store")
