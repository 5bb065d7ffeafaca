"""The adapter artifact contract on the local file system."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplane.storage import FileStore
from tests.support.artifact_contract import ArtifactRepositoryContract


class TestArtifactRepositoryOnFiles(ArtifactRepositoryContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FileStore:
        return FileStore(tmp_path / "store")
